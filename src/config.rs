//! Typed settings from the environment (and `.env`), validated at load. A missing or bad
//! setting is one [`ConfigError`] naming it; secrets are held as `SecretString`.

use std::net::ToSocketAddrs;
use std::path::PathBuf;

use secrecy::SecretString;

/// Where the data lives; the scheme picks the backend.
#[derive(Debug, Clone)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    /// The full URL, which may hold a password.
    Postgres(SecretString),
}

impl DatabaseUrl {
    /// `sqlite://<path>`, `sqlite:<path>` or a bare path → SQLite; `postgres://` or
    /// `postgresql://` → PostgreSQL; any other scheme is refused.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("must not be empty".into());
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(SecretString::from(raw.to_owned())));
        }
        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(raw);
        if path.is_empty() {
            return Err("the sqlite URL names no file".into());
        }
        if let Some((scheme, _)) = raw.split_once("://") {
            if scheme != "sqlite" {
                return Err(format!(
                    "unsupported scheme `{scheme}` (use sqlite:// or postgres://)"
                ));
            }
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DatabaseUrl::Sqlite(_) => "sqlite",
            DatabaseUrl::Postgres(_) => "postgres",
        }
    }
}

/// Where the master keyring comes from.
#[derive(Debug, Clone)]
pub enum KeyringSource {
    /// A file (mode 0600). Created as a development keyring on first run when missing.
    File(PathBuf),
    /// The keyring JSON itself, from `HAZINA_KEYRING_DATA`.
    Inline(SecretString),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: DatabaseUrl,
    pub bind: String,
    pub keyring: KeyringSource,
    pub owner_reveal: bool,
    pub max_body_bytes: usize,
    pub workers: Option<usize>,
    pub db_pool_size: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://hazina.db";
pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
pub const DEFAULT_KEYRING_FILE: &str = "hazina.keyring";

impl Config {
    /// Reads the process environment (call [`load_dotenv`] first to honour `.env`).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get`, so tests can supply their own environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let database_url = DatabaseUrl::parse(
            &get("HAZINA_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
        )
        .map_err(|p| bad("HAZINA_DATABASE_URL", p))?;

        let bind = get("HAZINA_BIND").unwrap_or_else(|| DEFAULT_BIND.into());
        if !bind
            .to_socket_addrs()
            .is_ok_and(|mut addrs| addrs.next().is_some())
        {
            return Err(bad(
                "HAZINA_BIND",
                format!("`{bind}` is not a host:port address"),
            ));
        }

        let keyring = match (get("HAZINA_KEYRING_DATA"), get("HAZINA_KEYRING")) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "HAZINA_KEYRING_DATA",
                    "set either HAZINA_KEYRING (a file) or HAZINA_KEYRING_DATA, not both",
                ))
            }
            (Some(data), None) => KeyringSource::Inline(SecretString::from(data)),
            (None, Some(path)) if path.trim().is_empty() => {
                return Err(bad("HAZINA_KEYRING", "must not be empty"))
            }
            (None, path) => KeyringSource::File(PathBuf::from(
                path.unwrap_or_else(|| DEFAULT_KEYRING_FILE.into()),
            )),
        };

        let owner_reveal = match get("HAZINA_OWNER_REVEAL") {
            None => true,
            Some(v) => {
                parse_bool(&v).ok_or_else(|| bad("HAZINA_OWNER_REVEAL", "must be true or false"))?
            }
        };

        let max_body_bytes = match get("HAZINA_MAX_BODY_BYTES") {
            None => 64 * 1024,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1024..=16 * 1024 * 1024).contains(n))
                .ok_or_else(|| {
                    bad(
                        "HAZINA_MAX_BODY_BYTES",
                        "must be a number of bytes from 1024 to 16777216",
                    )
                })?,
        };

        let workers = match get("HAZINA_WORKERS") {
            None => None,
            Some(v) => Some(
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| bad("HAZINA_WORKERS", "must be a number from 1 to 256"))?,
            ),
        };

        let db_pool_size = match get("HAZINA_DB_POOL_SIZE") {
            None => 16,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=512).contains(n))
                .ok_or_else(|| bad("HAZINA_DB_POOL_SIZE", "must be a number from 1 to 512"))?,
        };

        Ok(Config {
            database_url,
            bind,
            keyring,
            owner_reveal,
            max_body_bytes,
            workers,
            db_pool_size,
        })
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Reads `.env` from the working directory if there is one; a malformed file is an error.
pub fn load_dotenv() -> Result<(), ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => Ok(()),
        Err(e) if e.not_found() => Ok(()),
        Err(e) => Err(bad(".env", e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| env.get(k).cloned())
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = cfg(&[]).unwrap();
        assert!(
            matches!(c.database_url, DatabaseUrl::Sqlite(ref p) if p == &PathBuf::from("hazina.db"))
        );
        assert_eq!(c.bind, "127.0.0.1:8080");
        assert!(c.owner_reveal);
    }

    #[test]
    fn database_urls_pick_the_backend_by_scheme() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap().backend(),
            "sqlite"
        );
        assert_eq!(DatabaseUrl::parse("/tmp/x.db").unwrap().backend(), "sqlite");
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db").unwrap().backend(),
            "postgres"
        );
        assert_eq!(
            DatabaseUrl::parse("postgresql://u@h/db").unwrap().backend(),
            "postgres"
        );
        assert!(DatabaseUrl::parse("mysql://u@h/db").is_err());
        assert!(DatabaseUrl::parse("").is_err());
    }

    #[test]
    fn a_bad_setting_names_itself() {
        let e = cfg(&[("HAZINA_BIND", "nonsense")]).unwrap_err();
        assert_eq!(e.setting, "HAZINA_BIND");
        let e = cfg(&[("HAZINA_OWNER_REVEAL", "maybe")]).unwrap_err();
        assert_eq!(e.setting, "HAZINA_OWNER_REVEAL");
        assert!(e.to_string().contains("HAZINA_OWNER_REVEAL"));
    }

    #[test]
    fn a_postgres_password_never_appears_in_debug() {
        let c = cfg(&[("HAZINA_DATABASE_URL", "postgres://u:hunter2pw@h/db")]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2pw"));
    }
}
