//! The allocator generated code calls for its buffers (`_mlir_memref_to_llvm_alloc` and
//! `_mlir_memref_to_llvm_free`, MLIR's `use-generic-functions` names), in place of malloc.
//!
//! A forward pass allocates the same buffers, of the same sizes, every time it runs, and frees
//! them all by its end. With malloc, glibc handed the large ones back to the kernel at each free
//! and mapped fresh, zeroed pages at each allocation: a 12-layer, 768-wide encoder at 512 tokens
//! took about 240 000 page faults and 40 `munmap`s per forward. Here a freed buffer waits, by size, for the next
//! request of that size (the next forward's), or of a size it holds at most twice over (a
//! training step's backward frees buffers early that later ones of other sizes can reuse), up
//! to [`CACHE_LIMIT_BYTES`] in all; past that it goes back to the system. Nothing is ever
//! returned early or shared: a cached buffer belongs to nobody until it is handed out again.
//!
//! The JIT points generated code at these functions. A generated shared library carries its own
//! two-line malloc/free shim under the same names instead (codegen's `link.rs`): it may be
//! loaded by a process that exports nothing (`lmc run --lib`), so it cannot count on finding
//! these; it does not reuse buffers yet.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bytes of buffers handed out and not yet freed, and the most there have been at once since
/// [`reset_peak_live_bytes`]: the activation memory of what generated code runs (the cache of
/// freed buffers not counted).
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static PEAK_LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The most bytes of buffers held at once since the last [`reset_peak_live_bytes`] (or start).
pub fn peak_live_bytes() -> usize {
    PEAK_LIVE_BYTES.load(Ordering::Relaxed)
}

/// Bytes of freed buffers kept for reuse: memory the process holds beside the live buffers.
pub fn cached_bytes() -> usize {
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or(0, |c| c.cached_bytes)
}

/// Starts a new peak from what is held now.
pub fn reset_peak_live_bytes() {
    PEAK_LIVE_BYTES.store(LIVE_BYTES.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Every buffer is aligned to this (MLIR asks for 64 at most) and starts this far into its
/// block, after a header that records the size asked for and the block's own.
const ALIGN: usize = 64;

/// How many bytes of freed buffers are kept for reuse, in all.
pub const CACHE_LIMIT_BYTES: usize = 4 << 30;

struct Cache {
    /// Free blocks by their layout's size.
    free: BTreeMap<usize, Vec<usize>>,
    cached_bytes: usize,
}

impl Cache {
    /// The smallest free block of `size` bytes or more, but not more than twice as large.
    fn take(&mut self, size: usize) -> Option<(usize, usize)> {
        let (&capacity, blocks) = self.free.range_mut(size..=size.saturating_mul(2)).find(|(_, b)| !b.is_empty())?;
        let block = blocks.pop()?;
        self.cached_bytes -= capacity;
        Some((block, capacity))
    }
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.checked_add(ALIGN)?, ALIGN).ok()
}

/// `size` bytes aligned to 64, or null when the system has no memory left.
///
/// # Safety
/// Callable from any thread; the result is freed with [`_mlir_memref_to_llvm_free`] only.
#[no_mangle]
pub unsafe extern "C" fn _mlir_memref_to_llvm_alloc(size: usize) -> *mut u8 {
    let Some(layout) = layout(size) else {
        return std::ptr::null_mut();
    };
    let reused = {
        let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_mut().and_then(|c| c.take(layout.size()))
    };
    let (block, capacity) = match reused {
        Some((b, capacity)) => (b as *mut u8, capacity),
        // SAFETY: the layout has a non-zero size (at least ALIGN) and a valid alignment.
        None => (unsafe { std::alloc::alloc(layout) }, layout.size()),
    };
    if block.is_null() {
        return block;
    }
    let live = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
    PEAK_LIVE_BYTES.fetch_max(live, Ordering::Relaxed);
    // SAFETY: the block is at least `size + ALIGN` bytes aligned to ALIGN: the header (two
    // words) fits before the buffer, and the buffer after it stays aligned.
    unsafe {
        block.cast::<usize>().write(size);
        block.cast::<usize>().add(1).write(capacity);
        block.add(ALIGN)
    }
}

/// Frees a buffer from [`_mlir_memref_to_llvm_alloc`] (null is ignored).
///
/// # Safety
/// `ptr` is null or came from [`_mlir_memref_to_llvm_alloc`] and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn _mlir_memref_to_llvm_free(ptr: *mut u8) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: by the contract, the block starts ALIGN bytes before `ptr` and holds its size.
    let block = unsafe { ptr.sub(ALIGN) };
    // SAFETY: as above; the header was written at allocation.
    let (size, capacity) = unsafe { (block.cast::<usize>().read(), block.cast::<usize>().add(1).read()) };
    // The block's own layout, which it was allocated with (a reused block may hold more than
    // the size asked for).
    let Ok(layout) = Layout::from_size_align(capacity, ALIGN) else {
        return;
    };
    LIVE_BYTES.fetch_sub(size, Ordering::Relaxed);
    let kept = {
        let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let cache = guard.get_or_insert_with(|| Cache {
            free: BTreeMap::new(),
            cached_bytes: 0,
        });
        if cache.cached_bytes + layout.size() <= CACHE_LIMIT_BYTES {
            cache.free.entry(layout.size()).or_default().push(block as usize);
            cache.cached_bytes += layout.size();
            true
        } else {
            false
        }
    };
    if !kept {
        // SAFETY: allocated by `std::alloc::alloc` with this layout, and no longer used.
        unsafe { std::alloc::dealloc(block, layout) };
    }
}

