//! What a caller may do with a credential (SPEC §9.5): the operations, a grant's set of them,
//! and a caller's payment reference. Plain vocabulary: grants store it, the release gate
//! (`vault`) checks it.

use std::collections::BTreeSet;

use super::{Provider, ValidationError};

/// What a caller may do with a credential (SPEC §9.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Reveal,
    StkPassword,
    SecurityCredential,
    WebhookVerify,
    AccessToken,
}

impl Operation {
    pub const ALL: [Operation; 5] = [
        Operation::Reveal,
        Operation::StkPassword,
        Operation::SecurityCredential,
        Operation::WebhookVerify,
        Operation::AccessToken,
    ];

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == raw)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Reveal => "reveal",
            Operation::StkPassword => "stk-password",
            Operation::SecurityCredential => "security-credential",
            Operation::WebhookVerify => "webhook-verify",
            Operation::AccessToken => "access-token",
        }
    }

    /// What the operation's answer gives away of a stored secret, in words for whoever
    /// grants or runs it (SPEC §14); `None` for the operations whose answer does not let
    /// anyone recover a secret (and for `reveal`, whose name already says it).
    pub fn disclosure(self) -> Option<&'static str> {
        match self {
            // Daraja's published format: anyone holding one password (or watching it go to
            // Safaricom) decodes the passkey, which never expires.
            Operation::StkPassword => Some(
                "stk-password discloses the M-Pesa passkey: \
                 the password is base64(shortcode + passkey + timestamp)",
            ),
            Operation::Reveal
            | Operation::SecurityCredential
            | Operation::WebhookVerify
            | Operation::AccessToken => None,
        }
    }

    /// Whether the operation exists for `provider`'s credentials.
    pub fn applies_to(self, provider: Provider) -> bool {
        match self {
            Operation::Reveal => true,
            Operation::StkPassword | Operation::SecurityCredential => provider == Provider::Mpesa,
            Operation::WebhookVerify => matches!(
                provider,
                Provider::KopoKopo | Provider::JPay | Provider::InstaSend
            ),
            Operation::AccessToken => provider != Provider::InstaSend,
        }
    }

    /// The secret the operation opens, and the settings it reads, for `provider`.
    pub(crate) fn needs(
        self,
        provider: Provider,
    ) -> (&'static [&'static str], &'static [&'static str]) {
        match (self, provider) {
            (Operation::StkPassword, _) => (&["passkey"], &["business_short_code"]),
            (Operation::SecurityCredential, _) => (&["initiator_password"], &[]),
            (Operation::WebhookVerify, Provider::InstaSend) => (&["webhook_challenge"], &[]),
            (Operation::WebhookVerify, _) => (&["webhook_secret"], &[]),
            _ => (&[], &[]),
        }
    }
}

/// A set of operations, as a grant names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operations(BTreeSet<Operation>);

impl Operations {
    /// What grants made before operations allow.
    pub fn legacy() -> Self {
        Operations(BTreeSet::from([Operation::Reveal]))
    }

    /// Names from a request or the command line: known, at least one (none given means
    /// `reveal`, what every grant allowed before).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, ValidationError> {
        if names.is_empty() {
            return Ok(Self::legacy());
        }
        Self::parse_set(names)
    }

    /// Names as a set, which may be empty (what a change adds or takes away).
    pub fn parse_set<S: AsRef<str>>(names: &[S]) -> Result<Self, ValidationError> {
        let mut set = BTreeSet::new();
        for n in names {
            let op = Operation::parse(n.as_ref()).ok_or_else(|| {
                ValidationError(format!(
                    "Unknown operation. Choose from: {}",
                    Operation::ALL.map(Operation::as_str).join(", ")
                ))
            })?;
            set.insert(op);
        }
        Ok(Operations(set))
    }

    /// The stored form: names sorted and comma-separated (covered by the grant's MAC).
    pub fn canonical(&self) -> String {
        let mut names: Vec<&str> = self.0.iter().map(|o| o.as_str()).collect();
        names.sort_unstable();
        names.join(",")
    }

    /// The stored `operations` with `add` joined and `remove` taken away. A grant left with
    /// none is refused: revoking it says that.
    pub fn changed(
        stored: &str,
        add: &Operations,
        remove: &Operations,
    ) -> Result<Self, ValidationError> {
        let mut set: BTreeSet<Operation> = Self::names(stored)
            .into_iter()
            .filter_map(Operation::parse)
            .collect();
        set.extend(add.0.iter().copied());
        set.retain(|o| !remove.0.contains(o));
        if set.is_empty() {
            return Err(ValidationError(
                "A grant must allow at least one operation: revoke it instead".into(),
            ));
        }
        Ok(Operations(set))
    }

    /// Whether the set names nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn names(stored: &str) -> Vec<&str> {
        stored.split(',').filter(|s| !s.is_empty()).collect()
    }

    /// What a grant of the stored `operations` gives away beyond its names, one line per
    /// operation whose answer discloses a stored secret ([`Operation::disclosure`]).
    pub fn warnings(stored: &str) -> Vec<&'static str> {
        Self::names(stored)
            .into_iter()
            .filter_map(|n| Operation::parse(n)?.disclosure())
            .collect()
    }
}

/// A caller's payment reference (order id, CheckoutRequestID): 1 to 64 of
/// `[A-Za-z0-9._:/-]`. Stored in the audit entry; filterable there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference(String);

impl Reference {
    pub const PATTERN: &'static str = "^[A-Za-z0-9._:/-]{1,64}$";

    pub fn is_valid(raw: &str) -> bool {
        (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
    }

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        if Self::is_valid(raw) {
            Ok(Reference(raw.to_owned()))
        } else {
            Err(ValidationError(
                "reference must be 1 to 64 of A-Z a-z 0-9 . _ : / -".into(),
            ))
        }
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}
