//! The STUN subset LANrage speaks (RFC 8489 Binding, RFC 5780 behaviour
//! discovery): parse a Binding request and encode its success or error
//! response (the relay's side), build a request and parse a response (the
//! client's side). `docs/protocol.md` ("STUN") has the bytes the relay sends.
//!
//! Written by hand rather than taken from a crate. The maintained Rust STUN
//! codecs (`stun_codec`, which firezone's relay uses, on `bytecodec`;
//! `stun-rs`; `stun-types`) decode into owned, allocated attribute lists
//! through generic encoder/decoder machinery, and none lets the caller
//! decide the size of a response attribute by attribute, which the relay's
//! size rule needs (a response to an unproven source is never larger than
//! the request, so the relay must know each attribute's exact length before
//! it writes one). Binding with six attributes and a CRC is about as much
//! code as the glue to such a crate would be, and like every parser in this
//! crate it is total: any byte string gives `Ok` or a [`StunError`], never a
//! panic, without allocating.
//!
//! Layout (RFC 8489 §5, §14): a 20-byte header (type, length of what
//! follows, the magic cookie `0x2112A442`, a 96-bit transaction id), then
//! attributes, each `type (2) ‖ length (2) ‖ value`, padded to a multiple of
//! 4 bytes. FINGERPRINT, if present, is last: CRC-32 of everything before it,
//! XOR `0x5354554E`, computed with the header's length already covering it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::demux::STUN_MAGIC_COOKIE;

/// The STUN header (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;
/// The magic cookie as a number (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// FINGERPRINT's XOR constant, "STUN" (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Message types (RFC 8489 §5, §18.2): method Binding in its classes.
pub const BINDING_REQUEST: u16 = 0x0001;
pub const BINDING_INDICATION: u16 = 0x0011;
pub const BINDING_SUCCESS: u16 = 0x0101;
pub const BINDING_ERROR: u16 = 0x0111;

/// Attribute types this module knows (RFC 8489 §18.3, RFC 5780 §9.1, RFC 8445 §16.1).
pub mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const CHANGE_REQUEST: u16 = 0x0003;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    pub const PASSWORD_ALGORITHM: u16 = 0x001D;
    pub const USERHASH: u16 = 0x001E;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    pub const PADDING: u16 = 0x0026;
    pub const RESPONSE_PORT: u16 = 0x0027;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    pub const OTHER_ADDRESS: u16 = 0x802C;
}

/// Comprehension-required attributes (type < 0x8000) a request may carry
/// without an error: the ones the relay acts on (CHANGE-REQUEST, PADDING)
/// and the ones it has no use for but understands (credentials an ICE agent
/// sends, which a server without credentials ignores). Any other
/// comprehension-required type earns a 420 (RFC 8489 §6.3.1), RESPONSE-PORT
/// (RFC 5780 §7.5) among them: the relay answers only to the source.
const UNDERSTOOD_REQUIRED: [u16; 15] = [
    attr::MAPPED_ADDRESS,
    attr::CHANGE_REQUEST,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::REALM,
    attr::NONCE,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::PASSWORD_ALGORITHM,
    attr::USERHASH,
    attr::XOR_MAPPED_ADDRESS,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::PADDING,
];

/// The error code for unknown comprehension-required attributes (RFC 8489 §14.8).
pub const ERROR_UNKNOWN_ATTRIBUTE: u16 = 420;

/// Encoded lengths of what the relay sends.
/// An address attribute: 4-byte attribute header, reserved, family, port, address.
pub const fn address_attr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 4 + 8,
        SocketAddr::V6(_) => 4 + 20,
    }
}
/// FINGERPRINT: header and a 4-byte CRC.
pub const FINGERPRINT_LEN: usize = 8;
/// The longest Binding success the relay sends without PADDING: IPv6
/// XOR-MAPPED-ADDRESS, OTHER-ADDRESS and RESPONSE-ORIGIN, and FINGERPRINT.
/// A request at least this long always gets every attribute.
pub const MAX_RESPONSE_LEN: usize = HEADER_LEN + 3 * 24 + FINGERPRINT_LEN;
/// The same for an IPv4 client and relay.
pub const MAX_RESPONSE_LEN_V4: usize = HEADER_LEN + 3 * 12 + FINGERPRINT_LEN;

