//! Party messages (`docs/protocol.md` §2.12, `docs/parties.md`): a client
//! asks its home relay to create, join, leave, kick, rename, invite or
//! close a party (type 9, party request), and the relay answers each
//! request and pushes the party's roster to its members (type 10, party
//! message).
//!
//! Both ride the registration's session: the keys come from the same
//! X25519 as the registration's MAC keys (§2.3), one per direction, and
//! everything after the fixed header is sealed with an AEAD, since a join
//! carries the code's secret and a roster the members' names and
//! addresses. A request is sealed with ChaCha20-Poly1305, its nonce the
//! request id (strictly increasing per client, Unix nanoseconds, as a
//! registration's timestamp). A relay message is sealed with
//! XChaCha20-Poly1305 under a nonce it carries: the relay's key for a
//! client is the same in every run of the relay, so its nonces must never
//! repeat across restarts, which a random per-run prefix and a counter
//! guarantee where a counter alone would not.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag, XChaCha20Poly1305, XNonce};

use crate::control::{header, ControlError, SessionKeys, HEADER_LEN};
use crate::key::PeerKey;

pub const TYPE_PARTY_REQUEST: u8 = 9;
pub const TYPE_PARTY_MESSAGE: u8 = 10;
/// The AEAD tag at the end of every sealed body.
pub const TAG_LEN: usize = 16;
/// Longest request plaintext (a create with two names of the longest kind
/// is 76 bytes).
pub const MAX_REQUEST_PLAINTEXT: usize = 128;
/// Longest relay message plaintext: a roster page of
/// [`ROSTER_PAGE_MEMBERS`] members with the longest names.
pub const MAX_MESSAGE_PLAINTEXT: usize = 1200;
/// Longest party or member name, in bytes of UTF-8.
pub const MAX_NAME: usize = 32;
/// Members per roster page: 16 of the longest (70 bytes each) fit in one
/// datagram below 1,280 bytes, so a full party of 64 is four pages.
pub const ROSTER_PAGE_MEMBERS: usize = 16;
/// The most members a party has (the consent list's bound, §2.4).
pub const MAX_MEMBERS: usize = 64;
/// The join code's secret on the wire (75 bits in 10 bytes; `join_code`).
pub const SECRET_LEN: usize = 10;

/// Header, client key, request id, sealed length.
pub const REQUEST_FIXED_LEN: usize = HEADER_LEN + 32 + 8 + 2;
pub const REQUEST_MIN_LEN: usize = REQUEST_FIXED_LEN + 1 + TAG_LEN;
pub const REQUEST_MAX_LEN: usize = REQUEST_FIXED_LEN + MAX_REQUEST_PLAINTEXT + TAG_LEN;
/// Header, kind, reserved, id, nonce, sealed length.
pub const MESSAGE_FIXED_LEN: usize = HEADER_LEN + 1 + 3 + 8 + 24 + 2;
pub const MESSAGE_MIN_LEN: usize = MESSAGE_FIXED_LEN + 1 + TAG_LEN;
pub const MESSAGE_MAX_LEN: usize = MESSAGE_FIXED_LEN + MAX_MESSAGE_PLAINTEXT + TAG_LEN;

const CLIENT_AT: usize = HEADER_LEN;
const ID_AT: usize = CLIENT_AT + 32;
const REQUEST_LENGTH_AT: usize = ID_AT + 8;
const KIND_AT: usize = HEADER_LEN;
const MESSAGE_ID_AT: usize = HEADER_LEN + 4;
const NONCE_AT: usize = MESSAGE_ID_AT + 8;
const MESSAGE_LENGTH_AT: usize = NONCE_AT + 24;

/// A relay message's kind (byte 8).
pub const KIND_REPLY: u8 = 1;
pub const KIND_ROSTER: u8 = 2;

