//! The engine's party verbs and the roster that drives everything
//! (`docs/parties.md`): create, join by code and leave go to the home
//! relay as party requests; each complete roster it pushes becomes this
//! client's peers (WireGuard sessions, AllowedIPs as one /32 each), its
//! consent list at every relay, and its own virtual address.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Instant;

use lanrage_proto::join_code::{JoinCode, JoinSecret, RelayName};
use lanrage_proto::party::{seal_request, PartyMessageView, PartyOp};
use lanrage_proto::PeerKey;

use super::{Engine, Event, PingKind, PREFIX_LEN, TUN_MTU};
use crate::config::PeerSpec;
use crate::party::{peer_name, usable_ip, Membership, Received};
use crate::peer::Peer;
use crate::DropReason;

/// How long an answer to a create or join waits for the roster that
/// should have come with it (the relay resends it at 250 ms).
const HELD_REPLY_LIMIT: std::time::Duration = std::time::Duration::from_millis(800);

/// Why a party verb can't be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartyError {
    #[error("no relay called {0:?} in this client's relay list")]
    NoSuchRelay(String),
    #[error("relay {0} is not registered yet; try again in a moment")]
    NotRegistered(String),
    #[error("no relay is registered yet; try again in a moment")]
    NoRelay,
    #[error("{0}")]
    BadCode(String),
    #[error("this client is not in a party")]
    NotInParty,
    #[error("this client is in party {0:?} already; leave it first (lanrage party leave)")]
    InParty(String),
    #[error("this client's peers are configured by hand (peers: in the config), so it can't join a party")]
    StaticPeers,
    #[error("no member called {0:?} (lanrage party members lists them)")]
    NoSuchMember(String),
}

/// What a new join code admits: `expires_in` seconds (0: never) and
/// `max_uses` joins (0: any number).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeLimits {
    pub expires_in: u32,
    pub max_uses: u16,
}

impl Engine {
    /// Creates a party on `relay` (by name; `None`: the registered relay
    /// with the lowest RTT), with this client as owner called
    /// `member_name`. The reply comes as [`Event::PartyReply`] with the
    /// join code; the roster follows as [`Event::PartyChanged`].
    pub fn party_create(
        &mut self,
        now: Instant,
        relay: Option<&str>,
        party_name: &str,
        member_name: &str,
        limits: CodeLimits,
    ) -> Result<u64, PartyError> {
        self.party_may_join()?;
        let relay = match relay {
            Some(name) => self.relay_named(name)?,
            None => self
                .best_relay()
                .filter(|&r| self.relays[r].is_registered())
                .ok_or(PartyError::NoRelay)?,
        };
        let op = PartyOp::Create {
            party_name: party_name.to_owned(),
            member_name: member_name.to_owned(),
            expires_in: limits.expires_in,
            max_uses: limits.max_uses,
        };
        Ok(self.party_send(now, relay, op))
    }

    /// Joins the party of `code` (`XXXX-XXXX-XXXX-XXXX@relay`), whose home
    /// relay must be in this client's relay list by that name.
    pub fn party_join(
        &mut self,
        now: Instant,
        code: &str,
        member_name: &str,
    ) -> Result<u64, PartyError> {
        self.party_may_join()?;
        let code = JoinCode::parse(code).map_err(|e| PartyError::BadCode(e.to_string()))?;
        let relay = self.relay_named(code.relay.as_str())?;
        let op = PartyOp::Join {
            secret: code.secret.to_bytes(),
            member_name: member_name.to_owned(),
        };
        Ok(self.party_send(now, relay, op))
    }

    /// Leaves the party. The home relay answers, and then tells the others.
    pub fn party_leave(&mut self, now: Instant) -> Result<u64, PartyError> {
        let (party, relay) = self.home()?;
        Ok(self.party_send(now, relay, PartyOp::Leave { party }))
    }

    /// A new join code for the party (owner only; the reply carries it).
    pub fn party_invite(&mut self, now: Instant, limits: CodeLimits) -> Result<u64, PartyError> {
        let (party, relay) = self.home()?;
        let op = PartyOp::Invite {
            party,
            expires_in: limits.expires_in,
            max_uses: limits.max_uses,
        };
        Ok(self.party_send(now, relay, op))
    }

    /// Removes the member called `name` (as `status` names peers) from
    /// the party (owner only).
    pub fn party_kick(&mut self, now: Instant, name: &str) -> Result<u64, PartyError> {
        let (party, relay) = self.home()?;
        let member = self
            .peers
            .iter()
            .find(|p| p.spec.name == name)
            .map(|p| p.spec.key)
            .ok_or_else(|| PartyError::NoSuchMember(name.to_owned()))?;
        Ok(self.party_send(now, relay, PartyOp::Kick { party, member }))
    }