/// How many unknown attribute types a parsed request keeps (and a 420 lists).
pub const MAX_UNKNOWN: usize = 4;

/// A 96-bit transaction id (RFC 8489 §5).
pub type TransactionId = [u8; 12];

/// Why bytes are not a STUN message this module accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    #[error("shorter than the 20-byte STUN header")]
    TooShort,
    #[error("not STUN: the top two bits or the magic cookie are wrong")]
    NotStun,
    #[error("the header's length {declared} does not match the {actual} bytes after it")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("the message length {0} is not a multiple of 4")]
    Unaligned(usize),
    #[error("attribute {0:#06x} runs past the end of the message")]
    AttributeOverrun(u16),
    #[error("attribute {0:#06x} has a value this module cannot read")]
    BadAttribute(u16),
    #[error("FINGERPRINT does not match the message")]
    BadFingerprint,
    #[error("an attribute follows FINGERPRINT")]
    AfterFingerprint,
    #[error("message type {0:#06x} is not a Binding request")]
    NotBindingRequest(u16),
    #[error("message type {0:#06x} is not a Binding response")]
    NotBindingResponse(u16),
    #[error("a response has unknown comprehension-required attribute {0:#06x}")]
    UnknownRequired(u16),
    #[error("the output buffer is too small for the message")]
    BufferTooSmall,
    #[error("PADDING of {0} bytes is not a multiple of 4 or too long")]
    BadPadding(usize),
}

/// The CHANGE-REQUEST flags (RFC 5780 §7.2): answer from the other IP
/// address, the other port, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChangeRequest {
    pub change_ip: bool,
    pub change_port: bool,
}

impl ChangeRequest {
    const IP: u32 = 0x4;
    const PORT: u32 = 0x2;

    fn from_value(v: u32) -> Self {
        Self {
            change_ip: v & Self::IP != 0,
            change_port: v & Self::PORT != 0,
        }
    }

    fn value(self) -> u32 {
        (if self.change_ip { Self::IP } else { 0 })
            | (if self.change_port { Self::PORT } else { 0 })
    }
}

/// Up to [`MAX_UNKNOWN`] attribute types, in the order they came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnknownAttributes {
    types: [u16; MAX_UNKNOWN],
    len: usize,
}

impl UnknownAttributes {
    pub fn new(types: &[u16]) -> Self {
        let mut out = Self::default();
        for t in types {
            out.push(*t);
        }
        out
    }