/// What a client asks of its home relay. Names are checked by the relay
/// (length, no control characters); here only their length is bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyOp {
    /// A new party with the sender as owner; the reply carries its first
    /// join code's secret. `expires_in` seconds (0: never) and `max_uses`
    /// (0: unlimited) limit that code.
    Create {
        party_name: String,
        member_name: String,
        expires_in: u32,
        max_uses: u16,
    },
    Join {
        secret: [u8; SECRET_LEN],
        member_name: String,
    },
    Leave {
        party: u64,
    },
    /// Owner only.
    Kick {
        party: u64,
        member: PeerKey,
    },
    /// Owner only: the party's name.
    Rename {
        party: u64,
        name: String,
    },
    /// The sender's own name in the party.
    SetName {
        party: u64,
        name: String,
    },
    /// Owner only: another join code.
    Invite {
        party: u64,
        expires_in: u32,
        max_uses: u16,
    },
    /// Owner only: the party ends for everyone.
    Close {
        party: u64,
    },
    /// "My party's roster, please": sent after registering, so a member
    /// that was away learns what changed.
    Sync,
    /// The sender has every page of roster `version`: the relay stops
    /// resending it.
    RosterAck {
        party: u64,
        version: u64,
    },
}

const OP_CREATE: u8 = 1;
const OP_JOIN: u8 = 2;
const OP_LEAVE: u8 = 3;
const OP_KICK: u8 = 4;
const OP_RENAME: u8 = 5;
const OP_SET_NAME: u8 = 6;
const OP_INVITE: u8 = 7;
const OP_CLOSE: u8 = 8;
const OP_SYNC: u8 = 9;
const OP_ROSTER_ACK: u8 = 10;

/// Why a party message's plaintext doesn't decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PartyDecodeError {
    #[error("unknown party operation {0}")]
    UnknownOp(u8),
    #[error("a party message of the wrong length for its contents")]
    WrongLength,
    #[error("a name longer than {MAX_NAME} bytes or not UTF-8")]
    BadName,
    #[error("an unknown status or flag")]
    BadValue,
}

/// A reader over a plaintext that fails on any shortfall.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PartyDecodeError> {
        if self.bytes.len() < n {
            return Err(PartyDecodeError::WrongLength);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, PartyDecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PartyDecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PartyDecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PartyDecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn key(&mut self) -> Result<PeerKey, PartyDecodeError> {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.take(32)?);
        Ok(PeerKey(k))
    }

    fn name(&mut self) -> Result<String, PartyDecodeError> {
        let len = usize::from(self.u8()?);
        if len > MAX_NAME {
            return Err(PartyDecodeError::BadName);
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| PartyDecodeError::BadName)
    }

    fn end(&self) -> Result<(), PartyDecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(PartyDecodeError::WrongLength)
        }
    }
}

/// Writes a name, cut at [`MAX_NAME`] bytes on a character boundary.
fn put_name(out: &mut Vec<u8>, name: &str) {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&name.as_bytes()[..end]);
}

