//! One id type per entity, so an owner id cannot be passed where a credential id goes.
//!
//! Ids are random positive integers below 2^53 (exact in JSON numbers everywhere), so they
//! reveal neither how many rows exist nor which id comes next.

use rand::Rng;
use serde::Serialize;

const MAX_ID: i64 = (1 << 53) - 1;

macro_rules! id_type {
    ($name:ident) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// A fresh random id.
            pub fn generate() -> Self {
                $name(rand::thread_rng().gen_range(1..=MAX_ID))
            }

            /// An id from the database or a path segment; `None` for anything that can
            /// never name a row.
            pub fn parse(raw: &str) -> Option<Self> {
                let v: i64 = raw.parse().ok()?;
                (1..=MAX_ID).contains(&v).then_some($name(v))
            }

            pub fn from_db(v: i64) -> Self {
                $name(v)
            }

            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(CredentialId);
id_type!(UserId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_only_positive_integers_in_range() {
        assert_eq!(CredentialId::parse("42").map(CredentialId::get), Some(42));
        for bad in [
            "0",
            "-1",
            "abc",
            "",
            "1.5",
            "9007199254740992",
            "99999999999999999999999",
            " 1",
        ] {
            assert!(CredentialId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn generated_ids_are_in_range_and_distinct() {
        let a = CredentialId::generate();
        let b = CredentialId::generate();
        assert!(a.get() >= 1 && a.get() <= MAX_ID);
        assert_ne!(a, b);
    }
}
