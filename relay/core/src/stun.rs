//! The relay's STUN responder: RFC 8489 Binding on the main port, and RFC
//! 5780 behaviour discovery from the alternate sockets when the operator
//! configured them. `docs/protocol.md` ("STUN") is the byte-level rule set;
//! this module is its one implementation, for every socket and backend.
//!
//! The responder decides and writes; it sends nothing. It answers into the
//! request's own buffer and says which of the relay's local sockets the
//! answer must leave from ([`LocalSocket`]): the one the request arrived on,
//! or, for a CHANGE-REQUEST, the one with the other IP address and/or port.
//!
//! Every source is unproven to STUN (there is no handshake), so:
//! - an answer is never longer than the request: the relay sends the longest
//!   prefix of its attribute list that fits, and nothing when not even
//!   XOR-MAPPED-ADDRESS fits (`stun_request_too_short`); clients pad their
//!   requests with PADDING to get everything;
//! - answers are rate-limited per source IP and in total (`stun_rate_limited`),
//!   with the same bounded, evicting table as the other per-IP limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use lanrage_proto::stun::{
    address_attr_len, attr, BindingErrorResponse, BindingRequest, BindingSuccess, StunError,
    UnknownAttributes, ERROR_UNKNOWN_ATTRIBUTE, FINGERPRINT_LEN, HEADER_LEN,
};

use crate::metrics::{DropReason, Event, Metrics};
use crate::rate_limit::{Bucket, RateLimit, RateLimiter};

/// One of the relay's (up to) four STUN sockets, by which of the two IP
/// addresses and two ports it is bound to (RFC 5780 §4: the primary and
/// alternate address and port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalSocket {
    /// The data plane's `listen` address: primary IP, primary port.
    Primary,
    /// Primary IP, alternate port.
    AltPort,
    /// Alternate IP, primary port.
    AltAddress,
    /// Alternate IP, alternate port.
    AltBoth,
}

impl LocalSocket {
    pub const ALL: [LocalSocket; 4] = [
        Self::Primary,
        Self::AltPort,
        Self::AltAddress,
        Self::AltBoth,
    ];

    /// The label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::AltPort => "alt_port",
            Self::AltAddress => "alt_address",
            Self::AltBoth => "alt_both",
        }
    }

    /// Bit 1: the alternate IP; bit 0: the alternate port.
    fn bits(self) -> u8 {
        match self {
            Self::Primary => 0b00,
            Self::AltPort => 0b01,
            Self::AltAddress => 0b10,
            Self::AltBoth => 0b11,
        }
    }

    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0b00 => Self::Primary,
            0b01 => Self::AltPort,
            0b10 => Self::AltAddress,
            _ => Self::AltBoth,
        }
    }
}

/// Where the relay's STUN sockets are bound. `Default`: only the primary,
/// address unknown (no RESPONSE-ORIGIN, no behaviour discovery).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StunSockets {
    /// The address the data plane is bound to (`listen`, with the real port
    /// if it asked for 0); `None` if unknown. Needed for any alternate.
    pub primary: Option<SocketAddr>,
    /// The alternate port: a socket on the primary IP and, with
    /// `alternate_ip`, one on the alternate IP.
    pub alternate_port: Option<u16>,
    /// The alternate IP address: sockets on it at the primary and the
    /// alternate port. Only used together with `alternate_port`.
    pub alternate_ip: Option<IpAddr>,
}

impl StunSockets {
    /// The address `socket` is bound to, if the relay has that socket.
    pub fn address(&self, socket: LocalSocket) -> Option<SocketAddr> {
        let primary = self.primary?;
        match socket {
            LocalSocket::Primary => Some(primary),
            LocalSocket::AltPort => Some(SocketAddr::new(primary.ip(), self.alternate_port?)),
            LocalSocket::AltAddress => {
                self.alternate_port?;
                Some(SocketAddr::new(self.alternate_ip?, primary.port()))
            }
            LocalSocket::AltBoth => Some(SocketAddr::new(self.alternate_ip?, self.alternate_port?)),
        }
    }

    /// Which changes the relay can make: bit 1 the IP, bit 0 the port.
    fn changeable(&self) -> u8 {
        match (
            self.address(LocalSocket::AltPort),
            self.address(LocalSocket::AltBoth),
        ) {
            (Some(_), Some(_)) => 0b11,
            (Some(_), None) => 0b01,
            _ => 0b00,
        }
    }
}