impl PartyOp {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80);
        match self {
            PartyOp::Create {
                party_name,
                member_name,
                expires_in,
                max_uses,
            } => {
                out.push(OP_CREATE);
                put_name(&mut out, party_name);
                put_name(&mut out, member_name);
                out.extend_from_slice(&expires_in.to_be_bytes());
                out.extend_from_slice(&max_uses.to_be_bytes());
            }
            PartyOp::Join {
                secret,
                member_name,
            } => {
                out.push(OP_JOIN);
                out.extend_from_slice(secret);
                put_name(&mut out, member_name);
            }
            PartyOp::Leave { party } | PartyOp::Close { party } => {
                out.push(if matches!(self, PartyOp::Leave { .. }) {
                    OP_LEAVE
                } else {
                    OP_CLOSE
                });
                out.extend_from_slice(&party.to_be_bytes());
            }
            PartyOp::Kick { party, member } => {
                out.push(OP_KICK);
                out.extend_from_slice(&party.to_be_bytes());
                out.extend_from_slice(member.as_bytes());
            }
            PartyOp::Rename { party, name } | PartyOp::SetName { party, name } => {
                out.push(if matches!(self, PartyOp::Rename { .. }) {
                    OP_RENAME
                } else {
                    OP_SET_NAME
                });
                out.extend_from_slice(&party.to_be_bytes());
                put_name(&mut out, name);
            }
            PartyOp::Invite {
                party,
                expires_in,
                max_uses,
            } => {
                out.push(OP_INVITE);
                out.extend_from_slice(&party.to_be_bytes());
                out.extend_from_slice(&expires_in.to_be_bytes());
                out.extend_from_slice(&max_uses.to_be_bytes());
            }
            PartyOp::Sync => out.push(OP_SYNC),
            PartyOp::RosterAck { party, version } => {
                out.push(OP_ROSTER_ACK);
                out.extend_from_slice(&party.to_be_bytes());
                out.extend_from_slice(&version.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PartyDecodeError> {
        let mut r = Reader { bytes };
        let op = match r.u8()? {
            OP_CREATE => PartyOp::Create {
                party_name: r.name()?,
                member_name: r.name()?,
                expires_in: r.u32()?,
                max_uses: r.u16()?,
            },
            OP_JOIN => {
                let mut secret = [0u8; SECRET_LEN];
                secret.copy_from_slice(r.take(SECRET_LEN)?);
                PartyOp::Join {
                    secret,
                    member_name: r.name()?,
                }
            }
            OP_LEAVE => PartyOp::Leave { party: r.u64()? },
            OP_KICK => PartyOp::Kick {
                party: r.u64()?,
                member: r.key()?,
            },
            OP_RENAME => PartyOp::Rename {
                party: r.u64()?,
                name: r.name()?,
            },
            OP_SET_NAME => PartyOp::SetName {
                party: r.u64()?,
                name: r.name()?,
            },
            OP_INVITE => PartyOp::Invite {
                party: r.u64()?,
                expires_in: r.u32()?,
                max_uses: r.u16()?,
            },
            OP_CLOSE => PartyOp::Close { party: r.u64()? },
            OP_SYNC => PartyOp::Sync,
            OP_ROSTER_ACK => PartyOp::RosterAck {
                party: r.u64()?,
                version: r.u64()?,
            },
            other => return Err(PartyDecodeError::UnknownOp(other)),
        };
        r.end()?;
        Ok(op)
    }
}

/// How the relay answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// A join code that is wrong, unknown, expired or used up: one answer
    /// for all four, so the answer tells a guesser nothing.
    Refused = 1,
    /// Too many joins from this source or in all: try again later.
    RateLimited = 2,
    NotOwner = 3,
    PartyFull = 4,
    NotAMember = 5,
    /// The sender is in another party on this relay: leave it first.
    InAnotherParty = 6,
    /// A name too long, empty, or with control characters.
    BadName = 7,
    /// The relay could not store the change (its database failed), or
    /// hosts no parties.
    Unavailable = 8,
    /// The owner can't kick itself (leave instead).
    CannotKickSelf = 9,
    /// The key to kick is not a member.
    NoSuchMember = 10,
    /// A code's expiry or use limit is out of range.
    BadCodeOptions = 11,
    /// The party has as many live join codes as it may.
    TooManyCodes = 12,
}

impl Status {
    const ALL: [Status; 13] = [
        Status::Ok,
        Status::Refused,
        Status::RateLimited,
        Status::NotOwner,
        Status::PartyFull,
        Status::NotAMember,
        Status::InAnotherParty,
        Status::BadName,
        Status::Unavailable,
        Status::CannotKickSelf,
        Status::NoSuchMember,
        Status::BadCodeOptions,
        Status::TooManyCodes,
    ];

    /// What to tell the person who asked.
    pub fn message(self) -> &'static str {
        match self {
            Status::Ok => "done",
            Status::Refused => {
                "that join code does not work (wrong, expired or used up); ask the party's owner for a new one"
            }
            Status::RateLimited => "too many join attempts; wait a few seconds and try again",
            Status::NotOwner => "only the party's owner can do that",
            Status::PartyFull => "the party is full (64 members)",
            Status::NotAMember => "you are not a member of that party",
            Status::InAnotherParty => {
                "you are already in a party on this relay; leave it first (lanrage party leave)"
            }
            Status::BadName => "names are 1 to 32 bytes, without control characters",
            Status::Unavailable => "the relay can't host parties right now",
            Status::CannotKickSelf => "the owner can't kick itself; leave the party instead",
            Status::NoSuchMember => "no member with that key in the party",
            Status::BadCodeOptions => "the code's expiry or use limit is out of range",
            Status::TooManyCodes => "the party has too many join codes; revoke one first",
        }
    }

    fn from_u8(b: u8) -> Result<Self, PartyDecodeError> {
        Self::ALL
            .get(usize::from(b))
            .copied()
            .ok_or(PartyDecodeError::BadValue)
    }
}

/// One member in a roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterMember {
    pub key: PeerKey,
    pub ip: std::net::Ipv4Addr,
    pub owner: bool,
    pub name: String,
}

