//! The tamper-evident audit log.
//!
//! ## Guarantees
//! - **Closed vocabulary.** An entry is built from [`Action`], [`Outcome`], [`Reason`] (closed
//!   enums), ids, provider/environment names, a username or service name, a source address, a
//!   certificate fingerprint and a request id. No field accepts a secret type, and nothing
//!   here ever takes a password, token, private key or a hash of one.
//! - **Hash chain.** Each entry's SHA-256 hash covers its content, its sequence number and the
//!   previous entry's hash; the chain head lives in `audit_head` and moves in the same
//!   transaction as the entries, so several nodes extend one chain and editing, deleting,
//!   inserting or reordering any entry is found by [`chain::verify`], which names the first
//!   bad sequence number. It recomputes the Merkle tree from the entries as it walks them
//!   ([`verify`]): a stored tree node the entries do not produce fails it too.
//! - **Durable before release.** [`writer::AuditLog::record`] resolves only after the entry's
//!   transaction has committed (`synchronous=FULL` / `synchronous_commit=on`). Reveals and
//!   verifies await it and fail closed.
//! - **Group commit.** One writer thread per process commits every entry waiting at that
//!   moment in one transaction; callers wait asynchronously, never on a blocking thread.

pub mod archive;
pub mod chain;
pub mod checkpoint;
pub mod generation;
pub mod merkle;
pub mod offline;
pub mod store;
pub mod verify;
pub mod writer;

use std::net::IpAddr;

use serde::Serialize;

use crate::domain::CredentialId;

pub use writer::{AuditError, AuditLog};

macro_rules! closed_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }

            pub fn parse(raw: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == raw)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

closed_enum! {
    /// What happened.
    Action {
        Login => "auth.login",
        Refresh => "auth.refresh",
        RefreshReuse => "auth.refresh_reuse",
        Logout => "auth.logout",
        CredentialCreate => "credential.create",
        CredentialRead => "credential.read",
        CredentialUpdate => "credential.update",
        CredentialRotate => "credential.rotate",
        CredentialRollback => "credential.rollback",
        CredentialToggle => "credential.toggle",
        CredentialDelete => "credential.delete",
        CredentialReveal => "credential.reveal",
        CredentialVerify => "credential.verify",
        AuditRead => "audit.read",
        ServiceAuthenticate => "service.authenticate",
        AdminRead => "admin.read",
        AdminUserCreate => "admin.user_create",
        AdminUserDisable => "admin.user_disable",
        AdminServiceCreate => "admin.service_create",
        AdminServiceDisable => "admin.service_disable",
        AdminGrantCreate => "admin.grant_create",
        AdminGrantRevoke => "admin.grant_revoke",
        KeysRead => "keys.read",
        KeysRotate => "keys.rotate",
        KeysRetire => "keys.retire",
        AdminUserAllowlist => "admin.user_allowlist",
        AdminSessionsRevoke => "admin.sessions_revoke",
        UserAuthenticate => "user.authenticate",
        RateLimited => "request.rate_limited",
        IntegrityViolation => "integrity.violation",
        AdminCertificateRevoke => "admin.certificate_revoke",
        CredentialOperation => "credential.operation",
        CredentialAccessLog => "credential.access_log",
        AdminProviderCertificateSet => "admin.provider_certificate_set",
        AdminProviderCertificateDelete => "admin.provider_certificate_delete",
        AuditArchive => "audit.archive",
        AdminUserEnable => "admin.user_enable",
        AdminUserRole => "admin.user_role",
        AdminUserPassword => "admin.user_password",
        UserPasswordChange => "user.password_change",
        Backup => "backup.create",
        Restore => "backup.restore",
        IntegrityMarked => "integrity.marked",
        KeysRewrap => "keys.rewrap",
        CredentialVersionShred => "credential.version_shred",
        AdminGrantUpdate => "admin.grant_update",
        AdminUserUnlock => "admin.user_unlock",
    }
}

closed_enum! {
    /// How it ended.
    Outcome {
        Success => "success",
        Denied => "denied",
        Error => "error",
    }
}