    /// The party this client is in, as the last complete roster said.
    pub fn membership(&self) -> Option<&Membership> {
        self.party.membership.as_ref()
    }

    /// Our party's id and its home relay (registered), for a verb on it.
    fn home(&self) -> Result<(u64, usize), PartyError> {
        let m = self
            .party
            .membership
            .as_ref()
            .ok_or(PartyError::NotInParty)?;
        let party = m.party;
        let relay = self.relay_named(&m.relay.clone())?;
        Ok((party, relay))
    }

    fn party_may_join(&self) -> Result<(), PartyError> {
        if self.static_peers {
            return Err(PartyError::StaticPeers);
        }
        if let Some(m) = &self.party.membership {
            return Err(PartyError::InParty(m.name.clone()));
        }
        Ok(())
    }

    fn relay_named(&self, name: &str) -> Result<usize, PartyError> {
        let relay = self
            .relays
            .iter()
            .position(|r| r.spec.name == name)
            .ok_or_else(|| PartyError::NoSuchRelay(name.to_owned()))?;
        if !self.relays[relay].is_registered() {
            return Err(PartyError::NotRegistered(name.to_owned()));
        }
        Ok(relay)
    }

    /// Seals `op` for `relay` with a fresh id and queues it; the id.
    fn party_send(&mut self, now: Instant, relay: usize, op: PartyOp) -> u64 {
        let id = self.party_transmit(now, relay, &op);
        self.party.sent(id, op, relay, now);
        id
    }

    fn party_transmit(&mut self, now: Instant, relay: usize, op: &PartyOp) -> u64 {
        let id = self.timestamps.next(now);
        if let Ok(bytes) = seal_request(self.relays[relay].keys(), self.key, id, op) {
            let dst = self.relays[relay].spec.addr;
            self.transmits.push_back(super::Transmit::main(dst, bytes));
        }
        id
    }

    /// Resends unanswered requests; reports the ones that gave up.
    pub(super) fn party_timers(&mut self, now: Instant) {
        if self
            .held_reply
            .as_ref()
            .is_some_and(|(_, until)| *until <= now)
        {
            if let Some((reply, _)) = self.held_reply.take() {
                self.events.push_back(reply);
            }
        }
        if self.party.next_deadline().is_none_or(|t| t > now) {
            return;
        }
        let mut expired = Vec::new();
        for (handle, op, relay) in self.party.due(now, &mut expired) {
            // No answer: the relay may have forgotten us (it restarted and
            // we haven't noticed yet); a registration now makes the next
            // copy count.
            self.relays[relay].register_soon(now);
            let id = self.party_transmit(now, relay, &op);
            self.party.resent(handle, id, now);
        }
        for id in expired {
            self.events.push_back(Event::PartyReply {
                id,
                status: None,
                party: 0,
                code: None,
            });
        }
    }

    /// After registering with our party's home relay: ask for the roster,
    /// which may have changed while we were away.
    pub(super) fn party_registered(&mut self, now: Instant, relay: usize) {
        let home = self
            .party
            .membership
            .as_ref()
            .is_some_and(|m| m.relay == self.relays[relay].spec.name);
        if home {
            self.party_send(now, relay, PartyOp::Sync);
        }
    }

    /// A party message from `relay`.
    pub(super) fn handle_party_message(
        &mut self,
        now: Instant,
        relay: usize,
        view: PartyMessageView<'_>,
    ) {
        let Ok(body) = view.open(self.relays[relay].keys()) else {
            self.count(DropReason::BadControl);
            return;
        };
        let name = self.relays[relay].spec.name.clone();
        match self.party.on_message(relay, &name, view.id(), body) {
            Received::Reply {
                handle,
                op,
                status,
                party,
                secret,
            } => {
                let code = secret
                    .and_then(JoinSecret::from_bytes)
                    .zip(RelayName::new(&name).ok())
                    .map(|(secret, relay)| JoinCode::new(secret, relay).to_string());
                let reply = Event::PartyReply {
                    id: handle,
                    status: Some(status),
                    party,
                    code,
                };
                if matches!(op, PartyOp::Sync) {
                    return; // nobody waits for a sync's answer
                }
                // "Joined" only once the roster (our peers, our address)
                // is in: it was sent first, but datagrams may reorder.
                let joining = matches!(op, PartyOp::Create { .. } | PartyOp::Join { .. });
                if joining
                    && status == lanrage_proto::party::Status::Ok
                    && self.party.membership.is_none()
                {
                    self.held_reply = Some((reply, now + HELD_REPLY_LIMIT));
                } else {
                    self.events.push_back(reply);
                }
            }
            Received::Changed { membership, ack } => {
                self.party_ack(now, relay, ack);
                self.apply_membership(now, membership);
                if self.party.membership.is_some() {
                    if let Some((reply, _)) = self.held_reply.take() {
                        self.events.push_back(reply);
                    }
                }
            }
            Received::Gone => {
                tracing::info!("the home relay has no party of ours any more");
                self.apply_membership(now, None);
            }
            Received::Nothing { ack } => {
                if let Some(ack) = ack {
                    self.party_ack(now, relay, ack);
                }
            }
        }
    }

