//! A cap on the size of any single allocation, for code we do not control.
//!
//! dicom-rs allocates each element's value from the length in its header before reading it
//! (`try_reserve_exact(len)` then `resize(len, 0)`), so a 674-byte file whose header says
//! 0xE000FFFE bytes makes it zero 3.7 GB before the read fails (found by `fuzz/dicom_decode`).
//! We cannot patch that, but its reservations are fallible: when this allocator is the global
//! one and a limit is set on the current thread, a larger request returns null, `try_reserve`
//! turns that into an error, and the file is refused without touching the memory.
//!
//! Install it in a binary with `#[global_allocator] static A: melo::alloc_guard::GuardedAllocator
//! = melo::alloc_guard::GuardedAllocator;` (the `melo` binary, the fuzz targets and the tests
//! that check it do). Without it, [`with_allocation_limit`] only runs the closure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    // Const-initialised and without destructor: reading it never allocates, so it is safe
    // inside the allocator itself.
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, refusing single allocations above the current thread's limit.
pub struct GuardedAllocator;

fn limit() -> usize {
    LIMIT.try_with(Cell::get).unwrap_or(usize::MAX)
}

unsafe impl GlobalAlloc for GuardedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        if layout.size() > limit() {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > limit() {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Whether [`GuardedAllocator`] is this process's global allocator (it has served a request).
pub fn is_installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Runs `f` with single allocations on this thread capped at `max_bytes` (when the guarded
/// allocator is installed). Only for code whose large allocations are fallible: an infallible
/// allocation above the cap aborts, as it would have on a machine without the memory.
pub fn with_allocation_limit<T>(max_bytes: usize, f: impl FnOnce() -> T) -> T {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = LIMIT.try_with(|c| c.set(self.0));
        }
    }
    let previous = limit();
    let _restore = Restore(previous);
    let _ = LIMIT.try_with(|c| c.set(max_bytes.min(previous)));
    f()
}
