//! The plugin contract: every version of `pylon:plugin` the host serves,
//! and the only place that names one. The rest of the host sees one model,
//! the current contract's types ([`current`]); each older version served
//! has a module that binds it and converts it onto that model, both ways
//! (`v0_3`).
//!
//! Here: [`ContractVersion`] (which versions, the support policy),
//! [`GuestPre`] (a component pre-instantiated with its version's bindings),
//! [`Guest`] (its `guest` export, called with current types whatever its
//! version) and [`add_to_linker`] (every version's imports). Not here: what
//! the host does for an import (`crate::plugin::host`) or around a call
//! (`crate::plugin::instance`).

pub(crate) mod current;
mod v0_3;

use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::{
    Engine, Store,
    component::{
        Component, ComponentExportIndex, Func, Instance as ComponentInstance, InstancePre, Linker,
        Resource, TypedFunc,
    },
};

use super::{host, state::HostState};
use current::pylon::plugin::types as wit;

/// A version of the `pylon:plugin` contract the host serves. A plugin is
/// served under the version whose `guest` interface it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContractVersion {
    /// `pylon:plugin@0.4.1`, the current contract (`wit/plugin.wit`): a
    /// plugin can declare header edits the host applies without a call
    /// (0.4.0) and read the client's certificate (0.4.1). A plugin built
    /// against 0.4.0 is served under it unchanged: 0.4.1 only added an
    /// accessor, and wasmtime matches a `@0.4.0` import or export to its
    /// `@0.4.1` definition semver-compatibly (a plugin's imports are
    /// checked against what it uses, so the extra accessor is no matter).
    V0_4,
    /// `pylon:plugin@0.3.0`, the previous one (`wit/compat/0.3.0`): the
    /// hooks read the request and response through resources; no fixed
    /// header edits.
    V0_3,
}

impl ContractVersion {
    /// Every version served, newest first (a component exporting several
    /// is served under the newest). The support policy (README, "Contract
    /// versions served"): before 1.0, the current minor (every patch of it
    /// up to the current one: 0.4.0 and 0.4.1) and the previous minor; a
    /// component built against another one is refused at load, naming the
    /// versions to rebuild against.
    pub const SUPPORTED: [Self; 2] = [Self::V0_4, Self::V0_3];

    /// `0.4.1`, `0.3.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4 => "0.4.1",
            Self::V0_3 => "0.3.0",
        }
    }

    /// The export a plugin of this version has (looked up semver-compatibly).
    pub fn guest_export(self) -> &'static str {
        match self {
            Self::V0_4 => "pylon:plugin/guest@0.4.1",
            Self::V0_3 => "pylon:plugin/guest@0.3.0",
        }
    }
}

impl ContractVersion {
    /// The version `component` is served under: the newest served whose
    /// minor its `guest` export has, at this patch or an earlier one. None
    /// for any other (a later patch may import accessors this host lacks:
    /// refused by name rather than by a failed link).
    pub(crate) fn served_for(engine: &Engine, component: &Component) -> Option<Self> {
        let ty = component.component_type();
        let exported: Vec<&str> = ty
            .exports(engine)
            .filter_map(|(name, _)| name.strip_prefix("pylon:plugin/guest@"))
            .collect();
        Self::SUPPORTED
            .into_iter()
            .find(|v| exported.iter().any(|e| v.serves(e)))
    }

    /// Whether a plugin built against `version` (`x.y.z`) is served under
    /// this one: same major and minor, no later patch (pre-1.0 semver: a
    /// patch release only adds).
    pub(crate) fn serves(self, version: &str) -> bool {
        let parse = |v: &str| -> Option<[u64; 3]> {
            let mut parts = v.split('.').map(|p| p.parse::<u64>().ok());
            let out = [parts.next()??, parts.next()??, parts.next()??];
            parts.next().is_none().then_some(out)
        };
        match (parse(version), parse(self.as_str())) {
            (Some([a, b, c]), Some([x, y, z])) => a == x && b == y && c <= z,
            _ => false,
        }
    }
}

impl std::fmt::Display for ContractVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Add the `pylon:plugin` imports of every contract version served (grants
/// are checked per call, so one linker serves every plugin).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    host::add_plugin_imports(linker)?;
    v0_3::add_to_linker(linker)
}

