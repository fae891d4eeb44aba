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

use wasmtime::{
    Engine, Store,
    component::{Component, Instance as ComponentInstance, InstancePre, Linker, Resource},
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
    V0_4(current::PluginPre<HostState>),
    V0_3(v0_3::PluginPre<HostState>),
}

impl GuestPre {
    /// Check `pre` exports `version`'s guest interface and bind it.
    pub(crate) fn new(
        version: ContractVersion,
        pre: InstancePre<HostState>,
    ) -> wasmtime::Result<Self> {
        match version {
            ContractVersion::V0_4 => current::PluginPre::new(pre).map(GuestPre::V0_4),
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
            GuestPre::V0_4(pre) => pre.engine(),
            GuestPre::V0_3(pre) => pre.engine(),
        }
    }

    /// A new instance in `store`, and its `guest` export.
    pub(crate) async fn instantiate(
        &self,
        store: &mut Store<HostState>,
    ) -> wasmtime::Result<Guest> {
        Ok(match self {
            GuestPre::V0_4(pre) => Guest::V0_4(
                pre.instantiate_async(store)
                    .await?
                    .pylon_plugin_guest()
                    .clone(),
            ),
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
    V0_4(current::exports::pylon::plugin::guest::Guest),
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
                    .clone(),
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
            Self::V0_4(guest) => guest.call_configure(store, config_json).await,
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
            Self::V0_4(guest) => guest.call_on_request(store, req).await,
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
            Self::V0_4(guest) => guest.call_on_response(store, req, resp).await,
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
