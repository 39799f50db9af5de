//! hazina's integration tests: one binary, one `spawn_app()` per test, each with its own
//! temporary database (SQLite by default; PostgreSQL with `HAZINA_TEST_BACKEND=postgres`).

mod helpers;

mod abuse;
mod accounts;
mod audit;
mod backends;
mod backup;
mod broker;
mod console;
mod console_browser;
mod credentials;
mod first_hour;
mod hostile;
mod hostile_second;
mod integrity;
mod keys;
mod multinode;
mod openapi;
mod operations;
mod pki;
mod second_pass;
mod security;
mod services;
mod sessions;
mod stubs;
mod tls;
mod transparency;
