//! Test harness: `spawn_app()` starts hazina on port 0 with a fresh database and keyring.
//!
//! Backend: `HAZINA_TEST_BACKEND=sqlite` (default) or `postgres`. For PostgreSQL each test
//! creates its own database on `HAZINA_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, used only to create and drop it) and drops it
//! when the `TestApp` is dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::web;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use reqwest::{Response, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};

use hazina::auth::password;
use hazina::clock::Clock;
use hazina::config::Config;
use hazina::db::{self, DbConn};
use hazina::domain::{Role, Username};
use hazina::repo;
use hazina::startup::Application;
use hazina::state::AppState;

pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn backend() -> Backend {
    match std::env::var("HAZINA_TEST_BACKEND").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("HAZINA_TEST_BACKEND must be sqlite or postgres, not {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Log capture: every test's server logs land in one buffer that tests can search.

#[derive(Clone)]
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = LogSink(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .try_init();
        buf
    })
}

/// Everything every server in this test process has logged so far.
pub fn captured_logs() -> Vec<u8> {
    log_buffer().lock().unwrap().clone()
}

// ---------------------------------------------------------------------------------------
// Databases

pub enum TestDatabase {
    Sqlite {
        path: PathBuf,
    },
    Postgres {
        admin_url: String,
        name: String,
        url: String,
    },
}