    fn party_ack(&mut self, now: Instant, relay: usize, (party, version): (u64, u64)) {
        self.party_transmit(now, relay, &PartyOp::RosterAck { party, version });
    }

    /// The membership changed: peers, consent and our own address follow.
    pub(super) fn apply_membership(&mut self, now: Instant, membership: Option<Membership>) {
        let me = membership
            .as_ref()
            .and_then(|m| m.me(&self.key).cloned())
            .filter(|m| usable_ip(m.ip));
        let membership = membership.filter(|_| me.is_some());
        let specs: Vec<PeerSpec> = match &membership {
            Some(m) => m
                .members
                .iter()
                .filter(|p| p.key != self.key && usable_ip(p.ip))
                .map(|p| PeerSpec {
                    name: peer_name(p, &m.members),
                    key: p.key,
                    virtual_ip: p.ip,
                    endpoint: None,
                })
                .collect(),
            None => Vec::new(),
        };
        let address = me.map(|m| m.ip);
        tracing::info!(
            party = membership.as_ref().map(|m| m.name.as_str()),
            members = membership.as_ref().map_or(0, |m| m.members.len()),
            ?address,
            "party roster"
        );
        self.set_virtual_ip(address);
        self.set_peers(now, specs);
        self.party.membership = membership.clone();
        self.events.push_back(Event::PartyChanged { membership });
    }

    fn set_virtual_ip(&mut self, address: Option<Ipv4Addr>) {
        if address == self.virtual_ip {
            return;
        }
        self.virtual_ip = address;
        self.events.push_back(match address {
            Some(address) => Event::ConfigureInterface {
                address,
                prefix_len: PREFIX_LEN,
                mtu: TUN_MTU,
            },
            None => Event::RemoveInterface,
        });
    }

    /// Makes `specs` the peers: sessions of peers that stay are kept (a
    /// renamed member keeps its tunnel), new ones start, gone ones end;
    /// every index is rebuilt, and the relays learn the new consent list.
    /// (Bounded by the roster's 64 members, checked when it was read.)
    pub(super) fn set_peers(&mut self, now: Instant, specs: Vec<PeerSpec>) {
        let old_keys: Vec<PeerKey> = self.peers.iter().map(|p| p.spec.key).collect();
        let mut old: HashMap<PeerKey, Peer> =
            self.peers.drain(..).map(|p| (p.spec.key, p)).collect();
        let pings: Vec<(u64, PeerKey, Instant, PingKind)> = self
            .pings
            .drain(..)
            .filter_map(|(id, i, at, kind)| Some((id, *old_keys.get(i)?, at, kind)))
            .collect();
        let mut seen = Vec::new();
        for spec in specs {
            if spec.key == self.key || seen.contains(&spec.key) {
                continue;
            }
            seen.push(spec.key);
            let peer = match old.remove(&spec.key) {
                Some(mut p) => {
                    p.spec.name = spec.name;
                    p.spec.virtual_ip = spec.virtual_ip;
                    p
                }
                None => {
                    let slot = self.next_slot;
                    self.next_slot = (self.next_slot + 1) & 0x00ff_ffff;
                    Peer::new(spec, &self.secret, slot)
                }
            };
            self.peers.push(peer);
        }
        for gone in old.values() {
            tracing::debug!(peer = %gone.spec.name, "peer left");
        }
        self.by_ip.clear();
        self.by_key.clear();
        self.by_slot.clear();
        self.by_direct_addr.clear();
        self.consent.clear();
        for (i, p) in self.peers.iter().enumerate() {
            self.by_ip.insert(p.spec.virtual_ip, i);
            self.by_key.insert(p.spec.key, i);
            self.by_slot.insert(p.slot, i);
            for &addr in &p.known_addrs {
                self.by_direct_addr.insert(addr, i);
            }
            self.consent.push(p.spec.key);
        }
        self.pings = pings
            .into_iter()
            .filter_map(|(id, key, at, kind)| Some((id, *self.by_key.get(&key)?, at, kind)))
            .collect();
        for relay in &mut self.relays {
            relay.register_soon(now);
        }
        // New peers hear our vectors and candidates at once.
        self.next_vector_check = now;
    }

    /// Whether the virtual LAN's address is set (joined, or configured).
    pub fn virtual_ip(&self) -> Option<Ipv4Addr> {
        self.virtual_ip
    }
}
