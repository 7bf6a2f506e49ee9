//! The party state file: the client remembers its party across restarts
//! (`docs/parties.md`). JSON, written whole to a temporary file and
//! renamed over the old one, so a crash leaves the old state or the new,
//! never half of one. Its contents are checked on load like any input; a
//! file that doesn't read is reported and ignored (the home relay's next
//! roster is the truth anyway).

use std::net::Ipv4Addr;
use std::path::Path;

use lanrage_client_core::party::Membership;
use lanrage_proto::party::{RosterMember, MAX_MEMBERS};
use lanrage_proto::PeerKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    relay: String,
    party: u64,
    version: u64,
    name: String,
    members: Vec<SavedMember>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedMember {
    public_key: String,
    address: Ipv4Addr,
    owner: bool,
    name: String,
}

/// Writes `membership` (or removes the file for `None`).
pub fn save(path: &Path, membership: Option<&Membership>) -> std::io::Result<()> {
    let Some(m) = membership else {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    };
    let saved = Saved {
        relay: m.relay.clone(),
        party: m.party,
        version: m.version,
        name: m.name.clone(),
        members: m
            .members
            .iter()
            .map(|p| SavedMember {
                public_key: p.key.to_string(),
                address: p.ip,
                owner: p.owner,
                name: p.name.clone(),
            })
            .collect(),
    };
    let text = serde_json::to_string_pretty(&saved).map_err(std::io::Error::other)?;
    write_replacing(path, text.as_bytes())
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`: a crash leaves the old file or the new one, never half of one.
pub fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The remembered party, if the file exists and reads.
pub fn load(path: &Path) -> Result<Option<Membership>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let saved: Saved =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if saved.members.len() > MAX_MEMBERS {
        return Err(format!(
            "{}: more than {MAX_MEMBERS} members",
            path.display()
        ));
    }
    let members = saved
        .members
        .into_iter()
        .map(|m| {
            Ok(RosterMember {
                key: PeerKey::from_base64(&m.public_key)
                    .ok_or_else(|| format!("{}: a member's key is not a key", path.display()))?,
                ip: m.address,
                owner: m.owner,
                name: m.name,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Some(Membership {
        relay: saved.relay,
        party: saved.party,
        version: saved.version,
        name: saved.name,
        members,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_round_trips_and_junk_is_refused() {
        let dir = std::env::temp_dir().join(format!("lanrage-state-{}", std::process::id()));
        let path = dir.join("party.json");
        let m = Membership {
            relay: "eu1".into(),
            party: 7,
            version: 3,
            name: "Friday".into(),
            members: vec![RosterMember {
                key: PeerKey([9; 32]),
                ip: Ipv4Addr::new(10, 66, 1, 2),
                owner: true,
                name: "ada".into(),
            }],
        };
        save(&path, Some(&m)).expect("saves");
        assert_eq!(load(&path), Ok(Some(m)));
        std::fs::write(&path, "{\"relay\": 1}").expect("write");
        assert!(load(&path).is_err());
        save(&path, None).expect("removes");
        assert_eq!(load(&path), Ok(None));
        let _ = std::fs::remove_dir_all(dir);
    }
}