closed_enum! {
    /// Why, where the outcome alone does not say.
    Reason {
        NotFoundOrNotOwner => "not_found_or_not_owner",
        BadPassword => "bad_password",
        UnknownUser => "unknown_user",
        DisabledUser => "disabled_user",
        TokenReused => "token_reused",
        TokenInvalid => "token_invalid",
        RoleForbidden => "role_forbidden",
        OwnerRevealDisabled => "owner_reveal_disabled",
        KeyMismatch => "key_mismatch",
        StorageFailure => "storage_failure",
        UnknownService => "unknown_service",
        OutsideAllowlist => "outside_allowlist",
        RateLimited => "rate_limited",
        LockedOut => "locked_out",
        RowTampered => "row_tampered",
        RowReplayed => "row_replayed",
        CertificateRevoked => "certificate_revoked",
        OperationNotGranted => "operation_not_granted",
        OwnerOperationsDisabled => "owner_operations_disabled",
        OwnerDisabled => "owner_disabled",
        SignatureMismatch => "signature_mismatch",
        ProviderError => "provider_error",
        ProviderRateLimited => "provider_rate_limited",
        ProviderTimeout => "provider_timeout",
        MaxVersions => "max_versions",
    }
}

impl Reason {
    /// The reason an integrity refusal records for what the check found.
    pub fn of_verdict(verdict: crate::crypto::rowmac::Verdict) -> Self {
        match verdict {
            crate::crypto::rowmac::Verdict::Replayed => Reason::RowReplayed,
            _ => Reason::RowTampered,
        }
    }
}

closed_enum! {
    /// Who acted.
    ActorKind {
        User => "user",
        Service => "service",
        Anonymous => "anonymous",
        System => "system",
    }
}

/// The acting principal: ids and names only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub kind: ActorKind,
    pub id: Option<i64>,
    pub name: Option<String>,
}

impl Actor {
    pub fn anonymous() -> Self {
        Actor {
            kind: ActorKind::Anonymous,
            id: None,
            name: None,
        }
    }

    /// The command line, acting as the operator who ran it.
    pub fn system() -> Self {
        Actor {
            kind: ActorKind::System,
            id: None,
            name: Some("cli".into()),
        }
    }
}

/// What was acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub credential_id: Option<i64>,
    pub owner_id: Option<i64>,
    pub provider: Option<String>,
    pub environment: Option<String>,
}

impl Target {
    /// A credential id that was asked for but not found for this caller.
    pub fn requested(id: Option<CredentialId>) -> Self {
        Target {
            credential_id: id.map(CredentialId::get),
            ..Target::default()
        }
    }

    pub fn owner(owner_id: i64) -> Self {
        Target {
            owner_id: Some(owner_id),
            ..Target::default()
        }
    }
}

/// Where a request came from: the client's address (the TCP peer, or what a trusted proxy
/// says), its client certificate, and the request id: computed once per request by the HTTP
/// layer (`crate::http`).
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub source_ip: Option<IpAddr>,
    pub cert_fingerprint: Option<String>,
    pub request_id: Option<String>,
}

// `RequestMeta::of` (from an HTTP request) lives with the HTTP layer, `crate::http`; the
// audit log takes request metadata as plain data.

/// One audit entry before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Microseconds since the Unix epoch, UTC.
    pub occurred_at: i64,
    pub actor: Actor,
    pub source_ip: Option<String>,
    pub cert_fingerprint: Option<String>,
    pub action: Action,
    pub target: Target,
    pub outcome: Outcome,
    pub reason: Option<Reason>,
    pub request_id: Option<String>,
    /// The provider operation (`stk-password`, …) a `credential.operation` entry records.
    pub operation: Option<&'static str>,
    /// The caller's payment reference, already checked against its pattern.
    pub reference: Option<String>,
    /// The signed rows the change changed; set by [`chain::with_entry`], never by hand.
    pub subjects: Option<String>,
}

impl Event {
    pub fn new(occurred_at: i64, actor: Actor, meta: &RequestMeta, action: Action) -> Self {
        Event {
            occurred_at,
            actor,
            source_ip: meta.source_ip.map(|ip| ip.to_string()),
            cert_fingerprint: meta.cert_fingerprint.clone(),
            action,
            target: Target::default(),
            outcome: Outcome::Success,
            reason: None,
            request_id: meta.request_id.clone(),
            operation: None,
            reference: None,
            subjects: None,
        }
    }

    /// The operation and payment reference this entry records.
    pub fn operation(mut self, operation: &'static str, reference: Option<String>) -> Self {
        self.operation = Some(operation);
        self.reference = reference;
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    pub fn outcome(mut self, outcome: Outcome, reason: Option<Reason>) -> Self {
        self.outcome = outcome;
        self.reason = reason;
        self
    }
}