    fn push(&mut self, t: u16) {
        if self.len < MAX_UNKNOWN && !self.as_slice().contains(&t) {
            self.types[self.len] = t;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[u16] {
        &self.types[..self.len]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// UNKNOWN-ATTRIBUTES' encoded length: header, 2 bytes a type, padded.
    fn attr_len(&self) -> usize {
        4 + padded(2 * self.len)
    }
}

/// A Binding request, parsed (the relay's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingRequest {
    pub transaction_id: TransactionId,
    /// The first CHANGE-REQUEST, if any (RFC 8489 §14: only the first of
    /// a repeated attribute counts).
    pub change: Option<ChangeRequest>,
    /// Whether it carried PADDING (RFC 5780 §7.6).
    pub padding: bool,
    /// Whether it carried a (valid) FINGERPRINT.
    pub fingerprint: bool,
    /// Comprehension-required attributes this module does not understand:
    /// the request must be answered with a 420 listing them.
    pub unknown: UnknownAttributes,
}

impl BindingRequest {
    /// Parses a datagram that must be exactly one Binding request.
    pub fn parse(bytes: &[u8]) -> Result<Self, StunError> {
        let message = Message::parse(bytes)?;
        if message.kind != BINDING_REQUEST {
            return Err(StunError::NotBindingRequest(message.kind));
        }
        let mut request = BindingRequest {
            transaction_id: message.transaction_id,
            change: None,
            padding: false,
            fingerprint: message.fingerprint,
            unknown: UnknownAttributes::default(),
        };
        for (kind, value) in message.attributes() {
            match kind {
                attr::CHANGE_REQUEST => {
                    let flags = be32(value).ok_or(StunError::BadAttribute(kind))?;
                    request
                        .change
                        .get_or_insert(ChangeRequest::from_value(flags));
                }
                attr::PADDING => request.padding = true,
                k if k < 0x8000 && !UNDERSTOOD_REQUIRED.contains(&k) => request.unknown.push(k),
                _ => {}
            }
        }
        Ok(request)
    }
}

/// A Binding request to encode (the client's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBuilder {
    pub transaction_id: TransactionId,
    pub change: Option<ChangeRequest>,
    /// Pad the request with PADDING to at least this many bytes, so that
    /// the relay's answer fits (a relay answers an unproven source with no
    /// more bytes than it sent: pad to [`MAX_RESPONSE_LEN`] to get every
    /// attribute). 0: no PADDING.
    pub pad_to: usize,
    pub fingerprint: bool,
}

impl RequestBuilder {
    pub fn new(transaction_id: TransactionId) -> Self {
        Self {
            transaction_id,
            change: None,
            pad_to: 0,
            fingerprint: true,
        }
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        let fixed = HEADER_LEN
            + if self.change.is_some() { 8 } else { 0 }
            + if self.fingerprint { FINGERPRINT_LEN } else { 0 };
        match self.padding_value_len(fixed) {
            Some(n) => fixed + 4 + n,
            None => fixed,
        }
    }

    /// PADDING's value length, if there is PADDING.
    fn padding_value_len(&self, fixed: usize) -> Option<usize> {
        (self.pad_to > 0).then(|| padded(self.pad_to.saturating_sub(fixed + 4)))
    }

    /// Writes the request into `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, StunError> {
        let fixed = HEADER_LEN
            + if self.change.is_some() { 8 } else { 0 }
            + if self.fingerprint { FINGERPRINT_LEN } else { 0 };
        let mut w = Writer::new(out, BINDING_REQUEST, &self.transaction_id)?;
        if let Some(change) = self.change {
            w.attr(attr::CHANGE_REQUEST, &change.value().to_be_bytes())?;
        }
        if let Some(n) = self.padding_value_len(fixed) {
            w.zeros(attr::PADDING, n)?;
        }
        w.finish(self.fingerprint)
    }
}

/// A Binding success response to encode (the relay's side). Attributes go
/// out in this order: XOR-MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN,
/// SOFTWARE, PADDING, FINGERPRINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingSuccess<'a> {
    pub transaction_id: TransactionId,
    /// The request's source as the server saw it (XOR-MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    pub other: Option<SocketAddr>,
    pub origin: Option<SocketAddr>,
    pub software: Option<&'a str>,
    /// PADDING's value length (a multiple of 4), if any.
    pub padding: Option<usize>,
    pub fingerprint: bool,
}

impl BindingSuccess<'_> {
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + address_attr_len(&self.mapped)
            + self.other.as_ref().map_or(0, address_attr_len)
            + self.origin.as_ref().map_or(0, address_attr_len)
            + self.software.map_or(0, |s| 4 + padded(s.len()))
            + self.padding.map_or(0, |n| 4 + n)
            + if self.fingerprint { FINGERPRINT_LEN } else { 0 }
    }

    pub fn encode(&self, out: &mut [u8]) -> Result<usize, StunError> {
        let mut w = Writer::new(out, BINDING_SUCCESS, &self.transaction_id)?;
        w.address(
            attr::XOR_MAPPED_ADDRESS,
            self.mapped,
            Some(&self.transaction_id),
        )?;
        if let Some(other) = self.other {
            w.address(attr::OTHER_ADDRESS, other, None)?;
        }
        if let Some(origin) = self.origin {
            w.address(attr::RESPONSE_ORIGIN, origin, None)?;
        }
        if let Some(software) = self.software {
            // RFC 8489 §14.14: fewer than 128 characters.
            if software.chars().count() >= 128 {
                return Err(StunError::BadAttribute(attr::SOFTWARE));
            }
            w.attr(attr::SOFTWARE, software.as_bytes())?;
        }
        if let Some(n) = self.padding {
            if n % 4 != 0 || n > u16::MAX as usize - 3 {
                return Err(StunError::BadPadding(n));
            }
            w.zeros(attr::PADDING, n)?;
        }
        w.finish(self.fingerprint)
    }
}

