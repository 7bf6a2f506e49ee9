//! UDP generic segmentation offload (GSO) for sends: consecutive datagrams to
//! one destination with one size go to the kernel as a single `sendmsg`
//! carrying a `UDP_SEGMENT` control message, and the stack splits them back
//! into datagrams. On this machine kind that forwarded 2.2× more than one send
//! per datagram (`docs/benchmarks.md`), because the per-send cost dominates.
//!
//! The kernel's rules (`udp_send_skb`): at most 64 segments, at most 64 KiB in
//! total, every segment `gso_size` bytes except the last, which may be shorter.

use std::net::SocketAddr;
use std::os::fd::RawFd;

/// The kernel's `UDP_MAX_SEGMENTS`.
pub const MAX_SEGMENTS: usize = 64;
/// Total payload of one GSO send, below the 64 KiB IP datagram limit with room
/// for headers.
pub const MAX_BYTES: usize = 65_000;

/// The end (exclusive) of the GSO run starting at `start`: the longest prefix
/// of `items[start..]` with one destination, whose sizes equal the first's
/// except possibly a shorter last one, within the kernel's limits. Always at
/// least `start + 1` when `start < items.len()`.
pub fn run_end<T>(
    items: &[T],
    start: usize,
    dst: impl Fn(&T) -> SocketAddr,
    len: impl Fn(&T) -> usize,
) -> usize {
    let Some(first) = items.get(start) else {
        return start;
    };
    let (target, size) = (dst(first), len(first));
    let mut total = size;
    let mut end = start + 1;
    while end < items.len() && end - start < MAX_SEGMENTS {
        let item = &items[end];
        let item_len = len(item);
        if dst(item) != target || item_len > size || item_len == 0 || total + item_len > MAX_BYTES {
            break;
        }
        total += item_len;
        end += 1;
        if item_len < size {
            // A shorter segment can only be the last one.
            break;
        }
    }
    end
}

/// Room for one `UDP_SEGMENT` control message (a u16), 8-byte aligned as
/// `cmsghdr` requires.
#[repr(C, align(8))]
#[derive(Clone, Copy, Default)]
pub struct SegmentCmsg([u8; 32]);

impl SegmentCmsg {
    /// Writes a `UDP_SEGMENT` message for `segment_size`; returns the
    /// `msg_controllen` to use.
    pub fn write(&mut self, segment_size: u16) -> usize {
        // SAFETY: CMSG_LEN/CMSG_SPACE are pure size computations.
        let (len, space) = unsafe {
            (
                libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize,
                libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize,
            )
        };
        debug_assert!(space <= self.0.len());
        let header = libc::cmsghdr {
            cmsg_len: len as _,
            cmsg_level: libc::SOL_UDP,
            cmsg_type: libc::UDP_SEGMENT,
        };
        let header_len = std::mem::size_of::<libc::cmsghdr>();
        // SAFETY: the buffer is 8-byte aligned and at least CMSG_SPACE(2) = 24
        // bytes long; cmsghdr is 16 bytes of plain integers, copied bytewise.
        unsafe {
            std::ptr::copy_nonoverlapping(
                std::ptr::from_ref(&header).cast::<u8>(),
                self.0.as_mut_ptr(),
                header_len,
            );
        }
        self.0[header_len..header_len + 2].copy_from_slice(&segment_size.to_ne_bytes());
        space
    }

    pub fn as_mut_ptr(&mut self) -> *mut libc::c_void {
        self.0.as_mut_ptr().cast()
    }
}

/// Whether the kernel accepts `UDP_SEGMENT` on this socket (Linux ≥ 4.18).
pub fn supported(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, a live c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(items: &[(u16, usize)]) -> Vec<usize> {
        let dst = |&(port, _): &(u16, usize)| SocketAddr::from(([127, 0, 0, 1], port));
        let len = |&(_, len): &(u16, usize)| len;
        let mut ends = Vec::new();
        let mut start = 0;
        while start < items.len() {
            let end = run_end(items, start, dst, len);
            ends.push(end - start);
            start = end;
        }
        ends
    }

    #[test]
    fn groups_same_destination_same_size() {
        assert_eq!(
            runs(&[(1, 100), (1, 100), (1, 100), (2, 100), (1, 100)]),
            vec![3, 1, 1]
        );
    }

    #[test]
    fn a_shorter_datagram_closes_a_run_and_a_longer_one_starts_one() {
        assert_eq!(
            runs(&[(1, 100), (1, 60), (1, 100), (1, 120)]),
            vec![2, 1, 1]
        );
    }

    #[test]
    fn kernel_limits_split_runs() {
        assert_eq!(runs(&vec![(1, 10); 130]), vec![64, 64, 2]);
        // 1400-byte segments: 46 fit in 65,000 bytes.
        assert_eq!(runs(&vec![(1, 1400); 50]), vec![46, 4]);
    }
}