/// A component pre-instantiated with the bindings of the contract version
/// it exports.
pub(crate) enum GuestPre {
    V0_4(PreV0_4),
    V0_3(v0_3::PluginPre<HostState>),
}

/// A current-contract component, and where its hooks are among its exports.
pub(crate) struct PreV0_4 {
    pre: current::PluginPre<HostState>,
    exports: HookExports,
    /// An instance's hooks have passed the bindings' type check: the
    /// types are the component's, the same for every instance of it.
    checked: AtomicBool,
}

/// The `guest` hooks' export indices (looked up once, at load).
struct HookExports {
    configure: ComponentExportIndex,
    on_request: ComponentExportIndex,
    on_response: ComponentExportIndex,
}

impl HookExports {
    fn new(component: &Component) -> Option<Self> {
        let guest = component.get_export_index(None, ContractVersion::V0_4.guest_export())?;
        let hook = |name| component.get_export_index(Some(&guest), name);
        Some(Self {
            configure: hook("configure")?,
            on_request: hook("on-request")?,
            on_response: hook("on-response")?,
        })
    }

    /// The hooks of `instance`, without a type check: only once one
    /// instance of the same component has passed it (`PreV0_4::checked`).
    #[allow(unsafe_code)]
    fn load_checked(
        &self,
        store: &mut Store<HostState>,
        instance: &ComponentInstance,
    ) -> wasmtime::Result<Hooks> {
        let func = |store: &mut Store<HostState>, index| -> wasmtime::Result<Func> {
            instance
                .get_func(store, index)
                .ok_or_else(|| wasmtime::format_err!("the `guest` export lacks a hook"))
        };
        let configure = func(store, &self.configure)?;
        let on_request = func(store, &self.on_request)?;
        let on_response = func(store, &self.on_response)?;
        // SAFETY: these are the exports the bindings type-checked as these
        // signatures on another instance of the same component (the same
        // `InstancePre`); an instance's export types are its component's.
        unsafe {
            Ok(Hooks {
                configure,
                on_request: TypedFunc::new_unchecked(on_request),
                on_response: TypedFunc::new_unchecked(on_response),
            })
        }
    }
}

/// The current contract's hooks of one instance, typed as the bindings
/// type them (`on-request` and `on-response`).
#[derive(Clone)]
pub(crate) struct Hooks {
    /// Called at load only: type-checked at each call.
    configure: Func,
    on_request: TypedFunc<(Resource<wit::Request>,), (wit::RequestAction,)>,
    on_response:
        TypedFunc<(Resource<wit::Request>, Resource<wit::ResponseView>), (wit::ResponseEdits,)>,
}

impl From<&current::exports::pylon::plugin::guest::Guest> for Hooks {
    fn from(guest: &current::exports::pylon::plugin::guest::Guest) -> Self {
        Self {
            configure: *guest.func_configure().func(),
            on_request: guest.func_on_request(),
            on_response: guest.func_on_response(),
        }
    }
}

impl GuestPre {
    /// Check `pre` exports `version`'s guest interface and bind it.
    pub(crate) fn new(
        version: ContractVersion,
        pre: InstancePre<HostState>,
    ) -> wasmtime::Result<Self> {
        match version {
            ContractVersion::V0_4 => {
                let exports = HookExports::new(pre.component()).ok_or_else(|| {
                    wasmtime::format_err!("the `guest` export lacks a hook of 0.4")
                })?;
                Ok(GuestPre::V0_4(PreV0_4 {
                    pre: current::PluginPre::new(pre)?,
                    exports,
                    checked: AtomicBool::new(false),
                }))
            }
            ContractVersion::V0_3 => v0_3::PluginPre::new(pre).map(GuestPre::V0_3),
        }
    }

    /// The version it speaks.
    pub(crate) fn version(&self) -> ContractVersion {
        match self {
            GuestPre::V0_4(_) => ContractVersion::V0_4,
            GuestPre::V0_3(_) => ContractVersion::V0_3,
        }
    }

    pub(crate) fn engine(&self) -> &Engine {
        match self {
            GuestPre::V0_4(pre) => pre.pre.engine(),
            GuestPre::V0_3(pre) => pre.engine(),
        }
    }

