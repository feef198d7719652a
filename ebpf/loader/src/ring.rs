//! Reading a ring buffer from async code, the same way for every collector.
//!
//! [`AsyncRing`] registers a ring buffer's fd with tokio's reactor. A collector drains it in
//! bounded passes ([`AsyncRing::pass`]: each record is handed over where it lies in the ring,
//! without a copy, and its slot is released as soon as the handler returns), sends what it
//! made, then waits ([`AsyncRing::wait`]) until the programs wake the reader, its own timer
//! comes due, or it is told to stop.

use std::future::Future;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// A ring buffer registered with tokio's reactor.
pub struct AsyncRing {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl std::fmt::Debug for AsyncRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRing").finish_non_exhaustive()
    }
}

/// What one [`AsyncRing::pass`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Records handed over.
    pub read: usize,
    /// Whether the ring was seen empty: every record written before the pass started was read.
    pub drained: bool,
}

/// Why [`AsyncRing::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The programs woke the reader, or the deadline passed: read again.
    Read,
    /// The cancellation future completed: stop.
    Cancelled,
}

#[allow(
    unsafe_code,
    reason = "tokio's AsyncFd::register is unsafe: the caller promises the fd stays open"
)]
fn register(ring: RingBuf<MapData>) -> std::io::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the RingBuf owns its map fd and closes it only when dropped, which happens
    // after AsyncFd deregisters it (AsyncFd drops its registration before its inner value).
    unsafe { AsyncFd::register(ring) }.map_err(std::io::Error::from)
}

impl AsyncRing {
    /// Registers `ring` with the current tokio runtime's reactor.
    ///
    /// # Errors
    /// The reactor refused the fd (no runtime with I/O enabled, or the fd is unusable).
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<AsyncRing> {
        Ok(AsyncRing {
            fd: register(ring)?,
        })
    }

    /// Hands up to `max` records to `each`, oldest first.
    pub fn pass(&mut self, max: usize, mut each: impl FnMut(&[u8])) -> Pass {
        let ring = self.fd.get_mut();
        let mut read = 0;
        while read < max {
            let Some(item) = ring.next() else {
                return Pass {
                    read,
                    drained: true,
                };
            };
            read += 1;
            each(&item);
        }
        Pass {
            read,
            drained: false,
        }
    }

    /// Waits until the ring is readable (its programs woke the reader), `until` passes, or
    /// `cancelled` completes, which wins when several are ready.
    pub async fn wait(&mut self, until: Instant, cancelled: impl Future<Output = ()>) -> Wake {
        tokio::select! {
            biased;
            () = cancelled => Wake::Cancelled,
            guard = self.fd.readable_mut() => {
                if let Ok(mut guard) = guard {
                    guard.clear_ready();
                }
                Wake::Read
            }
            () = tokio::time::sleep_until(until) => Wake::Read,
        }
    }
}
