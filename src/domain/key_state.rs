//! The states of a master-key version, as stored in `key_versions.state`.

/// New data is sealed under it.
pub const ACTIVE: &str = "active";
/// Its data is being rewrapped under a newer version; it still opens what it sealed.
pub const RETIRING: &str = "retiring";
/// Nothing is sealed under it any more; its key may leave the keyring.
pub const RETIRED: &str = "retired";
