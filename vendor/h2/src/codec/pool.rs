//! switchyard: spare frame buffers, per thread.
//!
//! A connection gives its read and write buffers back while it has nothing to read or write
//! (so an idle one holds none), and takes them again for its next burst. Taken from and given
//! back to the allocator each time, that was ~1,600 more instructions per HTTP/2 request in
//! mimalloc's slow paths (pages emptied, retired and taken fresh); a few spares per thread,
//! as HAProxy keeps its buffer pools, make the round trip a `Vec` pop and push. A thread
//! keeps at most `SPARES` of each size: idle connections cost nothing however many there are.

use bytes::BytesMut;
use std::cell::RefCell;
use std::mem;

/// Spare buffers a thread keeps of each size.
const SPARES: usize = 16;

/// The two sizes of buffer pooled.
#[derive(Clone, Copy)]
pub(crate) enum Size {
    /// The frame writer's (16 KiB: a HEADERS frame of the minimum MAX_FRAME_SIZE fits).
    Write,
    /// The frame reader's (8 KiB, tokio-util's `FramedRead`'s own starting size).
    Read,
}

impl Size {
    const fn capacity(self) -> usize {
        match self {
            Size::Write => 16 * 1024,
            Size::Read => 8 * 1024,
        }
    }
}

thread_local! {
    static SPARE: RefCell<[Vec<BytesMut>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// An empty buffer of at least `size`'s capacity: a spare if this thread has one.
pub(crate) fn take(size: Size) -> BytesMut {
    SPARE
        .try_with(|spare| spare.borrow_mut()[size as usize].pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| BytesMut::with_capacity(size.capacity()))
}

/// Gives `buf` back, leaving an empty one without memory in its place. It is kept as a spare
/// only if nothing else still shares its memory (frames read into it may still be alive) and
/// it has not grown far past its size; otherwise this handle on it is just dropped.
pub(crate) fn give(size: Size, buf: &mut BytesMut) {
    let mut buf = mem::take(buf);
    buf.clear();
    if !buf.try_reclaim(size.capacity()) || buf.capacity() > 4 * size.capacity() {
        return;
    }
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        let list = &mut spare[size as usize];
        if list.len() < SPARES {
            list.push(buf);
        }
    });
}