    /// A new instance in `store`, and its `guest` export.
    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Guest> {
        Ok(match self {
            GuestPre::V0_4(pre) => {
                let instance = pre
                    .pre
                    .instance_pre()
                    .instantiate_async(&mut *store)
                    .await?;
                // The bindings type-check every hook of every instance (a
                // twelfth of a fresh instance's cost); once is enough.
                if pre.checked.load(Ordering::Relaxed) {
                    Guest::V0_4(pre.exports.load_checked(store, &instance)?)
                } else {
                    let plugin = current::Plugin::new(&mut *store, &instance)?;
                    pre.checked.store(true, Ordering::Relaxed);
                    Guest::V0_4(plugin.pylon_plugin_guest().into())
                }
            }
            GuestPre::V0_3(pre) => Guest::V0_3(
                pre.instantiate_async(store)
                    .await?
                    .pylon_plugin_guest()
                    .clone(),
            ),
        })
    }
}

/// An instance's `guest` export, in the contract version it speaks, called
/// with and answering in the current contract's types.
#[derive(Clone)]
pub(crate) enum Guest {
    V0_4(Hooks),
    V0_3(v0_3::Guest),
}

impl Guest {
    /// The `guest` export of `instance`, a component of `version` that was
    /// instantiated without its bindings (the snapshot's instrumented copy).
    pub(crate) fn of_instance(
        version: ContractVersion,
        store: &mut Store<HostState>,
        instance: &ComponentInstance,
    ) -> wasmtime::Result<Self> {
        Ok(match version {
            ContractVersion::V0_4 => Guest::V0_4(
                current::Plugin::new(store, instance)?
                    .pylon_plugin_guest()
                    .into(),
            ),
            ContractVersion::V0_3 => Guest::V0_3(
                v0_3::Plugin::new(store, instance)?
                    .pylon_plugin_guest()
                    .clone(),
            ),
        })
    }

    /// `configure(config_json)`.
    pub(crate) async fn configure(
        &self,
        store: &mut Store<HostState>,
        config_json: &str,
    ) -> wasmtime::Result<Result<wit::Needs, String>> {
        match self {
            Self::V0_4(hooks) => {
                let configure = hooks
                    .configure
                    .typed::<(&str,), (Result<wit::Needs, String>,)>(&*store)?;
                Ok(configure.call_async(store, (config_json,)).await?.0)
            }
            Self::V0_3(guest) => Ok(guest
                .call_configure(store, config_json)
                .await?
                .map(Into::into)),
        }
    }

    /// `on-request(req)`.
    pub(crate) async fn on_request(
        &self,
        store: &mut Store<HostState>,
        req: Resource<wit::Request>,
    ) -> wasmtime::Result<wit::RequestAction> {
        match self {
            Self::V0_4(hooks) => Ok(hooks.on_request.call_async(store, (req,)).await?.0),
            Self::V0_3(guest) => Ok(guest
                .call_on_request(store, v0_3::handle(req))
                .await?
                .into()),
        }
    }

    /// `on-response(req, resp)`.
    pub(crate) async fn on_response(
        &self,
        store: &mut Store<HostState>,
        req: Resource<wit::Request>,
        resp: Resource<wit::ResponseView>,
    ) -> wasmtime::Result<wit::ResponseEdits> {
        match self {
            Self::V0_4(hooks) => Ok(hooks.on_response.call_async(store, (req, resp)).await?.0),
            Self::V0_3(guest) => Ok(guest
                .call_on_response(store, v0_3::handle(req), v0_3::handle(resp))
                .await?
                .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ContractVersion::{V0_3, V0_4};

    #[test]
    fn a_version_is_served_by_the_same_minor_at_this_patch_or_a_later_one() {
        assert!(V0_4.serves("0.4.0"));
        assert!(V0_4.serves("0.4.1"));
        assert!(
            !V0_4.serves("0.4.2"),
            "a later patch may use what this host lacks"
        );
        assert!(!V0_4.serves("0.3.0"));
        assert!(!V0_4.serves("1.4.0"));
        assert!(!V0_4.serves("0.4.1-rc.1"), "pre-releases match nothing");
        assert!(!V0_4.serves("0.4"));
        assert!(!V0_4.serves("0.4.1.0"));
        assert!(V0_3.serves("0.3.0"));
        assert!(!V0_3.serves("0.2.0"));
    }
}
