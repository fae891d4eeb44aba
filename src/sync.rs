//! Small synchronisation helpers shared by every layer.
//!
//! It sits below everything else and imports nothing from the crate, so any
//! module can use it without an arrow pointing up. Not for locks with a
//! policy of their own (timeouts, fairness): those belong to their owner.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock `m`, ignoring poisoning.
///
/// Every mutex in pylon guards data that stays consistent when a holder
/// panics (no update is left half-done across a panic point), so a poisoned
/// lock is as good as a clean one, and one panic must not turn every later
/// request into a second panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
