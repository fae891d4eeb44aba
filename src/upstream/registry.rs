//! What each target has shown (health, ejection, breaker, load, latency:
//! [`Live`]), kept across reloads: a configuration that lists a target
//! an earlier one listed takes over that target's state, so a reload never
//! sends traffic to a target just ejected or found dead, and never
//! forgets its latency. Keyed by upstream name and target `host:port`;
//! held weakly, so a target that no configuration lists any more is
//! forgotten once the last one that did is gone.
//!
//! One registry per gateway (in [`crate::generation::Shared`]), not per
//! process: gateways in one process (tests, benches) share nothing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use super::target::Live;
use crate::sync::lock;

/// The targets' states of every configuration of one gateway (a clone
/// is the same registry: each upstream keeps one to name the addresses
/// its host names resolve to later).
#[derive(Debug, Default, Clone)]
pub struct TargetRegistry {
    states: Arc<Mutex<States>>,
}

/// Each (upstream, target)'s state, while a configuration holds it.
type States = HashMap<(String, String), Weak<Live>>;

impl TargetRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of `target` of `upstream`: the one a live configuration
    /// holds, or a new one.
    pub(super) fn live(&self, upstream: &str, target: &str) -> Arc<Live> {
        let mut states = lock(&self.states);
        let key = (upstream.to_string(), target.to_string());
        if let Some(live) = states.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        // Forget the targets no configuration lists any more (bounded by
        // the targets configured, whatever the number of reloads).
        states.retain(|_, w| w.strong_count() > 0);
        let live = Arc::new(Live::new());
        states.insert(key, Arc::downgrade(&live));
        live
    }
}
