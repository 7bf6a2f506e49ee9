//! Opening the party database: checks, pragmas and schema migrations.
//!
//! A relay that can't use its party database must not start, and must say
//! why in words an operator acts on; and it must never "fix" a file by
//! recreating it, which would silently lose every party. So every way a path
//! can be wrong is its own [`OpenErrorKind`], and the only file this module
//! ever creates is one that did not exist.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

/// The schema this relay writes. Each migration in [`MIGRATIONS`] takes the
/// database from version `i` to `i + 1` (`PRAGMA user_version`).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// `PRAGMA application_id`: "LNRP". Marks the file as ours, so that a path
/// pointing at another program's SQLite database is refused rather than
/// written into.
const APPLICATION_ID: i32 = 0x4C4E_5250;

/// The migrations, in order. Never edit one that has shipped: add another.
const MIGRATIONS: [&str; 1] = [
    // 1: parties, members (with former members' address reservations), codes.
    // Sizes are in docs/parties.md, "Storage".
    "
    CREATE TABLE party (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        owner BLOB NOT NULL,
        version INTEGER NOT NULL,
        members INTEGER NOT NULL,
        reserved INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE member (
        party INTEGER NOT NULL REFERENCES party(id) ON DELETE CASCADE,
        key BLOB NOT NULL,
        slot INTEGER NOT NULL,
        name TEXT NOT NULL,
        joined_at INTEGER NOT NULL,
        left_at INTEGER,
        PRIMARY KEY (party, key)
    ) STRICT, WITHOUT ROWID;
    CREATE UNIQUE INDEX member_slot ON member(party, slot);
    CREATE UNIQUE INDEX member_current ON member(key) WHERE left_at IS NULL;
    CREATE TABLE code (
        hash BLOB PRIMARY KEY,
        party INTEGER NOT NULL REFERENCES party(id) ON DELETE CASCADE,
        expires_at INTEGER,
        uses_left INTEGER,
        created_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX code_party ON code(party);
    ",
];

/// The database at `path` could not be opened. Displays as
/// `party database PATH: WHAT (DETAIL); WHAT TO DO`.
#[derive(Debug, thiserror::Error)]
#[error("party database {}: {kind}", path.display())]
pub struct OpenError {
    pub path: PathBuf,
    pub kind: OpenErrorKind,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenErrorKind {
    #[error("directory {} does not exist; create it or fix the path", .0.display())]
    NoDirectory(PathBuf),
    #[error("{} is not a directory; fix the path", .0.display())]
    ParentNotDirectory(PathBuf),
    #[error("is a directory, not a file; name a file in it")]
    IsADirectory,
    #[error(
        "cannot create the file ({0}); check that the relay's user may write to its directory"
    )]
    CannotCreate(String),
    #[error("file is not writable ({0}); check that the relay's user may write to it and to its directory")]
    NotWritable(String),
    #[error("file is not a database ({0}); move it away or fix the path")]
    NotADatabase(String),
    #[error(
        "file is corrupt ({0}); restore it from a backup, or move it away to start with no parties"
    )]
    Corrupt(String),
    #[error("is another program's SQLite database (application id {0:#010x}), not a LANrage party database; fix the path")]
    ForeignApplication(i32),
    #[error("is a SQLite database with tables of its own ({0}), not a LANrage party database; fix the path")]
    ForeignTables(String),
    #[error("was written by a newer LANrage relay (schema version {found}; this relay knows up to {SCHEMA_VERSION}); upgrade the relay or restore a backup")]
    NewerSchema { found: u32 },
    #[error(
        "is in use by another process (is another relay running with the same party database?)"
    )]
    Locked,
    #[error("the disk is full ({0})")]
    DiskFull(String),
    #[error("{0}")]
    Sqlite(String),
}

pub(crate) fn open(path: &Path) -> Result<Connection, OpenError> {
    let fail = |kind| OpenError {
        path: path.to_owned(),
        kind: explain(path, kind),
    };
    precheck(path).map_err(fail)?;
    // No SQLITE_OPEN_URI: a configured path is a path, never `file:…?mode=`.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| fail(classify(&e)))?;
    if conn.is_readonly("main").map_err(|e| fail(classify(&e)))? {
        return Err(fail(OpenErrorKind::NotWritable(
            "SQLite could only open it read-only".into(),
        )));
    }
    configure(&conn).map_err(fail)?;
    migrate(&mut conn).map_err(fail)?;
    Ok(conn)
}

pub(crate) fn open_in_memory() -> Connection {
    let mut conn =
        Connection::open_in_memory().expect("an in-memory database opens (only OOM fails it)");
    let _ = conn.pragma_update(None, "foreign_keys", "ON");
    migrate(&mut conn).expect("migrating an empty in-memory database cannot fail");
    conn
}

/// Pages in use times the page size, after checkpointing the WAL.
pub(crate) fn database_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    // In-memory databases have no WAL; the pragma then returns a busy row.
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    let value = |pragma| conn.pragma_query_value(None, pragma, |r| r.get::<_, i64>(0));
    let pages = value("page_count")?;
    let free = value("freelist_count")?;
    let size = value("page_size")?;
    Ok(((pages - free.min(pages)) * size).max(0) as u64)
}

