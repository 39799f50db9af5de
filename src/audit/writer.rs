//! Group commit: one writer thread per process, with its own connection, commits every
//! entry waiting at that moment in one transaction, then releases each caller. A durable
//! entry per reveal then costs one fsync per *batch*, not per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{chain, Event};
use crate::config::DatabaseUrl;
use crate::db::{self, ConnectError, DbConn};

/// Entries committed together at most; bounded so one transaction stays short.
const MAX_BATCH: usize = 1024;
/// Callers queued at most before `record` waits for room (back-pressure, not loss).
const QUEUE: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuditError {
    #[error("the audit entry could not be written durably")]
    WriteFailed,
    #[error("the audit writer has stopped")]
    Stopped,
}

struct Pending {
    event: Event,
    done: oneshot::Sender<Result<i64, AuditError>>,
}

/// Counters for `/metrics` and the benchmark.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    pub batches: AtomicU64,
    pub failures: AtomicU64,
}

/// A handle to the process's audit writer. Cloning shares the writer.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
    stats: Arc<AuditStats>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts the writer thread with its own connection to `url`.
    pub fn start(url: &DatabaseUrl) -> Result<Self, ConnectError> {
        let conn = db::establish(url)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(AuditStats::default());
        let writer_stats = stats.clone();
        let url = url.clone();
        std::thread::Builder::new()
            .name("hazina-audit".into())
            .spawn(move || run(conn, url, rx, &writer_stats))
            .map_err(|e| ConnectError::new(format!("cannot start the audit writer: {e}")))?;
        Ok(AuditLog { tx, stats })
    }

    /// Records `event` and resolves once it is durably committed, with its sequence number.
    pub async fn record(&self, event: Event) -> Result<i64, AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Pending { event, done })
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }

    /// Records `event`; a failure is logged and counted but not returned (for events whose
    /// action has already taken effect).
    pub async fn record_best_effort(&self, event: Event) {
        if let Err(e) = self.record(event).await {
            tracing::error!(error = %e, "AUDIT WRITE FAILED");
        }
    }

    pub fn stats(&self) -> &AuditStats {
        &self.stats
    }
}

fn run(mut conn: DbConn, url: DatabaseUrl, mut rx: mpsc::Receiver<Pending>, stats: &AuditStats) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let events: Vec<&Event> = batch.iter().map(|p| &p.event).collect();
        let result = chain::append(&mut conn, &events);
        drop(events);
        match result {
            Ok(seqs) => {
                stats
                    .written
                    .fetch_add(seqs.len() as u64, Ordering::Relaxed);
                stats.batches.fetch_add(1, Ordering::Relaxed);
                for (p, seq) in batch.drain(..).zip(seqs) {
                    let _ = p.done.send(Ok(seq));
                }
            }
            Err(e) => {
                stats
                    .failures
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, entries = batch.len(), "AUDIT WRITE FAILED: batch rolled back");
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(AuditError::WriteFailed));
                }
                reconnect_if_broken(&mut conn, &url);
            }
        }
    }
}

fn reconnect_if_broken(conn: &mut DbConn, url: &DatabaseUrl) {
    use diesel::r2d2::R2D2Connection;
    if conn.is_broken() || conn.ping().is_err() {
        match db::establish(url) {
            Ok(fresh) => *conn = fresh,
            Err(e) => {
                tracing::error!(error = %e, "audit writer cannot reconnect; retrying on the next batch");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
