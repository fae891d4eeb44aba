//! [`PluginLoadError`]: why a plugin could not be loaded or configured.
//! Every variant names the plugin, and the route where one is involved.
//! Causes are in `source()`, never repeated in the message.

use std::path::PathBuf;

use crate::pipeline::PluginError;

/// Why the plugin runtime, a plugin, or a plugin on a route failed to load.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    /// The Wasm engine could not be created from the runtime settings.
    #[error("cannot create the WebAssembly engine")]
    Engine {
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The compile cache directory could not be created.
    #[error("cannot use compile cache directory {}", path.display())]
    CacheDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The component file could not be read.
    #[error("plugin \"{plugin}\": cannot read component {}", path.display())]
    Read {
        /// The plugin's name.
        plugin: String,
        /// The component file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid component, or does not fit the runtime's limits.
    #[error("plugin \"{plugin}\": cannot compile component {}", path.display())]
    Compile {
        /// The plugin's name.
        plugin: String,
        /// The component file.
        path: PathBuf,
        /// Why (wasmtime's validation or compilation error).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The task compiling the component panicked (or was cancelled): the
    /// load fails with this, the process goes on.
    #[error("plugin \"{plugin}\": compiling its component failed unexpectedly: {detail}")]
    CompilePanicked {
        /// The plugin's name.
        plugin: String,
        /// The panic's message.
        detail: String,
    },
    /// The component does not export `pylon:plugin/guest` at a contract
    /// version the host serves, or not with the expected functions.
    #[error("plugin \"{plugin}\": {} is not a pylon plugin: {detail}", path.display())]
    NotAPlugin {
        /// The plugin's name.
        plugin: String,
        /// The component file.
        path: PathBuf,
        /// What is missing or wrong.
        detail: String,
    },
    /// The component is a plugin built against a contract version this
    /// host does not serve: one the support policy dropped (see the
    /// README), or a newer one.
    #[error(
        "plugin \"{plugin}\": {} was built against pylon:plugin@{found}, which this host does \
         not serve: rebuild it against {rebuild_against}",
        path.display()
    )]
    UnsupportedContract {
        /// The plugin's name.
        plugin: String,
        /// The component file.
        path: PathBuf,
        /// The version of `pylon:plugin/guest` it exports.
        found: String,
        /// The versions served, newest first, joined by `or`.
        rebuild_against: String,
    },
    /// The component imports something the host does not provide.
    #[error("plugin \"{plugin}\": component imports what the host does not provide")]
    Link {
        /// The plugin's name.
        plugin: String,
        /// wasmtime's error, naming the import.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No instance could be created to configure the plugin on a route.
    #[error("route \"{route}\", plugin \"{plugin}\": cannot instantiate")]
    Instantiate {
        /// The route's id.
        route: String,
        /// The plugin's name.
        plugin: String,
        /// Why.
        #[source]
        source: PluginError,
    },
    /// `configure` failed (trap, deadline, memory) instead of answering.
    #[error("route \"{route}\", plugin \"{plugin}\": configure failed")]
    Configure {
        /// The route's id.
        route: String,
        /// The plugin's name.
        plugin: String,
        /// Why.
        #[source]
        source: PluginError,
    },
    /// The configured state cannot be captured at load, so new instances
    /// would have to call `configure` on the request path: refused.
    #[error(
        "route \"{route}\", plugin \"{plugin}\": cannot be configured off the request path \
         (its configured state cannot be captured at load)"
    )]
    NotConfigurableAtLoad {
        /// The route's id.
        route: String,
        /// The plugin's name.
        plugin: String,
        /// Why the snapshot failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// `configure` returned an error: the plugin rejects its configuration.
    #[error("route \"{route}\", plugin \"{plugin}\": config rejected: {message}")]
    ConfigRejected {
        /// The route's id.
        route: String,
        /// The plugin's name.
        plugin: String,
        /// The plugin's own message.
        message: String,
    },
}

impl PluginLoadError {
    /// The failure of a compile task that did not return.
    pub fn compile_panicked(plugin: &str, join: tokio::task::JoinError) -> Self {
        let detail = if join.is_panic() {
            let panic = join.into_panic();
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .map_or_else(|| "panicked".to_owned(), |m| format!("panicked: {m}"))
        } else {
            "cancelled".to_owned()
        };
        PluginLoadError::CompilePanicked {
            plugin: plugin.to_owned(),
            detail,
        }
    }

    /// The plugin concerned, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            PluginLoadError::Engine { .. } | PluginLoadError::CacheDir { .. } => None,
            PluginLoadError::Read { plugin, .. }
            | PluginLoadError::Compile { plugin, .. }
            | PluginLoadError::CompilePanicked { plugin, .. }
            | PluginLoadError::NotAPlugin { plugin, .. }
            | PluginLoadError::UnsupportedContract { plugin, .. }
            | PluginLoadError::Link { plugin, .. }
            | PluginLoadError::Instantiate { plugin, .. }
            | PluginLoadError::Configure { plugin, .. }
            | PluginLoadError::NotConfigurableAtLoad { plugin, .. }
            | PluginLoadError::ConfigRejected { plugin, .. } => Some(plugin),
        }
    }

    /// The route concerned, if any.
    pub fn route(&self) -> Option<&str> {
        match self {
            PluginLoadError::Instantiate { route, .. }
            | PluginLoadError::Configure { route, .. }
            | PluginLoadError::NotConfigurableAtLoad { route, .. }
            | PluginLoadError::ConfigRejected { route, .. } => Some(route),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_compile_task_becomes_a_load_error() {
        let join = tokio::task::spawn_blocking(|| -> () { panic!("cranelift fell over") })
            .await
            .unwrap_err();
        let err = PluginLoadError::compile_panicked("p", join);
        assert_eq!(
            err.to_string(),
            "plugin \"p\": compiling its component failed unexpectedly: panicked: cranelift fell over"
        );
        assert_eq!(err.plugin(), Some("p"));
    }
}
