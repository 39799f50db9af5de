//! Authentication: passwords and tokens. Who a request is ([`crate::http::principal`]) is the
//! HTTP layer's, built on these.
//!
//! ## Guarantees
//! - Passwords are hashed with argon2id at OWASP parameters (19 MiB, t=2, p=1), off the
//!   async workers; an unknown username costs the same as a wrong password.
//! - Tokens are HS256 JWTs (algorithm pinned) signed with a key derived from the master
//!   keyring, named by `kid`. `iss`, `aud`, `sub`, `exp`, `nbf`, `iat`, `jti`, `typ` and `sid`
//!   are all required and checked, with 30 s leeway, against the injected clock as well.
//! - An access token is never accepted as a refresh token or the reverse.
//! - Every access token is checked against its session and user on each request, so
//!   logout, refresh-token reuse and disabling a user take effect at once.
//! - A refresh token works once; presenting a spent one revokes the whole session.

pub mod jwt;
pub mod password;
