//! # hazina — an encrypted, multi-tenant vault for payment-provider credentials
//!
//! ## What hazina guarantees
//! - **Confidentiality at rest.** Every private key is sealed with AES-256-GCM under its own
//!   random data key (DEK); the DEK is wrapped under a versioned master key (KEK) that never
//!   touches the database. Associated data binds each ciphertext to its owner, credential,
//!   provider, environment and version, so a blob moved to another row does not open.
//! - **Tenant isolation.** Every credential query carries the owner in its `WHERE` clause;
//!   another owner's id and a missing id answer identically.
//! - **No offline guessing.** `verify` compares a keyed HMAC whose key exists only through
//!   the keyring; a database dump alone cannot test guesses.
//! - **Secrets stay typed.** Private keys, DEKs, master keys, passwords and tokens live in
//!   `secrecy`/`zeroize` types; none implements `Display`, and their `Debug` is redacted.
//! - **Sessions are revocable.** Access tokens are checked against their session and user on
//!   every request; refresh tokens are single use, and a replay revokes the whole session.
//!
//! ## Threat model (in short)
//! An attacker may read the database file (or a backup of it), send arbitrary HTTP, hold a
//! valid account of their own, and replay tokens they observed. They do not hold the keyring
//! file or control the process memory.
//!
//! ## Where things live
//! The modules form layers, ground first; each imports only modules below it. The order is
//! written once, in `src/layers.txt`, and `scripts/layers.sh` (run by CI) fails on a circle
//! or on an import that points up it:
//!
//! ```text
//! cli                    the `hazina` command: one file per command group (src/main.rs calls it)
//! startup, backup        the process: keyring, pool, migrations, server; backups and restores
//! routes, console        handlers (the route table is in routes/mod.rs) and the console's pages
//! http                   a request's metadata, its principal, the limiter's guard
//! state                  AppState: what every handler shares
//! auth, limits           passwords and tokens; the rate budgets
//! error                  ApiError: every failure's status and generic words
//! vault, broker, rotation  the release gate, provider tokens, master-key rotation
//! repo                   the repositories: each table's queries, owner-scoped in SQL
//! metrics                /metrics
//! audit                  the hash-chained, checkpointed audit log
//! db                     connection, pool, schema, DbError
//! config, telemetry      settings and logs
//! providers              each provider's published formats (pure functions)
//! tls, crypto, domain, clock  certificates, envelopes and row MACs, the vocabulary, time
//! ```
//!
//! - a request enters in [`routes`]; its metadata (id, client address, client certificate)
//!   is computed once in [`http`] and handed to [`audit`] as plain data;
//! - what a caller may do with a credential (operations, references) and other plain
//!   vocabulary is in [`domain`], below everything that uses it;
//! - its principal is established in [`http::principal`];
//! - the owner is checked inside the SQL of [`repo::credentials`];
//! - the secret is sealed and opened only in [`crypto::envelope`], and released only through
//!   the gate in [`vault`];
//! - rate limits and size limits apply in [`http::guard`] (budgets in [`limits`]), login
//!   throttling in [`repo::throttle`];
//! - provider access tokens are exchanged and cached (in memory only) in [`broker`], in the
//!   formats of [`providers`].
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod audit;
pub mod auth;
pub mod backup;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod crypto;
pub mod db;
pub mod domain;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod providers;
pub mod repo;
pub mod rotation;
pub mod routes;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod vault;
