//! The provided-buffer ring the multishot receive takes its buffers from.

use std::io;
use std::mem;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

use super::{BUF_GROUP, BUF_SIZE};

/// `struct io_uring_buf`: one entry of a provided-buffer ring. The ring's
/// tail is the `resv` field of entry 0, so entries are written field by
/// field and `resv` never.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// The provided-buffer ring and its buffers: two anonymous mappings
/// (page-aligned, as the kernel requires of the ring).
///
/// # Safety
///
/// The kernel reads the ring entries and writes received datagrams into any
/// buffer currently published in the ring, from registration until the group
/// is unregistered (or the ring is destroyed) and every receive completed.
/// This loop only touches a buffer between the completion that hands it over
/// (`take`) and `recycle`; `held` marks those. The mappings are unmapped only
/// on drop, after the ring; `leak` keeps them forever if shutdown could not
/// prove the kernel done with them.
pub(super) struct BufRing {
    ring: NonNull<RingEntry>,
    ring_bytes: usize,
    bufs: NonNull<u8>,
    bufs_bytes: usize,
    pub(super) entries: u16,
    /// The next tail to publish (the kernel sees it after `publish`).
    tail: u16,
    /// Buffers out of the ring, held by this loop.
    pub(super) held: usize,
    /// Per buffer: held by this loop (true) or in the ring (false).
    owned: Box<[bool]>,
    leaked: bool,
}

// SAFETY: the mappings are owned by this value alone; moving it to another
// thread moves that ownership. The kernel's access does not depend on which
// thread owns the pointers.
unsafe impl Send for BufRing {}

impl BufRing {
    pub(super) fn new(entries: u16) -> io::Result<Self> {
        let count = usize::from(entries);
        let ring_bytes = count * mem::size_of::<RingEntry>();
        let bufs_bytes = count * BUF_SIZE;
        let ring = map_anonymous(ring_bytes)?.cast::<RingEntry>();
        let bufs = match map_anonymous(bufs_bytes) {
            Ok(bufs) => bufs,
            Err(e) => {
                // SAFETY: `ring` was just mapped with this length and is unused.
                unsafe { libc::munmap(ring.as_ptr().cast(), ring_bytes) };
                return Err(e);
            }
        };
        let mut this = Self {
            ring,
            ring_bytes,
            bufs,
            bufs_bytes,
            entries,
            tail: 0,
            held: count,
            owned: vec![true; count].into_boxed_slice(),
            leaked: false,
        };
        for bid in 0..entries {
            this.recycle(bid);
        }
        Ok(this)
    }

    /// # Safety
    ///
    /// `self` must outlive the registration (see the type's docs).
    pub(super) unsafe fn register(&mut self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: the ring memory is `entries` page-aligned RingEntry slots,
        // valid for as long as the caller promises.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring.as_ptr() as u64,
                self.entries,
                BUF_GROUP,
                0,
            )
        }
    }

    /// Marks a buffer the kernel handed over as held. False if that buffer
    /// is unknown or already held (never trust an index blindly).
    pub(super) fn take(&mut self, bid: u16) -> bool {
        let Some(owned) = self.owned.get_mut(usize::from(bid)) else {
            return false;
        };
        if *owned {
            return false;
        }
        *owned = true;
        self.held += 1;
        true
    }

    /// Puts a held buffer back in the ring; visible to the kernel after `publish`.
    pub(super) fn recycle(&mut self, bid: u16) {
        let Some(owned) = self.owned.get_mut(usize::from(bid)) else {
            return;
        };
        if !*owned {
            debug_assert!(false, "buffer {bid} recycled twice");
            return;
        }
        *owned = false;
        self.held -= 1;
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `slot < entries`, inside the ring mapping. Only the fields
        // the kernel reads are written, never `resv` (entry 0's holds the
        // tail). The kernel doesn't read this slot: it lies beyond the tail it
        // last saw, and at most `entries` buffers are ever in the ring.
        unsafe {
            let entry = self.ring.as_ptr().add(slot);
            ptr::addr_of_mut!((*entry).addr).write(self.ptr(bid, 0) as u64);
            ptr::addr_of_mut!((*entry).len).write(BUF_SIZE as u32);
            ptr::addr_of_mut!((*entry).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes recycled buffers visible to the kernel.
    pub(super) fn publish(&self) {
        // SAFETY: the tail is the u16 at offset 14 of entry 0, inside the
        // mapping and 2-byte aligned; the kernel reads it with an acquire
        // load, so it is written with a release store through an atomic view.
        let tail = unsafe { &*ptr::addr_of!((*self.ring.as_ptr()).resv).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Address of byte `offset` of buffer `bid`.
    pub(super) fn ptr(&self, bid: u16, offset: usize) -> *mut u8 {
        debug_assert!(bid < self.entries && offset <= BUF_SIZE);
        // SAFETY: bid < entries and offset <= BUF_SIZE keep the result inside
        // (or one past the end of) the buffers mapping.
        unsafe { self.bufs.as_ptr().add(usize::from(bid) * BUF_SIZE + offset) }
    }

    /// # Safety
    ///
    /// `bid` must be held, and `offset + len <= BUF_SIZE` initialised bytes.
    pub(super) unsafe fn slice(&self, bid: u16, offset: usize, len: usize) -> &[u8] {
        debug_assert!(offset + len <= BUF_SIZE);
        // SAFETY: per the caller; a held buffer is written by no one.
        unsafe { std::slice::from_raw_parts(self.ptr(bid, offset), len) }
    }

    /// # Safety
    ///
    /// As [`BufRing::slice`], and no other reference into that buffer may exist.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn slice_mut(&self, bid: u16, offset: usize, len: usize) -> &mut [u8] {
        debug_assert!(offset + len <= BUF_SIZE);
        // SAFETY: per the caller.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(bid, offset), len) }
    }

    /// Never unmap: the kernel may still use the memory.
    pub(super) fn leak(&mut self) {
        self.leaked = true;
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leaked {
            return;
        }
        // SAFETY: both mappings were created in `new` with these lengths, and
        // the kernel is done with them (see the type's docs).
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_bytes);
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs_bytes);
        }
    }
}

fn map_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(addr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}