/// The responder's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunConfig {
    pub sockets: StunSockets,
    /// Answers per source IP address.
    pub rate_limit: RateLimit,
}

impl Default for StunConfig {
    fn default() -> Self {
        Self {
            sockets: StunSockets::default(),
            rate_limit: DEFAULT_STUN_RATE_LIMIT,
        }
    }
}

/// Per source IP: a client's behaviour discovery sends about ten requests
/// (with retransmissions), and a LAN party behind one NAT runs it on every
/// PC at once.
pub const DEFAULT_STUN_RATE_LIMIT: RateLimit = RateLimit {
    per_second: 20,
    burst: 100,
};

/// STUN answers in all, per second, whatever the sources: a spoofed flood
/// from many addresses would otherwise turn the relay into a reflector of
/// its full rate (answers are no larger than requests, but they still go
/// where the spoofer says).
const TOTAL_STUN_LIMIT: RateLimit = RateLimit {
    per_second: 10_000,
    burst: 10_000,
};

/// What the responder decided for one STUN datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunReply {
    /// The socket the answer leaves from.
    pub from: LocalSocket,
    /// The answer is `buf[..len]`, written over the request; never more
    /// than the request's length.
    pub len: usize,
}

/// Per source IP and in total, shared by every worker and the alternate
/// sockets' thread.
struct Limiter {
    per_ip: RateLimiter,
    total: Bucket,
}

/// The responder; each worker holds a clone (they share the limiter).
#[derive(Clone)]
pub struct StunResponder {
    sockets: StunSockets,
    limiter: Arc<Mutex<Limiter>>,
    metrics: Arc<Metrics>,
}

impl StunResponder {
    pub fn new(
        config: StunConfig,
        max_sources: usize,
        metrics: Arc<Metrics>,
        now: Instant,
    ) -> Self {
        Self {
            sockets: config.sockets,
            limiter: Arc::new(Mutex::new(Limiter {
                per_ip: RateLimiter::new(config.rate_limit, max_sources),
                total: Bucket::full(TOTAL_STUN_LIMIT, now),
            })),
            metrics,
        }
    }

    pub fn sockets(&self) -> &StunSockets {
        &self.sockets
    }

    /// Answers the STUN datagram `buf` from `src` that arrived on
    /// `arrived_on`, writing the answer over it; or says why not (the caller
    /// counts the drop).
    pub fn handle(
        &self,
        now: Instant,
        arrived_on: LocalSocket,
        src: SocketAddr,
        buf: &mut [u8],
    ) -> Result<StunReply, DropReason> {
        let request = BindingRequest::parse(buf).map_err(|e| match e {
            StunError::NotBindingRequest(_) => DropReason::StunNotBindingRequest,
            _ => DropReason::StunMalformed,
        })?;
        let answer = self.plan(arrived_on, src, &request, buf.len())?;
        if !self.allow(now, src.ip()) {
            return Err(DropReason::StunRateLimited);
        }
        let (from, len, event) = match answer {
            Answer::Success { from, response } => {
                (from, response.encode(buf), Event::StunSuccessSent)
            }
            Answer::Error(error) => (arrived_on, error.encode(buf), Event::StunErrorSent),
        };
        // The plan measured every attribute against the buffer; an encode
        // error here is a bug, dropped and counted rather than sent short.
        let len = len.map_err(|_| DropReason::ReplyLargerThanRequest)?;
        self.metrics.record(event);
        if from != LocalSocket::Primary {
            self.metrics.record(Event::StunSentFromAlternate);
        }
        tracing::trace!(%src, from = from.as_str(), len, "STUN answered");
        Ok(StunReply { from, len })
    }

    /// Forgets idle sources; returns the per-IP table's evictions so far.
    pub fn handle_timeout(&self, now: Instant) -> u64 {
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        limiter.per_ip.forget_idle(now);
        limiter.per_ip.evictions()
    }

    fn allow(&self, now: Instant, ip: IpAddr) -> bool {
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        // The total first: when it is empty, a flood costs no table work.
        limiter.total.has_token(TOTAL_STUN_LIMIT, now)
            && limiter.per_ip.allow(now, ip)
            && limiter.total.take(TOTAL_STUN_LIMIT, now)
    }

