//! Reload: build a new generation beside the one serving and swap it in, from
//! SIGHUP, `POST /admin/reload` or a change to the configuration file or a
//! component it names (watched with `notify`, debounced).
//!
//! A reload that fails (unreadable or invalid TOML, a missing or invalid
//! component, a plugin rejecting its config) changes nothing: the old
//! generation keeps serving and the diagnostics are returned, logged and
//! counted (`pylon_reloads_total{result="failure"}`). Requests in flight
//! keep the generation they started with (they hold an `Arc`), so it is freed
//! when the last of them ends. Settings a generation cannot change —
//! listeners, `[admin]`, `[runtime]`, `[access-log]`, `[tracing]` — are
//! kept as they are and reported as warnings ("restart to apply"), except
//! a TLS listener's certificates and client CAs: those are reloaded with
//! the rest (new handshakes use them; open connections keep theirs), and a
//! certificate that does not load fails the whole reload.
//!
//! Nothing here holds a generation: the [`Reloader`] holds the swap cell
//! (always pointing at the current generation) and the watcher only a weak
//! reference to the reloader.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::{
    config::{self, Config, ConfigError, Diagnostic},
    generation::{Generation, Shared},
    plugin::CompileOrigin,
    telemetry::{
        metrics::{CertificateExpiry, ReloadResult},
        observe::Observability,
    },
    tls::server::ServerTls,
};

/// File changes closer together than this are one change.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// What a successful reload did.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// Settings that changed but need a restart to apply.
    pub warnings: Vec<String>,
    /// Components compiled by this reload (new or changed files).
    pub compiled: Vec<String>,
    /// Components reused from the compile caches.
    pub reused: Vec<String>,
    /// Route plugins whose configured snapshot this reload took (configure
    /// ran on an instrumented copy, which was read back and compiled), as
    /// `plugin@route`: a new or changed config, or a cache that lost it.
    /// The others came from the caches.
    pub snapshots_taken: Vec<String>,
    /// How long building the new generation took.
    pub took: Duration,
}

/// Owns the swap cell and performs reloads, one at a time.
pub struct Reloader {
    shared: Arc<Shared>,
    current: Arc<ArcSwap<Generation>>,
    config_path: Option<PathBuf>,
    obs: Arc<Observability>,
    lock: tokio::sync::Mutex<()>,
    ready: AtomicBool,
    tls: std::sync::OnceLock<Vec<TlsListener>>,
}

/// A TLS listener whose certificates a reload renews.
pub struct TlsListener {
    /// The listener's index in `[[listeners]]`.
    pub index: usize,
    /// The address it is bound to (the configured one may say port 0).
    pub address: std::net::SocketAddr,
    /// Its TLS state.
    pub tls: Arc<ServerTls>,
}

impl Reloader {
    /// A reloader for the generation in `current`.
    pub fn new(
        shared: Arc<Shared>,
        current: Arc<ArcSwap<Generation>>,
        config_path: Option<PathBuf>,
        obs: Arc<Observability>,
    ) -> Self {
        Self {
            shared,
            current,
            config_path,
            obs,
            lock: tokio::sync::Mutex::new(()),
            ready: AtomicBool::new(false),
            tls: std::sync::OnceLock::new(),
        }
    }

    /// The TLS listeners, in `[[listeners]]` order.
    pub fn tls_listeners(&self) -> &[TlsListener] {
        self.tls.get().map_or(&[], Vec::as_slice)
    }

    /// The TLS listeners to renew on reload (set once, at start).
    pub fn set_tls_listeners(&self, listeners: Vec<TlsListener>) {
        let _ = self.tls.set(listeners);
        self.publish_tls_certificates();
    }

    /// Hand what each TLS listener serves now to the expiry gauge.
    fn publish_tls_certificates(&self) {
        for l in self.tls_listeners() {
            let served = l
                .tls
                .certificates()
                .into_iter()
                .map(|c| CertificateExpiry {
                    name: c.names.into_iter().next().unwrap_or_default(),
                    sha256: c.sha256,
                    not_after: c.not_after_unix,
                })
                .collect();
            self.obs
                .metrics
                .set_tls_certificates(&l.address.to_string(), served);
        }
    }

    /// The generation in force.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Process-wide state (plugin engine, KV store, metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Metrics, access log and tracing.
    pub fn observability(&self) -> &Arc<Observability> {
        &self.obs
    }

    /// The configuration file, when started from one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// Whether the gateway serves (listeners bound, not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Mark the gateway ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Re-read the configuration file and swap in the new generation.
    pub async fn reload(&self) -> Result<ReloadReport, ConfigError> {
        let Some(path) = &self.config_path else {
            return Err(self.failed(ConfigError::single(Diagnostic {
                location: None,
                subject: None,
                message: "the gateway was not started from a file".into(),
            })));
        };
        match config::load(path) {
            Ok(config) => self.reload_with(config).await,
            Err(err) => Err(self.failed(err)),
        }
    }

