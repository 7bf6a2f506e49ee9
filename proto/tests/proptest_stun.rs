//! Property tests for `lanrage_proto::stun`: what one side encodes the other
//! parses back unchanged; every truncation, extension and byte flip of a
//! valid message parses to an error or to another valid message, never a
//! panic; and arbitrary bytes never panic either parser.
//!
//! Failing cases are saved in `proptest_stun.proptest-regressions` beside
//! this file.

use std::net::{IpAddr, SocketAddr};

use lanrage_proto::stun::{
    BindingErrorResponse, BindingRequest, BindingResponse, BindingSuccess, ChangeRequest,
    RequestBuilder, StunError, UnknownAttributes, HEADER_LEN,
};
use lanrage_proto::{classify, DatagramKind};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(IpAddr::from(ip), port)),
    ]
}

fn change() -> impl Strategy<Value = Option<ChangeRequest>> {
    proptest::option::of(
        (any::<bool>(), any::<bool>()).prop_map(|(change_ip, change_port)| ChangeRequest {
            change_ip,
            change_port,
        }),
    )
}

fn request() -> impl Strategy<Value = RequestBuilder> {
    (any::<[u8; 12]>(), change(), 0usize..300, any::<bool>()).prop_map(
        |(transaction_id, change, pad_to, fingerprint)| RequestBuilder {
            transaction_id,
            change,
            pad_to,
            fingerprint,
        },
    )
}

fn success() -> impl Strategy<Value = (BindingSuccess<'static>, bool)> {
    (
        any::<[u8; 12]>(),
        socket_addr(),
        proptest::option::of(socket_addr()),
        proptest::option::of(socket_addr()),
        proptest::option::of(0usize..40),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(transaction_id, mapped, other, origin, padding, software, fingerprint)| {
                (
                    BindingSuccess {
                        transaction_id,
                        mapped,
                        other,
                        origin,
                        software: software.then_some("lanrage-relay"),
                        padding: padding.map(|n| n * 4),
                        fingerprint,
                    },
                    software,
                )
            },
        )
}

/// Parses `bytes` with both parsers; they must not panic, and a valid
/// message must be classified as STUN.
fn parse_all(bytes: &[u8]) {
    let request = BindingRequest::parse(bytes);
    let response = BindingResponse::parse(bytes);
    if request.is_ok() || response.is_ok() {
        assert_eq!(classify(bytes), DatagramKind::Stun);
    }
    assert!(!(request.is_ok() && response.is_ok()));
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn requests_round_trip(builder in request()) {
        let mut buf = [0u8; 512];
        let len = builder.encode(&mut buf).expect("encode");
        prop_assert_eq!(len, builder.encoded_len());
        prop_assert!(builder.pad_to == 0 || len >= builder.pad_to);
        // Never more than 3 bytes over (alignment), beyond the unpadded minimum.
        prop_assert!(builder.pad_to == 0 || len <= (builder.pad_to + 3).max(HEADER_LEN + 8 + 4 + 8));
        let parsed = BindingRequest::parse(&buf[..len]).expect("parse");
        prop_assert_eq!(parsed.transaction_id, builder.transaction_id);
        prop_assert_eq!(parsed.change, builder.change);
        prop_assert_eq!(parsed.padding, builder.pad_to > 0);
        prop_assert_eq!(parsed.fingerprint, builder.fingerprint);
        prop_assert!(parsed.unknown.is_empty());
        prop_assert!(BindingResponse::parse(&buf[..len]).is_err());
        for short in 0..len {
            prop_assert!(BindingRequest::parse(&buf[..short]).is_err());
        }
    }

    #[test]
    fn successes_round_trip((success, _) in success()) {
        let mut buf = [0u8; 512];
        let len = success.encode(&mut buf).expect("encode");
        prop_assert_eq!(len, success.encoded_len());
        let BindingResponse::Success(parsed) = BindingResponse::parse(&buf[..len]).expect("parse") else {
            panic!("not a success");
        };
        prop_assert_eq!(parsed.transaction_id, success.transaction_id);
        prop_assert_eq!(parsed.xor_mapped, Some(success.mapped));
        prop_assert_eq!(parsed.mapped, None);
        prop_assert_eq!(parsed.other, success.other);
        prop_assert_eq!(parsed.origin, success.origin);
        for short in 0..len {
            prop_assert_eq!(success.encode(&mut buf[..short]), Err(StunError::BufferTooSmall));
        }
    }

    #[test]
    fn errors_round_trip(txid in any::<[u8; 12]>(), code in 300u16..700, unknown in proptest::collection::vec(any::<u16>(), 0..6), fingerprint in any::<bool>()) {
        let error = BindingErrorResponse {
            transaction_id: txid,
            code,
            unknown: UnknownAttributes::new(&unknown),
            fingerprint,
        };
        let mut buf = [0u8; 128];
        let len = error.encode(&mut buf).expect("encode");
        prop_assert_eq!(len, error.encoded_len());
        let BindingResponse::Error(parsed) = BindingResponse::parse(&buf[..len]).expect("parse") else {
            panic!("not an error");
        };
        prop_assert_eq!(parsed.code, code);
        prop_assert_eq!(parsed.unknown, error.unknown);
    }

    /// Truncated, extended or flipped valid messages: never a panic.
    #[test]
    fn mangled_messages_never_panic(
        builder in request(),
        (success, _) in success(),
        cut in any::<proptest::sample::Index>(),
        flip in any::<proptest::sample::Index>(),
        bit in 0u8..8,
        tail in proptest::collection::vec(any::<u8>(), 0..12),
    ) {
        let mut buf = [0u8; 512];
        for len in [builder.encode(&mut buf).expect("encode"), 0] {
            let len = if len == 0 { success.encode(&mut buf).expect("encode") } else { len };
            let msg = buf[..len].to_vec();
            parse_all(&msg[..cut.index(len + 1)]);
            let mut flipped = msg.clone();
            flipped[flip.index(len)] ^= 1 << bit;
            parse_all(&flipped);
            let mut longer = msg.clone();
            longer.extend_from_slice(&tail);
            parse_all(&longer);
            // A consistent header length over junk attributes.
            if longer.len() % 4 == 0 {
                let body = (longer.len() - HEADER_LEN) as u16;
                longer[2..4].copy_from_slice(&body.to_be_bytes());
                parse_all(&longer);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), steer in any::<bool>()) {
        if steer && bytes.len() >= HEADER_LEN {
            bytes[0] &= 0x01;
            bytes[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            let body = ((bytes.len() - HEADER_LEN) & !3) as u16;
            bytes[2..4].copy_from_slice(&body.to_be_bytes());
            bytes.truncate(HEADER_LEN + usize::from(body));
        }
        parse_all(&bytes);
    }
}
