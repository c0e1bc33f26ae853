//! switchyard: spare stream slots, per thread (as `codec::pool` keeps spare frame buffers).
//!
//! A connection gives back its stream slots, its id index and the slots of its queued frames
//! and events whenever it has sent all it could and no stream is left (`Streams::poll_complete`),
//! so an idle one holds none. A busy one gets there too, between two bursts of requests, and
//! growing them again from the allocator (4, 8, 16 slots: a copy and mimalloc's slower paths
//! each time) cost ~600 instructions per HTTP/2 request. Kept here, emptied, the next burst of
//! any connection of the thread takes them back with a `Vec` pop. A thread keeps at most
//! `SPARES` of each kind, none of more than `MAX_SLOTS` slots: idle connections cost nothing
//! however many there are.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Spares a thread keeps of each kind.
const SPARES: usize = 16;

/// Kept only up to this many slots (a `Stream` is ~300 bytes): a connection that had more
/// streams than that at once takes its slots from the allocator again.
pub(super) const MAX_SLOTS: usize = 32;

/// A thread's spares of one kind.
pub(super) type Spares<T> = RefCell<Vec<T>>;

/// A spare, if this thread has one.
pub(super) fn take<T: 'static>(spares: &'static LocalKey<Spares<T>>) -> Option<T> {
    spares.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// Keeps `spare` (empty) for the next connection of this thread that needs one, unless the
/// thread has enough already.
pub(super) fn give<T: 'static>(spares: &'static LocalKey<Spares<T>>, spare: T) {
    let _ = spares.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES {
            s.push(spare);
        }
    });
}