/// What the relay sends a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyBody {
    /// The answer to one request: its status, the party it concerns (0 if
    /// none), and for a create or an invite, the new code's secret.
    Reply {
        status: Status,
        party: u64,
        secret: Option<[u8; SECRET_LEN]>,
    },
    /// One page of the party's roster (the message's id is the roster's
    /// version). `removed`: the recipient is no longer a member (it left,
    /// was kicked, or the party closed); the page then lists nobody.
    Roster {
        party: u64,
        page: u8,
        pages: u8,
        removed: bool,
        name: String,
        members: Vec<RosterMember>,
    },
}

const ROSTER_REMOVED: u8 = 1;
const MEMBER_OWNER: u8 = 1;

impl PartyBody {
    pub fn kind(&self) -> u8 {
        match self {
            PartyBody::Reply { .. } => KIND_REPLY,
            PartyBody::Roster { .. } => KIND_ROSTER,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            PartyBody::Reply {
                status,
                party,
                secret,
            } => {
                out.push(*status as u8);
                out.extend_from_slice(&party.to_be_bytes());
                if let Some(secret) = secret {
                    out.extend_from_slice(secret);
                }
            }
            PartyBody::Roster {
                party,
                page,
                pages,
                removed,
                name,
                members,
            } => {
                out.extend_from_slice(&party.to_be_bytes());
                out.push(*page);
                out.push(*pages);
                out.push(if *removed { ROSTER_REMOVED } else { 0 });
                put_name(&mut out, name);
                let count = members.len().min(ROSTER_PAGE_MEMBERS);
                out.push(count as u8);
                for m in &members[..count] {
                    out.extend_from_slice(m.key.as_bytes());
                    out.extend_from_slice(&m.ip.octets());
                    out.push(if m.owner { MEMBER_OWNER } else { 0 });
                    put_name(&mut out, &m.name);
                }
            }
        }
        out
    }

    pub fn decode(kind: u8, bytes: &[u8]) -> Result<Self, PartyDecodeError> {
        let mut r = Reader { bytes };
        let body = match kind {
            KIND_REPLY => {
                let status = Status::from_u8(r.u8()?)?;
                let party = r.u64()?;
                let secret = match r.bytes.len() {
                    0 => None,
                    SECRET_LEN => {
                        let mut s = [0u8; SECRET_LEN];
                        s.copy_from_slice(r.take(SECRET_LEN)?);
                        Some(s)
                    }
                    _ => return Err(PartyDecodeError::WrongLength),
                };
                PartyBody::Reply {
                    status,
                    party,
                    secret,
                }
            }
            KIND_ROSTER => {
                let party = r.u64()?;
                let page = r.u8()?;
                let pages = r.u8()?;
                let flags = r.u8()?;
                if flags & !ROSTER_REMOVED != 0
                    || pages == 0
                    || page >= pages
                    || usize::from(pages) * ROSTER_PAGE_MEMBERS
                        > MAX_MEMBERS + ROSTER_PAGE_MEMBERS - 1
                {
                    return Err(PartyDecodeError::BadValue);
                }
                let name = r.name()?;
                let count = usize::from(r.u8()?);
                if count > ROSTER_PAGE_MEMBERS {
                    return Err(PartyDecodeError::BadValue);
                }
                let mut members = Vec::with_capacity(count);
                for _ in 0..count {
                    let key = r.key()?;
                    let ip = r.take(4)?;
                    let ip = std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]);
                    let flags = r.u8()?;
                    if flags & !MEMBER_OWNER != 0 {
                        return Err(PartyDecodeError::BadValue);
                    }
                    members.push(RosterMember {
                        key,
                        ip,
                        owner: flags & MEMBER_OWNER != 0,
                        name: r.name()?,
                    });
                }
                PartyBody::Roster {
                    party,
                    page,
                    pages,
                    removed: flags & ROSTER_REMOVED != 0,
                    name,
                    members,
                }
            }
            _ => return Err(PartyDecodeError::BadValue),
        };
        r.end()?;
        Ok(body)
    }
}

/// The ChaCha20-Poly1305 nonce of a request: its id, as a signal's.
fn request_nonce(id: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&id.to_le_bytes());
    Nonce::from(n)
}

