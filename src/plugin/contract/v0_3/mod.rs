//! `pylon:plugin@0.3.0`, the previous contract, served beside the current
//! one so plugins built against it keep loading (the support policy: the
//! current contract and the previous one, see the README).
//!
//! 0.3.0 differs from 0.4.0 only in `needs`, which has no fixed header
//! edits. Its resources are the same, so its hooks get the same lent
//! handles; its imports are served by the current implementation through
//! adapters (`host`), and its types convert field by field (`convert`).

mod bindings;
mod convert;
mod host;

pub(super) use bindings::{Plugin, PluginPre, exports::pylon::plugin::guest::Guest};
pub(super) use convert::handle;
pub(super) use host::add_to_linker;
