//! The client's side of parties (`docs/parties.md`, `docs/protocol.md`
//! §2.12): what it asked its home relay and hasn't heard back about, the
//! roster pages it is assembling, and the membership the last complete
//! roster gave it. Pure state: the engine seals and sends what this asks
//! for, and applies the membership (peers, its own address) when it
//! changes.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lanrage_proto::party::{PartyBody, PartyOp, RosterMember, Status, MAX_MEMBERS};
use lanrage_proto::PeerKey;

/// A request unanswered this long is sent again (with a new id: the relay
/// refuses a repeated one), [`REQUEST_TRIES`] times in all.
pub const REQUEST_RESEND: Duration = Duration::from_millis(700);
pub const REQUEST_TRIES: u32 = 3;
/// Requests in flight at most (a person typing commands).
const MAX_IN_FLIGHT: usize = 16;

/// The party this client is in, as its last complete roster says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The home relay's name, as this client's relay list calls it.
    pub relay: String,
    pub party: u64,
    pub version: u64,
    pub name: String,
    pub members: Vec<RosterMember>,
}

impl Membership {
    /// This client's entry.
    pub fn me(&self, key: &PeerKey) -> Option<&RosterMember> {
        self.members.iter().find(|m| m.key == *key)
    }
}

/// A request waiting for its reply.
#[derive(Debug, Clone)]
struct InFlight {
    /// The id the caller knows it by (the first one sent).
    handle: u64,
    /// The id of the latest copy sent.
    id: u64,
    op: PartyOp,
    relay: usize,
    sent: Instant,
    tries: u32,
}

/// What a party message meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// The reply to request `handle`, a `op`.
    Reply {
        handle: u64,
        op: PartyOp,
        status: Status,
        party: u64,
        secret: Option<[u8; 10]>,
    },
    /// A complete roster newer than ours: the membership is now this
    /// (`None`: removed from the party). Ack `(party, version)`.
    Changed {
        membership: Option<Membership>,
        ack: (u64, u64),
    },
    /// Our sync was answered with another party, or none: ours is gone
    /// (closed, or we were removed while away).
    Gone,
    /// A page kept for later, or a roster we have already (ack it again,
    /// so the relay stops resending).
    Nothing { ack: Option<(u64, u64)> },
}

/// Roster pages of one version being collected.
#[derive(Debug, Clone)]
struct Assembly {
    party: u64,
    version: u64,
    name: String,
    pages: Vec<Option<Vec<RosterMember>>>,
}

#[derive(Debug, Default)]
pub struct PartyClient {
    pub membership: Option<Membership>,
    in_flight: VecDeque<InFlight>,
    assembly: Option<Assembly>,
}

impl PartyClient {
    /// Starts from a saved membership (the client remembers its party
    /// across restarts).
    pub fn with_membership(membership: Option<Membership>) -> Self {
        Self {
            membership,
            ..Self::default()
        }
    }

    /// Remembers a request sent as `id` to `relay`.
    pub fn sent(&mut self, id: u64, op: PartyOp, relay: usize, now: Instant) {
        if self.in_flight.len() >= MAX_IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back(InFlight {
            handle: id,
            id,
            op,
            relay,
            sent: now,
            tries: 1,
        });
    }

    /// Requests due for another copy: (handle, op, relay). The caller
    /// sends each with a fresh id and reports it with [`PartyClient::resent`].
    /// Requests out of tries are dropped, reported as `expired` handles.
    pub fn due(&mut self, now: Instant, expired: &mut Vec<u64>) -> Vec<(u64, PartyOp, usize)> {
        let mut due = Vec::new();
        self.in_flight.retain(|f| {
            if now.saturating_duration_since(f.sent) < REQUEST_RESEND {
                return true;
            }
            if f.tries >= REQUEST_TRIES {
                expired.push(f.handle);
                return false;
            }
            due.push((f.handle, f.op.clone(), f.relay));
            true
        });
        due
    }

    pub fn resent(&mut self, handle: u64, id: u64, now: Instant) {
        if let Some(f) = self.in_flight.iter_mut().find(|f| f.handle == handle) {
            f.id = id;
            f.sent = now;
            f.tries += 1;
        }
    }