/// A Binding error response to encode: ERROR-CODE with an empty reason
/// phrase (the relay's errors are for programs, and short), UNKNOWN-ATTRIBUTES
/// when there are any, FINGERPRINT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingErrorResponse {
    pub transaction_id: TransactionId,
    /// 300..=699 (RFC 8489 §14.8).
    pub code: u16,
    pub unknown: UnknownAttributes,
    pub fingerprint: bool,
}

impl BindingErrorResponse {
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + 8
            + if self.unknown.is_empty() {
                0
            } else {
                self.unknown.attr_len()
            }
            + if self.fingerprint { FINGERPRINT_LEN } else { 0 }
    }

    pub fn encode(&self, out: &mut [u8]) -> Result<usize, StunError> {
        if !(300..700).contains(&self.code) {
            return Err(StunError::BadAttribute(attr::ERROR_CODE));
        }
        let mut w = Writer::new(out, BINDING_ERROR, &self.transaction_id)?;
        let class = (self.code / 100) as u8;
        let number = (self.code % 100) as u8;
        w.attr(attr::ERROR_CODE, &[0, 0, class, number])?;
        if !self.unknown.is_empty() {
            let mut value = [0u8; 2 * MAX_UNKNOWN];
            for (i, t) in self.unknown.as_slice().iter().enumerate() {
                value[2 * i..2 * i + 2].copy_from_slice(&t.to_be_bytes());
            }
            w.attr(attr::UNKNOWN_ATTRIBUTES, &value[..2 * self.unknown.len])?;
        }
        w.finish(self.fingerprint)
    }
}

/// A Binding response, parsed (the client's side). The caller matches the
/// transaction id against the request it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingResponse {
    Success(ParsedSuccess),
    Error(ParsedError),
}

impl BindingResponse {
    pub fn transaction_id(&self) -> TransactionId {
        match self {
            Self::Success(s) => s.transaction_id,
            Self::Error(e) => e.transaction_id,
        }
    }

    /// Parses a datagram that must be exactly one Binding response.
    pub fn parse(bytes: &[u8]) -> Result<Self, StunError> {
        let message = Message::parse(bytes)?;
        let txid = message.transaction_id;
        match message.kind {
            BINDING_SUCCESS => {
                let mut s = ParsedSuccess {
                    transaction_id: txid,
                    xor_mapped: None,
                    mapped: None,
                    other: None,
                    origin: None,
                };
                for (kind, value) in message.attributes() {
                    let slot = match kind {
                        attr::XOR_MAPPED_ADDRESS => &mut s.xor_mapped,
                        attr::MAPPED_ADDRESS => &mut s.mapped,
                        attr::OTHER_ADDRESS => &mut s.other,
                        attr::RESPONSE_ORIGIN => &mut s.origin,
                        k if k < 0x8000 && !UNDERSTOOD_REQUIRED.contains(&k) => {
                            return Err(StunError::UnknownRequired(k))
                        }
                        _ => continue,
                    };
                    let xor = (kind == attr::XOR_MAPPED_ADDRESS).then_some(&txid);
                    let addr = decode_address(value, xor).ok_or(StunError::BadAttribute(kind))?;
                    slot.get_or_insert(addr);
                }
                Ok(Self::Success(s))
            }
            BINDING_ERROR => {
                let mut code = None;
                let mut unknown = UnknownAttributes::default();
                for (kind, value) in message.attributes() {
                    match kind {
                        attr::ERROR_CODE if code.is_none() => {
                            let [_, _, class, number, ..] = *value else {
                                return Err(StunError::BadAttribute(kind));
                            };
                            let (class, number) = (u16::from(class & 0x07), u16::from(number));
                            if !(3..=6).contains(&class) || number > 99 {
                                return Err(StunError::BadAttribute(kind));
                            }
                            code = Some(class * 100 + number);
                        }
                        attr::UNKNOWN_ATTRIBUTES => {
                            if value.len() % 2 != 0 {
                                return Err(StunError::BadAttribute(kind));
                            }
                            for pair in value.chunks_exact(2) {
                                unknown.push(u16::from_be_bytes([pair[0], pair[1]]));
                            }
                        }
                        _ => {}
                    }
                }
                let code = code.ok_or(StunError::BadAttribute(attr::ERROR_CODE))?;
                Ok(Self::Error(ParsedError {
                    transaction_id: txid,
                    code,
                    unknown,
                }))
            }
            other => Err(StunError::NotBindingResponse(other)),
        }
    }
}

