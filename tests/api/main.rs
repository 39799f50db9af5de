//! hazina's integration tests: one binary, one `spawn_app()` per test, each with its own
//! temporary database (SQLite by default; PostgreSQL with `HAZINA_TEST_BACKEND=postgres`).

mod helpers;

mod backends;
mod credentials;
mod hostile;
mod multinode;
mod openapi;
mod pki;
mod security;
mod sessions;
mod tls;