/// Seals a request: `id` must be above every earlier one of this client's
/// (registrations and requests share the client's timestamp clock).
pub fn seal_request(
    keys: &SessionKeys,
    client: PeerKey,
    id: u64,
    op: &PartyOp,
) -> Result<Vec<u8>, ControlError> {
    let mut body = op.encode();
    if body.len() > MAX_REQUEST_PLAINTEXT {
        return Err(ControlError::SignalTooLong(body.len()));
    }
    let mut out = Vec::with_capacity(REQUEST_FIXED_LEN + body.len() + TAG_LEN);
    out.extend_from_slice(&header(TYPE_PARTY_REQUEST));
    out.extend_from_slice(client.as_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&((body.len() + TAG_LEN) as u16).to_be_bytes());
    let cipher = ChaCha20Poly1305::new(Key::from_slice(keys.party_client_to_relay()));
    let tag = cipher
        .encrypt_in_place_detached(&request_nonce(id), &out, &mut body)
        .map_err(|_| ControlError::BadMac)?;
    out.extend_from_slice(&body);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// A length-checked party request, not yet opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartyRequestView<'a> {
    bytes: &'a [u8],
}

impl<'a> PartyRequestView<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        if bytes.len() < REQUEST_MIN_LEN {
            return Err(ControlError::Truncated {
                len: bytes.len(),
                needed: REQUEST_MIN_LEN,
            });
        }
        let sealed = usize::from(u16::from_be_bytes([
            bytes[REQUEST_LENGTH_AT],
            bytes[REQUEST_LENGTH_AT + 1],
        ]));
        let expected = REQUEST_FIXED_LEN + sealed;
        if !(1 + TAG_LEN..=MAX_REQUEST_PLAINTEXT + TAG_LEN).contains(&sealed)
            || bytes.len() != expected
        {
            return Err(ControlError::WrongLength {
                len: bytes.len(),
                expected,
            });
        }
        Ok(Self { bytes })
    }

    pub fn client(&self) -> PeerKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(&self.bytes[CLIENT_AT..CLIENT_AT + 32]);
        PeerKey(k)
    }

    pub fn id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[ID_AT..ID_AT + 8]);
        u64::from_be_bytes(b)
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Opens the sealed plaintext under the client's registration keys
    /// (replay is the relay's to check, on [`PartyRequestView::id`]).
    pub fn open(&self, keys: &SessionKeys) -> Result<Vec<u8>, ControlError> {
        let (aad, sealed) = self.bytes.split_at(REQUEST_FIXED_LEN);
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut body = ciphertext.to_vec();
        let cipher = ChaCha20Poly1305::new(Key::from_slice(keys.party_client_to_relay()));
        cipher
            .decrypt_in_place_detached(
                &request_nonce(self.id()),
                aad,
                &mut body,
                Tag::from_slice(tag),
            )
            .map_err(|_| ControlError::BadMac)?;
        Ok(body)
    }
}

/// Seals a relay message of `body`'s kind with `id` (a reply: the request
/// id it answers; a roster: its version) under `nonce`, which the relay
/// never uses twice under one client's key (a random prefix per run and a
/// counter).
pub fn seal_message(
    keys: &SessionKeys,
    id: u64,
    nonce: [u8; 24],
    body: &PartyBody,
) -> Result<Vec<u8>, ControlError> {
    let mut plaintext = body.encode();
    if plaintext.len() > MAX_MESSAGE_PLAINTEXT {
        return Err(ControlError::SignalTooLong(plaintext.len()));
    }
    let mut out = Vec::with_capacity(MESSAGE_FIXED_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&header(TYPE_PARTY_MESSAGE));
    out.push(body.kind());
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&((plaintext.len() + TAG_LEN) as u16).to_be_bytes());
    let cipher = XChaCha20Poly1305::new(Key::from_slice(keys.party_relay_to_client()));
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), &out, &mut plaintext)
        .map_err(|_| ControlError::BadMac)?;
    out.extend_from_slice(&plaintext);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// A length-checked relay message, not yet opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartyMessageView<'a> {
    bytes: &'a [u8],
}