    /// Build a generation for `config` beside the current one and swap it in.
    pub async fn reload_with(&self, config: Config) -> Result<ReloadReport, ConfigError> {
        let _one_at_a_time = self.lock.lock().await;
        let started = Instant::now();
        let old = self.current.load();
        let warnings = restart_needed(old.config(), &config);
        drop(old);
        let tls = match self.prepare_tls(&config) {
            Ok(tls) => tls,
            Err(err) => return Err(self.failed(err)),
        };
        let generation = match Generation::build(config, &self.shared).await {
            Ok(rt) => rt,
            Err(err) => return Err(self.failed(err)),
        };
        for (listener, prepared) in tls {
            listener.tls.swap(prepared);
        }
        self.publish_tls_certificates();
        let mut report = ReloadReport {
            warnings,
            took: started.elapsed(),
            ..ReloadReport::default()
        };
        for c in generation.components() {
            let list = match c.origin() {
                CompileOrigin::Compiled => &mut report.compiled,
                _ => &mut report.reused,
            };
            list.push(c.name().to_owned());
            for route in c.snapshots_taken() {
                report.snapshots_taken.push(format!("{}@{route}", c.name()));
            }
        }
        self.current.store(Arc::new(generation));
        self.obs.metrics.reload(ReloadResult::Success);
        for w in &report.warnings {
            tracing::warn!(warning = %w, "reload: setting not applied");
        }
        tracing::info!(
            took_ms = report.took.as_millis() as u64,
            compiled = ?report.compiled,
            snapshots_taken = ?report.snapshots_taken,
            "configuration reloaded"
        );
        Ok(report)
    }

    /// New TLS configs for every TLS listener that `config` still has, all
    /// built before anything is swapped (one bad certificate fails the
    /// reload, and no listener changes).
    fn prepare_tls<'a>(
        &'a self,
        config: &Config,
    ) -> Result<Vec<(&'a TlsListener, crate::tls::server::Prepared)>, ConfigError> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for listener in self.tls.get().into_iter().flatten() {
            let Some(settings) = config
                .listeners
                .get(listener.index)
                .and_then(|l| l.tls.as_ref().map(|t| (l, t)))
            else {
                continue;
            };
            match listener.tls.prepare(settings.1) {
                Ok(c) => out.push((listener, c)),
                Err(err) => problems.push(crate::tls::listener_problem(settings.0, &err)),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError {
                diagnostics: problems,
            })
        }
    }

    fn failed(&self, err: ConfigError) -> ConfigError {
        self.obs.metrics.reload(ReloadResult::Failure);
        tracing::error!(error = %err.to_string().trim_end(), "reload failed; the previous configuration keeps serving");
        err
    }
}

/// The settings of `new` that differ from `old` and cannot change without
/// a restart, as warnings.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |changed: bool, what: &str| {
        if changed {
            out.push(format!(
                "{what} changed; restart pylon to apply (the old setting stays in force)"
            ));
        }
    };
    // Certificates reload; turning TLS on or off does not.
    let without_tls = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| {
                let tls = l.tls.is_some();
                (
                    config::Listener {
                        tls: None,
                        ..l.clone()
                    },
                    tls,
                )
            })
            .collect::<Vec<_>>()
    };
    check(without_tls(old) != without_tls(new), "[[listeners]]");
    check(old.admin != new.admin, "[admin]");
    check(old.runtime != new.runtime, "[runtime]");
    check(old.access_log != new.access_log, "[access-log]");
    check(old.tracing != new.tracing, "[tracing]");
    out
}

/// Reloads when the configuration file or a component it names changes.
/// Dropping it stops watching.
pub struct FileWatcher {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileWatcher {
    /// Watch the folders of the configuration file and of every component
    /// (files are often replaced by rename, which a watch on the file
    /// itself would miss). Needs a reloader started from a file.
    pub fn start(reloader: &Arc<Reloader>) -> notify::Result<FileWatcher> {
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let _ = tx.send(event);
        })?;
        let mut state = WatchState {
            watcher,
            dirs: HashSet::new(),
            files: HashSet::new(),
        };
        state.update(reloader);
        let task = tokio::spawn(watch_loop(Arc::downgrade(reloader), state, rx));
        Ok(FileWatcher { task })
    }
}

struct WatchState {
    watcher: notify::RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
}

impl WatchState {
    /// Watch the config file and the components of the generation in force.
    fn update(&mut self, reloader: &Reloader) {
        let mut files = HashSet::new();
        if let Some(p) = reloader.config_path() {
            files.insert(normalize(p));
        }
        let generation = reloader.generation();
        for def in generation.config().plugins.values() {
            files.insert(normalize(&def.component));
        }
        for tls in generation
            .config()
            .listeners
            .iter()
            .filter_map(|l| l.tls.as_ref())
        {
            for c in &tls.certificates {
                files.insert(normalize(&c.cert));
                files.insert(normalize(&c.key));
            }
            if let Some(auth) = &tls.client_auth {
                files.insert(normalize(&auth.ca));
            }
        }
        for tls in generation
            .config()
            .upstreams
            .values()
            .filter_map(|u| u.tls.as_ref())
        {
            files.extend(tls.ca.iter().map(|p| normalize(p)));
            if let Some(c) = &tls.client_cert {
                files.insert(normalize(&c.cert));
                files.insert(normalize(&c.key));
            }
        }
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(err) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot watch for changes");
            }
        }
        self.dirs = dirs;
        self.files = files;
    }

    fn concerns(&self, event: &notify::Event) -> bool {
        let relevant_kind = matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any
        );
        relevant_kind
            && event
                .paths
                .iter()
                .any(|p| self.files.contains(&normalize(p)))
    }
}

/// An absolute path with its folder canonicalized (the file itself may be
/// missing or about to be replaced).
fn normalize(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .join(name),
        _ => abs,
    }
}

async fn watch_loop(
    reloader: Weak<Reloader>,
    mut state: WatchState,
    mut rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
) {
    while let Some(event) = rx.recv().await {
        match event {
            Ok(e) if state.concerns(&e) => {}
            Ok(_) => continue,
            Err(err) => {
                tracing::warn!(error = %err, "file watcher error");
                continue;
            }
        }
        // Let a burst of writes (an editor saving, a copy in chunks) settle.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        let Some(reloader) = reloader.upgrade() else {
            return;
        };
        tracing::info!("configuration or component changed; reloading");
        // Failures are logged and counted by the reloader.
        let _ = reloader.reload().await;
        state.update(&reloader);
    }
}