    /// The next time [`PartyClient::due`] has something.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.iter().map(|f| f.sent + REQUEST_RESEND).min()
    }

    /// A party message from relay `relay` (named `relay_name`), with its
    /// id, opened.
    pub fn on_message(
        &mut self,
        relay: usize,
        relay_name: &str,
        id: u64,
        body: PartyBody,
    ) -> Received {
        match body {
            PartyBody::Reply {
                status,
                party,
                secret,
            } => {
                let Some(i) = self
                    .in_flight
                    .iter()
                    .position(|f| f.id == id && f.relay == relay)
                else {
                    return Received::Nothing { ack: None };
                };
                let Some(f) = self.in_flight.remove(i) else {
                    return Received::Nothing { ack: None };
                };
                let ours = self.membership.as_ref().map(|m| m.party);
                if matches!(f.op, PartyOp::Sync)
                    && status == Status::Ok
                    && ours.is_some_and(|p| p != party)
                {
                    self.assembly = None;
                    return Received::Gone;
                }
                Received::Reply {
                    handle: f.handle,
                    op: f.op,
                    status,
                    party,
                    secret,
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
                let version = id;
                let ack = Some((party, version));
                // Only the home relay speaks for our party; with none yet,
                // the relay we asked to create or join.
                let from_home = match &self.membership {
                    Some(m) => m.relay == relay_name,
                    None => self.in_flight.iter().any(|f| f.relay == relay) || removed,
                };
                if !from_home {
                    return Received::Nothing { ack };
                }
                if removed {
                    return match &self.membership {
                        Some(m) if m.party == party && m.version <= version => {
                            self.assembly = None;
                            Received::Changed {
                                membership: None,
                                ack: (party, version),
                            }
                        }
                        _ => Received::Nothing { ack },
                    };
                }
                let stale = self
                    .membership
                    .as_ref()
                    .is_some_and(|m| m.party == party && m.version >= version);
                if stale {
                    return Received::Nothing { ack };
                }
                let fresh = !self
                    .assembly
                    .as_ref()
                    .is_some_and(|a| a.party == party && a.version == version);
                if fresh {
                    if self
                        .assembly
                        .as_ref()
                        .is_some_and(|a| a.party == party && a.version > version)
                    {
                        return Received::Nothing { ack: None };
                    }
                    self.assembly = Some(Assembly {
                        party,
                        version,
                        name,
                        pages: vec![None; usize::from(pages)],
                    });
                }
                let Some(assembly) = self.assembly.as_mut() else {
                    return Received::Nothing { ack: None };
                };
                if assembly.pages.len() != usize::from(pages) {
                    return Received::Nothing { ack: None };
                }
                if let Some(slot) = assembly.pages.get_mut(usize::from(page)) {
                    *slot = Some(members);
                }
                if assembly.pages.iter().any(Option::is_none) {
                    return Received::Nothing { ack: None };
                }
                let Some(done) = self.assembly.take() else {
                    return Received::Nothing { ack: None };
                };
                let mut members: Vec<RosterMember> =
                    done.pages.into_iter().flatten().flatten().collect();
                members.truncate(MAX_MEMBERS);
                let membership = Membership {
                    relay: relay_name.to_owned(),
                    party,
                    version,
                    name: done.name,
                    members,
                };
                Received::Changed {
                    membership: Some(membership),
                    ack: (party, version),
                }
            }
        }
    }
}

/// Names that are unique among `members` (the engine names peers by
/// them): a member's own name, or, when two share one, the name with the
/// start of its key. Never empty.
pub fn peer_name(member: &RosterMember, members: &[RosterMember]) -> String {
    let base = if member.name.is_empty() {
        "member".to_owned()
    } else {
        member.name.clone()
    };
    let shared = members
        .iter()
        .filter(|m| m.name == member.name && m.key != member.key)
        .count()
        > 0;
    if shared {
        let key = member.key.to_string();
        format!("{base}-{}", &key[..6.min(key.len())])
    } else {
        base
    }
}

