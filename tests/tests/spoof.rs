//! The raw-socket spoofer (`lanrage_tests::spoof`) against real UDP sockets
//! on loopback. Needs root or CAP_NET_RAW: without it the tests skip, or fail
//! under `LANRAGE_REQUIRE_PRIVILEGED=1`. Every wait is bounded. The kernel
//! verifies the UDP checksum of a raw-sent datagram before delivering it on
//! loopback, so a datagram that arrives also had correct checksums.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use lanrage_test_support::privileged::or_skip;
use lanrage_tests::spoof::{permitted_spoofer, Loopback, SpoofError, BATCH, MAX_PAYLOAD};

fn receiver() -> Result<(UdpSocket, Loopback)> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_read_timeout(Some(Duration::from_secs(5)))?;
    let dst = Loopback::new(rx.local_addr()?)?;
    Ok((rx, dst))
}

#[test]
fn a_spoofed_datagram_arrives_with_exactly_its_source_and_payload() -> Result<()> {
    let Some(mut spoofer) = or_skip(
        "a_spoofed_datagram_arrives_with_exactly_its_source_and_payload",
        permitted_spoofer(),
    ) else {
        return Ok(());
    };
    let (rx, dst) = receiver()?;
    let src = Loopback::new("127.3.4.5:4242".parse()?)?;
    let payload = b"spoofed, but only on loopback";
    spoofer.send_one(src, dst, payload)?;
    let mut buf = [0u8; 256];
    let (n, from) = rx
        .recv_from(&mut buf)
        .context("nothing arrived within 5 s")?;
    assert_eq!(from, SocketAddr::from(src));
    assert_eq!(&buf[..n], payload);
    Ok(())
}

#[test]
fn a_full_batch_arrives_from_all_its_sources() -> Result<()> {
    let Some(mut spoofer) = or_skip(
        "a_full_batch_arrives_from_all_its_sources",
        permitted_spoofer(),
    ) else {
        return Ok(());
    };
    let (rx, dst) = receiver()?;
    let mut expected = BTreeSet::new();
    for i in 0..BATCH {
        let src = Loopback::from_parts(Ipv4Addr::new(127, 10, 0, i as u8 + 1), 1000 + i as u16)?;
        // Lengths of both parities, up to the largest payload allowed.
        let len = if i == 0 { MAX_PAYLOAD } else { i };
        spoofer.queue(src, dst, len, |buf| buf.fill(i as u8))?;
        expected.insert((SocketAddr::from(src), len, i as u8));
    }
    assert!(spoofer.is_full());
    let err = spoofer
        .queue(dst, dst, 1, |_| {})
        .expect_err("a full batch takes no more");
    assert!(matches!(err, SpoofError::BatchFull), "{err}");
    assert_eq!(spoofer.flush()?, BATCH);
    assert_eq!(spoofer.queued(), 0);

    let mut seen = BTreeSet::new();
    let mut buf = vec![0u8; MAX_PAYLOAD + 1];
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < BATCH && Instant::now() < deadline {
        let (n, from) = rx.recv_from(&mut buf).context("a datagram went missing")?;
        assert!(buf[..n].iter().all(|&b| b == buf[0]), "payload from {from}");
        seen.insert((from, n, buf[0]));
    }
    assert_eq!(seen, expected);
    Ok(())
}

#[test]
fn oversized_payloads_are_refused() -> Result<()> {
    let Some(mut spoofer) = or_skip("oversized_payloads_are_refused", permitted_spoofer()) else {
        return Ok(());
    };
    let (_rx, dst) = receiver()?;
    let err = spoofer
        .queue(dst, dst, MAX_PAYLOAD + 1, |_| panic!("not filled"))
        .expect_err("too long");
    assert!(matches!(err, SpoofError::PayloadTooLong { .. }), "{err}");
    assert_eq!(spoofer.queued(), 0);
    Ok(())
}
