//! Loading plugins: config rejections and load errors naming the route,
//! plugin and file, plugins built against a dropped contract refused, and
//! compiled components cached in memory and on disk.

use std::path::PathBuf;

use pylon::{
    pipeline::PluginError,
    plugin::{CompileOrigin, PluginLoadError, PluginLoader},
};

use crate::harness::runtime::{call_ok, chain, def, host, load, request, runtime, settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_rejection_names_route_and_plugin() {
    let rt = runtime();
    let err = load(
        &rt,
        &def("reject", "reject-config"),
        "users",
        r#"{"a":1}"#,
        host(),
    )
    .await
    .err()
    .expect("config is rejected");
    assert!(
        matches!(err, PluginLoadError::ConfigRejected { .. }),
        "{err:?}"
    );
    assert_eq!(
        chain(&err),
        r#"route "users", plugin "reject": config rejected: this plugin rejects every config: got {"a":1}"#
    );

    // A plugin that traps in `configure` fails to load with the cause attached.
    let err = load(
        &rt,
        &def("trap", "trap"),
        "users",
        r#"{"phase": "configure"}"#,
        host(),
    )
    .await
    .err()
    .expect("configure traps");
    assert!(
        matches!(&err, PluginLoadError::Configure { route, plugin, source: PluginError::Trap { .. } }
            if route == "users" && plugin == "trap"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_errors_name_plugin_and_file() {
    let rt = runtime();
    let mut missing = def("headers", "headers");
    missing.component = PathBuf::from("/nonexistent/headers.wasm");
    let err = rt.compile(&missing).unwrap_err();
    assert!(matches!(err, PluginLoadError::Read { .. }));
    assert!(
        chain(&err).starts_with(
            r#"plugin "headers": cannot read component /nonexistent/headers.wasm: No such file or directory"#
        ),
        "{}",
        chain(&err)
    );

    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"\0asm not really").unwrap();
    let mut bad = def("bad", "headers");
    bad.component = garbage;
    let err = rt.compile(&bad).unwrap_err();
    assert!(matches!(err, PluginLoadError::Compile { .. }), "{err:?}");
    assert!(chain(&err).starts_with(r#"plugin "bad": cannot compile component "#));

    // A valid component that is not a plugin: an empty component.
    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let mut not_plugin = def("empty", "headers");
    not_plugin.component = empty;
    let err = rt.compile(&not_plugin).unwrap_err();
    assert!(
        matches!(&err, PluginLoadError::NotAPlugin { .. }),
        "{err:?}"
    );
    assert_eq!(
        chain(&err),
        format!(
            "plugin \"empty\": {} is not a pylon plugin: it exports neither \
             `pylon:plugin/guest@0.4.1` nor `pylon:plugin/guest@0.3.0` \
             (the contract versions this host serves); its exports: none",
            not_plugin.component.display()
        )
    );
}

/// A component that exports `pylon:plugin/guest@<version>` (an empty
/// instance: enough to name the contract it was built against).
fn component_exporting_guest(version: &str) -> Vec<u8> {
    let name = format!("pylon:plugin/guest@{version}");
    let name_len = u8::try_from(name.len()).unwrap();
    assert!(name_len < 128, "single-byte LEB128 sizes only");
    let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
    // Instance section: one instance made of no exports.
    bytes.extend_from_slice(&[0x05, 0x03, 0x01, 0x01, 0x00]);
    // Export section: that instance (sort 0x05, index 0) under `name`.
    let mut export = vec![0x01, 0x00, name_len];
    export.extend_from_slice(name.as_bytes());
    export.extend_from_slice(&[0x05, 0x00, 0x00]);
    bytes.extend_from_slice(&[0x0b, u8::try_from(export.len()).unwrap()]);
    bytes.extend_from_slice(&export);
    bytes
}

/// The support policy: the current contract and the previous one. A
/// plugin built against an older one (0.2.0, dropped) is refused at load,
/// naming the version it was built against and those to rebuild against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_a_dropped_contract_is_refused_naming_the_versions() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.wasm");
    std::fs::write(&old, component_exporting_guest("0.2.0")).unwrap();
    let mut d = def("old", "headers");
    d.component = old.clone();
    let err = rt.compile(&d).unwrap_err();
    assert!(
        matches!(&err, PluginLoadError::UnsupportedContract { found, .. } if found == "0.2.0"),
        "{err:?}"
    );
    assert_eq!(
        chain(&err),
        format!(
            "plugin \"old\": {} was built against pylon:plugin@0.2.0, which this host does \
             not serve: rebuild it against 0.4.1 or 0.3.0",
            d.component.display()
        )
    );
    // A later patch of the current minor may use accessors this host
    // lacks: refused by name too, not by a failed link.
    std::fs::write(&old, component_exporting_guest("0.4.7")).unwrap();
    let err = rt.compile(&d).unwrap_err();
    assert!(
        matches!(&err, PluginLoadError::UnsupportedContract { found, .. } if found == "0.4.7"),
        "{err:?}"
    );
    // A supported version in the same shape (0.4.0 and 0.4.1 alike: an
    // earlier patch is served) is not refused for its version (it lacks the
    // functions, so it is not a plugin).
    for version in ["0.4.0", "0.4.1", "0.3.0"] {
        let current = dir.path().join(format!("current-{version}.wasm"));
        std::fs::write(&current, component_exporting_guest(version)).unwrap();
        d.component = current;
        let err = rt.compile(&d).unwrap_err();
        assert!(
            matches!(&err, PluginLoadError::NotAPlugin { .. }),
            "{version}: {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_components_are_cached_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let d = def("headers", "headers");
    let bytes = std::fs::read(&d.component).unwrap();

    let first = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    let a = first.compile(&d).unwrap();
    assert_eq!(a.origin(), CompileOrigin::Compiled);
    let cache_file = first.cache_path_for(&bytes).unwrap();
    assert!(cache_file.is_file(), "{} exists", cache_file.display());
    assert!(
        cache_file
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(a.sha256_hex())
    );
    // Same bytes again (another plugin name, or a reload): from memory.
    let b = first.compile(&def("headers-2", "headers")).unwrap();
    assert_eq!(b.origin(), CompileOrigin::MemoryCache);

    // A new runtime (a restart) loads the precompiled artefact.
    let second = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    let c = second.compile(&d).unwrap();
    assert_eq!(c.origin(), CompileOrigin::DiskCache);
    let cache = second.cache_stats();
    assert_eq!((cache.compiled, cache.disk_hits), (0, 1));
    let p = second
        .configure(&c, "r", "{}", host())
        .await
        .expect("a cached component works");
    call_ok(&p, &request("/")).await;

    // A corrupt entry is ignored and replaced. (Written as a new file: the
    // loaded runtimes map the old one, which must never change in place.)
    std::fs::remove_file(&cache_file).unwrap();
    std::fs::write(&cache_file, b"garbage").unwrap();
    let third = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    assert_eq!(third.compile(&d).unwrap().origin(), CompileOrigin::Compiled);
    let fourth = PluginLoader::new(&settings(Some(dir.path().into()))).unwrap();
    assert_eq!(
        fourth.compile(&d).unwrap().origin(),
        CompileOrigin::DiskCache
    );
}
