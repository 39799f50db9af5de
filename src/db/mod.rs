//! Storage: one query code path for SQLite and PostgreSQL.
//!
//! [`DbConn`] is a diesel `MultiConnection`; the backend is chosen from the URL scheme,
//! never by trying one after the other. Every SQLite connection runs in WAL mode with
//! `synchronous=FULL`, foreign keys on, a busy timeout and `secure_delete` (so shredded
//! key material is overwritten, not left in free pages); a credential delete then
//! checkpoints the WAL ([`wal`]), so no copy stays in the `-wal` file either.
//!
//! Write transactions begin with a write statement, so SQLite takes its write lock up
//! front (waiting on the busy timeout) instead of failing a read-to-write upgrade, and
//! PostgreSQL row locks serialise concurrent writers to one row.

pub mod schema;
pub mod wal;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::R2D2Connection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::config::DatabaseUrl;

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

#[derive(diesel::MultiConnection)]
pub enum DbConn {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Runs `$body` with `$c` bound to the backend's own connection: the same query, written
/// once and compiled for each backend. Through `MultiConnection` diesel rebuilds every
/// statement's SQL text on each call (its statements have no static query id); on the
/// backend's own connection a statement is prepared once and found again by its type. For
/// the statements every reveal runs (the session check, the credential lookup, the audit
/// append), where that rebuilding was a third of the database threads' work.
#[macro_export]
macro_rules! per_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConn::Sqlite($c) => $body,
            $crate::db::DbConn::Postgres($c) => $body,
        }
    };
}

pub type Pool = r2d2::Pool<Manager>;
pub type PooledConn = r2d2::PooledConnection<Manager>;

/// A connection failure, with a message that never carries the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

impl ConnectError {
    pub fn new(message: String) -> Self {
        ConnectError(message)
    }
}

const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
PRAGMA foreign_keys = ON;
PRAGMA secure_delete = ON;";

