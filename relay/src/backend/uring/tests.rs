//! Tests of the io_uring loop's own mechanics (buffer ring, stop poll,
//! probe). What both backends promise is tested once over both, in
//! `backend/tests.rs`.

use super::probe::forced_failure;
use super::*;
use crate::backend::test_support::{client, datagram, recv, start, Fake, Kind, Setup};
use std::ffi::OsStr;

#[test]
fn stop_wakes_an_idle_ring_at_once() {
    if !Kind::Uring.available("stop_wakes_an_idle_ring_at_once") {
        return;
    }
    let peer = client("127.0.0.1:0");
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut fake = Fake::new(nowhere, nowhere);
    fake.deadline = None;
    let setup = Setup {
        batch_size: 4,
        ring_entries: 64,
        ..Setup::default()
    };
    let running = start(Kind::Uring, setup, fake, |_, _| {}).expect("start");
    // Proves the loop is up and waiting.
    peer.send_to(b"reply", running.relay).expect("send");
    assert_eq!(recv(&peer).0, b"ok");
    let asked = Instant::now();
    running.finish();
    // MAX_WAIT is 500 ms: returning well before shows the stop poll woke the ring.
    assert!(
        asked.elapsed() < Duration::from_millis(300),
        "took {:?}",
        asked.elapsed()
    );
}

#[test]
fn running_out_of_buffers_recovers() {
    if !Kind::Uring.available("running_out_of_buffers_recovers") {
        return;
    }
    let sink = client("127.0.0.1:0");
    let peer = client("127.0.0.1:0");
    let sink_addr = sink.local_addr().expect("addr");
    let early: Vec<Vec<u8>> = (0..100).map(|i| datagram(b"fwd", i, 64)).collect();
    // 8 buffers for a burst of 100: the multishot receive must end with
    // ENOBUFS and be armed again, repeatedly.
    let setup = Setup {
        batch_size: 4,
        ring_entries: 8,
        ..Setup::default()
    };
    let running = start(
        Kind::Uring,
        setup,
        Fake::new(sink_addr, sink_addr),
        |relay, _| {
            for d in &early {
                peer.send_to(d, relay).expect("send");
            }
        },
    )
    .expect("start");
    for d in &early {
        assert_eq!(recv(&sink).0, *d);
    }
    for i in 100..110 {
        let d = datagram(b"fwd", i, 64);
        peer.send_to(&d, running.relay).expect("send");
        assert_eq!(recv(&sink).0, d);
    }
    let done = running.finish();
    assert_eq!(done.fake.seen.len(), 110);
    assert!(done.recv_buffers_exhausted() >= 1);
    assert!(done.recv_rearms() >= done.recv_buffers_exhausted());
}

#[test]
fn recvmsg_out_header_layout() {
    // What the kernel writes at the start of a buffer: io_uring_recvmsg_out.
    let mut buf = vec![0u8; BUF_SIZE];
    buf[0..4].copy_from_slice(&16u32.to_ne_bytes()); // namelen
    buf[8..12].copy_from_slice(&3u32.to_ne_bytes()); // payloadlen
    buf[RECVMSG_OUT_LEN + NAME_LEN..][..3].copy_from_slice(b"abc");
    // SAFETY: all zeroes is a valid msghdr.
    let mut hdr: msghdr = unsafe { mem::zeroed() };
    hdr.msg_namelen = NAME_LEN as libc::socklen_t;
    let used = RECVMSG_OUT_LEN + NAME_LEN + 3;
    let msg = types::RecvMsgOut::parse(&buf[..used], &hdr).expect("parse");
    assert_eq!(msg.payload_data(), b"abc");
    assert_eq!(msg.name_data().len(), 16);
    assert_eq!(BUF_SIZE % 16, 0);
}

#[test]
fn lost_completions_do_not_end_the_loop() {
    assert!(is_transient_enter_error(&io::Error::from_raw_os_error(
        libc::EBADR
    )));
    assert!(!is_transient_enter_error(&io::Error::from_raw_os_error(
        libc::EBADF
    )));
}

#[test]
fn force_variable_values() {
    assert!(forced_failure(Some(OsStr::new("1"))));
    assert!(forced_failure(Some(OsStr::new("yes"))));
    assert!(!forced_failure(Some(OsStr::new("0"))));
    assert!(!forced_failure(Some(OsStr::new(""))));
    assert!(!forced_failure(None));
}

/// Runs this test binary again with the variable set (setting it here
/// would race with the other tests), and checks `probe` fails there.
#[test]
fn probe_fails_when_forced_by_the_environment() {
    if std::env::var_os(FORCE_PROBE_FAIL_ENV).is_some() {
        // The child, or a run with the variable set.
        assert_eq!(probe(), Err(format!("forced by {FORCE_PROBE_FAIL_ENV}")));
        return;
    }
    let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
    let name = format!("{module}::probe_fails_when_forced_by_the_environment");
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([name.as_str(), "--exact", "--test-threads=1"])
        .env(FORCE_PROBE_FAIL_ENV, "1")
        .output()
        .expect("rerun the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}
