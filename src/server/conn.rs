//! One client connection from accept to close, and the limits that keep a
//! client from holding the gateway (issues 15 and 22): connections per
//! listener, requests in flight per listener, requests and cancelled
//! requests per connection, and the timeouts of a connection that sends
//! nothing, sits idle, stops reading, or keeps a request open without
//! moving a byte.
//!
//! Each connection runs as one task that polls hyper's connection and, beside
//! it, a watchdog ([`drive`]). The watchdog sleeps until the earliest
//! deadline the connection's state allows and then either closes the
//! connection (dropping it closes the socket at once), asks hyper for a
//! graceful close (HTTP/1.1 `Connection: close`, HTTP/2 GOAWAY), or ends one
//! request. What it reads is written by three wrappers: [`WatchedIo`] around
//! the socket (bytes read, writes that make no progress), and around each
//! request's bodies ([`ActivityBody`] in, [`ResponseBody`] out), which note
//! when bytes last moved and whether a response returned data that the
//! connection has not come back for (the client's flow-control window is
//! closed). A connection stays on one worker thread, so the atomics here are
//! never contended; they only make the state shareable with hyper's tasks.
//!
//! Not here: body timeouts toward the upstream and upstream connection
//! limits (`crate::upstream`, `crate::body`), and the limits hyper enforces
//! itself (header sizes, the header read timeout, HTTP/2 frame and
//! pending-reset limits), which [`super`] configures.

mod bodies;
mod state;
#[cfg(test)]
mod tests;
mod watchdog;
mod watched_io;

pub(super) use self::{
    bodies::{ActivityBody, ResponseBody},
    state::{ConnState, LimitCounters, ListenerShared},
    watchdog::drive,
    watched_io::WatchedIo,
};
