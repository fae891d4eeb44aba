//! The `wit_bindgen::generate!` call for the `pylon:plugin/plugin` world, and
//! nothing else. Plugin authors use the re-exports and wrappers in the crate
//! root instead of these paths.

wit_bindgen::generate!({
    path: "../../wit",
    world: "plugin",
    // The export macro is called by `export_plugin!` from the plugin's crate,
    // so it has to be public; its name keeps it out of the way.
    pub_export_macro: true,
    export_macro_name: "__pylon_export_guest",
    default_bindings_module: "pylon_plugin_sdk::__private::bindings",
    additional_derives: [Clone, PartialEq, Eq],
    additional_type_attributes: {
        // `Default` = empty edits: the no-op answers (`Needs` has its own
        // `Default` in `types.rs`: the request phase is on).
        "pylon:plugin/types@0.4.1/request-edits": [#[derive(Default)]],
        "pylon:plugin/types@0.4.1/response-edits": [#[derive(Default)]],
    },
});
