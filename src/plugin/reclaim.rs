//! Load-time work whose memory is given back to the system when it ends.
//!
//! Compiling a component (Cranelift, on wasmtime's parallel-compilation
//! threads) and snapshotting one (wizer, on a blocking thread) allocate
//! tens to hundreds of MiB that are free again once they finish; but the
//! allocator (mimalloc, the binary's global allocator) keeps freed pages in
//! the heap of the thread that used them, and rayon's and tokio's threads
//! live on. Measured: a gateway that compiled ten Rust plugins itself sat at
//! 115 MB resident, one that found them in the disk cache at 29 MB.
//!
//! So after each compile every thread of rayon's pool (where wasmtime
//! compiles in parallel) and the calling thread return their free pages,
//! and so does the thread that took a snapshot. Not for the request path:
//! it wakes every compile thread.

/// Links mimalloc's C library, which defines `mi_collect`, into every
/// binary built on this crate (tests and benchmarks use the system
/// allocator; there mimalloc's own heap is empty and the call is a no-op).
use mimalloc as _;

#[allow(unsafe_code)]
mod ffi {
    unsafe extern "C" {
        /// mimalloc: free what the calling thread's heap no longer uses
        /// and, with `force`, return every arena page waiting to be
        /// purged to the system now rather than after its delay.
        pub(super) safe fn mi_collect(force: bool);
    }
}

/// Return the calling thread's free heap pages (and every arena's pending
/// purges) to the system.
pub(crate) fn give_back() {
    ffi::mi_collect(true);
}

/// Run `compile` (which may use wasmtime's parallel compilation, on
/// rayon's global pool), then have every thread that took part give the
/// pages it freed back to the system.
///
/// The pool's threads are kept, not replaced by a pool per compile: a
/// thread that exits leaves the pages it still shares with live objects
/// abandoned, and mimalloc does not return those when the objects are
/// freed later from another thread (measured: a pool per compile kept
/// 89 MB after ten compiles, the global pool collected afterwards 53 MB).
pub(crate) fn compile<R>(compile: impl FnOnce() -> R) -> R {
    let out = compile();
    rayon::broadcast(|_| give_back());
    give_back();
    out
}