/// What the file system can tell us before SQLite says only "unable to open
/// database file".
fn precheck(path: &Path) -> Result<(), OpenErrorKind> {
    let existed = match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(OpenErrorKind::IsADirectory),
        Ok(_) => true,
        Err(_) => false,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(OpenErrorKind::NoDirectory(dir.to_owned()))
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(OpenErrorKind::ParentNotDirectory(dir.to_owned()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(OpenErrorKind::ParentNotDirectory(dir.to_owned()))
        }
        _ => {}
    }
    // Opening it ourselves for writing gets the OS's own reason (permission
    // denied, read-only file system) where SQLite would fall back to a
    // read-only open or say only "unable to open". Creating an empty file is
    // what SQLite would do too: an empty file is an empty database.
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(!existed)
        .truncate(false)
        .open(path);
    match opened {
        Ok(_) => Ok(()),
        Err(e) if existed => Err(OpenErrorKind::NotWritable(e.to_string())),
        Err(e) => Err(OpenErrorKind::CannotCreate(e.to_string())),
    }
}

fn configure(conn: &Connection) -> Result<(), OpenErrorKind> {
    let sql = |e: rusqlite::Error| classify(&e);
    // Another process holding the database is an error at once, not a wait.
    conn.busy_timeout(Duration::ZERO).map_err(sql)?;
    // One relay owns its party database: an exclusive lock held for the
    // connection's life makes a second relay on the same file fail at start
    // (`Locked`) instead of changing rosters the first never pushes. In WAL
    // mode it also keeps the WAL index in memory: no `-shm` file.
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(sql)?;
    // Corruption is found now, at start, not in the middle of a join. It
    // reads the whole file: a fraction of a second at 1 KB per member.
    let verdict: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(sql)?;
    if verdict != "ok" {
        // SQLite's report spans lines; an error message is one.
        let verdict = verdict.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(OpenErrorKind::Corrupt(format!(
            "integrity check: {verdict}"
        )));
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OpenErrorKind::NotWritable(format!(
            "cannot switch it to write-ahead logging (journal mode stayed {mode}); the relay's user must be able to create files in its directory"
        )));
    }
    // Durability on: a commit returns only after the WAL is on the disk.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sql)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction, or refuses a
/// file that is not ours or is newer. Runs a write transaction even when there
/// is nothing to do, so that a file we can read but not write fails here.
fn migrate(conn: &mut Connection) -> Result<(), OpenErrorKind> {
    let sql = |e: rusqlite::Error| classify(&e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let app: i32 = tx
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(sql)?;
    let version: u32 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    if app != 0 && app != APPLICATION_ID {
        return Err(OpenErrorKind::ForeignApplication(app));
    }
    if version > SCHEMA_VERSION {
        return Err(OpenErrorKind::NewerSchema { found: version });
    }
    if version == 0 || app == 0 {
        // Not ours yet: only an empty database may become ours.
        let mut stmt = tx
            .prepare("SELECT name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 4")
            .map_err(sql)?;
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .map_err(sql)?
            .collect::<Result<_, _>>()
            .map_err(sql)?;
        drop(stmt);
        if !names.is_empty() {
            return Err(OpenErrorKind::ForeignTables(names.join(", ")));
        }
    }
    for migration in &MIGRATIONS[version as usize..] {
        tx.execute_batch(migration).map_err(sql)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(sql)?;
    tx.commit().map_err(sql)
}

/// The header every SQLite 3 database starts with.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// Replaces SQLite's "file is not a database (file is not a database)" with
/// what the file actually looks like.
fn explain(path: &Path, kind: OpenErrorKind) -> OpenErrorKind {
    let OpenErrorKind::NotADatabase(detail) = kind else {
        return kind;
    };
    let mut head = Vec::with_capacity(16);
    let read = std::fs::File::open(path)
        .and_then(|f| io::Read::read_to_end(&mut io::Read::take(f, 16), &mut head));
    match read {
        Ok(_) if head.len() < SQLITE_HEADER.len() => OpenErrorKind::NotADatabase(format!(
            "it is {} bytes long, too short for a database",
            head.len()
        )),
        Ok(_) if head.as_slice() != SQLITE_HEADER => {
            OpenErrorKind::NotADatabase("it does not start with the SQLite header".into())
        }
        _ => OpenErrorKind::NotADatabase(detail),
    }
}

fn classify(e: &rusqlite::Error) -> OpenErrorKind {
    let text = e.to_string();
    let Some(code) = e.sqlite_error_code() else {
        return OpenErrorKind::Sqlite(text);
    };
    match code {
        ErrorCode::NotADatabase => OpenErrorKind::NotADatabase(text),
        ErrorCode::DatabaseCorrupt => OpenErrorKind::Corrupt(text),
        ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen => {
            OpenErrorKind::NotWritable(text)
        }
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => OpenErrorKind::Locked,
        ErrorCode::DiskFull => OpenErrorKind::DiskFull(text),
        _ => OpenErrorKind::Sqlite(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_is_durable_wal_exclusive_with_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("p.db")).unwrap();
        let value = |pragma| -> String {
            conn.query_row(&format!("PRAGMA {pragma}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| format!("{v:?}"))
            .unwrap()
        };
        // synchronous: 2 is FULL (a commit waits for the WAL's fsync).
        assert_eq!(value("synchronous"), "Integer(2)");
        assert_eq!(value("journal_mode"), "Text(\"wal\")");
        assert_eq!(value("locking_mode"), "Text(\"exclusive\")");
        assert_eq!(value("foreign_keys"), "Integer(1)");
        // No -shm file: the WAL index is in this process's memory.
        assert!(!dir.path().join("p.db-shm").exists());
    }
}
