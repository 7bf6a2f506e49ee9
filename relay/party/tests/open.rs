//! Opening the party database: migration of a new or empty file, refusal of
//! a newer schema, and a clear error for every file the relay can't use:
//! corrupt, truncated, not a database, another program's, locked, or not
//! writable. A refused file is left exactly as it was.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use lanrage_relay_party::{OpenErrorKind, PartyService, SCHEMA_VERSION};

fn open(path: &Path) -> Result<PartyService, lanrage_relay_party::OpenError> {
    PartyService::open(path, config(), rand::rngs::OsRng)
}

/// The error's message, after checking it names the path.
fn message(path: &Path) -> (OpenErrorKind, String) {
    let e = match open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e,
    };
    let text = e.to_string();
    eprintln!("{text}");
    let prefix = format!("party database {}: ", path.display());
    assert!(text.starts_with(&prefix), "{text}");
    (e.kind, text)
}

/// A database with some parties in it, closed; returns its path.
fn populated(dir: &Path) -> PathBuf {
    let path = dir.join("parties.db");
    let mut f = Fixture::new();
    for p in 0..40u32 {
        let (_, code) = f.create(key(10_000 + p), &format!("party {p}"));
        let ops: Vec<_> = (0..10)
            .map(|m| join(key(p * 100 + m), &code.secret))
            .collect();
        let now = f.now();
        for o in f.svc.apply(&ops, now) {
            o.expect("join");
        }
    }
    let source = f.path();
    drop(f.svc);
    fs::copy(source, &path).expect("copy");
    path
}

#[test]
fn a_new_file_is_created_and_an_empty_one_migrated_to_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("new.db");
    let empty = dir.path().join("empty.db");
    fs::write(&empty, b"").unwrap();
    for path in [&new, &empty] {
        let mut svc = open(path).unwrap();
        let now = Clock::new().now();
        svc.apply(&[create(key(1), "p", Default::default())], now)
            .remove(0)
            .unwrap();
        drop(svc);
        let db = rusqlite::Connection::open(path).unwrap();
        let version: u32 = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let app: i32 = db
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .unwrap();
        assert_eq!(app, 0x4C4E_5250);
        let mode: String = db
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal", "WAL is a property of the file, kept");
    }
}

#[test]
fn reopening_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let svc = open(&path).unwrap();
    let party = svc.party_of(&key(3 * 100 + 4)).unwrap().unwrap();
    let r = svc.roster(party).unwrap().unwrap();
    assert_eq!(r.members.len(), 11);
    assert_eq!(r.name, "party 3");
    check_roster(&r);
}

#[test]
fn a_newer_schema_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let before = fs::read(&path).unwrap();
    let (kind, text) = message(&path);
    assert!(
        matches!(kind, OpenErrorKind::NewerSchema { found } if found == SCHEMA_VERSION + 1),
        "{text}"
    );
    assert!(text.contains("newer LANrage relay"), "{text}");
    assert!(text.contains("upgrade the relay"), "{text}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("text.db", b"relay:\n  listen: 0.0.0.0:51820\n".repeat(200)),
        ("short.db", b"hello".to_vec()),
        ("zeros.db", vec![0u8; 8192]),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &content).unwrap();
        let (kind, text) = message(&path);
        assert!(
            matches!(kind, OpenErrorKind::NotADatabase(_)),
            "{name}: {text}"
        );
        assert!(text.contains("file is not a database (it "), "{text}");
        assert!(text.contains("move it away"), "{text}");
        assert_eq!(fs::read(&path).unwrap(), content, "{name} was changed");
    }
}

#[test]
fn a_corrupt_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    assert!(len > 8 * 4096, "{len}: enough pages to corrupt one");
    // Garbage over pages 3 and 4 (b-tree pages: the database is fresh, so
    // no page is free).
    let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(2 * 4096)).unwrap();
    file.write_all(&[0xA5; 2 * 4096]).unwrap();
    drop(file);
    let before = fs::read(&path).unwrap();
    let (kind, text) = message(&path);
    assert!(matches!(kind, OpenErrorKind::Corrupt(_)), "{text}");
    assert!(text.contains("file is corrupt ("), "{text}");
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(text.contains("restore it from a backup"), "{text}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn a_truncated_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let len = fs::metadata(&path).unwrap().len();
    for cut in [len / 2, len / 2 + 1000, 50] {
        let _ = fs::remove_file(dir.path().join("cut.db"));
        let cut_path = dir.path().join("cut.db");
        fs::copy(&path, &cut_path).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&cut_path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let before = fs::read(&cut_path).unwrap();
        let (kind, text) = message(&cut_path);
        assert!(
            matches!(
                kind,
                OpenErrorKind::Corrupt(_) | OpenErrorKind::NotADatabase(_)
            ),
            "cut at {cut}: {text}"
        );
        assert_eq!(fs::read(&cut_path).unwrap(), before, "cut at {cut}");
    }
}

