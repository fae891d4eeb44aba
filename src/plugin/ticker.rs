//! The epoch ticker: bumps the engine's epoch while plugin calls run (the
//! clock of every plugin deadline, and of a CPU-bound call's yields to its
//! worker), faster while some call has run through a tick, and parks when
//! no call has for a while. Not here: what a store does at a tick
//! (`call::new_store`).

use std::{
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use wasmtime::Engine;

use crate::{sync::lock, workers::Striped};

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
/// the call got (see `call::new_store`).
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

#[cfg(test)]
mod tests {
    use wasmtime::Config;

    use super::*;

    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
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
