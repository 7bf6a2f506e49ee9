//! The STUN parsers on arbitrary datagrams: never panic; a parsed request
//! or response is classified as STUN; and a parsed request re-encoded (with
//! what this module writes) parses back to the same fields.
//!
//! Shared by the cargo-fuzz target (`fuzz_targets/stun_message.rs`) and the
//! stable replay test `proto/tests/fuzz_replay.rs`.

use lanrage_proto::stun::{BindingRequest, BindingResponse, RequestBuilder};
use lanrage_proto::{classify, DatagramKind};

pub fn check(data: &[u8]) {
    let request = BindingRequest::parse(data);
    let response = BindingResponse::parse(data);
    assert!(
        !(request.is_ok() && response.is_ok()),
        "both a request and a response"
    );
    if request.is_ok() || response.is_ok() {
        assert_eq!(classify(data), DatagramKind::Stun);
    }
    if let Ok(request) = request {
        let builder = RequestBuilder {
            transaction_id: request.transaction_id,
            change: request.change,
            pad_to: if request.padding { 1 } else { 0 },
            fingerprint: request.fingerprint,
        };
        let mut buf = [0u8; 128];
        let len = builder.encode(&mut buf).expect("a request fits 128 bytes");
        let again = BindingRequest::parse(&buf[..len]).expect("re-encoded request parses");
        assert_eq!(
            (
                again.transaction_id,
                again.change,
                again.padding,
                again.fingerprint
            ),
            (
                request.transaction_id,
                request.change,
                request.padding,
                request.fingerprint
            )
        );
    }
}
