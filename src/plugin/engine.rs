//! The process's one Wasm [`Engine`], its epoch ticker, and the compile
//! caches (in memory by content hash, on disk as precompiled artefacts).
//!
//! Everything here runs at load time: compiling is CPU work the caller puts
//! on a blocking thread. Nothing here is on the request path except the
//! epoch counter the ticker bumps.

use std::{
    collections::HashMap,
    fs,
    hash::{Hash, Hasher},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use sha2::{Digest, Sha256};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::{config::ProcessSettings, sync::lock, workers::Striped};

/// How often the epoch advances: the resolution of plugin deadlines (a
/// call is stopped between its deadline and one tick later). Every tick is
/// a thread wake-up, which on a small VM cost about 15 µs of CPU: at 1 ms
/// the ticker took 2% of the gateway's CPU under load (perf, the policies
/// pipeline), at 5 ms a fifth of that, for deadlines that default to 100 ms.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(5);
/// The tick while some call has already run through a tick: a guest call
/// yields to its worker's other tasks at every tick, so this bounds how
/// long a CPU-bound plugin holds a worker at a time. Short calls (nearly
/// all) never see a tick and keep the cheap 5 ms rhythm.
pub(crate) const LONG_CALL_TICK: Duration = Duration::from_millis(1);

/// Core instances the pool provisions per component instance, on average:
/// a Rust `wasm32-wasip2` plugin has a few (its module, shim and fixup
/// modules); interpreters built with componentize-py or a WASI adapter more.
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
/// Linear memories provisioned per component instance, on average: Rust
/// and componentize-py components have one, adapter-based C components two.
const MEMORIES_PER_COMPONENT: u32 = 2;
/// Tables provisioned per component instance (the plugins here have two).
const TABLES_PER_COMPONENT: u32 = 4;
/// Hard caps for one component, so one odd component cannot drain the pool.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MAX_MEMORIES_PER_COMPONENT: u32 = 16;
const MAX_TABLES_PER_COMPONENT: u32 = 32;
/// Interpreters' function tables are large (the componentize-py CPython
/// component starts with about 5,700 entries).
const TABLE_ELEMENTS: usize = 64 * 1024;
/// A linear memory slot with 4 GiB of address space and this guard after
/// it lets Cranelift drop the bounds check of every load and store whose
/// static offset is below the guard (measured: the guest part of a call,
/// a quarter of it in some plugins, was paying for these checks).
const FULL_RESERVATION: u64 = 4 << 30;
const FULL_GUARD_BYTES: u64 = 32 << 20;
/// Full slots are used while all of them together take at most this much
/// address space (a quarter of x86-64's 128 TiB): 1,000 instances (2,000
/// slots) take 8 TiB. A larger pool, or a machine that refuses that much,
/// gets slots sized to the memory cap instead.
const FULL_RESERVATION_BUDGET: u64 = 32 << 40;
/// Guard pages after a slot sized to the memory cap, where bounds checks
/// are explicit; this lets Cranelift fold checks of nearby offsets.
const MEMORY_GUARD_BYTES: u64 = 2 << 20;
const WASM_PAGE: usize = 64 * 1024;
/// Dirty linear memory reset by hand (not `madvise`) when an instance is freed.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// Build the engine: component model, epoch interruption, and the pooling
/// allocator sized from `settings`.
///
/// Sizing: every linear memory slot reserves 4 GiB plus a 32 MiB guard of
/// address space, so that compiled code needs no explicit bounds checks,
/// while that fits [`FULL_RESERVATION_BUDGET`] and the system grants it;
/// else `max_memory_bytes` (rounded up to a Wasm page) plus a 2 MiB guard,
/// with explicit checks. Nothing is committed until touched.
pub(crate) fn build_engine(settings: &ProcessSettings) -> wasmtime::Result<Engine> {
    let instances = settings.max_instances.max(1);
    let max_memory = settings
        .max_memory_bytes
        .max(WASM_PAGE)
        .next_multiple_of(WASM_PAGE);
    let slots = u64::from(instances) * u64::from(MEMORIES_PER_COMPONENT);
    let full = FULL_RESERVATION.max(max_memory as u64);
    if slots.saturating_mul(full + FULL_GUARD_BYTES) <= FULL_RESERVATION_BUDGET {
        match engine_with(settings, max_memory, full, FULL_GUARD_BYTES) {
            Ok(engine) => return Ok(engine),
            Err(err) => tracing::warn!(
                error = %err,
                "4 GiB linear memory slots refused; sizing them to the memory cap (with bounds checks)"
            ),
        }
    }
    engine_with(settings, max_memory, max_memory as u64, MEMORY_GUARD_BYTES)
}

fn engine_with(
    settings: &ProcessSettings,
    max_memory: usize,
    reservation: u64,
    guard: u64,
) -> wasmtime::Result<Engine> {
    let instances = settings.max_instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(instances)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memories_per_module(2)
        .max_tables_per_module(4)
        .table_elements(TABLE_ELEMENTS)
        .max_component_instance_size(16 << 20)
        .max_core_instance_size(4 << 20)
        .max_memory_size(max_memory)
        // When an instance is freed, reset the pages it dirtied by hand
        // (found with Linux's PAGEMAP_SCAN where available) instead of
        // `madvise`: the next instance in the slot then takes no page faults
        // and no TLB shootdown happens. Past these sizes, `madvise` as usual.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(64 * 1024);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_reservation(reservation)
        .memory_guard_size(guard)
        .memory_reservation_for_growth(0)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if std::env::var_os("PYLON_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&config)
}

/// Ticks without a plugin call before the ticker parks its thread.
const IDLE_TICKS_BEFORE_PARKING: u32 = 20;

/// Bumps the engine's epoch every [`EPOCH_TICK`] on a small thread while
/// plugin calls happen, and parks the thread when none has for
/// [`IDLE_TICKS_BEFORE_PARKING`] ticks (an idle gateway then wakes no core
/// two hundred times a second). Every call holds a [`CallGuard`], which
/// wakes the ticker if it is parked. Stops when dropped.
pub(crate) struct EpochTicker {
    shared: Arc<TickerState>,
    thread: Option<JoinHandle<()>>,
}

struct TickerState {
    /// Per worker, so that calls on different cores touch different lines.
    calls: Striped<CallCounts>,
    /// Calls that have run through at least one tick (see [`LongCall`]).
    long_calls: AtomicUsize,
    parked: AtomicBool,
    stop: AtomicBool,
}

#[derive(Default)]
struct CallCounts {
    in_flight: AtomicUsize,
    started: AtomicU64,
}

impl TickerState {
    fn in_flight(&self) -> usize {
        self.calls
            .iter()
            .map(|c| c.in_flight.load(Ordering::SeqCst))
            .sum()
    }

    fn started(&self) -> u64 {
        self.calls
            .iter()
            .map(|c| c.started.load(Ordering::Relaxed))
            .sum()
    }
}

/// Keeps the epoch ticking for the duration of one call.
pub(crate) struct CallGuard<'a>(&'a CallCounts);

/// Makes the ticker tick every [`LONG_CALL_TICK`] while held: taken by a
/// call at its first tick, dropped when the call ends, with the CPU slot
/// the call got (see `instance::new_store`).
pub(crate) struct LongCall {
    ticker: Arc<TickerState>,
    slot: CpuSlot,
}

/// Where a long call's CPU slot lands once granted.
pub(crate) type CpuSlot = Arc<Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>;

impl LongCall {
    pub(crate) fn slot(&self) -> CpuSlot {
        self.slot.clone()
    }
}

impl Drop for LongCall {
    fn drop(&mut self) {
        self.ticker.long_calls.fetch_sub(1, Ordering::SeqCst);
        lock(&self.slot).take();
    }
}

/// Hands out [`LongCall`]s; kept by each store's epoch callback.
#[derive(Clone)]
pub(crate) struct LongCalls(Arc<TickerState>);

impl LongCalls {
    pub(crate) fn start(&self) -> LongCall {
        self.0.long_calls.fetch_add(1, Ordering::SeqCst);
        LongCall {
            ticker: self.0.clone(),
            slot: CpuSlot::default(),
        }
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> io::Result<Self> {
        let shared = Arc::new(TickerState {
            calls: Striped::default(),
            long_calls: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let state = shared.clone();
        let engine = engine.clone();
        let thread = std::thread::Builder::new()
            .name("pylon-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0;
                let mut last_started = state.started();
                while !state.stop.load(Ordering::SeqCst) {
                    if idle_ticks >= IDLE_TICKS_BEFORE_PARKING {
                        // Either a call sees `parked` and unparks us, or we
                        // see its `in_flight` and do not park (all SeqCst).
                        state.parked.store(true, Ordering::SeqCst);
                        if state.in_flight() == 0 && !state.stop.load(Ordering::SeqCst) {
                            std::thread::park();
                        }
                        state.parked.store(false, Ordering::SeqCst);
                        idle_ticks = 0;
                        continue;
                    }
                    let tick = if state.long_calls.load(Ordering::SeqCst) > 0 {
                        LONG_CALL_TICK
                    } else {
                        EPOCH_TICK
                    };
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    let started = state.started();
                    if started == last_started && state.in_flight() == 0 {
                        idle_ticks += 1;
                    } else {
                        idle_ticks = 0;
                        last_started = started;
                    }
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// What a store's epoch callback uses to mark its call as long.
    pub(crate) fn long_calls(&self) -> LongCalls {
        LongCalls(self.shared.clone())
    }

    /// Register a call into Wasm; the epoch advances until the guard drops.
    pub(crate) fn call(&self) -> CallGuard<'_> {
        let s = &*self.shared;
        let counts = s.calls.local();
        counts.in_flight.fetch_add(1, Ordering::SeqCst);
        counts.started.fetch_add(1, Ordering::Relaxed);
        if s.parked.load(Ordering::SeqCst)
            && let Some(t) = &self.thread
        {
            t.thread().unpark();
        }
        CallGuard(counts)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Where a compiled component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileOrigin {
    /// Compiled by Cranelift just now.
    Compiled,
    /// Loaded from the disk cache (compiled by an earlier run).
    DiskCache,
    /// Already in memory (another plugin or an earlier load had it).
    MemoryCache,
}

/// A compiled component shared by every plugin definition using the same bytes.
pub(crate) struct CachedComponent {
    pub(crate) component: wasmtime::component::Component,
}

type Slot = Arc<Mutex<Weak<CachedComponent>>>;

/// sha256(bytes) → compiled component, in memory (weakly: a component no
/// loaded plugin uses is dropped) and on disk.
pub(crate) struct ComponentCache {
    engine: Engine,
    dir: Option<PathBuf>,
    engine_hash: String,
    slots: Mutex<HashMap<[u8; 32], Slot>>,
    counters: CacheCounters,
}

/// How often each cache level answered.
#[derive(Default)]
pub(crate) struct CacheCounters {
    pub(crate) compiled: AtomicU64,
    pub(crate) disk_hits: AtomicU64,
    pub(crate) memory_hits: AtomicU64,
}

/// A component compile that failed, with the reason.
pub(crate) struct CompileFailure(pub(crate) wasmtime::Error);

impl ComponentCache {
    /// A cache for `engine`; with a `dir`, compiled artefacts persist there.
    /// The directory is created if missing.
    pub(crate) fn new(engine: &Engine, dir: Option<PathBuf>) -> io::Result<Self> {
        if let Some(dir) = &dir {
            create_private_dir(dir)?;
            check_private(dir)?;
        }
        Ok(Self {
            engine: engine.clone(),
            dir,
            engine_hash: engine_compat_hash(engine),
            slots: Mutex::new(HashMap::new()),
            counters: CacheCounters::default(),
        })
    }

    pub(crate) fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    /// The disk cache file for a component with this content hash.
    pub(crate) fn cache_path(&self, sha256: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!(
            "{}-{}.cwasm",
            hex::encode(sha256),
            self.engine_hash
        )))
    }

    /// [`Self::get_or_compile`] for bytes whose hash the caller has no
    /// other use for.
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<Arc<CachedComponent>, CompileFailure> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        self.get_or_compile(&sha256, bytes)
            .map(|(component, _)| component)
    }

    /// The compiled component for `bytes`, from memory, disk, or Cranelift.
    /// Blocking: compiling a large component takes seconds.
    pub(crate) fn get_or_compile(
        &self,
        sha256: &[u8; 32],
        bytes: &[u8],
    ) -> Result<(Arc<CachedComponent>, CompileOrigin), CompileFailure> {
        let slot = self.slot(sha256);
        // One compile per content hash at a time; concurrent loads of the
        // same bytes wait for the first and share its result.
        let mut slot = lock(&slot);
        if let Some(cached) = slot.upgrade() {
            self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((cached, CompileOrigin::MemoryCache));
        }
        let path = self.cache_path(sha256);
        let (component, origin) = match path.as_deref().and_then(|p| self.load_from_disk(p)) {
            Some(component) => {
                self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
                (component, CompileOrigin::DiskCache)
            }
            None => {
                let component = wasmtime::component::Component::from_binary(&self.engine, bytes)
                    .map_err(CompileFailure)?;
                self.counters.compiled.fetch_add(1, Ordering::Relaxed);
                if let Some(path) = &path {
                    self.store_on_disk(path, &component);
                }
                (component, CompileOrigin::Compiled)
            }
        };
        let cached = Arc::new(CachedComponent { component });
        *slot = Arc::downgrade(&cached);
        Ok((cached, origin))
    }

    /// The compiled component cached under `key`, from memory or disk, if
    /// there is one; compiles nothing. For entries keyed by what produced
    /// them rather than by their bytes (snapshots).
    pub(crate) fn lookup(&self, key: &[u8; 32]) -> Option<Arc<CachedComponent>> {
        let slot = self.slot(key);
        let mut slot = lock(&slot);
        if let Some(cached) = slot.upgrade() {
            self.counters.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Some(cached);
        }
        let component = self.load_from_disk(&self.cache_path(key)?)?;
        self.counters.disk_hits.fetch_add(1, Ordering::Relaxed);
        let cached = Arc::new(CachedComponent { component });
        *slot = Arc::downgrade(&cached);
        Some(cached)
    }

    /// The slot of `key`, after forgetting keys whose component nobody
    /// holds any more.
    fn slot(&self, key: &[u8; 32]) -> Slot {
        let mut slots = lock(&self.slots);
        slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1 || slot.try_lock().map_or(true, |w| w.strong_count() > 0)
        });
        slots.entry(*key).or_default().clone()
    }

    fn load_from_disk(&self, path: &Path) -> Option<wasmtime::component::Component> {
        if !path.is_file() {
            return None;
        }
        if let Err(err) = check_private(path) {
            // Not loaded: it is recompiled and the entry replaced (the
            // directory itself is ours, checked at start).
            tracing::warn!(error = %err, "refusing compile cache entry; recompiling");
            return None;
        }
        match deserialize_cached(&self.engine, path) {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %format!("{err:#}"), "ignoring unusable compile cache entry; recompiling");
                let _ = fs::remove_file(path);
                None
            }
        }
    }

    /// Write the artefact atomically: a temp file in the same directory,
    /// synced, then renamed over the final name. Failures only cost a
    /// recompile next time, so they are logged, not returned.
    fn store_on_disk(&self, path: &Path, component: &wasmtime::component::Component) {
        let result = (|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let bytes = component.serialize()?;
            let dir = path.parent().ok_or("cache path has no directory")?;
            let mut tmp = tempfile_in(dir)?;
            tmp.1.write_all(&bytes)?;
            tmp.1.sync_all()?;
            drop(tmp.1);
            fs::rename(&tmp.0, path).inspect_err(|_| {
                let _ = fs::remove_file(&tmp.0);
            })?;
            Ok(())
        })();
        if let Err(err) = result {
            tracing::warn!(path = %path.display(), error = %crate::error::ErrorChain(&*err), "cannot write compile cache entry");
        }
    }
}

