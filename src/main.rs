//! The `switchyard` binary: the CLI edge. Library errors become `anyhow` here.

mod cli;
mod demo;
mod output;

use clap::Parser;

/// glibc malloc shows up at several percent of CPU on the proxy path; mimalloc's thread-local
/// free lists make the per-request allocations nearly free.
#[global_allocator]
static GLOBAL: allocator::Mimalloc = allocator::Mimalloc;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    let runtime = match args.process().workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(allocator::collect_now_and_then)
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .on_thread_park(allocator::collect_now_and_then)
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .on_thread_park(allocator::collect_now_and_then)
            .build(),
    }
    .expect("tokio runtime");
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => cli::fail(&e),
    }
}

/// The binary's allocator (`Mimalloc`: mimalloc, asked as cheaply as the layout allows), and
/// memory freed when connections close (or park, see `listener`) given back to the system.
/// mimalloc returns a page only when the thread that owns it comes back into the allocator,
/// and purges freed spans only on later allocator work; a runtime worker with nothing to
/// do does neither, and with several workers a connection's memory is often freed by
/// another thread than the one that took it. Measured: 4,000 closed connections left RSS at
/// 76 MB (27 MB before them) with two workers, 10 s on. So each worker, as it goes idle,
/// collects its heap (freed pages released, empty spans purged) — at most once a second:
/// the walk is over all its pages.
mod allocator {
    // The binary's allocator, linked only into it (so not in the library's `sys`).
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout};
    use std::cell::Cell;
    use std::ffi::c_void;
    use std::time::{Duration, Instant};

    const EVERY: Duration = Duration::from_secs(1);

    extern "C" {
        /// mimalloc's `mi_collect`, from the static library the `mimalloc` crate links.
        fn mi_collect(force: bool);
        fn mi_malloc(size: usize) -> *mut c_void;
        fn mi_zalloc(size: usize) -> *mut c_void;
        fn mi_realloc(p: *mut c_void, size: usize) -> *mut c_void;
        fn mi_free(p: *mut c_void);
    }

    /// mimalloc, asked the way its own `malloc` is whenever that gives the alignment. The
    /// `mimalloc` crate's allocator asks `mi_malloc_aligned` for every block, and mimalloc
    /// serves an aligned request above 1 KiB whose size is not a power of two by allocating
    /// more and aligning within it (its `overalloc` path, ~100 instructions more than a plain
    /// allocation of the size): a request's boxed future and hyper's 8 KiB read buffer each
    /// took it once per request (bench/icount.sh). `mi_malloc` aligns every block as C's
    /// `malloc` must (to 16 bytes, `max_align_t`, or to the block's size when smaller), the
    /// same rule Rust's `System` allocator relies on for glibc's.
    pub(crate) struct Mimalloc;

    /// What `mi_malloc` guarantees for any block at least this large.
    const MIN_ALIGN: usize = 16;

    fn plain(layout: Layout) -> bool {
        layout.align() <= MIN_ALIGN && layout.align() <= layout.size()
    }

    // SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks of
    // either kind); the plain calls are made only for layouts whose alignment they give.
    unsafe impl GlobalAlloc for Mimalloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if plain(layout) {
                mi_malloc(layout.size()).cast()
            } else {
                mimalloc::MiMalloc.alloc(layout)
            }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            if plain(layout) {
                mi_zalloc(layout.size()).cast()
            } else {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
            mi_free(ptr.cast());
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if layout.align() <= MIN_ALIGN && layout.align() <= new_size {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            }
        }
    }

    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }

    /// Run by each runtime thread about to park.
    pub(crate) fn collect_now_and_then() {
        let now = Instant::now();
        LAST.with(|last| {
            if last.get().is_some_and(|t| now.duration_since(t) < EVERY) {
                return;
            }
            last.set(Some(now));
            // SAFETY: `mi_collect` takes no pointers and may be called on any thread at any
            // time; it works on the calling thread's own heap (and the shared arenas).
            unsafe { mi_collect(true) }
        });
    }
}
