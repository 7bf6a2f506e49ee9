//! Whether this kernel, its sysctls and the seccomp profile let the io_uring
//! backend run: [`probe`] checks every feature the loop uses, once at start.

use std::ffi::OsStr;
use std::io;
use std::mem;
use std::net::UdpSocket;
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types, IoUring, Probe};
use libc::msghdr;

use super::buf_ring::BufRing;
use super::{is_transient_enter_error, BUF_GROUP, NAME_LEN, TAG_CANCEL, TAG_RECV};

/// Set to `1` to make [`probe`] fail, so tests and operators can exercise the
/// fallback to the epoll backend on a kernel that does support io_uring.
pub const FORCE_PROBE_FAIL_ENV: &str = "LANRAGE_FORCE_URING_PROBE_FAIL";

/// Checks that this kernel lets the io_uring backend run: io_uring itself
/// (not disabled by `kernel.io_uring_disabled` or seccomp), the extended
/// wait arguments, the opcodes used, a provided-buffer ring, and multishot
/// `RecvMsg`. The error says what is missing, for the log line that
/// explains why the epoll backend was chosen.
pub fn probe() -> Result<(), String> {
    if forced_failure(std::env::var_os(FORCE_PROBE_FAIL_ENV).as_deref()) {
        return Err(format!("forced by {FORCE_PROBE_FAIL_ENV}"));
    }
    // On a thread of its own: tearing a ring down queues task work on the
    // thread that used it, which later interrupts that thread's blocking
    // system calls (EINTR). The probe's thread exits with it instead of the
    // caller (the relay's main thread, a test, the load generator).
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("io-uring-probe".to_owned())
            .spawn_scoped(scope, probe_kernel)
            .map_err(|e| format!("cannot start the io_uring probe thread: {e}"))?
            .join()
            .unwrap_or_else(|_| Err("the io_uring probe panicked".to_owned()))
    })
}

/// Whether the [`FORCE_PROBE_FAIL_ENV`] value asks for a failed probe.
pub(super) fn forced_failure(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

pub(crate) fn probe_kernel() -> Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| explain_setup_error(&e))?;
    if !ring.params().is_feature_ext_arg() {
        return Err(
            "kernel lacks IORING_FEAT_EXT_ARG (wait timeouts); Linux 5.11 or later needed".into(),
        );
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring opcode probe failed: {e}"))?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!(
                "io_uring opcode IORING_OP_{name} unsupported by this kernel"
            ));
        }
    }
    let mut bufs =
        BufRing::new(8).map_err(|e| format!("cannot map a provided-buffer ring: {e}"))?;
    // SAFETY: `bufs` outlives the registration: the group is unregistered
    // and the ring dropped explicitly below, before `bufs`. (If registering
    // fails, the kernel holds no reference and the drop order is moot.)
    unsafe { bufs.register(&ring) }.map_err(|e| {
        format!("cannot register a provided-buffer ring ({e}); Linux 5.19 or later needed")
    })?;
    bufs.publish();
    let result = probe_multishot_recv(&ring);
    if let Err(e) = ring.submitter().unregister_buf_ring(BUF_GROUP) {
        tracing::debug!(error = %e, "probe: cannot unregister the buffer ring");
    }
    drop(ring);
    drop(bufs);
    result
}

/// Multishot `RecvMsg` (Linux 6.0) shares its opcode with plain `RecvMsg`, so
/// the probe can't see it: arm one on an idle socket and cancel it. An old
/// kernel rejects the multishot flag with `EINVAL` instead of waiting.
fn probe_multishot_recv(ring: &IoUring) -> Result<(), String> {
    let socket = UdpSocket::bind("127.0.0.1:0")
        .map_err(|e| format!("probe: cannot bind a loopback UDP socket: {e}"))?;
    // SAFETY: msghdr is plain data; all zeroes is valid.
    let mut hdr: msghdr = unsafe { mem::zeroed() };
    hdr.msg_namelen = NAME_LEN as libc::socklen_t;
    let recv = opcode::RecvMsgMulti::new(types::Fd(socket.as_raw_fd()), &hdr, BUF_GROUP)
        .build()
        .user_data(TAG_RECV);
    let cancel = opcode::AsyncCancel::new(TAG_RECV)
        .build()
        .user_data(TAG_CANCEL);
    // SAFETY: nothing else uses `ring` (a local of the probe), so the shared
    // queue view can't race. `hdr` and `socket` outlive the operation: the
    // loop below waits for the receive's final completion (or gives up and
    // leaks them).
    let pushed = unsafe {
        let mut sq = ring.submission_shared();
        sq.push(&recv).is_ok() && sq.push(&cancel).is_ok()
    };
    if !pushed {
        return Err("probe: io_uring submission queue unexpectedly full".into());
    }
    let mut outcome = None;
    let deadline = Instant::now() + Duration::from_secs(1);
    let ts = types::Timespec::from(Duration::from_millis(50));
    while outcome.is_none() && Instant::now() < deadline {
        let args = types::SubmitArgs::new().timespec(&ts);
        if let Err(e) = ring.submitter().submit_with_args(1, &args) {
            if !is_transient_enter_error(&e) {
                return Err(format!("probe: io_uring_enter failed: {e}"));
            }
        }
        // SAFETY: no other completion queue handle exists.
        for cqe in unsafe { ring.completion_shared() } {
            if cqe.user_data() == TAG_RECV && !cqueue::more(cqe.flags()) {
                outcome = Some(cqe.result());
            }
        }
    }
    match outcome {
        Some(r) if r == -libc::ECANCELED => Ok(()),
        Some(r) if r == -libc::EINVAL => {
            Err("kernel lacks multishot RecvMsg; Linux 6.0 or later needed".into())
        }
        Some(r) => Err(format!(
            "probe: multishot RecvMsg failed: {}",
            io::Error::from_raw_os_error(-r)
        )),
        None => {
            // Still in flight: keep its memory alive for good.
            mem::forget(socket);
            Box::leak(Box::new(hdr));
            Err("probe: multishot RecvMsg was not cancelled within 1 s".into())
        }
    }
}

fn explain_setup_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "kernel built without io_uring (io_uring_setup: ENOSYS)".into(),
        Some(libc::EPERM) | Some(libc::EACCES) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into());
            format!(
                "io_uring_setup refused ({e}); kernel.io_uring_disabled = {sysctl} \
                 (0 allows it), or a seccomp profile (e.g. a container runtime's) blocks it"
            )
        }
        Some(libc::ENOMEM) => format!(
            "io_uring_setup failed ({e}); the locked-memory limit (ulimit -l) may be too low"
        ),
        _ => format!("io_uring_setup failed: {e}"),
    }
}