/// A parsed Binding success response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedSuccess {
    pub transaction_id: TransactionId,
    pub xor_mapped: Option<SocketAddr>,
    /// MAPPED-ADDRESS, from servers that also answer RFC 3489 clients.
    pub mapped: Option<SocketAddr>,
    pub other: Option<SocketAddr>,
    pub origin: Option<SocketAddr>,
}

impl ParsedSuccess {
    /// The reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
    pub fn reflexive(&self) -> Option<SocketAddr> {
        self.xor_mapped.or(self.mapped)
    }
}

/// A parsed Binding error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedError {
    pub transaction_id: TransactionId,
    pub code: u16,
    pub unknown: UnknownAttributes,
}

// ---- framing -------------------------------------------------------------

/// A checked STUN message: the header is valid, the length matches, the
/// attributes tile the body exactly, and FINGERPRINT (if any) is last and
/// correct. [`Message::attributes`] then cannot fail.
struct Message<'a> {
    kind: u16,
    transaction_id: TransactionId,
    /// The attributes before FINGERPRINT.
    body: &'a [u8],
    fingerprint: bool,
}

impl<'a> Message<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, StunError> {
        let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(StunError::TooShort);
        };
        if header[0] & 0xC0 != 0 || header[4..8] != STUN_MAGIC_COOKIE {
            return Err(StunError::NotStun);
        }
        let kind = u16::from_be_bytes([header[0], header[1]]);
        let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if declared != rest.len() {
            return Err(StunError::LengthMismatch {
                declared,
                actual: rest.len(),
            });
        }
        if declared % 4 != 0 {
            return Err(StunError::Unaligned(declared));
        }
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(&header[8..20]);
        // Walk the attributes once: each must fit, FINGERPRINT must be last.
        let mut offset = 0;
        let mut fingerprint_at = None;
        while offset < rest.len() {
            let Some(head) = rest.get(offset..offset + 4) else {
                return Err(StunError::AttributeOverrun(0));
            };
            let kind = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            if fingerprint_at.is_some() {
                return Err(StunError::AfterFingerprint);
            }
            let end = offset + 4 + padded(len);
            if end > rest.len() {
                return Err(StunError::AttributeOverrun(kind));
            }
            if kind == attr::FINGERPRINT {
                if len != 4 {
                    return Err(StunError::BadAttribute(kind));
                }
                fingerprint_at = Some(offset);
            }
            offset = end;
        }
        if let Some(at) = fingerprint_at {
            let covered = HEADER_LEN + at;
            let stored = be32(&rest[at + 4..at + 8]).ok_or(StunError::BadFingerprint)?;
            if crc32(&bytes[..covered]) ^ FINGERPRINT_XOR != stored {
                return Err(StunError::BadFingerprint);
            }
        }
        Ok(Self {
            kind,
            transaction_id,
            body: &rest[..fingerprint_at.unwrap_or(rest.len())],
            fingerprint: fingerprint_at.is_some(),
        })
    }

    /// `(type, value)` of every attribute before FINGERPRINT, values without
    /// their padding. The framing was checked by `parse`.
    fn attributes(&self) -> impl Iterator<Item = (u16, &'a [u8])> {
        let mut rest = self.body;
        std::iter::from_fn(move || {
            let head = rest.get(..4)?;
            let kind = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let value = rest.get(4..4 + len)?;
            rest = rest.get(4 + padded(len)..).unwrap_or(&[]);
            Some((kind, value))
        })
    }
}