fn pg_admin_url() -> String {
    std::env::var("HAZINA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl TestDatabase {
    fn create(dir: &std::path::Path) -> Self {
        match backend() {
            Backend::Sqlite => TestDatabase::Sqlite {
                path: dir.join("hazina.db"),
            },
            Backend::Postgres => {
                let admin_url = pg_admin_url();
                let name = format!("hazina_test_{}", uuid::Uuid::new_v4().simple());
                let mut admin = pg_connect(&admin_url)
                    .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is unreachable: {e}"));
                admin
                    .batch_execute(&format!("CREATE DATABASE {name}"))
                    .unwrap();
                let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap();
                let url = format!("{base}/{name}");
                TestDatabase::Postgres {
                    admin_url,
                    name,
                    url,
                }
            }
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestDatabase::Sqlite { path } => format!("sqlite://{}", path.display()),
            TestDatabase::Postgres { url, .. } => url.clone(),
        }
    }
}

/// A test's own PostgreSQL connection. OpenSSL (libpq's TLS) is initialised first the way
/// hazina's own connections do it (`db::connect`), without its atexit clean-up: whichever
/// connection comes first decides, and with the clean-up the binary's exit tore OpenSSL down
/// under threads still running (a SIGSEGV in `init_thread_deregister` after every test passed).
pub fn pg_connect(url: &str) -> diesel::ConnectionResult<PgConnection> {
    openssl_sys::init();
    PgConnection::establish(url)
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres {
            admin_url, name, ..
        } = self
        {
            if let Ok(mut admin) = pg_connect(admin_url) {
                let _ =
                    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The application under test

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub state: web::Data<AppState>,
    pub clock: Clock,
    pub keyring_path: PathBuf,
    // Shared with other nodes on the same database. Field order matters: the database is
    // dropped before the directory holding it.
    pub db: Arc<TestDatabase>,
    pub dir: Arc<tempfile::TempDir>,
}

pub struct TestUser {
    pub id: i64,
    pub username: String,
    pub password: String,
    pub access: String,
    pub refresh: String,
}

/// Spawns hazina with default settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns hazina with extra `HAZINA_*` settings (as the environment would give them).
pub async fn spawn_app_with(settings: &[(&str, &str)]) -> TestApp {
    log_buffer();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = Arc::new(TestDatabase::create(dir.path()));
    start_node(db, dir, settings).await
}

/// Builds a database of the test backend without starting hazina (for start-up tests).
pub fn create_test_database() -> (Arc<TestDatabase>, Arc<tempfile::TempDir>) {
    log_buffer();
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = Arc::new(TestDatabase::create(dir.path()));
    (db, dir)
}

/// The configuration a node on `db` would get, with extra settings.
pub fn node_config(db: &TestDatabase, dir: &std::path::Path, settings: &[(&str, &str)]) -> Config {
    let keyring_path = dir.join("hazina.keyring");
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("HAZINA_DATABASE_URL".into(), db.url());
    env.insert("HAZINA_BIND".into(), "127.0.0.1:0".into());
    env.insert("HAZINA_KEYRING".into(), keyring_path.display().to_string());
    env.insert("HAZINA_WORKERS".into(), "1".into());
    env.insert("HAZINA_DB_POOL_SIZE".into(), "4".into());
    // Every test client calls from 127.0.0.1 and many tests send hundreds of requests within
    // one (manual-clock) minute; tests about rate limits (tests/api/abuse.rs) set their own.
    env.insert("HAZINA_RATE_LIMIT_PER_MINUTE".into(), "1000000".into());
    for (k, v) in settings {
        env.insert((*k).into(), (*v).into());
    }
    Config::from_lookup(|k| env.get(k).cloned()).expect("test configuration is valid")
}

/// Starts hazina on an existing test database (e.g. one arranged at an older schema).
pub async fn start_on(db: Arc<TestDatabase>, dir: Arc<tempfile::TempDir>) -> TestApp {
    start_node(db, dir, &[]).await
}

async fn start_node(
    db: Arc<TestDatabase>,
    dir: Arc<tempfile::TempDir>,
    settings: &[(&str, &str)],
) -> TestApp {
    let config = node_config(&db, dir.path(), settings);
    let keyring_path = dir.path().join("hazina.keyring");
    let clock = Clock::manual(chrono::Utc::now().timestamp());
    let app = Application::build(config, clock.clone()).expect("application builds");
    let port = app.port();
    let state = app.state();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder().build().unwrap(),
        state,
        clock,
        keyring_path,
        db,
        dir,
    }
}

impl TestApp {
    /// Another hazina node on the same database and keyring (several stateless processes).
    pub async fn spawn_node(&self) -> TestApp {
        start_node(self.db.clone(), self.dir.clone(), &[]).await
    }

    /// Another node, with extra settings.
    pub async fn spawn_node_with(&self, settings: &[(&str, &str)]) -> TestApp {
        start_node(self.db.clone(), self.dir.clone(), settings).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A pooled connection to the app's own database, for arranging and inspecting rows.
    pub fn conn(&self) -> r2d2::PooledConnection<db::Manager> {
        self.state.pool.get().unwrap()
    }

    /// Reverts the `n` newest migrations on the app's database (rows stay where the down
    /// migrations keep them); their versions, newest first.
    pub fn revert_migrations(&self, n: usize) -> Vec<String> {
        use diesel_migrations::MigrationHarness;
        let url = hazina::config::DatabaseUrl::parse(&self.db.url()).unwrap();
        let mut conn = hazina::db::establish(&url).unwrap();
        (0..n)
            .map(|_| match &mut conn {
                DbConn::Sqlite(c) => c
                    .revert_last_migration(hazina::db::SQLITE_MIGRATIONS)
                    .unwrap()
                    .to_string(),
                DbConn::Postgres(c) => c
                    .revert_last_migration(hazina::db::POSTGRES_MIGRATIONS)
                    .unwrap()
                    .to_string(),
            })
            .collect()
    }

    /// Runs raw SQL (several statements allowed) against the app's database.
    pub fn sql(&self, statements: &str) {
        let mut conn = self.conn();
        let c: &mut DbConn = &mut conn;
        c.batch_execute(statements).unwrap();
    }

    /// Runs one SQL statement; the number of rows it touched.
    pub fn sql_execute(&self, statement: &str) -> usize {
        let mut conn = self.conn();
        diesel::sql_query(statement).execute(&mut *conn).unwrap()
    }

    /// Runs a query whose single column is named `line` and is text.
    pub fn sql_lines(&self, query: &str) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Line {
            #[diesel(sql_type = Text)]
            line: String,
        }
        let mut conn = self.conn();
        diesel::sql_query(query)
            .load::<Line>(&mut *conn)
            .unwrap()
            .into_iter()
            .map(|l| l.line)
            .collect()
    }

    /// Every byte the database holds at rest: for SQLite the database file and its WAL
    /// (raw), for PostgreSQL every row of every table rendered as text (bytea as hex).
    pub fn stored_bytes(&self) -> Vec<u8> {
        match &*self.db {
            TestDatabase::Sqlite { path } => {
                let mut out = std::fs::read(path).unwrap();
                let wal = PathBuf::from(format!("{}-wal", path.display()));
                if let Ok(bytes) = std::fs::read(wal) {
                    out.extend(bytes);
                }
                out
            }
            TestDatabase::Postgres { .. } => {
                let mut out = Vec::new();
                let tables = self.sql_lines(
                    "SELECT tablename::text AS line FROM pg_tables WHERE schemaname = 'public'",
                );
                for table in tables {
                    for line in self.sql_lines(&format!(
                        "SELECT row_to_json(t)::text AS line FROM {table} t"
                    )) {
                        out.extend(line.into_bytes());
                    }
                }
                out
            }
        }
    }

    /// Creates a user directly in the database (no login).
    pub fn insert_user(&self, username: &str, role: Role) -> i64 {
        let hash = password::hash(&SecretString::from(PASSWORD.to_owned())).unwrap();
        self.insert_user_with_hash(username, &hash, role)
    }

    /// Creates a user with this password hash directly in the database (no login).
    pub fn insert_user_with_hash(&self, username: &str, hash: &str, role: Role) -> i64 {
        let mut conn = self.conn();
        // As an administrator would: rows are signed only inside an audited change.
        let entry = hazina::audit::Event::new(
            self.clock.now_micros(),
            hazina::audit::Actor::system(),
            &hazina::audit::RequestMeta::default(),
            hazina::audit::Action::AdminUserCreate,
        );
        let id = hazina::audit::chain::with_entry(
            &mut conn,
            |tx| {
                repo::users::create(
                    tx,
                    &self.state.keyring,
                    &Username::parse(username).unwrap(),
                    hash,
                    role,
                    None,
                    self.clock.now(),
                )
            },
            |id| Some(entry.target(hazina::audit::Target::owner(id.get()))),
        )
        .unwrap();
        id.get()
    }

    /// Disables a user directly in the database, as an audited change (as the CLI does).
    pub fn disable_user(&self, username: &str) -> Option<i64> {
        let mut conn = self.conn();
        let entry = hazina::audit::Event::new(
            self.clock.now_micros(),
            hazina::audit::Actor::system(),
            &hazina::audit::RequestMeta::default(),
            hazina::audit::Action::AdminUserDisable,
        );
        hazina::audit::chain::with_entry(
            &mut conn,
            |tx| repo::users::disable(tx, &self.state.keyring, username),
            |id| id.map(|id| entry.target(hazina::audit::Target::owner(id))),
        )
        .unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.client
            .post(self.url("/users/login/"))
            .json(&json!({ "username": username, "password": password }))
            .send()
            .await
            .unwrap()
    }

    /// A new user of `role`, logged in.
    pub async fn user_with_role(&self, role: Role) -> TestUser {
        let username = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let id = self.insert_user(&username, role);
        let res = self.login(&username, PASSWORD).await;
        assert_eq!(res.status(), StatusCode::OK, "login of a fresh user");
        let body: Value = res.json().await.unwrap();
        TestUser {
            id,
            username,
            password: PASSWORD.into(),
            access: body["access_token"].as_str().unwrap().into(),
            refresh: body["refresh_token"].as_str().unwrap().into(),
        }
    }

    /// A new merchant (role `user`), logged in.
    pub async fn user(&self) -> TestUser {
        self.user_with_role(Role::User).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// POST with no body at all.
    pub async fn post_empty(&self, path: &str, token: &str) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .put(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a credential and returns its JSON (asserting 201).
    pub async fn create_credential(
        &self,
        user: &TestUser,
        provider: &str,
        environment: &str,
        private_key: &str,
    ) -> Value {
        let res = self
            .post(
                "/payments/credentials/",
                &user.access,
                &json!({
                    "provider": provider,
                    "api_key": format!("api-{provider}-{environment}"),
                    "private_key": private_key,
                    "environment": environment,
                }),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED, "create credential");
        res.json().await.unwrap()
    }
}

/// Asserts a JSON error response: the status and `{"error": <message>}`.
pub async fn assert_error(res: Response, status: StatusCode, message: &str) {
    assert_eq!(res.status(), status);
    assert!(
        res.headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap().starts_with("application/json")),
        "error bodies are JSON"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], message, "{body}");
}

/// The JSON body of an answer that must have `status` (the body is shown when it has not).
pub async fn body_of(res: Response, status: StatusCode) -> Value {
    let got = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
}

/// Asserts a JSON 4xx (never a 5xx) and returns the body.
pub async fn assert_json_4xx(res: Response) -> Value {
    let status = res.status();
    assert!(status.is_client_error(), "expected a 4xx, got {status}");
    let text = res.text().await.unwrap();
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert!(body["error"].is_string(), "{body}");
    body
}

pub const NOT_FOUND: &str = "Payment credentials not found or access denied";

/// Makes every insert into the audit log fail (a trigger), to prove what is refused or
/// rolled back when no entry can be written.
pub fn refuse_audit_writes(app: &TestApp) {
    app.sql(match backend() {
        Backend::Sqlite => {
            "CREATE TRIGGER no_audit BEFORE INSERT ON audit_log
             BEGIN SELECT RAISE(ABORT, 'audit disabled'); END;"
        }
        Backend::Postgres => {
            "CREATE FUNCTION no_audit() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'audit disabled'; END $$;
             CREATE TRIGGER no_audit BEFORE INSERT ON audit_log
               FOR EACH ROW EXECUTE FUNCTION no_audit();"
        }
    });
}

/// An owner's reveal of credential `id`.
pub async fn reveal(app: &TestApp, token: &str, id: i64) -> Response {
    app.get(
        &format!("/payments/credentials/{id}/get-private-key/"),
        token,
    )
    .await
}

/// Every (owner token, id, key) reveals its key.
pub async fn assert_all_reveal(app: &TestApp, creds: &[(String, i64, String)]) {
    for (token, id, key) in creds {
        let body = body_of(reveal(app, token, *id).await, reqwest::StatusCode::OK).await;
        assert_eq!(&body["private_key"], key, "credential {id}");
    }
}

/// Inserts an M-Pesa live credential (version 1, sealed under `keyring`'s active version) the
/// way an earlier release stored one, into a database arranged at an older schema: no MAC, no
/// profile, no generation.
pub fn insert_earlier_release_credential(
    conn: &mut DbConn,
    keyring: &hazina::crypto::Keyring,
    owner_id: i64,
    cred_id: i64,
    key: &str,
) {
    use diesel::prelude::*;
    use hazina::crypto::{envelope, Aad};
    use hazina::db::schema::{credential_versions as cv, credentials as c};
    diesel::insert_into(c::table)
        .values((
            c::id.eq(cred_id),
            c::owner_id.eq(owner_id),
            c::provider.eq("mpesa"),
            c::environment.eq("live"),
            c::api_key.eq(Some("consumer-key")),
            c::is_active.eq(true),
            c::current_version.eq(1),
            c::created_at.eq(0_i64),
            c::updated_at.eq(0_i64),
        ))
        .execute(conn)
        .unwrap();
    let aad = Aad {
        owner_id,
        credential_id: cred_id,
        provider: "mpesa",
        environment: "live",
        version: 1,
        profile: None,
    };
    let sealed =
        envelope::seal(keyring, &aad, &secrecy::SecretString::from(key.to_owned())).unwrap();
    diesel::insert_into(cv::table)
        .values((
            cv::credential_id.eq(cred_id),
            cv::version.eq(1),
            cv::environment.eq("live"),
            cv::format.eq(sealed.format),
            cv::kek_version.eq(sealed.kek_version),
            cv::wrapped_dek.eq(sealed.wrapped_dek.clone()),
            cv::ciphertext.eq(sealed.ciphertext.clone()),
            cv::verifier.eq(sealed.verifier.clone()),
            cv::created_at.eq(0_i64),
            cv::created_by.eq(owner_id),
        ))
        .execute(conn)
        .unwrap();
}

/// Runs the `hazina` binary on `app`'s database and keyring with `stdin` on standard input.
pub fn hazina_cli(app: &TestApp, args: &[&str], stdin: &str) -> std::process::Output {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(args)
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .env_remove("HAZINA_KEYRING_DATA")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