/// A member's virtual IP if it is a usable host address of the party's
/// /16 (a relay's roster is checked like anyone's input).
pub fn usable_ip(ip: Ipv4Addr) -> bool {
    let [a, b, c, d] = ip.octets();
    a == 10 && b == 66 && !(c == 0 && d == 0) && !(c == 255 && d == 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(n: u8, name: &str) -> RosterMember {
        RosterMember {
            key: PeerKey([n; 32]),
            ip: Ipv4Addr::new(10, 66, 0, n),
            owner: n == 1,
            name: name.into(),
        }
    }

    fn page(party: u64, page: u8, pages: u8, members: Vec<RosterMember>) -> PartyBody {
        PartyBody::Roster {
            party,
            page,
            pages,
            removed: false,
            name: "p".into(),
            members,
        }
    }

    #[test]
    fn a_roster_applies_once_all_its_pages_are_in_and_never_goes_back() {
        let now = Instant::now();
        let mut c = PartyClient::default();
        c.sent(5, PartyOp::Sync, 0, now);
        assert_eq!(
            c.on_message(0, "home", 3, page(9, 1, 2, vec![member(2, "b")])),
            Received::Nothing { ack: None }
        );
        let Received::Changed {
            membership: Some(m),
            ack,
        } = c.on_message(0, "home", 3, page(9, 0, 2, vec![member(1, "a")]))
        else {
            panic!("not applied");
        };
        assert_eq!(ack, (9, 3));
        assert_eq!(m.members.len(), 2);
        assert_eq!(m.relay, "home");
        c.membership = Some(m);
        // An older version, or the same again: acked, not applied.
        assert_eq!(
            c.on_message(0, "home", 2, page(9, 0, 1, vec![])),
            Received::Nothing { ack: Some((9, 2)) }
        );
        assert_eq!(
            c.on_message(0, "home", 3, page(9, 0, 1, vec![])),
            Received::Nothing { ack: Some((9, 3)) }
        );
        // Another relay can't speak for the party.
        assert_eq!(
            c.on_message(1, "elsewhere", 4, page(9, 0, 1, vec![])),
            Received::Nothing { ack: Some((9, 4)) }
        );
        // Removed, as of a newer version.
        let removed = PartyBody::Roster {
            party: 9,
            page: 0,
            pages: 1,
            removed: true,
            name: String::new(),
            members: vec![],
        };
        assert_eq!(
            c.on_message(0, "home", 4, removed),
            Received::Changed {
                membership: None,
                ack: (9, 4)
            }
        );
    }

    #[test]
    fn replies_match_the_latest_copy_and_requests_give_up() {
        let t0 = Instant::now();
        let mut c = PartyClient::default();
        c.sent(10, PartyOp::Sync, 0, t0);
        let mut expired = Vec::new();
        assert!(c.due(t0, &mut expired).is_empty());
        let due = c.due(t0 + REQUEST_RESEND, &mut expired);
        assert_eq!(due.len(), 1);
        c.resent(10, 11, t0 + REQUEST_RESEND);
        let reply = PartyBody::Reply {
            status: Status::Ok,
            party: 1,
            secret: None,
        };
        // The first copy's id no longer matches; the latest does, and
        // answers the caller's handle.
        assert_eq!(
            c.on_message(0, "r", 10, reply.clone()),
            Received::Nothing { ack: None }
        );
        assert!(matches!(
            c.on_message(0, "r", 11, reply),
            Received::Reply { handle: 10, .. }
        ));
        c.sent(20, PartyOp::Sync, 0, t0);
        for i in 1..=REQUEST_TRIES {
            for (h, _, _) in c.due(t0 + REQUEST_RESEND * i, &mut expired) {
                c.resent(h, 20 + u64::from(i), t0 + REQUEST_RESEND * i);
            }
        }
        let _ = c.due(t0 + REQUEST_RESEND * (REQUEST_TRIES + 1), &mut expired);
        assert_eq!(expired, [20]);
    }

    /// A client back from a restart asks for its roster; the home relay
    /// answers the sync with no party (0): the party is gone.
    #[test]
    fn a_sync_answered_with_no_party_means_ours_is_gone() {
        let now = Instant::now();
        let mut c = PartyClient::with_membership(Some(Membership {
            relay: "home".into(),
            party: 9,
            version: 3,
            name: "p".into(),
            members: vec![member(1, "a")],
        }));
        let reply = |party| PartyBody::Reply {
            status: Status::Ok,
            party,
            secret: None,
        };
        c.sent(5, PartyOp::Sync, 0, now);
        assert!(matches!(
            c.on_message(0, "home", 5, reply(9)),
            Received::Reply { .. }
        ));
        c.sent(6, PartyOp::Sync, 0, now);
        assert_eq!(c.on_message(0, "home", 6, reply(0)), Received::Gone);
    }

    #[test]
    fn peer_names_are_unique_and_ips_checked() {
        let a = member(1, "sam");
        let b = member(2, "sam");
        let c = member(3, "kit");
        let all = [a.clone(), b.clone(), c.clone()];
        assert_ne!(peer_name(&a, &all), peer_name(&b, &all));
        assert_eq!(peer_name(&c, &all), "kit");
        assert!(usable_ip(Ipv4Addr::new(10, 66, 1, 2)));
        assert!(!usable_ip(Ipv4Addr::new(10, 66, 0, 0)));
        assert!(!usable_ip(Ipv4Addr::new(10, 66, 255, 255)));
        assert!(!usable_ip(Ipv4Addr::new(192, 168, 0, 1)));
    }
}
