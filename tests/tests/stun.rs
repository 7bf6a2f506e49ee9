//! STUN against the real relay binary on loopback (docs/protocol.md,
//! "STUN"): a padded Binding request learns the client's address; with
//! `stun.alternate_port`, a "change port" request is answered from the
//! alternate port and one sent there from `listen`; a request too short for
//! any answer gets none and is counted. Every wait is bounded; nothing
//! leaves 127.0.0.1.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lanrage_proto::stun::{
    BindingResponse, ChangeRequest, ParsedSuccess, RequestBuilder, MAX_RESPONSE_LEN,
};
use lanrage_tests::relay_process::free_udp_port;
use lanrage_tests::{Backend, RelaySetup};

macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod epoll {
            $(
                #[test]
                fn $test() -> anyhow::Result<()> {
                    super::$test(lanrage_tests::Backend::Epoll)
                }
            )*
        }
        mod io_uring {
            $(
                #[test]
                fn $test() -> anyhow::Result<()> {
                    match lanrage_test_support::privileged::or_skip(
                        stringify!($test),
                        lanrage_tests::Backend::IoUring.available(),
                    ) {
                        Some(backend) => super::$test(backend),
                        None => Ok(()),
                    }
                }
            )*
        }
    };
}

on_every_backend!(binding_and_behaviour_discovery_on_loopback);

/// Sends a Binding request of `pad_to` bytes (with `change`) to `to`, and
/// returns the success response and where it came from.
fn ask(
    socket: &UdpSocket,
    to: SocketAddr,
    change: Option<ChangeRequest>,
    txid: u8,
) -> Result<(ParsedSuccess, SocketAddr)> {
    let request = RequestBuilder {
        change,
        pad_to: MAX_RESPONSE_LEN,
        ..RequestBuilder::new([txid; 12])
    };
    let mut buf = [0u8; 256];
    let len = request.encode(&mut buf)?;
    socket.send_to(&buf[..len], to)?;
    // Three tries: loopback loses nothing, but a retry costs a test nothing.
    for _ in 0..3 {
        let mut answer = [0u8; 512];
        let (n, from) = match socket.recv_from(&mut answer) {
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                socket.send_to(&buf[..len], to)?;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                socket.send_to(&buf[..len], to)?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if n > len {
            bail!("a {n}-byte answer to a {len}-byte request");
        }
        match BindingResponse::parse(&answer[..n])? {
            BindingResponse::Success(s) if s.transaction_id == [txid; 12] => return Ok((s, from)),
            BindingResponse::Success(_) => continue,
            BindingResponse::Error(e) => bail!("error response {}", e.code),
        }
    }
    bail!("no STUN answer from {to} within 3 s")
}

fn binding_and_behaviour_discovery_on_loopback(backend: Backend) -> Result<()> {
    let alternate_port = free_udp_port()?;
    let setup = RelaySetup::new(&format!(
        "{}stun:\n  alternate_port: {alternate_port}\n",
        backend.yaml()
    ))?;
    let relay = setup.start()?;
    let listen = setup.listen;
    let alternate = SocketAddr::new(listen.ip(), alternate_port);
    if !relay.log().contains("STUN behaviour discovery") {
        bail!("no STUN line in the log: {}", relay.log());
    }
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.set_read_timeout(Some(Duration::from_secs(1)))?;
    let me = client.local_addr()?;

    let (s, from) = ask(&client, listen, None, 1).context("Binding to listen")?;
    assert_eq!(from, listen);
    assert_eq!(
        s.xor_mapped,
        Some(me),
        "XOR-MAPPED-ADDRESS is the client socket"
    );
    assert_eq!(
        s.other,
        Some(alternate),
        "OTHER-ADDRESS is the alternate port"
    );
    assert_eq!(s.origin, Some(listen));

    let change_port = Some(ChangeRequest {
        change_ip: false,
        change_port: true,
    });
    let (s, from) = ask(&client, listen, change_port, 2).context("change port")?;
    assert_eq!(
        from, alternate,
        "a change-port answer leaves from the alternate port"
    );
    assert_eq!((s.xor_mapped, s.origin), (Some(me), Some(alternate)));
    let (s, from) = ask(&client, alternate, None, 3).context("Binding to the alternate")?;
    assert_eq!((from, s.other), (alternate, Some(listen)));
    let (_, from) = ask(&client, alternate, change_port, 4).context("change back")?;
    assert_eq!(from, listen);

    // A bare 20-byte request: no answer, counted. The next answer from the
    // same socket proves the relay has handled it.
    let mut bare = [0u8; 20];
    RequestBuilder {
        fingerprint: false,
        ..RequestBuilder::new([5; 12])
    }
    .encode(&mut bare)?;
    client.send_to(&bare, listen)?;
    let (s, _) = ask(&client, listen, None, 6)?;
    assert_eq!(
        s.transaction_id, [6; 12],
        "nothing answered the bare request"
    );
    assert_eq!(relay.dropped("stun_request_too_short")?, 1);
    assert_eq!(
        relay.metric("lanrage_relay_stun_responses_total{kind=\"success\"}")?,
        5
    );
    assert_eq!(
        relay.metric("lanrage_relay_stun_alternate_responses_total")?,
        2
    );
    assert_eq!(relay.dropped("reply_larger_than_request")?, 0);
    Ok(())
}