    /// The answer to `request`, cut to fit `room` bytes (docs/protocol.md
    /// "STUN", the size rule), or the reason there is none.
    fn plan(
        &self,
        arrived_on: LocalSocket,
        src: SocketAddr,
        request: &BindingRequest,
        room: usize,
    ) -> Result<Answer<'static>, DropReason> {
        let txid = request.transaction_id;
        let error = |unknown: UnknownAttributes| {
            let mut error = BindingErrorResponse {
                transaction_id: txid,
                code: ERROR_UNKNOWN_ATTRIBUTE,
                unknown,
                fingerprint: true,
            };
            if error.encoded_len() > room {
                error.fingerprint = false;
            }
            if error.encoded_len() > room {
                return Err(DropReason::StunRequestTooShort);
            }
            Ok(Answer::Error(error))
        };
        if !request.unknown.is_empty() {
            return error(request.unknown);
        }
        let changeable = self.sockets.changeable();
        let mut from = arrived_on;
        if let Some(change) = request.change {
            // RFC 5780 §6.1: a server that cannot make the change answers 420.
            let wanted = (u8::from(change.change_ip) << 1) | u8::from(change.change_port);
            if changeable == 0 || wanted & !changeable != 0 {
                return error(UnknownAttributes::new(&[attr::CHANGE_REQUEST]));
            }
            from = LocalSocket::from_bits(arrived_on.bits() ^ wanted);
        }
        // OTHER-ADDRESS: where "change everything the relay can change"
        // would answer from, seen from the socket the request arrived on
        // (RFC 5780 §7.4).
        let other = (changeable != 0)
            .then(|| {
                self.sockets
                    .address(LocalSocket::from_bits(arrived_on.bits() ^ changeable))
            })
            .flatten();
        // RESPONSE-ORIGIN: the socket the answer leaves from, unless it is
        // bound to the unspecified address (the relay doesn't know which of
        // its addresses the request was sent to).
        let origin = self
            .sockets
            .address(from)
            .filter(|a| !a.ip().is_unspecified());
        let mapped = canonical(src);
        // The longest prefix of [XOR-MAPPED-ADDRESS, OTHER-ADDRESS,
        // RESPONSE-ORIGIN, FINGERPRINT] that fits; then PADDING up to the
        // request's length if it asked with PADDING and everything fit.
        let mut len = HEADER_LEN + address_attr_len(&mapped);
        if len > room {
            return Err(DropReason::StunRequestTooShort);
        }
        let mut response = BindingSuccess {
            transaction_id: txid,
            mapped,
            other: None,
            origin: None,
            software: None,
            padding: None,
            fingerprint: false,
        };
        let mut complete = true;
        for step in 0..3 {
            let add = match step {
                0 => other.as_ref().map(address_attr_len),
                1 => origin.as_ref().map(address_attr_len),
                _ => Some(FINGERPRINT_LEN),
            };
            let Some(add) = add else { continue };
            if len + add > room {
                complete = false;
                break;
            }
            len += add;
            match step {
                0 => response.other = other,
                1 => response.origin = origin,
                _ => response.fingerprint = true,
            }
        }
        if complete && request.padding && room >= len + 4 {
            // Lengths are multiples of 4 on both sides, so this fills `room`.
            response.padding = Some((room - len - 4) & !3);
        }
        Ok(Answer::Success { from, response })
    }
}

enum Answer<'a> {
    Success {
        from: LocalSocket,
        response: BindingSuccess<'a>,
    },
    Error(BindingErrorResponse),
}

