//! What in-flight `SendMsg`s point at: boxed slots in a slab, indexed by `user_data`.

use std::mem;
use std::net::SocketAddr;

use libc::{iovec, msghdr, sockaddr_storage};

use crate::backend::{gso, sockaddr};

/// Everything one in-flight `SendMsg` points at.
///
/// # Safety
///
/// The kernel reads `hdr` and, through it, `iovs`, `addr`, `control` and
/// the held buffers the iovecs point at, until the send's completion. Each
/// slot is boxed (its address never changes while the slab grows) and is
/// freed only by that completion, or at shutdown once nothing is in flight.
#[repr(C)]
pub(super) struct SendSlot {
    pub(super) hdr: msghdr,
    pub(super) iovs: [iovec; gso::MAX_SEGMENTS],
    pub(super) addr: sockaddr_storage,
    /// One `UDP_SEGMENT` control message, for GSO sends.
    pub(super) control: gso::SegmentCmsg,
    pub(super) bids: [u16; gso::MAX_SEGMENTS],
    pub(super) offsets: [u16; gso::MAX_SEGMENTS],
    pub(super) count: usize,
    pub(super) gso: bool,
    live: bool,
}

impl SendSlot {
    fn new() -> Box<Self> {
        // SAFETY: every field is plain data (C structs, integers, bools) for
        // which all zeroes is valid: null pointers, zero lengths, `false`.
        Box::new(unsafe { mem::zeroed() })
    }

    /// Points `hdr` at a `UDP_SEGMENT` cmsg carrying `segment_size`.
    pub(super) fn write_segment_cmsg(&mut self, segment_size: u16) {
        self.hdr.msg_controllen = self.control.write(segment_size);
        self.hdr.msg_control = self.control.as_mut_ptr();
    }
}

/// Destination of a slot, read back from its sockaddr (for GSO fallback).
pub(super) fn sockaddr_dst(slot: &SendSlot) -> SocketAddr {
    sockaddr::to_std(&slot.addr, slot.hdr.msg_namelen)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A slab of send slots; the index goes in `user_data`.
#[derive(Default)]
pub(super) struct SendSlots {
    // Boxed on purpose: the kernel holds pointers into live slots, which
    // must not move when the vector grows.
    #[allow(clippy::vec_box)]
    slots: Vec<Box<SendSlot>>,
    free: Vec<usize>,
}

// SAFETY: the raw pointers in the slots point into the slots themselves and
// into the `BufRing` mapping, both owned by the same `UringBackend`; moving
// the backend to another thread moves them all together.
unsafe impl Send for SendSlots {}

impl SendSlots {
    pub(super) fn alloc(&mut self) -> usize {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(SendSlot::new());
            self.slots.len() - 1
        });
        self.slots[index].live = true;
        index
    }

    pub(super) fn get_mut(&mut self, index: usize) -> &mut SendSlot {
        &mut self.slots[index]
    }

    pub(super) fn get_live(&self, index: usize) -> Option<&SendSlot> {
        self.slots.get(index).map(|s| &**s).filter(|s| s.live)
    }

    pub(super) fn free(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            if slot.live {
                slot.live = false;
                self.free.push(index);
            }
        }
    }
}
