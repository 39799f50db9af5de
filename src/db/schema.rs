//! The one hand-kept, portable schema for both backends. Only types both backends share
//! (BigInt, Integer, Text, Binary, Bool) appear here; timestamps are Unix seconds.

diesel::table! {
    users (id) {
        id -> BigInt,
        username -> Text,
        password_hash -> Text,
        role -> Text,
        is_disabled -> Bool,
        created_at -> BigInt,
        allowed_cidrs -> Nullable<Text>,
        mac -> Nullable<Binary>,
        mac_version -> Nullable<Integer>,
        generation -> BigInt,
    }
}

diesel::table! {
    sessions (id) {
        id -> Text,
        user_id -> BigInt,
        refresh_jti -> Text,
        created_at -> BigInt,
        expires_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        generation -> BigInt,
        mac -> Nullable<Binary>,
        mac_version -> Nullable<Integer>,
    }
}

diesel::table! {
    credentials (id) {
        id -> BigInt,
        owner_id -> BigInt,
        provider -> Text,
        environment -> Text,
        api_key -> Nullable<Text>,
        is_active -> Bool,
        current_version -> Integer,
        created_at -> BigInt,
        updated_at -> BigInt,
        deleted_at -> Nullable<BigInt>,
        generation -> BigInt,
        mac -> Nullable<Binary>,
        mac_version -> Nullable<Integer>,
    }
}

diesel::table! {
    credential_versions (credential_id, version) {
        credential_id -> BigInt,
        version -> Integer,
        environment -> Text,
        format -> Integer,
        kek_version -> Integer,
        wrapped_dek -> Binary,
        ciphertext -> Binary,
        verifier -> Binary,
        created_at -> BigInt,
        created_by -> BigInt,
        profile -> Nullable<Text>,
    }
}

diesel::table! {
    audit_log (seq) {
        seq -> BigInt,
        occurred_at -> BigInt,
        actor_kind -> Text,
        actor_id -> Nullable<BigInt>,
        actor_name -> Nullable<Text>,
        source_ip -> Nullable<Text>,
        cert_fingerprint -> Nullable<Text>,
        action -> Text,
        credential_id -> Nullable<BigInt>,
        owner_id -> Nullable<BigInt>,
        provider -> Nullable<Text>,
        environment -> Nullable<Text>,
        outcome -> Text,
        reason -> Nullable<Text>,
        request_id -> Nullable<Text>,
        prev_hash -> Binary,
        hash -> Binary,
        operation -> Nullable<Text>,
        reference -> Nullable<Text>,
        subjects -> Nullable<Text>,
    }
}

diesel::table! {
    audit_tree (level, idx) {
        level -> Integer,
        idx -> BigInt,
        hash -> Binary,
    }
}

diesel::table! {
    audit_signer (id) {
        id -> Integer,
        origin -> Text,
        last_checkpoint -> Nullable<Text>,
    }
}

diesel::table! {
    audit_head (id) {
        id -> BigInt,
        seq -> BigInt,
        hash -> Binary,
        tree_size -> BigInt,
        archived_seq -> BigInt,
        archived_note -> Nullable<Text>,
    }
}

diesel::table! {
    services (id) {
        id -> BigInt,
        name -> Text,
        identity -> Text,
        is_enabled -> Bool,
        allowed_cidrs -> Nullable<Text>,
        created_at -> BigInt,
        mac -> Nullable<Binary>,
        mac_version -> Nullable<Integer>,
        generation -> BigInt,
    }
}

diesel::table! {
    grants (id) {
        id -> BigInt,
        service_id -> BigInt,
        owner_id -> BigInt,
        provider -> Nullable<Text>,
        environment -> Nullable<Text>,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        mac -> Nullable<Binary>,
        mac_version -> Nullable<Integer>,
        operations -> Text,
        generation -> BigInt,
    }
}

diesel::table! {
    key_rotations (id) {
        id -> BigInt,
        target_version -> Integer,
        started_at -> BigInt,
        finished_at -> Nullable<BigInt>,
        rows_rewrapped -> BigInt,
    }
}

diesel::table! {
    key_wear (kek_version) {
        kek_version -> Integer,
        encryptions -> BigInt,
        generation -> BigInt,
        mac -> Nullable<Binary>,
        mac_version -> Nullable<Integer>,
    }
}

diesel::table! {
    key_versions (version) {
        version -> Integer,
        check_value -> Binary,
        state -> Text,
        created_at -> BigInt,
        retired_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    key_lock (id) {
        id -> Integer,
        generation -> BigInt,
    }
}

diesel::table! {
    revoked_certificates (fingerprint) {
        fingerprint -> Text,
        revoked_at -> BigInt,
    }
}

diesel::table! {
    provider_certificates (provider, environment) {
        provider -> Text,
        environment -> Text,
        pem -> Text,
        sha256 -> Text,
        subject -> Text,
        not_before -> BigInt,
        not_after -> BigInt,
        updated_at -> BigInt,
        updated_by -> Text,
        mac -> Binary,
        mac_version -> Integer,
        generation -> BigInt,
    }
}

diesel::table! {
    login_throttle (subject) {
        subject -> Text,
        failures -> BigInt,
        last_failure_at -> BigInt,
        blocked_until -> Nullable<BigInt>,
    }
}

diesel::table! {
    login_sources (subject) {
        subject -> Text,
        last_success_at -> BigInt,
        account -> Nullable<Text>,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(grants -> services (service_id));
diesel::joinable!(grants -> users (owner_id));
diesel::joinable!(credentials -> users (owner_id));
diesel::joinable!(credential_versions -> credentials (credential_id));
diesel::table! {
    backups (id) {
        id -> BigInt,
        taken_at -> BigInt,
        location -> Text,
        key_versions -> Text,
    }
}

diesel::table! {
    audit_subjects (subject, seq) {
        subject -> Text,
        seq -> BigInt,
    }
}

diesel::table! {
    integrity_marker (id) {
        id -> Integer,
        format -> Integer,
        marked_at -> BigInt,
        mac -> Binary,
        mac_version -> Integer,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    audit_subjects,
    users,
    sessions,
    credentials,
    credential_versions,
    audit_log,
    audit_head,
    services,
    grants,
    key_rotations,
    key_wear,
    key_versions,
    key_lock,
    audit_tree
);