/// IPv4 sources in their IPv4 form (a dual-stack socket can report them as
/// v4-mapped IPv6), so XOR-MAPPED-ADDRESS carries the address the client
/// knows.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanrage_proto::stun::{
        BindingResponse, ChangeRequest, RequestBuilder, MAX_RESPONSE_LEN_V4,
    };

    const CLIENT: &str = "198.51.100.7:40000";

    fn sockets(alt_port: bool, alt_ip: bool) -> StunSockets {
        StunSockets {
            primary: Some("203.0.113.1:3478".parse().expect("addr")),
            alternate_port: alt_port.then_some(3479),
            alternate_ip: alt_ip.then(|| "203.0.113.2".parse().expect("ip")),
        }
    }

    fn responder(sockets: StunSockets) -> StunResponder {
        StunResponder::new(
            StunConfig {
                sockets,
                rate_limit: RateLimit {
                    per_second: 1,
                    burst: 1000,
                },
            },
            100,
            Arc::new(Metrics::default()),
            Instant::now(),
        )
    }

    fn request(change: Option<ChangeRequest>, pad_to: usize) -> Vec<u8> {
        let builder = RequestBuilder {
            change,
            pad_to,
            ..RequestBuilder::new([9; 12])
        };
        let mut buf = vec![0u8; builder.encoded_len()];
        builder.encode(&mut buf).expect("encode");
        buf
    }

    fn ask(
        r: &StunResponder,
        on: LocalSocket,
        mut buf: Vec<u8>,
    ) -> Result<(LocalSocket, BindingResponse, usize), DropReason> {
        let sent = buf.len();
        let reply = r.handle(Instant::now(), on, CLIENT.parse().expect("addr"), &mut buf)?;
        assert!(reply.len <= sent, "{} > {sent}", reply.len);
        let parsed = BindingResponse::parse(&buf[..reply.len]).expect("a valid response");
        Ok((reply.from, parsed, reply.len))
    }

    fn success(response: BindingResponse) -> lanrage_proto::stun::ParsedSuccess {
        match response {
            BindingResponse::Success(s) => s,
            BindingResponse::Error(e) => panic!("error {}", e.code),
        }
    }

    #[test]
    fn a_padded_binding_gets_every_attribute_and_is_padded_to_the_request() {
        let r = responder(sockets(true, true));
        let (from, response, len) =
            ask(&r, LocalSocket::Primary, request(None, 120)).expect("answered");
        assert_eq!(from, LocalSocket::Primary);
        assert_eq!(len, 120, "padded to the request's length");
        let s = success(response);
        assert_eq!(s.xor_mapped, Some(CLIENT.parse().expect("addr")));
        assert_eq!(s.other, Some("203.0.113.2:3479".parse().expect("addr")));
        assert_eq!(s.origin, Some("203.0.113.1:3478".parse().expect("addr")));
    }

    #[test]
    fn the_answer_is_the_longest_prefix_that_fits() {
        let r = responder(sockets(true, true));
        // 28 bytes: nothing fits (XOR-MAPPED-ADDRESS needs 32).
        assert_eq!(
            ask(&r, LocalSocket::Primary, request(None, 0)).map(|_| ()),
            Err(DropReason::StunRequestTooShort),
            "a 28-byte request (header and FINGERPRINT)"
        );
        let mut bare = request(None, 0);
        bare.truncate(20);
        bare[3] = 0;
        assert_eq!(
            ask(&r, LocalSocket::Primary, bare).map(|_| ()),
            Err(DropReason::StunRequestTooShort)
        );
        // 40 bytes: XOR-MAPPED-ADDRESS only (OTHER-ADDRESS would make 44).
        let (_, response, len) =
            ask(&r, LocalSocket::Primary, request(None, 40)).expect("answered");
        let s = success(response);
        assert_eq!(len, 32);
        assert!(s.xor_mapped.is_some() && s.other.is_none() && s.origin.is_none());
        // 56: without FINGERPRINT; 64: everything.
        let (_, response, len) =
            ask(&r, LocalSocket::Primary, request(None, 56)).expect("answered");
        let s = success(response);
        assert_eq!(len, 56);
        assert!(s.other.is_some() && s.origin.is_some());
        let (_, _, len) =
            ask(&r, LocalSocket::Primary, request(None, MAX_RESPONSE_LEN_V4)).expect("answered");
        assert_eq!(len, MAX_RESPONSE_LEN_V4);
    }

    #[test]
    fn change_requests_leave_from_the_changed_socket() {
        let r = responder(sockets(true, true));
        let cases = [
            (LocalSocket::Primary, false, true, LocalSocket::AltPort),
            (LocalSocket::Primary, true, false, LocalSocket::AltAddress),
            (LocalSocket::Primary, true, true, LocalSocket::AltBoth),
            (LocalSocket::AltBoth, true, true, LocalSocket::Primary),
            (LocalSocket::AltPort, false, true, LocalSocket::Primary),
            (
                LocalSocket::AltAddress,
                false,
                false,
                LocalSocket::AltAddress,
            ),
        ];
        for (on, change_ip, change_port, expected) in cases {
            let change = Some(ChangeRequest {
                change_ip,
                change_port,
            });
            let (from, response, _) = ask(&r, on, request(change, 100)).expect("answered");
            assert_eq!(from, expected, "{on:?} ip {change_ip} port {change_port}");
            let s = success(response);
            assert_eq!(s.origin, r.sockets().address(expected));
            // OTHER-ADDRESS is the opposite corner of where it arrived.
            let opposite = LocalSocket::from_bits(on.bits() ^ 0b11);
            assert_eq!(s.other, r.sockets().address(opposite));
        }
    }

    #[test]
    fn a_change_the_relay_cannot_make_is_a_420() {
        let port_only = responder(sockets(true, false));
        let ip = Some(ChangeRequest {
            change_ip: true,
            change_port: false,
        });
        let (from, response, _) =
            ask(&port_only, LocalSocket::Primary, request(ip, 100)).expect("answered");
        assert_eq!(from, LocalSocket::Primary);
        let BindingResponse::Error(e) = response else {
            panic!("not an error");
        };
        assert_eq!(
            (e.code, e.unknown.as_slice()),
            (420, &[attr::CHANGE_REQUEST][..])
        );
        // With only the alternate port, OTHER-ADDRESS is the primary IP at it.
        let (_, response, _) =
            ask(&port_only, LocalSocket::Primary, request(None, 100)).expect("answered");
        assert_eq!(
            success(response).other,
            Some("203.0.113.1:3479".parse().expect("addr"))
        );
        // Without alternates, any CHANGE-REQUEST is a 420, and there is no OTHER-ADDRESS.
        let none = responder(sockets(false, false));
        let (_, response, _) = ask(
            &none,
            LocalSocket::Primary,
            request(Some(ChangeRequest::default()), 100),
        )
        .expect("answered");
        assert!(matches!(response, BindingResponse::Error(e) if e.code == 420));
        let (_, response, _) =
            ask(&none, LocalSocket::Primary, request(None, 100)).expect("answered");
        assert_eq!(success(response).other, None);
    }

    #[test]
    fn junk_and_other_messages_are_counted_drops() {
        let r = responder(sockets(true, true));
        let mut indication = request(None, 0);
        indication[1] = 0x11;
        assert_eq!(
            ask(&r, LocalSocket::Primary, indication).map(|_| ()),
            Err(DropReason::StunMalformed),
            "the FINGERPRINT no longer matches"
        );
        let mut indication = request(None, 0);
        indication.truncate(20);
        indication[3] = 0;
        indication[1] = 0x11;
        assert_eq!(
            ask(&r, LocalSocket::Primary, indication).map(|_| ()),
            Err(DropReason::StunNotBindingRequest)
        );
    }

    #[test]
    fn answers_are_rate_limited_per_source() {
        let r = StunResponder::new(
            StunConfig {
                sockets: sockets(false, false),
                rate_limit: RateLimit {
                    per_second: 1,
                    burst: 2,
                },
            },
            100,
            Arc::new(Metrics::default()),
            Instant::now(),
        );
        let now = Instant::now();
        let src: SocketAddr = CLIENT.parse().expect("addr");
        let mut results = Vec::new();
        for _ in 0..3 {
            let mut buf = request(None, 64);
            results.push(r.handle(now, LocalSocket::Primary, src, &mut buf).is_ok());
        }
        assert_eq!(results, [true, true, false]);
        let mut buf = request(None, 64);
        let other: SocketAddr = "198.51.100.8:1".parse().expect("addr");
        assert!(r.handle(now, LocalSocket::Primary, other, &mut buf).is_ok());
    }

    #[test]
    fn an_unspecified_primary_sends_no_response_origin() {
        let r = responder(StunSockets {
            primary: Some("0.0.0.0:3478".parse().expect("addr")),
            alternate_port: Some(3479),
            alternate_ip: None,
        });
        let (_, response, _) = ask(&r, LocalSocket::Primary, request(None, 100)).expect("answered");
        let s = success(response);
        assert_eq!(s.origin, None);
        assert_eq!(s.other, Some("0.0.0.0:3479".parse().expect("addr")));
    }
}