/// Writes a message into a caller's buffer, checking room at every step.
struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    fn new(out: &'a mut [u8], kind: u16, txid: &TransactionId) -> Result<Self, StunError> {
        let header = out.get_mut(..HEADER_LEN).ok_or(StunError::BufferTooSmall)?;
        header[0..2].copy_from_slice(&kind.to_be_bytes());
        header[2..4].fill(0);
        header[4..8].copy_from_slice(&STUN_MAGIC_COOKIE);
        header[8..20].copy_from_slice(txid);
        Ok(Self {
            out,
            len: HEADER_LEN,
        })
    }

    /// Room for an attribute with a `value_len`-byte value: its bytes.
    fn reserve(&mut self, kind: u16, value_len: usize) -> Result<&mut [u8], StunError> {
        let len = u16::try_from(value_len).map_err(|_| StunError::BufferTooSmall)?;
        let end = self.len + 4 + padded(value_len);
        // The header's length field is 16 bits.
        if end - HEADER_LEN > usize::from(u16::MAX) {
            return Err(StunError::BufferTooSmall);
        }
        let slot = self
            .out
            .get_mut(self.len..end)
            .ok_or(StunError::BufferTooSmall)?;
        slot[0..2].copy_from_slice(&kind.to_be_bytes());
        slot[2..4].copy_from_slice(&len.to_be_bytes());
        slot[4..].fill(0);
        self.len = end;
        Ok(&mut slot[4..4 + value_len])
    }

    fn attr(&mut self, kind: u16, value: &[u8]) -> Result<(), StunError> {
        self.reserve(kind, value.len())?.copy_from_slice(value);
        Ok(())
    }

    fn zeros(&mut self, kind: u16, value_len: usize) -> Result<(), StunError> {
        self.reserve(kind, value_len).map(drop)
    }

    /// An address attribute, XOR-ed with the cookie (and the transaction id
    /// for IPv6) when `xor` is given (RFC 8489 §14.1, §14.2).
    fn address(
        &mut self,
        kind: u16,
        addr: SocketAddr,
        xor: Option<&TransactionId>,
    ) -> Result<(), StunError> {
        let mut value = [0u8; 20];
        let len = encode_address(addr, xor, &mut value);
        self.attr(kind, &value[..len])
    }

    /// Sets the header's length and appends FINGERPRINT if asked; returns
    /// the message length.
    fn finish(mut self, fingerprint: bool) -> Result<usize, StunError> {
        if fingerprint {
            self.set_length(self.len + FINGERPRINT_LEN)?;
            let crc = crc32(&self.out[..self.len]) ^ FINGERPRINT_XOR;
            self.attr(attr::FINGERPRINT, &crc.to_be_bytes())?;
        }
        self.set_length(self.len)?;
        Ok(self.len)
    }

    fn set_length(&mut self, total: usize) -> Result<(), StunError> {
        let body = u16::try_from(total - HEADER_LEN).map_err(|_| StunError::BufferTooSmall)?;
        self.out[2..4].copy_from_slice(&body.to_be_bytes());
        Ok(())
    }
}

/// Encodes `addr` as an address attribute's value into `out`; returns its length.
fn encode_address(addr: SocketAddr, xor: Option<&TransactionId>, out: &mut [u8; 20]) -> usize {
    let port_mask = if xor.is_some() {
        (MAGIC_COOKIE >> 16) as u16
    } else {
        0
    };
    out[0] = 0;
    out[2..4].copy_from_slice(&(addr.port() ^ port_mask).to_be_bytes());
    let mask = xor_mask(xor);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ mask[i];
            }
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ mask[i];
            }
            20
        }
    }
}

