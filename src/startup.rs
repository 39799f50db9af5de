//! Builds the application: keyring, pool, migrations, HTTP server. Tests bind port 0 and
//! read the port back.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::audit::AuditLog;
use crate::auth::jwt::TokenKeys;
use crate::clock::Clock;
use crate::config::{Config, KeyringSource};
use crate::crypto::Keyring;
use crate::db::{self, Pool};
use crate::repo::key_versions;
use crate::routes;
use crate::state::AppState;

/// Files a start created (a new SQLite database and its journal files, a development
/// keyring), removed again when the start fails: a failed start leaves nothing behind.
#[derive(Default)]
struct CreatedFiles {
    paths: Vec<std::path::PathBuf>,
}

impl CreatedFiles {
    fn file(&mut self, path: &std::path::Path) {
        self.paths.push(path.to_path_buf());
    }

    fn sqlite(&mut self, path: &std::path::Path) {
        self.file(path);
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            self.paths.push(name.into());
        }
    }

    /// The start succeeded: the files stay.
    fn keep(mut self) {
        self.paths.clear();
    }
}

impl Drop for CreatedFiles {
    fn drop(&mut self) {
        for path in &self.paths {
            match std::fs::remove_file(path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed a file this failed start created")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove a file this failed start created")
                }
            }
        }
    }
}

/// Every `every`, while the audit log grows, signs a checkpoint and appends it to `path`
/// (created 0600, each note fsynced), for a write-once mount or a log shipper. Stops when the
/// application is gone.
fn spawn_checkpoint_publisher(state: &web::Data<AppState>, path: std::path::PathBuf, every: u64) {
    let weak = std::sync::Arc::downgrade(&state.clone().into_inner());
    let spawned = std::thread::Builder::new()
        .name("hazina-checkpoints".into())
        .spawn(move || {
            let mut published = None;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(every));
                let Some(state) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = publish_checkpoint(&state, &path, &mut published) {
                    tracing::error!(error = %e, path = %path.display(), "cannot publish an audit checkpoint");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the checkpoint publisher");
    }
}

/// Every minute, drops the provider tokens (and refresh tokens) that have expired, so none
/// lingers in memory until its credential is next used. Stops when the application is gone.
fn spawn_token_sweeper(state: &web::Data<AppState>) {
    let weak = std::sync::Arc::downgrade(&state.clone().into_inner());
    let spawned = std::thread::Builder::new()
        .name("hazina-token-sweep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
            let Some(state) = weak.upgrade() else {
                return;
            };
            state.broker.sweep(state.clock.now());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the token sweeper");
    }
}

fn publish_checkpoint(
    state: &AppState,
    path: &std::path::Path,
    published: &mut Option<u64>,
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut conn = state.pool.get()?;
    let size = crate::audit::merkle::size(&mut conn)?;
    if *published == Some(size) {
        return Ok(());
    }
    let note = match crate::audit::checkpoint::sign_current(
        &mut conn,
        &state.keyring,
        &state.audit_origin,
        &state.signer_memory,
    ) {
        Ok(note) => note,
        Err(crate::audit::checkpoint::SignError::Rewritten(problem)) => {
            state.checkpoint_refused(&problem);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    // Notes follow each other directly: each ends with its signature line.
    file.write_all(note.as_bytes())?;
    file.sync_all()?;
    *published = Some(size);
    Ok(())
}

/// How the keyring was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyringOrigin {
    Loaded,
    /// A development keyring was created because none existed.
    CreatedForDevelopment,
}

/// Loads the keyring. With a file source and no file, creates a development keyring (0600) —
/// but only beside a database that holds no key: a missing keyring next to stored keys is a
/// failed mount or a wrong path, and a fresh keyring there would seal new keys under a
/// throwaway key while every existing one fails to open. Nothing is created then.
pub fn load_keyring(
    source: &KeyringSource,
    pool: &Pool,
) -> anyhow::Result<(Keyring, KeyringOrigin)> {
    match source {
        KeyringSource::Inline(data) => Ok((Keyring::from_secret(data)?, KeyringOrigin::Loaded)),
        KeyringSource::File(path) if path.exists() => {
            Ok((Keyring::load_file(path)?, KeyringOrigin::Loaded))
        }
        KeyringSource::File(path) => {
            let mut conn = pool.get().context("cannot get a database connection")?;
            if key_versions::holds_keys(&mut conn)? {
                anyhow::bail!(
                    "no keyring at {}, but this database holds keys sealed under one: mount the \
                     keyring that belongs to this database (HAZINA_KEYRING); hazina will not \
                     create a new keyring beside stored keys",
                    path.display()
                );
            }
            Keyring::generate().write_new_file(path)?;
            // Loaded back from the file, so it follows later changes (rotations) to it.
            Ok((
                Keyring::load_file(path)?,
                KeyringOrigin::CreatedForDevelopment,
            ))
        }
    }
}

/// Opens the database named by the configuration and applies migrations.
pub fn open_database(config: &Config) -> anyhow::Result<Pool> {
    let pool = db::build_pool(&config.database_url, config.db_pool_size)?;
    let mut conn = pool.get().context("cannot get a database connection")?;
    db::run_migrations(&mut conn)?;
    Ok(pool)
}

/// The database and the keyring that belongs to it: how `serve` and every CLI command start.
/// A keyring that does not match the database's key check values is refused here, before
/// anything reads or writes a key.
pub struct Vault {
    pub pool: Pool,
    pub keyring: Arc<Keyring>,
    pub origin: KeyringOrigin,
}

pub fn open_vault(config: &Config, clock: &Clock) -> anyhow::Result<Vault> {
    let pool = open_database(config)?;
    let (keyring, origin) = load_keyring(&config.keyring, &pool)?;
    let checked = {
        let mut conn = pool.get().context("cannot get a database connection")?;
        let built = crate::audit::merkle::build_missing(&mut conn)?;
        if built > 0 {
            tracing::info!(
                entries = built,
                "built the audit Merkle tree over existing entries"
            );
        }
        key_versions::check_and_register(&mut conn, &keyring, clock.now())?
    };
    if let key_versions::Checked::Adopted(version) = checked {
        tracing::warn!(
            kek_version = version,
            "adopted master-key version {version} from the keyring as the active version"
        );
    }
    Ok(Vault {
        pool,
        keyring: Arc::new(keyring),
        origin,
    })
}

/// A zero core-file limit (soft and hard) and, on Linux, a non-dumpable process: a crash
/// must not write the keyring, data keys or decrypted private keys to disk, and no other
/// process of the same user may attach to read them. A failure is logged, not fatal.
pub fn disable_core_dumps() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let zero = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(e) = setrlimit(Resource::Core, zero) {
        tracing::warn!(error = %e, "cannot set a zero core-file limit");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %e, "cannot mark the process non-dumpable");
    }
}

pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
}

impl Application {
    /// Everything but accepting connections: keyring, database, migrations, listener.
    pub fn build(config: Config, clock: Clock) -> anyhow::Result<Self> {
        disable_core_dumps();
        // The address first: a port in use is refused before anything is created.
        let listener = TcpListener::bind(&config.bind)
            .with_context(|| format!("cannot bind {}", config.bind))?;
        // What this start creates is removed again if it fails.
        let mut created = CreatedFiles::default();
        if let crate::config::DatabaseUrl::Sqlite(path) = &config.database_url {
            if db::create_sqlite_file(path)
                .with_context(|| format!("cannot create {}", path.display()))?
            {
                created.sqlite(path);
            }
        }
        if let KeyringSource::File(path) = &config.keyring {
            if !path.exists() {
                created.file(path);
            }
        }
        let Vault {
            pool,
            keyring,
            origin,
        } = open_vault(&config, &clock)?;
        if origin == KeyringOrigin::CreatedForDevelopment {
            if let KeyringSource::File(path) = &config.keyring {
                tracing::warn!(
                    path = %path.display(),
                    "!!! CREATED A DEVELOPMENT KEYRING: no keyring existed. Every credential is \
                     encrypted under it: back it up and keep it apart from the database. \
                     For production, provision HAZINA_KEYRING deliberately. !!!"
                );
            }
        }
        let tokens =
            TokenKeys::from_keyring(keyring.clone()).context("cannot derive token keys")?;
        let audit_origin = crate::audit::checkpoint::origin(
            &mut *pool.get().context("cannot get a database connection")?,
            config.audit_origin.as_deref(),
        )?;
        // The signer remembers the checkpoint file's last note, whatever the database says.
        let signer_memory = match &config.audit_checkpoint_file {
            None => crate::audit::checkpoint::Memory::empty(),
            Some(path) => crate::audit::checkpoint::Memory::from_file(
                &mut *pool.get().context("cannot get a database connection")?,
                &keyring,
                &audit_origin,
                path,
            )?,
        };
        let audit = AuditLog::start(&config.database_url)?;
        crate::rotation::resume_if_unfinished(&pool, &keyring, &clock)?;
        crate::rotation::warn_about_wear(&pool, crate::rotation::DEFAULT_WEAR_WARNING)?;
        crate::auth::password::warm_up();

        let port = listener.local_addr()?.port();
        // Workers default to one per core. Each worker's blocking pool (database calls) is
        // bounded by its share of the connection pool: more threads could only wait for a
        // connection, and every idle thread costs memory.
        let workers = config
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let blocking_per_worker = (config.db_pool_size as usize / workers).max(2);
        // Half the cores (at least one) hash passwords, so a login flood leaves the rest to
        // everything else; 256 logins may wait, more are refused with 503.
        let hasher = crate::auth::password::HashPool::start((workers / 2).max(1), 256)?;
        // TLS settings were checked at load; building again here only fails if a file changed.
        let tls = match &config.tls {
            None => None,
            Some(settings) => Some((
                crate::tls::server_config(settings).context("cannot configure TLS")?,
                settings.client_ca.is_some(),
                settings.require_client_cert,
                crate::tls::CrlCheck::new(settings).context("cannot configure the client CRL")?,
            )),
        };
        let metrics = crate::metrics::Metrics::new(
            audit.clone(),
            crate::metrics::RoutePatterns::new(routes::ROUTE_TABLE),
        );
        let broker = crate::broker::Broker::new(&config.providers, metrics.broker())?;
        let state = web::Data::new(AppState {
            pool,
            keyring,
            tokens,
            limits: crate::limits::Limits::new(&config.abuse, clock.clone()),
            metrics,
            broker,
            clock,
            config,
            audit,
            hasher,
            audit_origin,
            checkpoint_alarm: std::sync::atomic::AtomicBool::new(false),
            signer_memory,
        });
        if let Some(problem) = state.signer_memory.problem() {
            state.checkpoint_refused(&problem);
        }
        spawn_token_sweeper(&state);
        if let Some(path) = &state.config.audit_checkpoint_file {
            spawn_checkpoint_publisher(&state, path.clone(), state.config.audit_checkpoint_seconds);
        }
        if !state.limits.enabled() {
            tracing::warn!(
                "!!! RATE LIMITING IS OFF (HAZINA_RATE_LIMIT_PER_MINUTE=0): users and addresses \
                 may send any number of requests. Set a budget for production. !!!"
            );
        }
        let app_state = state.clone();
        let proxies = web::Data::new(crate::http::TrustedProxies(
            state.config.abuse.trusted_proxies.clone(),
        ));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(app_state.clone())
                .app_data(proxies.clone())
                .configure(routes::extractor_config(app_state.config.max_body_bytes))
                .wrap(routes::json_errors())
                // The limiter runs before the console's cookies are turned into a session
                // (and a refresh token is spent, and its failure audited): SPEC §15.
                .wrap(crate::console::CookieSession)
                .wrap(crate::http::guard::Guard(
                    crate::http::guard::ConsolePages {
                        prefix: crate::console::PREFIX,
                        static_prefix: crate::console::STATIC_PREFIX,
                        access_token: crate::console::cookie_access_token,
                        refusal: crate::console::refusal_page,
                    },
                ))
                .wrap(routes::RequestContext)
                .configure(routes::register)
                .configure(|cfg| crate::console::register(cfg, app_state.config.max_body_bytes))
                .default_service(web::to(routes::fallback))
        });
        let mut server = match tls {
            // The peer's identity comes only from the verified certificate, via on_connect.
            Some((tls_config, client_certificates, required, crl)) => {
                if let Some(crl) = &crl {
                    crl.load().context("cannot load the client CRL")?;
                }
                let server = server
                    .on_connect(crate::tls::on_connect(crl))
                    .listen_rustls_0_23(listener, tls_config)?;
                tracing::info!(
                    port,
                    client_certificates = match (client_certificates, required) {
                        (false, _) => "not requested",
                        (true, false) => "verified when presented (optional)",
                        (true, true) => "required",
                    },
                    "hazina listening over HTTPS (TLS 1.2+, forward-secret suites only)"
                );
                server
            }
            None => {
                let server = server.listen(listener)?;
                tracing::info!(port, "hazina listening over plain HTTP (no TLS configured)");
                server
            }
        };
        server = server
            .workers(workers)
            .worker_max_blocking_threads(blocking_per_worker);
        created.keep();
        Ok(Application {
            port,
            server: server.run(),
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