#[test]
fn another_programs_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tables = dir.path().join("app.db");
    {
        let db = rusqlite::Connection::open(&tables).unwrap();
        db.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            .unwrap();
    }
    let (kind, text) = message(&tables);
    assert!(matches!(kind, OpenErrorKind::ForeignTables(_)), "{text}");
    assert!(text.contains("tables of its own (users)"), "{text}");

    let app = dir.path().join("other.db");
    {
        let db = rusqlite::Connection::open(&app).unwrap();
        db.pragma_update(None, "application_id", 0x1234_5678)
            .unwrap();
    }
    let (kind, text) = message(&app);
    assert!(
        matches!(kind, OpenErrorKind::ForeignApplication(0x1234_5678)),
        "{text}"
    );
    assert!(text.contains("another program's SQLite database"), "{text}");
}

#[test]
fn a_database_in_use_by_another_relay_is_refused() {
    let f = Fixture::new();
    let path = f.path();
    let (kind, text) = message(&path);
    assert!(matches!(kind, OpenErrorKind::Locked), "{text}");
    assert!(text.contains("in use by another process"), "{text}");
    drop(f.svc);
    assert!(open(&path).is_ok(), "free again once the first closes");
}

#[test]
fn bad_paths_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (kind, text) = message(dir.path());
    assert!(matches!(kind, OpenErrorKind::IsADirectory), "{text}");
    assert!(text.contains("is a directory"), "{text}");

    let missing = dir.path().join("no/such/dir/parties.db");
    let (kind, text) = message(&missing);
    assert!(matches!(kind, OpenErrorKind::NoDirectory(_)), "{text}");
    assert!(
        text.contains(&format!(
            "directory {} does not exist",
            dir.path().join("no/such/dir").display()
        )),
        "{text}"
    );
    assert!(!dir.path().join("no").exists(), "nothing was created");

    let file = dir.path().join("plain");
    fs::write(&file, b"x").unwrap();
    let (kind, text) = message(&file.join("parties.db"));
    assert!(
        matches!(kind, OpenErrorKind::ParentNotDirectory(_)),
        "{text}"
    );
    assert!(text.contains("is not a directory"), "{text}");
}

/// Set by the parent of [`unwritable_child`]: the database path to try.
const CHILD_PATH: &str = "LANRAGE_PARTY_TEST_OPEN_PATH";

/// Not a test on its own: run by [`unwritable_files_and_directories_are_refused`]
/// as an unprivileged child (root may write anywhere, so the test drops to
/// `nobody`). Prints the open error, or that it opened.
#[test]
fn unwritable_child() {
    let Ok(path) = std::env::var(CHILD_PATH) else {
        return;
    };
    match open(Path::new(&path)) {
        Ok(_) => println!("CHILD-RESULT opened"),
        Err(e) => println!("CHILD-RESULT {e}"),
    }
}

/// Opens `path` as an unprivileged user: in a child running as `nobody` if
/// we are root, else here. Returns the error message ("opened" if it opened).
fn open_unprivileged(path: &Path, as_root: bool) -> String {
    if !as_root {
        return match open(path) {
            Ok(_) => "opened".into(),
            Err(e) => e.to_string(),
        };
    }
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            "unwritable_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_PATH, path)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("the test binary runs as a child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-RESULT ").map(|(_, result)| result))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned();
    eprintln!("{text}");
    text
}

#[test]
fn unwritable_files_and_directories_are_refused() {
    // A directory the unprivileged user can enter but not write.
    let base = tempfile::tempdir().unwrap();
    let as_root = fs::metadata(base.path()).unwrap().uid() == 0;
    let ro_dir = base.path().join("ro");
    fs::create_dir(&ro_dir).unwrap();
    fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).unwrap();

    // An existing database the user may not write.
    let existing = ro_dir.join("parties.db");
    drop(open(&existing).unwrap());
    let before = fs::read(&existing).unwrap();
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o644)).unwrap();
    if !as_root {
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o444)).unwrap();
    }
    fs::set_permissions(&ro_dir, fs::Permissions::from_mode(0o555)).unwrap();

    let text = open_unprivileged(&existing, as_root);
    assert!(
        text.starts_with(&format!(
            "party database {}: file is not writable (",
            existing.display()
        )),
        "{text}"
    );
    assert!(text.contains("Permission denied"), "{text}");
    assert_eq!(fs::read(&existing).unwrap(), before);

    let new = ro_dir.join("new.db");
    let text = open_unprivileged(&new, as_root);
    assert!(
        text.starts_with(&format!(
            "party database {}: cannot create the file (",
            new.display()
        )),
        "{text}"
    );
    assert!(text.contains("Permission denied"), "{text}");
    assert!(!new.exists());

    // A writable file in a directory where the WAL can't be created.
    let lonely = ro_dir.join("lonely.db");
    fs::set_permissions(&ro_dir, fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy(&existing, &lonely).unwrap();
    fs::set_permissions(&lonely, fs::Permissions::from_mode(0o666)).unwrap();
    fs::set_permissions(&ro_dir, fs::Permissions::from_mode(0o555)).unwrap();
    let text = open_unprivileged(&lonely, as_root);
    assert!(
        text.starts_with(&format!("party database {}: ", lonely.display())),
        "{text}"
    );
    assert!(text.contains("not writable"), "{text}");

    fs::set_permissions(&ro_dir, fs::Permissions::from_mode(0o755)).unwrap();
}