/// Create a uniquely named temp file in `dir` (no extra dependency needed:
/// pid + counter + time make the name unique, `create_new` makes sure).
fn tempfile_in(dir: &Path) -> io::Result<(PathBuf, fs::File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!(".tmp-{}-{n}-{nanos}.cwasm", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Create the cache directory (and missing parents) readable and writable
/// by this user only.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Refuse a cache directory or entry another user could have written: it
/// must belong to this process's user and not be writable by group or
/// others (a symlinked entry is refused too). Compiled components are
/// native code loaded without verification, so whoever can write them runs
/// code inside the gateway. The error names the path.
pub(crate) fn check_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}: {why}", path.display()),
        )
    };
    let meta = if path.is_dir() {
        fs::metadata(path)?
    } else {
        fs::symlink_metadata(path)?
    };
    if meta.file_type().is_symlink() {
        return Err(refuse("is a symbolic link".into()));
    }
    // The owner of `/proc/self` is the process's effective user.
    if let Ok(me) = fs::metadata("/proc/self").map(|m| m.uid())
        && meta.uid() != me
    {
        return Err(refuse(format!(
            "owned by uid {}, not by this process's uid {me}",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "writable by group or others (mode {mode:o}); compiled plugins are trusted native code: chmod go-w it"
        )));
    }
    Ok(())
}