/// The addresses of the two functions, for a JIT to resolve the generated calls to.
pub fn symbols() -> [(&'static str, usize); 2] {
    [
        ("_mlir_memref_to_llvm_alloc", _mlir_memref_to_llvm_alloc as *const () as usize),
        ("_mlir_memref_to_llvm_free", _mlir_memref_to_llvm_free as *const () as usize),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_distinct_and_reused_by_size() {
        // SAFETY: every buffer is written within its size and freed once.
        unsafe {
            let a = _mlir_memref_to_llvm_alloc(1000);
            let b = _mlir_memref_to_llvm_alloc(1000);
            assert!(!a.is_null() && !b.is_null() && a != b);
            assert_eq!(a as usize % ALIGN, 0);
            a.write_bytes(1, 1000);
            b.write_bytes(2, 1000);
            assert_eq!(*a.add(999), 1);
            _mlir_memref_to_llvm_free(a);
            let c = _mlir_memref_to_llvm_alloc(1000);
            assert_eq!(c, a, "a freed buffer of the same size is handed out again");
            let d = _mlir_memref_to_llvm_alloc(24);
            assert_ne!(d, a);
            for p in [b, c, d] {
                _mlir_memref_to_llvm_free(p);
            }
            _mlir_memref_to_llvm_free(std::ptr::null_mut());
        }
    }

    /// A request with no free block of its size takes the smallest free one up to twice as
    /// large, and gives it back as the larger size. (Sizes no other test uses.)
    #[test]
    fn a_freed_buffer_serves_a_smaller_request() {
        // SAFETY: every buffer is written within its size and freed once.
        unsafe {
            let big = _mlir_memref_to_llvm_alloc(777_000);
            _mlir_memref_to_llvm_free(big);
            let smaller = _mlir_memref_to_llvm_alloc(500_000);
            assert_eq!(smaller, big, "reused for a request it holds less than twice over");
            smaller.write_bytes(3, 500_000);
            let much_smaller = _mlir_memref_to_llvm_alloc(100_000);
            assert_ne!(much_smaller, big);
            _mlir_memref_to_llvm_free(smaller);
            let again = _mlir_memref_to_llvm_alloc(777_000);
            assert_eq!(again, big, "cached as its own size");
            for p in [much_smaller, again] {
                _mlir_memref_to_llvm_free(p);
            }
        }
    }

    #[test]
    fn the_peak_of_live_buffers_is_counted() {
        // Other tests allocate concurrently: only what this one holds is certain.
        // SAFETY: every buffer is freed once.
        unsafe {
            reset_peak_live_bytes();
            let a = _mlir_memref_to_llvm_alloc(4096);
            let b = _mlir_memref_to_llvm_alloc(8192);
            assert!(peak_live_bytes() >= 4096 + 8192);
            _mlir_memref_to_llvm_free(a);
            _mlir_memref_to_llvm_free(b);
        }
    }
}
