//! Time as a parameter: token expiry and session checks take `now` from a [`Clock`], so
//! tests can move time without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Seconds since the Unix epoch, UTC.
pub type UnixSeconds = i64;

#[derive(Clone, Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock that only moves when told to (tests).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn manual(start: UnixSeconds) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(start)))
    }

    pub fn now(&self) -> UnixSeconds {
        match self {
            Clock::System => chrono::Utc::now().timestamp(),
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Microseconds since the Unix epoch (audit timestamps).
    pub fn now_micros(&self) -> i64 {
        match self {
            Clock::System => chrono::Utc::now().timestamp_micros(),
            Clock::Manual(t) => t.load(Ordering::SeqCst).saturating_mul(1_000_000),
        }
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, seconds: i64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(seconds, Ordering::SeqCst);
        }
    }
}

/// RFC 3339 rendering, with microseconds, of an audit timestamp.
pub fn rfc3339_micros(t: i64) -> String {
    chrono::DateTime::from_timestamp_micros(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// RFC 3339 rendering of a stored timestamp, as the API shows it.
pub fn rfc3339(t: UnixSeconds) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