/// Opens one connection for `url`, with the per-connection settings applied.
pub fn establish(url: &DatabaseUrl) -> Result<DbConn, ConnectError> {
    match url {
        DatabaseUrl::Sqlite(path) => {
            let mut c = SqliteConnection::establish(&path.to_string_lossy())
                .map_err(|e| ConnectError(format!("cannot open SQLite database: {e}")))?;
            // busy_timeout first, so that switching to WAL waits for another process too.
            c.batch_execute("PRAGMA busy_timeout = 10000;")
                .and_then(|_| c.batch_execute(SQLITE_PRAGMAS))
                .map_err(|e| ConnectError(format!("cannot configure SQLite database: {e}")))?;
            Ok(DbConn::Sqlite(c))
        }
        DatabaseUrl::Postgres(secret) => {
            use secrecy::ExposeSecret;
            // Initialise OpenSSL (libpq's TLS) before libpq does, without its atexit clean-up:
            // a process that exits while another thread still holds a connection (a server's
            // audit writer or rotation, a test binary's last node) must not have OpenSSL torn
            // down under that thread, which crashes the exit.
            openssl_sys::init();
            let mut c = PgConnection::establish(secret.expose_secret()).map_err(|e| {
                // libpq messages name host and port, never the password.
                ConnectError(format!(
                    "cannot connect to PostgreSQL: {}",
                    first_line(&e.to_string())
                ))
            })?;
            c.batch_execute("SET synchronous_commit = on; SET TIME ZONE 'UTC';")
                .map_err(|e| ConnectError(format!("cannot configure PostgreSQL session: {e}")))?;
            Ok(DbConn::Postgres(c))
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

/// Refuses a PostgreSQL that would not make commits durable: `fsync` off, or
/// `synchronous_commit` off by default for new sessions (hazina also sets it `on` for its own
/// sessions, but a server configured to lose commits is a deployment error worth stopping on).
pub fn check_durability(conn: &mut DbConn) -> Result<(), ConnectError> {
    use diesel::sql_types::Text;
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        name: String,
        #[diesel(sql_type = Text)]
        value: String,
    }
    let DbConn::Postgres(pg) = conn else {
        return Ok(());
    };
    let settings: Vec<Setting> = diesel::sql_query(
        "SELECT name, reset_val AS value FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync')",
    )
    .load(pg)
    .map_err(|e| ConnectError(format!("cannot read PostgreSQL settings: {e}")))?;
    for s in settings {
        if s.value == "off" {
            return Err(ConnectError(format!(
                "PostgreSQL has {} = off: acknowledged writes could be lost in a crash; \
                 set it to on for this database (ALTER DATABASE ... SET {} = on) or the server",
                s.name, s.name
            )));
        }
    }
    Ok(())
}

/// Applies the embedded migrations of the connection's backend.
pub fn run_migrations(conn: &mut DbConn) -> Result<(), ConnectError> {
    let res = match conn {
        DbConn::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|_| ()),
        DbConn::Postgres(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS).map(|_| ()),
    };
    res.map_err(|e| ConnectError(format!("database migration failed: {e}")))
}

/// The r2d2 manager: picks the backend from the URL scheme.
#[derive(Debug)]
pub struct Manager {
    url: DatabaseUrl,
}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConn;
    type Error = ConnectError;

    fn connect(&self) -> Result<DbConn, ConnectError> {
        establish(&self.url)
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ConnectError> {
        conn.ping()
            .map_err(|e| ConnectError(format!("connection check failed: {e}")))
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        conn.is_broken()
    }
}

/// Builds the pool, failing fast (one clear error) when the database cannot be reached.
pub fn build_pool(url: &DatabaseUrl, size: u32) -> Result<Pool, ConnectError> {
    if let DatabaseUrl::Sqlite(path) = url {
        create_sqlite_file(path)
            .map_err(|e| ConnectError(format!("cannot create {}: {e}", path.display())))?;
    }
    // Open one connection eagerly so a bad URL is one clear error, not a pool timeout.
    let mut first = establish(url)?;
    check_durability(&mut first)?;
    drop(first);
    r2d2::Pool::builder()
        .max_size(size)
        // No background refills: an idle connection being opened by r2d2's own thread while
        // a short-lived process (the CLI) exits races libpq/OpenSSL's exit clean-up.
        .min_idle(Some(0))
        // A PostgreSQL connection is pinged on every checkout (a server restart leaves stale
        // ones behind). An embedded SQLite connection cannot go stale, and its ping (a `SELECT
        // 1` parsed afresh each time) was measurable on the reveal path: not tested there.
        .test_on_check_out(!matches!(url, DatabaseUrl::Sqlite(_)))
        .connection_timeout(Duration::from_secs(10))
        .error_handler(Box::new(r2d2::LoggingErrorHandler))
        .build(Manager { url: url.clone() })
        .map_err(|e| ConnectError(format!("cannot build the connection pool: {e}")))
}

/// Creates a missing SQLite database file, empty and mode 0600, before SQLite opens it:
/// SQLite would create it with the umask's mode (0644 by default), readable by every local
/// user, beside a 0600 keyring. Its `-wal` and `-shm` files take the database file's mode.
/// An existing file is left as it is. Returns whether the file was created here.
pub fn create_sqlite_file(path: &std::path::Path) -> std::io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// A repository failure. `Conflict` is a unique-key violation the caller should see as 409.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unique constraint violated")]
    Conflict,
    #[error("database error: {0}")]
    Query(diesel::result::Error),
    #[error("no connection available: {0}")]
    Pool(#[from] r2d2::Error),
    /// The thread pool that runs queries off the async workers is gone (the process is
    /// stopping); nothing was run.
    #[error("the database threads are stopping: {0}")]
    Stopping(String),
    #[error(transparent)]
    Crypto(#[from] crate::crypto::EnvelopeError),
    /// The write named a version the credential has moved past (`If-Match`); nothing was
    /// written. Holds the current version.
    #[error("stale version; current is {0}")]
    Stale(i32),
    /// The master-key states forbid sealing now (no single active version, or one the
    /// keyring does not name active): nothing was written.
    #[error("master-key state: {0}")]
    KeyState(&'static str),
    /// A row failed its integrity check (its MAC does not verify: edited outside hazina).
    /// Nothing was written and nothing was obeyed.
    #[error("a {0} row failed its integrity check")]
    Tampered(&'static str),
    /// A signed row was changed outside an audited change (a bug: rows are signed only
    /// inside `audit::chain::with_entry`). Nothing was written.
    #[error("a signed row changed outside an audited change")]
    Unaudited,
    /// What was asked for needs audit entries that were archived (through this sequence
    /// number) and are no longer in the database.
    #[error("audit entries up to {0} were archived")]
    Archived(i64),
    /// A domain rule refused the change inside the transaction (nothing was written).
    #[error("rejected: {0}")]
    Rejected(#[from] crate::domain::ValidationError),
}

impl From<diesel::result::Error> for DbError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => DbError::Conflict,
            other => DbError::Query(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// `.cargo/config.toml` builds the bundled SQLite with the query planner stability
    /// guarantee: without it every cached statement with a bound `LIMIT` (each `.first()`) is
    /// parsed and planned again on every execution (SQLite 3.47+).
    #[test]
    fn bundled_sqlite_keeps_cached_statements_planned_once() {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = SqliteConnection::establish(":memory:").unwrap();
        let found: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pragma_compile_options WHERE compile_options = 'ENABLE_QPSG'",
        )
        .get_result(&mut c)
        .unwrap();
        assert_eq!(found.n, 1, "SQLite was built without SQLITE_ENABLE_QPSG");
    }

    fn migration_names(backend: &str) -> BTreeSet<String> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend);
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// `table.column` for every column, and `index:name` for every index, of one up.sql.
    fn schema_shape(backend: &str, migration: &str) -> BTreeSet<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend)
            .join(migration)
            .join("up.sql");
        let sql = std::fs::read_to_string(path).unwrap();
        let mut shape = BTreeSet::new();
        let mut table: Option<String> = None;
        for line in sql.lines().map(str::trim) {
            let upper = line.to_ascii_uppercase();
            if let Some(rest) = upper.strip_prefix("CREATE TABLE ") {
                table = Some(rest.split_whitespace().next().unwrap().to_ascii_lowercase());
            } else if upper.starts_with("CREATE UNIQUE INDEX ")
                || upper.starts_with("CREATE INDEX ")
            {
                let name = line.split_whitespace().find(|w| w.contains('_')).unwrap();
                shape.insert(format!("index:{name}"));
            } else if line.starts_with(')') {
                table = None;
            } else if let Some(t) = &table {
                let first = line.split_whitespace().next().unwrap_or("");
                let is_column = !first.is_empty()
                    && !first.starts_with("--")
                    && !["PRIMARY", "FOREIGN", "UNIQUE", "CHECK", "CONSTRAINT"]
                        .contains(&first.to_ascii_uppercase().as_str());
                if is_column {
                    shape.insert(format!("{t}.{first}"));
                }
            }
        }
        shape
    }

    #[test]
    fn sqlite_and_postgres_migrations_have_the_same_names_and_shape() {
        let sqlite = migration_names("sqlite");
        let postgres = migration_names("postgres");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, postgres, "the two migration sets drifted apart");
        let mut all = BTreeSet::new();
        for m in &sqlite {
            let a = schema_shape("sqlite", m);
            let b = schema_shape("postgres", m);
            assert_eq!(
                a, b,
                "migration {m} defines different tables, columns or indexes"
            );
            all.extend(a);
        }
        // The parser really sees columns (so the comparison above is not vacuous).
        assert!(all.contains("credentials.owner_id"), "{all:?}");

        // diesel.toml names the schema file and the migration directories that exist.
        let root = env!("CARGO_MANIFEST_DIR");
        let toml = std::fs::read_to_string(format!("{root}/diesel.toml")).unwrap();
        let value = |key: &str| -> String {
            toml.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_owned())
                .unwrap_or_else(|| panic!("diesel.toml has no {key}"))
        };
        let schema = value("file");
        assert_eq!(schema, "src/db/schema.rs");
        assert!(std::path::Path::new(&format!("{root}/{schema}")).is_file());
        assert_eq!(value("dir"), "migrations/sqlite");
        for backend in ["sqlite", "postgres"] {
            assert!(toml.contains(&format!("migrations/{backend}")));
            assert!(std::path::Path::new(&format!("{root}/migrations/{backend}")).is_dir());
        }
    }
}