impl<'a> PartyMessageView<'a> {
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, ControlError> {
        if bytes.len() < MESSAGE_MIN_LEN {
            return Err(ControlError::Truncated {
                len: bytes.len(),
                needed: MESSAGE_MIN_LEN,
            });
        }
        if bytes[KIND_AT + 1..KIND_AT + 4] != [0, 0, 0] {
            return Err(ControlError::ReservedNotZero);
        }
        let sealed = usize::from(u16::from_be_bytes([
            bytes[MESSAGE_LENGTH_AT],
            bytes[MESSAGE_LENGTH_AT + 1],
        ]));
        let expected = MESSAGE_FIXED_LEN + sealed;
        if !(1 + TAG_LEN..=MAX_MESSAGE_PLAINTEXT + TAG_LEN).contains(&sealed)
            || bytes.len() != expected
        {
            return Err(ControlError::WrongLength {
                len: bytes.len(),
                expected,
            });
        }
        Ok(Self { bytes })
    }

    pub fn kind(&self) -> u8 {
        self.bytes[KIND_AT]
    }

    pub fn id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[MESSAGE_ID_AT..MESSAGE_ID_AT + 8]);
        u64::from_be_bytes(b)
    }

    /// Opens and decodes the message under the client's registration keys.
    pub fn open(&self, keys: &SessionKeys) -> Result<PartyBody, ControlError> {
        let (aad, sealed) = self.bytes.split_at(MESSAGE_FIXED_LEN);
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let mut body = ciphertext.to_vec();
        let cipher = XChaCha20Poly1305::new(Key::from_slice(keys.party_relay_to_client()));
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&self.bytes[NONCE_AT..NONCE_AT + 24]),
                aad,
                &mut body,
                Tag::from_slice(tag),
            )
            .map_err(|_| ControlError::BadMac)?;
        PartyBody::decode(self.kind(), &body).map_err(|_| ControlError::WrongLength {
            len: self.bytes.len(),
            expected: self.bytes.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlMessage;
    use crate::x25519::{PublicKey, StaticSecret};

    fn keys() -> (SessionKeys, SessionKeys, PeerKey) {
        let client = StaticSecret::from([3u8; 32]);
        let relay = StaticSecret::from([5u8; 32]);
        let at_client = SessionKeys::for_client(&client, &PublicKey::from(&relay)).expect("keys");
        let at_relay = SessionKeys::for_relay(&relay, &PublicKey::from(&client)).expect("keys");
        (
            at_client,
            at_relay,
            PeerKey::from(&PublicKey::from(&client)),
        )
    }

    fn ops() -> Vec<PartyOp> {
        vec![
            PartyOp::Create {
                party_name: "Friday LAN".into(),
                member_name: "ada".into(),
                expires_in: 86_400,
                max_uses: 7,
            },
            PartyOp::Join {
                secret: [9; SECRET_LEN],
                member_name: "bob".into(),
            },
            PartyOp::Leave { party: 42 },
            PartyOp::Kick {
                party: 42,
                member: PeerKey([7; 32]),
            },
            PartyOp::Rename {
                party: 42,
                name: "x".repeat(MAX_NAME),
            },
            PartyOp::SetName {
                party: 42,
                name: "é".into(),
            },
            PartyOp::Invite {
                party: 42,
                expires_in: 0,
                max_uses: 0,
            },
            PartyOp::Close { party: 42 },
            PartyOp::Sync,
            PartyOp::RosterAck {
                party: 42,
                version: 9,
            },
        ]
    }

    #[test]
    fn requests_open_only_with_the_clients_keys_and_round_trip() {
        let (at_client, at_relay, client) = keys();
        for (i, op) in ops().into_iter().enumerate() {
            let id = 1_000 + i as u64;
            let bytes = seal_request(&at_client, client, id, &op).expect("seals");
            assert!(bytes.len() <= REQUEST_MAX_LEN);
            let ControlMessage::PartyRequest(view) = ControlMessage::parse(&bytes).expect("parses")
            else {
                panic!("not a party request");
            };
            assert_eq!((view.client(), view.id()), (client, id));
            let plain = view.open(&at_relay).expect("opens");
            assert_eq!(PartyOp::decode(&plain), Ok(op.clone()));
            // Any flipped byte after the header: refused, never misread.
            for at in HEADER_LEN..bytes.len() {
                let mut bad = bytes.clone();
                bad[at] ^= 0x20;
                if let Ok(ControlMessage::PartyRequest(v)) = ControlMessage::parse(&bad) {
                    assert!(v.open(&at_relay).is_err(), "byte {at} of {op:?}");
                }
            }
        }
        // Another client's keys don't open it.
        let other = StaticSecret::from([8u8; 32]);
        let relay = StaticSecret::from([5u8; 32]);
        let wrong = SessionKeys::for_relay(&relay, &PublicKey::from(&other)).expect("keys");
        let bytes = seal_request(&at_client, client, 1, &PartyOp::Sync).expect("seals");
        let ControlMessage::PartyRequest(view) = ControlMessage::parse(&bytes).expect("parses")
        else {
            panic!("not a party request");
        };
        assert!(view.open(&wrong).is_err());
    }

    #[test]
    fn relay_messages_round_trip_and_a_full_roster_page_fits_a_datagram() {
        let (at_client, at_relay, _) = keys();
        let members: Vec<RosterMember> = (0..ROSTER_PAGE_MEMBERS as u8)
            .map(|i| RosterMember {
                key: PeerKey([i; 32]),
                ip: std::net::Ipv4Addr::new(10, 66, 0, i + 1),
                owner: i == 0,
                name: "n".repeat(MAX_NAME),
            })
            .collect();
        let bodies = [
            PartyBody::Reply {
                status: Status::Ok,
                party: 42,
                secret: Some([1; SECRET_LEN]),
            },
            PartyBody::Reply {
                status: Status::Refused,
                party: 0,
                secret: None,
            },
            PartyBody::Roster {
                party: 42,
                page: 3,
                pages: 4,
                removed: false,
                name: "p".repeat(MAX_NAME),
                members,
            },
            PartyBody::Roster {
                party: 42,
                page: 0,
                pages: 1,
                removed: true,
                name: String::new(),
                members: Vec::new(),
            },
        ];
        for (i, body) in bodies.iter().enumerate() {
            let bytes = seal_message(&at_relay, 7, [i as u8; 24], body).expect("seals");
            assert!(bytes.len() <= 1280, "{} bytes", bytes.len());
            let ControlMessage::PartyMessage(view) = ControlMessage::parse(&bytes).expect("parses")
            else {
                panic!("not a party message");
            };
            assert_eq!(view.id(), 7);
            assert_eq!(view.open(&at_client).as_ref(), Ok(body));
            let mut bad = bytes.clone();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            if let Ok(ControlMessage::PartyMessage(v)) = ControlMessage::parse(&bad) {
                assert!(v.open(&at_client).is_err());
            }
        }
    }

    #[test]
    fn junk_plaintexts_are_refused() {
        assert_eq!(PartyOp::decode(&[]), Err(PartyDecodeError::WrongLength));
        assert_eq!(PartyOp::decode(&[99]), Err(PartyDecodeError::UnknownOp(99)));
        assert_eq!(
            PartyOp::decode(&[OP_SYNC, 0]),
            Err(PartyDecodeError::WrongLength)
        );
        // A name longer than the bound, or not UTF-8.
        let mut long = vec![OP_RENAME];
        long.extend_from_slice(&1u64.to_be_bytes());
        long.push(MAX_NAME as u8 + 1);
        long.extend(std::iter::repeat_n(b'a', MAX_NAME + 1));
        assert_eq!(PartyOp::decode(&long), Err(PartyDecodeError::BadName));
        let mut bad = vec![OP_RENAME];
        bad.extend_from_slice(&1u64.to_be_bytes());
        bad.extend_from_slice(&[1, 0xff]);
        assert_eq!(PartyOp::decode(&bad), Err(PartyDecodeError::BadName));
        // Statuses and flags outside their sets; pages out of order.
        assert!(PartyBody::decode(KIND_REPLY, &[200, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let roster = |page: u8, pages: u8, flags: u8| {
            let mut b = 1u64.to_be_bytes().to_vec();
            b.extend_from_slice(&[page, pages, flags, 0, 0]);
            PartyBody::decode(KIND_ROSTER, &b)
        };
        assert!(roster(0, 1, 0).is_ok());
        assert!(roster(1, 1, 0).is_err());
        assert!(roster(0, 0, 0).is_err());
        assert!(roster(0, 5, 0).is_err());
        assert!(roster(0, 1, 2).is_err());
        // Names are cut at the bound on a character boundary when encoded.
        let op = PartyOp::SetName {
            party: 1,
            name: "é".repeat(20),
        };
        let PartyOp::SetName { name, .. } = PartyOp::decode(&op.encode()).expect("decodes") else {
            panic!();
        };
        assert_eq!(name, "é".repeat(16));
    }
}
