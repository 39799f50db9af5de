//! Repositories: every table's reads and writes, one file per kind of row, above the audit
//! chain they sign their changes into.
//!
//! [`crate::db`] below holds the connection, the pool, the schema and the error; this layer
//! holds the queries. Every credential query is scoped by owner or grant inside its SQL, and
//! every signed row is written inside [`crate::audit::chain::with_entry`], whose entry names
//! the row (its generation, SPEC §14).

pub mod backups;
pub mod credentials;
pub mod integrity;
pub mod key_versions;
pub mod keys;
pub mod provider_certs;
pub mod services;
pub mod sessions;
pub mod throttle;
pub mod users;
