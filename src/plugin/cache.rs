//! The compile caches: a compiled component per content hash, in memory
//! (weakly held: dropped once no loaded plugin uses it) and on disk as
//! precompiled artefacts in a private directory. Load-time work only: the
//! caller runs it on a blocking thread.

use std::{
    collections::HashMap,
    fs,
    hash::{Hash, Hasher},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, component::Component};

use super::engine::Compiler;
use crate::sync::lock;

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
    compiler: Compiler,
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
    pub(crate) fn new(
        engine: &Engine,
        compiler: Compiler,
        dir: Option<PathBuf>,
    ) -> io::Result<Self> {
        if let Some(dir) = &dir {
            create_private_dir(dir)?;
            check_private(dir)?;
        }
        Ok(Self {
            engine: engine.clone(),
            compiler,
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
                let component = self.compile_now(bytes, path.as_deref())?;
                self.counters.compiled.fetch_add(1, Ordering::Relaxed);
                (component, CompileOrigin::Compiled)
            }
        };
        let cached = Arc::new(CachedComponent { component });
        *slot = Arc::downgrade(&cached);
        Ok((cached, origin))
    }

    /// Compile `bytes` (see `engine::Compiler`), store the artefact on disk
    /// when there is a cache directory, and load it as a cached one is.
    fn compile_now(&self, bytes: &[u8], path: Option<&Path>) -> Result<Component, CompileFailure> {
        let artefact = self.compiler.precompile(bytes).map_err(CompileFailure)?;
        if let Some(path) = path
            && self.store_on_disk(path, &artefact)
        {
            match deserialize_cached(&self.engine, path) {
                Ok(component) => return Ok(component),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %format!("{err:#}"), "cannot load the compile cache entry just written; using the compiled bytes");
                }
            }
        }
        deserialize_compiled(&self.engine, &artefact).map_err(CompileFailure)
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
    /// synced, then renamed over the final name; whether it was written.
    /// Failures only cost a recompile next time, so they are logged, not
    /// returned.
    fn store_on_disk(&self, path: &Path, bytes: &[u8]) -> bool {
        let result = (|| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let dir = path.parent().ok_or("cache path has no directory")?;
            let mut tmp = tempfile_in(dir)?;
            tmp.1.write_all(bytes)?;
            tmp.1.sync_all()?;
            drop(tmp.1);
            fs::rename(&tmp.0, path).inspect_err(|_| {
                let _ = fs::remove_file(&tmp.0);
            })?;
            Ok(())
        })();
        if let Err(err) = &result {
            tracing::warn!(path = %path.display(), error = %crate::error::ErrorChain(&**err), "cannot write compile cache entry");
        }
        result.is_ok()
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

/// Load what `engine::Compiler` just compiled, when it could not be
/// loaded from the disk cache (there is none, or writing it failed).
#[allow(unsafe_code)]
fn deserialize_compiled(engine: &Engine, artefact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `artefact` is the output of `Engine::precompile_component`,
    // made in this process a moment ago by an engine with this engine's
    // configuration (but for the instance allocator, which does not change
    // compiled code), and held in memory only since.
    unsafe { Component::deserialize(engine, artefact) }
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
    use wasmtime::Config;

    use super::*;

    #[test]
    fn cache_dir_is_created_private_and_a_shared_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let engine = Engine::new(&Config::new()).unwrap();
        let compiler = Compiler::new(Config::new());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/cache");
        ComponentCache::new(&engine, compiler.clone(), Some(dir.clone())).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ComponentCache::new(&engine, compiler, Some(dir.clone()))
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
}
