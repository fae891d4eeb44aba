//! The process's one Wasm [`Engine`]: component model, epoch interruption,
//! and the pooling allocator sized from the `[runtime]` settings; and the
//! [`Compiler`] that makes code for it.
//!
//! Load time only. Not here: the epoch ticker (`ticker`) and the compile
//! caches (`cache`).

use std::sync::{Arc, Mutex, Weak};

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::config::ProcessSettings;

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
pub(crate) fn build_engine(settings: &ProcessSettings) -> wasmtime::Result<(Engine, Compiler)> {
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
) -> wasmtime::Result<(Engine, Compiler)> {
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_reservation(reservation)
        .memory_guard_size(guard)
        .memory_reservation_for_growth(0);
    // How instances are allocated does not change compiled code (wasmtime's
    // `PoolingAllocationConfig` docs), so the compiler needs no pool.
    let compiler = Compiler::new(config.clone());
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
        settings, max_memory,
    )));
    if std::env::var_os("PYLON_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Ok((Engine::new(&config)?, compiler))
}

/// The pooling allocator: `settings.max_instances` component instances,
/// linear memories of at most `max_memory` bytes.
fn pool(settings: &ProcessSettings, max_memory: usize) -> PoolingAllocationConfig {
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
    pool
}

/// Compiles components for the serving engine on an engine of its own,
/// which lives only while compiles are in progress.
///
/// Why: an engine keeps one Cranelift context per function compiled at
/// once, for reuse, as long as it lives, each grown to the largest
/// function it has compiled. Kept in the serving engine, they were most of
/// the memory a gateway that compiled its plugins held over one that
/// loaded them from the disk cache (ten Rust plugins: ~35 MB more). The
/// compiling engine has the serving engine's configuration but for the
/// instance allocator, so what it compiles loads into the serving engine
/// as if from the disk cache; concurrent compiles share it, and the last
/// one to finish drops it.
#[derive(Clone)]
pub(crate) struct Compiler {
    config: Config,
    engine: Arc<Mutex<Weak<Engine>>>,
}

impl Compiler {
    /// A compiler for an engine of `config` (its instance allocator aside).
    pub(crate) fn new(config: Config) -> Self {
        Self {
            config,
            engine: Arc::default(),
        }
    }

    /// Compile a component: the bytes of a precompiled artefact for the
    /// serving engine (`Component::deserialize` loads them).
    pub(crate) fn precompile(&self, component: &[u8]) -> wasmtime::Result<Vec<u8>> {
        let engine = self.engine()?;
        engine.precompile_component(component)
    }

    /// The compiling engine: the one in use, or a new one.
    fn engine(&self) -> wasmtime::Result<Arc<Engine>> {
        let mut slot = crate::sync::lock(&self.engine);
        if let Some(engine) = slot.upgrade() {
            return Ok(engine);
        }
        let engine = Arc::new(Engine::new(&self.config)?);
        *slot = Arc::downgrade(&engine);
        Ok(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component: its preamble (magic, version 13, layer 1).
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn the_compiling_engine_lives_only_while_a_compile_runs() {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let compiler = Compiler::new(config.clone());
        let artefact = compiler.precompile(EMPTY_COMPONENT).unwrap();
        assert!(
            crate::sync::lock(&compiler.engine).upgrade().is_none(),
            "the engine and its Cranelift contexts are gone once the compile is"
        );
        // What it compiled loads into an engine of the same configuration
        // with the pooling allocator, as the serving engine has.
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::new(),
        ));
        let serving = Engine::new(&config).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: the artefact was made just above by `precompile`.
        let loaded = unsafe { wasmtime::component::Component::deserialize(&serving, &artefact) };
        loaded.unwrap();
    }
}
