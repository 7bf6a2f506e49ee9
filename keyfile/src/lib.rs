//! X25519 static keys on disk, for the relay and the client alike:
//! generated from OS randomness, stored as one line of base64 like `wg
//! genkey` prints (mode 0600, written atomically), and loaded at startup.
//!
//! Key text never appears in errors or logs; only the public key does.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use lanrage_proto::x25519::{PublicKey, StaticSecret};
use lanrage_proto::PeerKey;
use rand::RngCore as _;

/// Errors loading or creating a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("cannot read private key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot create private key file {}: {source} (create the directory and make it writable \
         for this user, or choose another path)",
        path.display()
    )]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("private key file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseKeyError,
    },
    #[error("cannot get random bytes from the OS: {0}")]
    Random(#[source] rand::Error),
    #[error(
        "private key file {} already exists; not replacing it (its key is this machine's \
         identity: move it away first if you really want a new one)",
        path.display()
    )]
    Exists { path: PathBuf },
}

/// The text is not a base64-encoded 32-byte key. Never includes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a 32-byte key in base64 (44 characters, as `wg genkey` prints), {0}")]
pub struct ParseKeyError(&'static str);

/// Whether [`load_or_generate`] found the key or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Loaded,
    Generated,
}

/// A new private key from the OS's CSPRNG, clamped as `wg genkey` does
/// (RFC 7748 §5) so the stored text is identical in form to WireGuard's.
pub fn generate() -> Result<StaticSecret, KeyError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(KeyError::Random)?;
    bytes[0] &= 248;
    bytes[31] &= 127;
    bytes[31] |= 64;
    Ok(StaticSecret::from(bytes))
}

/// The one-line base64 text form of a private key (no newline).
pub fn encode(secret: &StaticSecret) -> String {
    STANDARD.encode(secret.as_bytes())
}

/// Parses the text form; surrounding whitespace (the trailing newline) is ignored.
pub fn decode(text: &str) -> Result<StaticSecret, ParseKeyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ParseKeyError("got an empty file"));
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| ParseKeyError("got text that is not base64"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| ParseKeyError("got the wrong length"))?;
    Ok(StaticSecret::from(bytes))
}

/// The public key others configure for this key's owner.
pub fn public_key(secret: &StaticSecret) -> PeerKey {
    PeerKey::from(&PublicKey::from(secret))
}

/// Loads the key at `path`, or, if there is no file, generates one there
/// with mode 0600 (creating missing directories with mode 0700).
///
/// A key file readable by group or others is used but logged as a warning:
/// refusing would turn a permissions slip into an outage.
pub fn load_or_generate(path: &Path) -> Result<(StaticSecret, KeyOrigin), KeyError> {
    match load(path) {
        Ok(secret) => return Ok((secret, KeyOrigin::Loaded)),
        Err(KeyError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = generate()?;
    match create_new(path, &encode(&secret)) {
        Ok(()) => Ok((secret, KeyOrigin::Generated)),
        // Another process created the file first: use its key, so both agree.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            load(path).map(|secret| (secret, KeyOrigin::Loaded))
        }
        Err(source) => Err(KeyError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Generates a key into a new file at `path` (mode 0600, missing
/// directories 0700), and refuses if the file exists: a new key is a new
/// identity, so it is never made by accident.
pub fn create(path: &Path) -> Result<StaticSecret, KeyError> {
    let secret = generate()?;
    match create_new(path, &encode(&secret)) {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(KeyError::Exists {
            path: path.to_owned(),
        }),
        Err(source) => Err(KeyError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Loads an existing key file.
pub fn load(path: &Path) -> Result<StaticSecret, KeyError> {
    let read_err = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = fs::metadata(path).map_err(read_err)?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", mode & 0o777),
            "private key file is accessible by group or others; run chmod 600 on it"
        );
    }
    let text = fs::read_to_string(path).map_err(read_err)?;
    decode(&text).map_err(|source| KeyError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Writes `text` to a new file at `path` with mode 0600, atomically: the key
/// is written to a temporary file that is then hard-linked into place, so a
/// crash never leaves a half-written key and an existing file is never replaced.
fn create_new(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    result?;
    // Make the new directory entry durable too; failure here is harmless.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("lanrage-keyfile-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn text_form_round_trips_and_is_clamped() {
        let secret = generate().expect("random");
        let text = encode(&secret);
        assert_eq!(text.len(), 44);
        let bytes = secret.to_bytes();
        assert_eq!(bytes[0] & 7, 0);
        assert_eq!(bytes[31] & 0xc0, 0x40);
        let back = decode(&format!("{text}\n")).expect("decode");
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(public_key(&back), public_key(&secret));
    }

    #[test]
    fn matches_rfc7748_test_vector() {
        // From RFC 7748 §6.1: Alice's private key and public key.
        let private = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
        let public = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let secret = decode(private).expect("decode");
        assert_eq!(public_key(&secret).to_base64(), public);
    }

    #[test]
    fn bad_text_is_rejected_without_echoing_it() {
        for text in [
            "",
            "   \n",
            "not base64!",
            "AAAA",
            "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCoA",
        ] {
            let Err(err) = decode(text) else {
                panic!("{text:?} decoded");
            };
            if !text.trim().is_empty() {
                assert!(!err.to_string().contains(text.trim()), "{err}");
            }
        }
    }

    #[test]
    fn generates_once_with_mode_0600_then_loads() {
        let dir = temp_dir("gen");
        let path = dir.join("sub/private.key");
        let (first, origin) = load_or_generate(&path).expect("generate");
        assert_eq!(origin, KeyOrigin::Generated);
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(path.parent().expect("parent"))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{}\n", encode(&first)));
        // No temporary file is left behind.
        assert_eq!(
            fs::read_dir(path.parent().expect("parent"))
                .expect("ls")
                .count(),
            1
        );

        let (second, origin) = load_or_generate(&path).expect("load");
        assert_eq!(origin, KeyOrigin::Loaded);
        assert_eq!(second.to_bytes(), first.to_bytes());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_key_file_is_an_error_not_a_new_key() {
        let dir = temp_dir("corrupt");
        fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("private.key");
        fs::write(&path, "garbage\n").expect("write");
        let Err(err) = load_or_generate(&path) else {
            panic!("a corrupt key file loaded");
        };
        assert!(matches!(err, KeyError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("private.key"), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("read"), "garbage\n");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn create_makes_a_private_file_and_never_replaces_one() {
        let dir = temp_dir("create");
        let path = dir.join("sub").join("private.key");
        let secret = create(&path).expect("create");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).expect("load").to_bytes(), secret.to_bytes());
        let again = create(&path);
        assert!(matches!(again, Err(KeyError::Exists { .. })));
        assert_eq!(
            load(&path).expect("still the first key").to_bytes(),
            secret.to_bytes()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
