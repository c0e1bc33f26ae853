use super::spare;

use slab::Slab;

/// Buffers frames for multiple streams.
#[derive(Debug)]
pub struct Buffer<T> {
    slab: Slab<Slot<T>>,
    /// switchyard: how many slots the slab had when it was given back (at most
    /// `spare::MAX_SLOTS`): with no spare to take, the next frame takes that many at once.
    reserve: usize,
}

/// switchyard: what a `Buffer` of `Self` does with its slots when it gives them back empty
/// (`Buffer::release_if_empty`), and where it takes them from again. By default (the queue of
/// frames to send, whose type is the user's), the allocator.
pub(super) trait Spare: Sized {
    /// An empty slab kept by this thread, if any.
    fn take() -> Option<Slab<Slot<Self>>> {
        None
    }

    /// Keeps `slab` (empty) for this thread's next connection, or frees it.
    fn give(slab: Slab<Slot<Self>>) {
        drop(slab);
    }
}

/// A sequence of frames in a `Buffer`
#[derive(Debug)]
pub struct Deque {
    indices: Option<Indices>,
}

/// Tracks the head & tail for a sequence of frames in a `Buffer`.
#[derive(Debug, Default, Copy, Clone)]
struct Indices {
    head: usize,
    tail: usize,
}

#[derive(Debug)]
pub(super) struct Slot<T> {
    value: T,
    next: Option<usize>,
}

impl<T> Buffer<T> {
    pub fn new() -> Self {
        Buffer {
            slab: Slab::new(),
            reserve: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }
}

impl<T: Spare> Buffer<T> {
    /// switchyard: an empty buffer gives its slots back (see `Streams::poll_complete`).
    #[inline]
    pub fn release_if_empty(&mut self) {
        if self.slab.capacity() > 0 && self.slab.is_empty() {
            self.release();
        }
    }

    #[inline(never)]
    fn release(&mut self) {
        let slab = std::mem::take(&mut self.slab);
        self.reserve = slab.capacity().min(spare::MAX_SLOTS);
        // Kept as it is: an empty slab's slots are all vacant (`clear` would walk them all).
        if slab.capacity() <= spare::MAX_SLOTS {
            T::give(slab);
        }
    }

    /// switchyard: slots again for the first frame after `release`: a spare, or as many as
    /// it had at once.
    #[cold]
    #[inline(never)]
    fn refill(&mut self) {
        self.slab = T::take().unwrap_or_else(|| Slab::with_capacity(self.reserve));
    }
}

impl Deque {
    pub fn new() -> Self {
        Deque { indices: None }
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_none()
    }

    pub fn push_back<T: Spare>(&mut self, buf: &mut Buffer<T>, value: T) {
        // switchyard: slots given back while idle are taken again (`Buffer::refill`).
        if buf.slab.capacity() == 0 {
            buf.refill();
        }
        let key = buf.slab.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[idxs.tail].next = Some(key);
                idxs.tail = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn push_front<T: Spare>(&mut self, buf: &mut Buffer<T>, value: T) {
        // switchyard: slots given back while idle are taken again (`Buffer::refill`).
        if buf.slab.capacity() == 0 {
            buf.refill();
        }
        let key = buf.slab.insert(Slot { value, next: None });

        match self.indices {
            Some(ref mut idxs) => {
                buf.slab[key].next = Some(idxs.head);
                idxs.head = key;
            }
            None => {
                self.indices = Some(Indices {
                    head: key,
                    tail: key,
                });
            }
        }
    }

    pub fn pop_front<T>(&mut self, buf: &mut Buffer<T>) -> Option<T> {
        match self.indices {
            Some(mut idxs) => {
                let mut slot = buf.slab.remove(idxs.head);

                if idxs.head == idxs.tail {
                    assert!(slot.next.is_none());
                    self.indices = None;
                } else {
                    idxs.head = slot.next.take().unwrap();
                    self.indices = Some(idxs);
                }

                Some(slot.value)
            }
            None => None,
        }
    }
}
