//! What every handler shares: the one value the HTTP layer hands to routes, the console and
//! the extractors. It sits above the layers it holds (pool, keyring, audit log, limiter,
//! broker) and below everything that speaks HTTP.

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::auth::jwt::TokenKeys;
use crate::clock::Clock;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::db::{DbConn, DbError, Pool};

/// What every handler shares. Nothing here is mutable per node: sessions, revocations and
/// rotation state live in the database.
pub struct AppState {
    pub pool: Pool,
    pub keyring: Arc<Keyring>,
    pub tokens: TokenKeys,
    pub clock: Clock,
    pub config: Config,
    pub audit: AuditLog,
    /// Rate limiters: the one piece of per-process state (see [`crate::limits`]).
    pub limits: crate::limits::Limits,
    pub metrics: crate::metrics::Metrics,
    /// argon2 runs here, never on the workers or the database threads.
    pub hasher: crate::auth::password::HashPool,
    /// The audit log's origin (the first line of its checkpoints).
    pub audit_origin: String,
    /// Set when the checkpoint signer found the log no longer extends the last checkpoint it
    /// signed: `/readyz` fails from then on (an operator must look).
    pub checkpoint_alarm: std::sync::atomic::AtomicBool,
    /// The last checkpoint this process signed (or read back from the checkpoint file at
    /// start): the signer's memory outside the database (SPEC §14).
    pub signer_memory: crate::audit::checkpoint::Memory,
    /// Provider tokens, in memory only (SPEC §9.4).
    pub broker: crate::broker::Broker,
}

impl AppState {
    /// What the release gate may use (`vault::Context`).
    pub fn gate(&self) -> crate::vault::Context<'_> {
        crate::vault::Context {
            keyring: &self.keyring,
            audit: &self.audit,
            clock: &self.clock,
            broker: &self.broker,
        }
    }

    /// Runs `f` with a pooled connection on the blocking pool, never on an async worker.
    pub async fn db<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConn) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool.clone();
        actix_web::web::block(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError::Stopping(e.to_string()))?
    }
}

impl AppState {
    /// The checkpoint signer refused to sign: the log no longer extends the last checkpoint
    /// it signed. Logged loudly, counted in `/metrics`, and `/readyz` fails from now on.
    pub fn checkpoint_refused(&self, problem: &str) {
        self.checkpoint_alarm
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.metrics.checkpoint_alarm();
        tracing::error!(
            problem,
            "!!! AUDIT LOG ROLLED BACK OR REWRITTEN: the checkpoint signer refuses to sign !!!"
        );
    }
}