/// Load a precompiled component from the disk cache.
///
/// `Component::deserialize_file` is `unsafe` because a crafted or corrupted
/// artefact is native code that wasmtime trusts without verification.
#[allow(unsafe_code)]
fn deserialize_cached(
    engine: &Engine,
    path: &Path,
) -> wasmtime::Result<wasmtime::component::Component> {
    // SAFETY: the file is in the cache directory, which only this gateway
    // writes, and only with the output of `Component::serialize` for this
    // engine configuration (the name carries the engine's compatibility
    // hash; wasmtime also checks the header and rejects artefacts of another
    // version or configuration). Entries appear atomically (temp file, fsync,
    // rename) so a reader never sees a partial file, and are never modified
    // in place afterwards, so the mapping cannot change under us. A broken
    // entry that wasmtime detects is deleted and recompiled by the caller.
    unsafe { wasmtime::component::Component::deserialize_file(engine, path) }
}

/// A stable hex digest of everything that makes compiled code of one engine
/// usable by another (wasmtime version, target, compiler settings).
fn engine_compat_hash(engine: &Engine) -> String {
    struct Sha256Hasher(Sha256);
    impl Hasher for Sha256Hasher {
        fn finish(&self) -> u64 {
            // Only `write` is used; the digest is read from the inner state.
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&hasher.0.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn cache_dir_is_created_private_and_a_shared_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let engine = Engine::new(&Config::new()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/cache");
        ComponentCache::new(&engine, Some(dir.clone())).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ComponentCache::new(&engine, Some(dir.clone()))
            .err()
            .expect("a world-writable cache dir is refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(
            err.to_string().contains(&dir.display().to_string()),
            "{err}"
        );
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let entry = dir.join("x.cwasm");
        fs::write(&entry, b"not a component").unwrap();
        fs::set_permissions(&entry, fs::Permissions::from_mode(0o666)).unwrap();
        assert!(check_private(&entry).is_err());
        fs::set_permissions(&entry, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_private(&entry).is_ok());
    }

    #[test]
    fn ticker_parks_when_idle_and_keeps_ticking_while_a_call_runs() {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).unwrap();
        let ticker = EpochTicker::start(&engine).unwrap();
        let parked = || ticker.shared.parked.load(Ordering::SeqCst);
        eventually("parked while idle", parked);
        {
            let _call = ticker.call();
            eventually("woken by a call", || !parked());
            // A call longer than the idle threshold keeps it awake.
            std::thread::sleep(EPOCH_TICK * (IDLE_TICKS_BEFORE_PARKING * 2));
            assert!(!parked(), "parked during a call");
        }
        eventually("parked again after the call", parked);
        drop(ticker); // joins the thread: must not hang while parked
    }
}
