//! switchyard: spare stream slots, per thread (as `codec::pool` keeps spare frame buffers).
//!
//! Each time a connection has sent all it could (`Streams::poll_complete`), it gives back its
//! stream slots and id index if no stream is left, and the slots of its queued events if none
//! is queued, so an idle one holds none. A busy one gets there too, between two bursts of
//! requests; growing them again from the allocator (4, 8, 16 slots: a copy and mimalloc's
//! slower paths each time) was most of the ~1,300 instructions per HTTP/2 request this saves
//! (`vendor/h2/SWITCHYARD.md`). Kept here as they are (empty: every slot vacant), the next
//! burst of any connection of the thread takes them back with a `Vec` pop. (Not the queue of
//! frames to send: its type is the user's, see `impl Spare for Frame`.) A thread keeps at
//! most `SPARES` of each kind, none of more than `MAX_SLOTS` slots (a `Stream` is 328 bytes,
//! an event's slot 248): at worst ~170 KB of streams and ~130 KB of events per thread,
//! however many connections there are.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Spares a thread keeps of each kind.
const SPARES: usize = 16;

/// Kept only up to this many slots: a connection that had more streams than that at once
/// takes its slots from the allocator again.
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
