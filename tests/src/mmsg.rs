//! One batch of UDP datagrams in one `sendmmsg(2)`, for the spoofer
//! ([`crate::spoof`]) and the load generator's batched sender (a shipped
//! tool in `lanrage-bench`, which depends on this crate for the lab).

use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use socket2::SockAddr;

/// Sends datagram `k`, `bufs[k * slot..][..lens[k]]`, to `dests[k]` for
/// every `k < dests.len()`, in one `sendmmsg` (called again while the
/// kernel takes part of the batch or a signal interrupts it). Returns how
/// many the kernel took; after an error the rest are dropped, and the error
/// is returned only if none was sent (callers count the rest as send
/// errors).
///
/// # Panics
/// If there are more than `N` destinations, fewer lengths than
/// destinations, or a datagram reaches past `bufs`.
pub fn send_batch<const N: usize>(
    fd: BorrowedFd<'_>,
    bufs: &[u8],
    slot: usize,
    lens: &[usize],
    dests: &[SockAddr],
) -> io::Result<usize> {
    let count = dests.len();
    assert!(
        count <= N && lens.len() >= count,
        "a batch of {count} datagrams"
    );
    if count == 0 {
        return Ok(0);
    }
    let mut iovecs = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; N];
    // SAFETY: mmsghdr is a plain C struct; all-zero is a valid empty value.
    let mut headers: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
    for k in 0..count {
        let datagram = &bufs[k * slot..k * slot + lens[k]];
        iovecs[k] = libc::iovec {
            // The kernel only reads a send's buffers.
            iov_base: datagram.as_ptr() as *mut libc::c_void,
            iov_len: datagram.len(),
        };
        let h = &mut headers[k].msg_hdr;
        h.msg_name = dests[k].as_ptr() as *mut libc::c_void;
        h.msg_namelen = dests[k].len();
        h.msg_iov = &mut iovecs[k];
        h.msg_iovlen = 1;
    }
    let mut sent = 0;
    loop {
        // SAFETY: the headers from `sent` to `count` point at live iovecs
        // (this frame), buffers and addresses (borrowed for the call); the
        // kernel only reads them (and writes msg_len).
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                headers[sent..].as_mut_ptr(),
                (count - sent) as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return if sent == 0 { Err(err) } else { Ok(sent) };
        }
        sent += n as usize;
        if sent == count || n == 0 {
            return Ok(sent);
        }
    }
}