/// Decodes an address attribute's value; `None` for a bad family or length.
fn decode_address(value: &[u8], xor: Option<&TransactionId>) -> Option<SocketAddr> {
    let port_mask = if xor.is_some() {
        (MAGIC_COOKIE >> 16) as u16
    } else {
        0
    };
    let mask = xor_mask(xor);
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ port_mask;
    match (value.get(1)?, value.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(Ipv4Addr::from(o).into(), port))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = value[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(Ipv6Addr::from(o).into(), port))
        }
        _ => None,
    }
}

/// The XOR mask over an address: the cookie then the transaction id, or
/// zeros for a plain (not XOR-ed) address attribute.
fn xor_mask(xor: Option<&TransactionId>) -> [u8; 16] {
    let mut mask = [0u8; 16];
    if let Some(txid) = xor {
        mask[..4].copy_from_slice(&STUN_MAGIC_COOKIE);
        mask[4..].copy_from_slice(txid);
    }
    mask
}

fn padded(len: usize) -> usize {
    len.div_ceil(4) * 4
}

fn be32(value: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = value.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// CRC-32 as ISO/HDLC and zlib compute it (polynomial 0x04C11DB7,
/// reflected), the one FINGERPRINT uses (RFC 8489 §14.7).
pub fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, b| {
        TABLE[((crc ^ u32::from(*b)) & 0xFF) as usize] ^ (crc >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TXID: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn crc32_matches_the_reference_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    /// RFC 5769 §2.2: the IPv4 sample response, minus MESSAGE-INTEGRITY
    /// (whose HMAC this module does not compute): the XOR-MAPPED-ADDRESS
    /// bytes are the RFC's.
    #[test]
    fn xor_mapped_address_matches_rfc_5769() {
        let txid = [
            0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
        ];
        let mapped: SocketAddr = "192.0.2.1:32853".parse().expect("addr");
        let mut value = [0u8; 20];
        assert_eq!(encode_address(mapped, Some(&txid), &mut value), 8);
        assert_eq!(value[..8], [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]);
        let v6: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .expect("addr");
        assert_eq!(encode_address(v6, Some(&txid), &mut value), 20);
        assert_eq!(
            value,
            [
                0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
                0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9
            ]
        );
        assert_eq!(decode_address(&value, Some(&txid)), Some(v6));
    }

    #[test]
    fn a_padded_change_request_round_trips() {
        let mut builder = RequestBuilder::new(TXID);
        builder.change = Some(ChangeRequest {
            change_ip: false,
            change_port: true,
        });
        builder.pad_to = MAX_RESPONSE_LEN_V4;
        let mut buf = [0u8; 256];
        let len = builder.encode(&mut buf).expect("encode");
        assert_eq!(len, builder.encoded_len());
        assert_eq!(len, MAX_RESPONSE_LEN_V4);
        let request = BindingRequest::parse(&buf[..len]).expect("parse");
        assert_eq!(request.transaction_id, TXID);
        assert_eq!(request.change, builder.change);
        assert!(request.padding && request.fingerprint && request.unknown.is_empty());
        // A flipped byte anywhere is an error or a different request, never a panic.
        // FINGERPRINT covers every byte before it; flipping its own type
        // turns it into an unknown optional attribute (a request without one).
        for i in 0..len {
            let mut bad = buf;
            bad[i] ^= 0x01;
            match BindingRequest::parse(&bad[..len]) {
                Err(_) => {}
                Ok(other) => assert!(other != request && i >= len - 8, "byte {i}"),
            }
        }
    }

    #[test]
    fn a_bare_header_is_a_request_with_nothing() {
        let mut buf = [0u8; 20];
        let len = RequestBuilder {
            fingerprint: false,
            ..RequestBuilder::new(TXID)
        }
        .encode(&mut buf)
        .expect("encode");
        assert_eq!(len, 20);
        let request = BindingRequest::parse(&buf).expect("parse");
        assert_eq!(request.change, None);
        assert!(!request.padding && !request.fingerprint);
    }

    #[test]
    fn unknown_required_attributes_are_listed_and_optional_ones_ignored() {
        let mut buf = [0u8; 64];
        let mut w = Writer::new(&mut buf, BINDING_REQUEST, &TXID).expect("header");
        w.attr(attr::RESPONSE_PORT, &[0x12, 0x34, 0, 0])
            .expect("attr");
        w.attr(0x8123, &[1]).expect("attr");
        w.attr(0x0002, &[0; 8]).expect("attr");
        let len = w.finish(false).expect("finish");
        let request = BindingRequest::parse(&buf[..len]).expect("parse");
        assert_eq!(request.unknown.as_slice(), &[attr::RESPONSE_PORT, 0x0002]);
    }

    #[test]
    fn responses_round_trip_and_report_their_length() {
        let success = BindingSuccess {
            transaction_id: TXID,
            mapped: "[2001:db8::1]:4000".parse().expect("addr"),
            other: Some("198.51.100.2:3479".parse().expect("addr")),
            origin: Some("198.51.100.1:3478".parse().expect("addr")),
            software: Some("lanrage"),
            padding: Some(8),
            fingerprint: true,
        };
        let mut buf = [0u8; 256];
        let len = success.encode(&mut buf).expect("encode");
        assert_eq!(len, success.encoded_len());
        let BindingResponse::Success(parsed) = BindingResponse::parse(&buf[..len]).expect("parse")
        else {
            panic!("not a success");
        };
        assert_eq!(parsed.xor_mapped, Some(success.mapped));
        assert_eq!(parsed.reflexive(), Some(success.mapped));
        assert_eq!(
            (parsed.other, parsed.origin),
            (success.other, success.origin)
        );
        // Too small a buffer is an error at every length.
        for short in 0..len {
            assert_eq!(
                success.encode(&mut buf[..short]),
                Err(StunError::BufferTooSmall)
            );
        }

        let error = BindingErrorResponse {
            transaction_id: TXID,
            code: ERROR_UNKNOWN_ATTRIBUTE,
            unknown: UnknownAttributes::new(&[attr::CHANGE_REQUEST]),
            fingerprint: false,
        };
        let len = error.encode(&mut buf).expect("encode");
        assert_eq!(len, error.encoded_len());
        assert_eq!(len, 36);
        let BindingResponse::Error(parsed) = BindingResponse::parse(&buf[..len]).expect("parse")
        else {
            panic!("not an error");
        };
        assert_eq!(parsed.code, 420);
        assert_eq!(parsed.unknown.as_slice(), &[attr::CHANGE_REQUEST]);
    }

    #[test]
    fn framing_errors_are_named() {
        let mut buf = [0u8; 64];
        let len = RequestBuilder::new(TXID).encode(&mut buf).expect("encode");
        assert_eq!(BindingRequest::parse(&buf[..19]), Err(StunError::TooShort));
        assert!(matches!(
            BindingRequest::parse(&buf[..len - 4]),
            Err(StunError::LengthMismatch { .. })
        ));
        let mut bad = buf;
        bad[len - 1] ^= 1;
        assert_eq!(
            BindingRequest::parse(&bad[..len]),
            Err(StunError::BadFingerprint)
        );
        let mut response = buf;
        response[1] = 0x01;
        response[0] = 0x01;
        assert!(BindingRequest::parse(&response[..len]).is_err());
        // An attribute after FINGERPRINT.
        let mut after = [0u8; 64];
        after[..len].copy_from_slice(&buf[..len]);
        after[len..len + 4].copy_from_slice(&[0x80, 0x22, 0, 0]);
        after[2..4].copy_from_slice(&((len + 4 - 20) as u16).to_be_bytes());
        assert_eq!(
            BindingRequest::parse(&after[..len + 4]),
            Err(StunError::AfterFingerprint)
        );
    }
}
