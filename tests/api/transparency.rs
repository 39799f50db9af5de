//! The audit log as a transparency log (SPEC §10, issue 12): RFC 6962 inclusion and
//! consistency proofs, checked here by an implementation written in this file from RFC 6962
//! and RFC 9162 §2.1.3.2 / §2.1.4.2, never by hazina's own code.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use hazina::domain::Role;

use crate::helpers::*;

type H = [u8; 32];

fn sha(parts: &[&[u8]]) -> H {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn leaf(entry_hash: &[u8]) -> H {
    sha(&[&[0u8], entry_hash])
}

fn node(l: &H, r: &H) -> H {
    sha(&[&[1u8], l, r])
}

/// RFC 6962 §2.1: MTH straight from the definition.
fn mth(leaves: &[H]) -> H {
    match leaves.len() {
        0 => sha(&[]),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            node(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// RFC 9162 §2.1.3.2: verify an inclusion proof.
fn verify_inclusion(index: u64, size: u64, leaf_hash: H, path: &[H], root: H) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = leaf_hash;
    for p in path {
        if sn == 0 {
            return false;
        }
        if fn_ % 2 == 1 || fn_ == sn {
            r = node(p, &r);
            if fn_ % 2 == 0 {
                while fn_ % 2 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == root
}

/// RFC 9162 §2.1.4.2: verify a consistency proof between sizes `first` < `second`.
fn verify_consistency(first: u64, second: u64, proof: &[H], first_root: H, second_root: H) -> bool {
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if proof.is_empty() || first == 0 || first > second {
        return false;
    }
    let mut path: Vec<H> = proof.to_vec();
    if first.is_power_of_two() {
        path.insert(0, first_root);
    }
    let (mut fn_, mut sn) = (first - 1, second - 1);
    while fn_ % 2 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if sn == 0 {
            return false;
        }
        if fn_ % 2 == 1 || fn_ == sn {
            fr = node(c, &fr);
            sr = node(c, &sr);
            if fn_ % 2 == 0 {
                while fn_ % 2 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == first_root && sr == second_root
}

fn hashes(list: &Value) -> Vec<H> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| B64.decode(v.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}

/// Every entry's leaf hash, from the export (the chain hashes, hex there).
async fn exported_leaves(app: &TestApp, auditor: &TestUser) -> Vec<H> {
    let text = app
        .get("/audit/export/", &auditor.access)
        .await
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("seq").is_some())
        .map(|v| leaf(&hex::decode(v["hash"].as_str().unwrap()).unwrap()))
        .collect()
}

#[tokio::test]
async fn inclusion_and_consistency_proofs_verify_with_an_independent_rfc_6962_implementation() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    // Some history: logins, a few credentials.
    for _ in 0..6 {
        let user = app.user().await;
        app.create_credential(&user, "mpesa", "sandbox", "consumer-secret-0001")
            .await;
    }
    let leaves = exported_leaves(&app, &auditor).await;
    let n = leaves.len() as u64;
    assert!(n >= 13, "{n}");

    for size in [1, 2, 3, 7, 8, 9, n - 1, n] {
        let root = mth(&leaves[..size as usize]);
        for seq in [1, size / 2 + 1, size] {
            let res = app
                .get(
                    &format!("/audit/proofs/inclusion/?seq={seq}&tree_size={size}"),
                    &auditor.access,
                )
                .await;
            assert_eq!(res.status(), StatusCode::OK);
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["leaf_index"], seq - 1);
            assert_eq!(body["tree_size"], size);
            let path = hashes(&body["audit_path"]);
            let index = seq - 1;
            assert!(
                verify_inclusion(index, size, leaves[index as usize], &path, root),
                "inclusion of {seq} in {size}"
            );
            // The check is not vacuous: another leaf, or a flipped bit, fails.
            let other = leaves[((index + 1) % size) as usize];
            assert!(size == 1 || !verify_inclusion(index, size, other, &path, root));
            if let Some(first) = path.first() {
                let mut bent = path.clone();
                bent[0][0] ^= 1;
                assert!(!verify_inclusion(
                    index,
                    size,
                    leaves[index as usize],
                    &bent,
                    root
                ));
                assert_ne!(first, &bent[0]);
            }
        }
    }
    for (first, second) in [
        (1, 2),
        (1, n),
        (3, 7),
        (4, 8),
        (5, 9),
        (7, n),
        (8, n),
        (n, n),
    ] {
        let res = app
            .get(
                &format!("/audit/proofs/consistency/?from={first}&to={second}"),
                &auditor.access,
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            (body["first"].as_u64(), body["second"].as_u64()),
            (Some(first), Some(second))
        );
        let proof = hashes(&body["proof"]);
        let (r1, r2) = (
            mth(&leaves[..first as usize]),
            mth(&leaves[..second as usize]),
        );
        assert!(
            verify_consistency(first, second, &proof, r1, r2),
            "consistency {first} → {second}"
        );
        if first < second {
            let wrong = mth(&leaves[1..first as usize + 1]);
            assert!(!verify_consistency(first, second, &proof, wrong, r2));
        }
    }
}

#[tokio::test]
async fn an_upgraded_log_gets_its_tree_and_a_second_node_extends_the_same_tree() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    for _ in 0..3 {
        app.user().await;
    }
    // As if the entries came from a release before the tree: drop it, restart, rebuild.
    app.sql("DELETE FROM audit_tree; UPDATE audit_head SET tree_size = 0");
    let node = app.spawn_node().await;
    for _ in 0..3 {
        node.user().await;
    }
    app.user().await;
    let leaves = exported_leaves(&node, &auditor).await;
    let n = leaves.len() as u64;
    let root = mth(&leaves);
    for seq in 1..=n {
        let body: Value = app
            .get(
                &format!("/audit/proofs/inclusion/?seq={seq}&tree_size={n}"),
                &auditor.access,
            )
            .await
            .json()
            .await
            .unwrap();
        let path = hashes(&body["audit_path"]);
        assert!(
            verify_inclusion(seq - 1, n, leaves[seq as usize - 1], &path, root),
            "{seq}"
        );
    }
}

#[tokio::test]
async fn proof_requests_out_of_range_answer_400_and_only_auditors_may_ask() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let user = app.user().await;
    for path in [
        "/audit/proofs/inclusion/?seq=0",
        "/audit/proofs/inclusion/?seq=999999",
        "/audit/proofs/inclusion/?seq=1&tree_size=999999",
        "/audit/proofs/inclusion/?seq=2&tree_size=1",
        "/audit/proofs/inclusion/?seq=abc",
        "/audit/proofs/inclusion/",
        "/audit/proofs/inclusion/?seq=1&bogus=1",
        "/audit/proofs/consistency/?from=0&to=1",
        "/audit/proofs/consistency/?from=2&to=1",
        "/audit/proofs/consistency/?from=1&to=999999",
        "/audit/proofs/consistency/?from=-1",
        "/audit/proofs/consistency/",
    ] {
        let res = app.get(path, &auditor.access).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_json_4xx(res).await;
    }
    let res = app
        .get("/audit/proofs/inclusion/?seq=1", &user.access)
        .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

// ---------------------------------------------------------------------------------------
// Signed checkpoints: C2SP tlog-checkpoint in a C2SP signed note, Ed25519 — parsed and
// verified here from the specifications (the Ed25519 check itself is aws-lc-rs's).

/// A verifier key `<name>+<hex key id>+<base64(0x01 ‖ public key)>`.
struct VerifierKey {
    name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

fn parse_vkey(vkey: &str) -> VerifierKey {
    let mut parts = vkey.splitn(3, '+');
    let name = parts.next().unwrap().to_owned();
    let id: [u8; 4] = hex::decode(parts.next().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let typed = B64.decode(parts.next().unwrap()).unwrap();
    assert_eq!(typed[0], 0x01, "signature type Ed25519");
    assert_eq!(typed.len(), 33);
    // The key ID is the first four bytes of SHA-256(name ‖ "\n" ‖ type ‖ key).
    assert_eq!(id[..], sha(&[name.as_bytes(), b"\n", &typed])[..4]);
    VerifierKey {
        name,
        id,
        public: typed[1..].to_vec(),
    }
}

/// Opens a signed note: its text, if a signature line by `key` verifies over it.
fn open_note(note: &str, key: &VerifierKey) -> Option<String> {
    let (text, sigs) = note.split_once("\n\n")?;
    let text = format!("{text}\n");
    for line in sigs.lines() {
        let rest = line.strip_prefix("\u{2014} ")?;
        let (name, sig) = rest.split_once(' ')?;
        let blob = B64.decode(sig).ok()?;
        if name == key.name && blob.len() == 68 && blob[..4] == key.id {
            let public = aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ED25519,
                &key.public,
            );
            if public.verify(text.as_bytes(), &blob[4..]).is_ok() {
                return Some(text);
            }
        }
    }
    None
}

async fn checkpoint_of(app: &TestApp, auditor: &TestUser) -> String {
    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::OK);
    res.text().await.unwrap()
}

async fn verify_with(app: &TestApp, auditor: &TestUser, notes: &[&str]) -> Value {
    let res = app
        .post(
            "/audit/verify/",
            &auditor.access,
            &serde_json::json!({ "checkpoints": notes }),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    res.json().await.unwrap()
}

#[tokio::test]
async fn a_checkpoint_verifies_with_an_independent_signed_note_implementation() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    for _ in 0..4 {
        app.user().await;
    }
    let vkey: Value = app
        .get("/audit/public-key/", &auditor.access)
        .await
        .json()
        .await
        .unwrap();
    let key = parse_vkey(vkey["key"].as_str().unwrap());
    assert_eq!(key.name, vkey["origin"]);
    let note = checkpoint_of(&app, &auditor).await;
    let text = open_note(&note, &key).expect("the checkpoint's signature verifies");
    // tlog-checkpoint: origin, size, base64 root, each on its own line.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], key.name);
    let size: usize = lines[1].parse().unwrap();
    let root: H = B64.decode(lines[2]).unwrap().try_into().unwrap();
    let leaves = exported_leaves(&app, &auditor).await;
    assert!(size <= leaves.len());
    assert_eq!(
        root,
        mth(&leaves[..size]),
        "the checkpoint's root is the log's"
    );

    // A checkpoint whose signature was altered is refused, by us and by hazina.
    let sig_at = note.rfind(' ').unwrap() + 1;
    let mut altered = note.clone().into_bytes();
    altered[sig_at + 10] = if altered[sig_at + 10] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let altered = String::from_utf8(altered).unwrap();
    assert!(open_note(&altered, &key).is_none());
    let verdict = verify_with(&app, &auditor, &[&note, &altered]).await;
    assert_eq!(verdict["ok"], false);
    assert_eq!(verdict["checkpoints"][0]["ok"], true);
    assert_eq!(verdict["checkpoints"][1]["ok"], false);
    assert!(verdict["checkpoints"][1]["problem"]
        .as_str()
        .unwrap()
        .contains("signature"));
    // The CLI prints the same key and verifies the same checkpoint from a file.
    let out = cli(&app, &["audit", "public-key"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), vkey["key"]);
    let file = app.dir.path().join("checkpoint.txt");
    std::fs::write(&file, &note).unwrap();
    let out = cli(
        &app,
        &["audit", "verify", "--checkpoint", file.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(args)
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// The attacker with database access: cuts the log back to `keep` entries, fixing the head
/// and the tree so that everything left is self-consistent.
pub fn truncate_log(app: &TestApp, keep: u64) {
    let hash = app.sql_lines(&format!(
        "SELECT {} AS line FROM audit_log WHERE seq = {keep}",
        match backend() {
            Backend::Sqlite => "lower(hex(hash))",
            Backend::Postgres => "encode(hash, 'hex')",
        }
    ));
    let literal = match backend() {
        Backend::Sqlite => format!("X'{}'", hash[0]),
        Backend::Postgres => format!("'\\x{}'::bytea", hash[0]),
    };
    app.sql(&format!(
        "DELETE FROM audit_log WHERE seq > {keep};
         UPDATE audit_head SET seq = {keep}, hash = {literal}, tree_size = {keep} WHERE id = 1;
         DELETE FROM audit_tree WHERE ((idx + 1) << level) > {keep};"
    ));
}

#[tokio::test]
async fn deleting_the_last_entries_and_fixing_the_head_is_caught_by_an_earlier_checkpoint() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    for _ in 0..3 {
        app.user().await;
    }
    let note = checkpoint_of(&app, &auditor).await;
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    for _ in 0..3 {
        app.user().await;
    }
    assert_eq!(verify_with(&app, &auditor, &[&note]).await["ok"], true);

    truncate_log(&app, size - 2);
    // The chain alone cannot tell: what is left is self-consistent.
    let plain: Value = app
        .get("/audit/verify/", &auditor.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["ok"], true, "{plain}");
    let verdict = verify_with(&app, &auditor, &[&note]).await;
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["checkpoints"][0]["tree_size"], size);
    // The signer will not sign the rewritten history, and the node says it is not ready.
    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hazina_audit_checkpoint_alarms_total 1"),
        "{metrics}"
    );
    // The same refusal after a restart (the last signed checkpoint is kept) and on a second
    // node sharing the database.
    let other = app.spawn_node().await;
    let res = other.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn rewriting_an_entry_and_every_later_hash_and_the_head_is_caught_by_a_checkpoint() {
    use diesel::prelude::*;
    use hazina::audit::chain::AuditRow;
    use hazina::db::schema::{audit_head as head, audit_log as log};

    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    for _ in 0..4 {
        app.user().await;
    }
    let note = checkpoint_of(&app, &auditor).await;
    // Rewrite entry 2 (say, to hide whose login it was), then recompute the whole chain,
    // the head and the tree, as an attacker with the database (but no keyring) can.
    let mut conn = app.conn();
    let rows: Vec<AuditRow> = log::table
        .order(log::seq.asc())
        .select(AuditRow::as_select())
        .load(&mut *conn)
        .unwrap();
    let mut prev = rows[0].hash.clone();
    for mut row in rows.into_iter().skip(1) {
        if row.seq == 2 {
            row.actor_name = Some("someone-else".into());
        }
        row.prev_hash = prev.clone();
        row.hash = row.compute_hash().to_vec();
        diesel::update(log::table.filter(log::seq.eq(row.seq)))
            .set((
                log::actor_name.eq(&row.actor_name),
                log::prev_hash.eq(&row.prev_hash),
                log::hash.eq(&row.hash),
            ))
            .execute(&mut *conn)
            .unwrap();
        prev = row.hash;
    }
    diesel::update(head::table)
        .set(head::hash.eq(&prev))
        .execute(&mut *conn)
        .unwrap();
    drop(conn);
    app.sql("DELETE FROM audit_tree; UPDATE audit_head SET tree_size = 0");
    // A restart rebuilds the tree from the rewritten hashes: all self-consistent again.
    let node = app.spawn_node().await;
    let plain: Value = node
        .get("/audit/verify/", &auditor.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["ok"], true, "{plain}");
    let verdict = verify_with(&node, &auditor, &[&note]).await;
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert!(verdict["checkpoints"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("rewritten"));
}

/// Every table of the app's database except the migrations' bookkeeping.
fn all_tables(app: &TestApp) -> Vec<String> {
    app.sql_lines(match backend() {
        Backend::Sqlite => {
            "SELECT name AS line FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name != '__diesel_schema_migrations'"
        }
        Backend::Postgres => {
            "SELECT tablename::text AS line FROM pg_tables WHERE schemaname = current_schema() \
             AND tablename != '__diesel_schema_migrations'"
        }
    })
}

/// Puts every table back to the copy `snapshot` took (foreign keys off for the load).
fn restore_all(app: &TestApp, tables: &[String]) {
    let mut sql = String::from(match backend() {
        Backend::Sqlite => "PRAGMA foreign_keys = OFF;",
        Backend::Postgres => "SET session_replication_role = replica;",
    });
    for t in tables {
        sql.push_str(&format!(
            "DELETE FROM {t}; INSERT INTO {t} SELECT * FROM snapshot_{t}; DROP TABLE snapshot_{t};"
        ));
    }
    sql.push_str(match backend() {
        Backend::Sqlite => "PRAGMA foreign_keys = ON;",
        Backend::Postgres => "SET session_replication_role = origin;",
    });
    app.sql(&sql);
}

#[tokio::test]
async fn restoring_an_older_copy_of_the_whole_database_is_caught_by_a_later_checkpoint() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    app.user().await;
    // The vault signs a checkpoint of its own, so the copy holds the signer's state too.
    checkpoint_of(&app, &auditor).await;
    // Last week's copy: every table as it is now.
    let tables = all_tables(&app);
    assert!(tables.iter().any(|t| t == "audit_log") && tables.iter().any(|t| t == "audit_tree"));
    for t in &tables {
        app.sql(&format!("CREATE TABLE snapshot_{t} AS SELECT * FROM {t}"));
    }
    // The vault goes on, and the security team keeps a checkpoint of it outside the vault.
    for _ in 0..3 {
        app.user().await;
    }
    let note = checkpoint_of(&app, &auditor).await;
    let size: u64 = note.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(verify_with(&app, &auditor, &[&note]).await["ok"], true);

    // The whole database goes back to the copy: log, head, tree and signer state together.
    restore_all(&app, &tables);
    // The running vault remembers the later checkpoint it signed, outside the database, and
    // will not sign the copy (SPEC §14).
    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // A vault started afresh on it without a checkpoint file remembers nothing, and signs it.
    let fresh = app.spawn_node().await;
    let restored_size: u64 = checkpoint_of(&fresh, &auditor)
        .await
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(restored_size < size, "{restored_size} vs {size}");
    // Self-consistent: the chain alone verifies, and the vault signs the copy it holds.
    let plain: Value = app
        .get("/audit/verify/", &auditor.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["ok"], true, "{plain}");
    // The checkpoint kept outside catches it: the log is smaller than what it saw.
    let verdict = verify_with(&app, &auditor, &[&note]).await;
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["checkpoints"][0]["tree_size"], size);

    // Still caught once the restored log has grown past the checkpoint's size with other
    // entries, and by a vault started afresh on the restored database.
    for _ in 0..5 {
        app.user().await;
    }
    let verdict = verify_with(&app, &auditor, &[&note]).await;
    assert_eq!(verdict["ok"], false, "{verdict}");
    let other = app.spawn_node().await;
    let verdict = verify_with(&other, &auditor, &[&note]).await;
    assert_eq!(verdict["ok"], false, "{verdict}");
    // And offline, from the restored vault's export and its public key.
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.jsonl");
    let cp = dir.path().join("checkpoint");
    std::fs::write(&cp, &note).unwrap();
    let out = cli(&app, &["audit", "export"]);
    assert!(out.status.success());
    std::fs::write(&export, &out.stdout).unwrap();
    let key = String::from_utf8(cli(&app, &["audit", "public-key"]).stdout).unwrap();
    let out = cli(
        &app,
        &[
            "audit",
            "verify",
            "--export",
            export.to_str().unwrap(),
            "--public-key",
            key.trim(),
            "--checkpoint",
            cp.to_str().unwrap(),
        ],
    );
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_log_that_grows_while_verify_runs_verifies_ok_every_time() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let owner = app.user().await;
    let created = app
        .create_credential(&owner, "pagamio", "live", "pagamio-password-0001")
        .await;
    let path = format!(
        "/payments/credentials/{}/get-private-key/",
        created["id"].as_i64().unwrap()
    );
    let note = checkpoint_of(&app, &auditor).await;
    let reveals = async {
        for _ in 0..4 {
            let batch = (0..25).map(|_| app.get(&path, &owner.access));
            for res in futures_util::future::join_all(batch).await {
                assert_eq!(res.status(), StatusCode::OK);
            }
        }
    };
    let verifies = async {
        let mut verdicts = Vec::new();
        for _ in 0..10 {
            verdicts.push(verify_with(&app, &auditor, &[&note]).await);
        }
        verdicts
    };
    let ((), verdicts) = tokio::join!(reveals, verifies);
    for v in verdicts {
        assert_eq!(v["ok"], true, "{v}");
    }
}

#[tokio::test]
async fn an_export_verifies_offline_against_a_checkpoint_and_an_edited_one_does_not() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    for _ in 0..3 {
        app.user().await;
    }
    let note = checkpoint_of(&app, &auditor).await;
    let vkey: Value = app
        .get("/audit/public-key/", &auditor.access)
        .await
        .json()
        .await
        .unwrap();
    let export = app
        .get("/audit/export/", &auditor.access)
        .await
        .text()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (export_file, note_file) = (dir.path().join("export.jsonl"), dir.path().join("cp.txt"));
    std::fs::write(&export_file, &export).unwrap();
    std::fs::write(&note_file, &note).unwrap();
    // No database and no keyring: both point nowhere.
    let offline = |export: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
            .args(["audit", "verify", "--export"])
            .arg(export)
            .args([
                "--public-key",
                vkey["key"].as_str().unwrap(),
                "--checkpoint",
            ])
            .arg(&note_file)
            .current_dir(dir.path())
            .env("HAZINA_DATABASE_URL", "sqlite:///nonexistent/dir/hazina.db")
            .env("HAZINA_KEYRING", "/nonexistent/hazina.keyring")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = offline(&export_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::path::Path::new("/nonexistent/dir/hazina.db").exists());

    // One entry edited in the export: named by its sequence number.
    let edited = export.replacen("\"auth.login\"", "\"auth.logout\"", 1);
    assert_ne!(edited, export);
    let edited_file = dir.path().join("edited.jsonl");
    std::fs::write(&edited_file, &edited).unwrap();
    let out = offline(&edited_file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("first bad sequence number"));

    // An export cut short of the checkpoint fails too.
    let short: String = export.lines().take(2).map(|l| format!("{l}\n")).collect();
    let short_file = dir.path().join("short.jsonl");
    std::fs::write(&short_file, short).unwrap();
    assert!(!offline(&short_file).status.success());
}

/// The signed notes in a checkpoint file, in order (each ends with its signature line).
fn notes_in(file: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut notes = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        current.push_str(line);
        if line.starts_with('\u{2014}') {
            notes.push(std::mem::take(&mut current));
        }
    }
    notes
}

#[tokio::test]
async fn checkpoints_are_appended_to_the_checkpoint_file_while_the_log_grows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoints.txt");
    let setting = file.display().to_string();
    let app = spawn_app_with(&[
        ("HAZINA_AUDIT_CHECKPOINT_FILE", setting.as_str()),
        ("HAZINA_AUDIT_CHECKPOINT_SECONDS", "1"),
    ])
    .await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let wait_for = |count: usize| {
        let file = file.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let notes = notes_in(&file);
                if notes.len() >= count {
                    return notes;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "no checkpoint was published"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    let first = wait_for(1).await;
    app.user().await;
    let notes = wait_for(first.len() + 1).await;
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let refs: Vec<&str> = notes.iter().map(String::as_str).collect();
    let verdict = verify_with(&app, &auditor, &refs).await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    let sizes: Vec<u64> = verdict["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["tree_size"].as_u64().unwrap())
        .collect();
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
}

#[tokio::test]
async fn following_the_export_streams_new_entries_as_they_commit_over_the_api_and_the_cli() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let head: Vec<String> = app.sql_lines("SELECT CAST(seq AS TEXT) AS line FROM audit_head");
    let after: i64 = head[0].parse().unwrap();

    // The CLI follower, started before the entries exist.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(["audit", "export", "--follow", "--after", &after.to_string()])
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    // The API follower.
    let mut res = app
        .client
        .get(app.url(&format!("/audit/export/?after={after}&follow=true")))
        .bearer_auth(&auditor.access)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    let user = app.user().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let is_new_login = |line: &str| {
        serde_json::from_str::<Value>(line).is_ok_and(|v| {
            v["seq"].as_i64().is_some_and(|s| s > after)
                && v["action"] == "auth.login"
                && v["actor"]["name"] == user.username.as_str()
        })
    };
    let mut streamed = String::new();
    while !streamed.lines().any(is_new_login) {
        assert!(
            std::time::Instant::now() < deadline,
            "the API never streamed the login"
        );
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), res.chunk())
            .await
            .expect("a chunk in time")
            .unwrap()
            .expect("the stream stays open");
        streamed.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Nothing before `after` is sent, and there is no chain-head line while following.
    for line in streamed.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["seq"].as_i64().unwrap() > after, "{line}");
    }
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines_rx
            .recv_timeout(left)
            .expect("the CLI never printed the login");
        if is_new_login(&line) {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn a_tree_stored_at_every_level_upgrades_to_the_compact_tree_and_old_checkpoints_still_verify(
) {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    for _ in 0..40 {
        app.user().await;
    }
    let note = checkpoint_of(&app, &auditor).await;
    let leaves = exported_leaves(&app, &auditor).await;
    // The schema before the compact tree, with the tree the previous release kept: every
    // complete subtree at every level, computed here from RFC 6962.
    assert_eq!(
        app.revert_migrations(6),
        [
            "20261208000014",
            "20261207000013",
            "20261207000012",
            "20261201000011",
            "20261201000010",
            "20261201000009"
        ]
    );
    let mut rows = Vec::new();
    let mut level = 0u32;
    while (1usize << level) <= leaves.len() {
        let width = 1usize << level;
        for idx in 0..leaves.len() / width {
            let h = mth(&leaves[idx * width..(idx + 1) * width]);
            rows.push(match backend() {
                Backend::Sqlite => format!("({level}, {idx}, X'{}')", hex::encode(h)),
                Backend::Postgres => format!("({level}, {idx}, '\\x{}'::bytea)", hex::encode(h)),
            });
        }
        level += 1;
    }
    app.sql(&format!(
        "INSERT INTO audit_tree (level, idx, hash) VALUES {}",
        rows.join(", ")
    ));
    // This release starts on it: the migration keeps the upper levels and the size.
    let node = app.spawn_node().await;
    let stored =
        node.sql_lines("SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_tree WHERE level < 4");
    assert_eq!(stored, ["0"]);
    let verdict = verify_with(&node, &auditor, &[&note]).await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    let n = leaves.len() as u64;
    let root = mth(&leaves);
    for seq in [1, 15, 16, 17, 32, n] {
        let body: Value = node
            .get(
                &format!("/audit/proofs/inclusion/?seq={seq}&tree_size={n}"),
                &auditor.access,
            )
            .await
            .json()
            .await
            .unwrap();
        let path = hashes(&body["audit_path"]);
        assert!(
            verify_inclusion(seq - 1, n, leaves[seq as usize - 1], &path, root),
            "{seq}"
        );
    }
    // And it goes on growing consistently.
    for _ in 0..20 {
        node.user().await;
    }
    let verdict = verify_with(&node, &auditor, &[&note]).await;
    assert_eq!(verdict["ok"], true, "{verdict}");
}

// ---------------------------------------------------------------------------------------
// Retention: `hazina audit archive` (issue 14).

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Archives every entry older than a minute from now (so: all of them, through a multiple of
/// 16) to `file`: younger than the retention minimum, so with `--force`.
fn archive_all(app: &TestApp, file: &std::path::Path) -> std::process::Output {
    let before = (unix_now() + 60).to_string();
    cli(
        app,
        &[
            "audit",
            "archive",
            "--before",
            &before,
            "--to",
            file.to_str().unwrap(),
            "--force",
        ],
    )
}

/// `hazina audit verify --export FILE --public-key KEY [--checkpoint …]` with no database
/// and no keyring.
fn verify_offline(
    file: &std::path::Path,
    key: &str,
    checkpoints: &[&std::path::Path],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"));
    cmd.args(["audit", "verify", "--export"])
        .arg(file)
        .args(["--public-key", key]);
    for c in checkpoints {
        cmd.arg("--checkpoint").arg(c);
    }
    cmd.current_dir(file.parent().unwrap())
        .env("HAZINA_DATABASE_URL", "sqlite:///nonexistent/dir/hazina.db")
        .env("HAZINA_KEYRING", "/nonexistent/hazina.keyring")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// An archive file's entry hashes (as leaves), its checkpoint, its first line's start (if
/// any) and its chain head's sequence number.
struct ArchiveFile {
    leaves: Vec<H>,
    checkpoint: String,
    starts_after: Option<i64>,
    through: i64,
}

fn read_archive(file: &std::path::Path) -> ArchiveFile {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    ArchiveFile {
        leaves: lines
            .iter()
            .filter(|v| v.get("seq").is_some())
            .map(|v| leaf(&hex::decode(v["hash"].as_str().unwrap()).unwrap()))
            .collect(),
        checkpoint: lines
            .iter()
            .find_map(|v| v["checkpoint"].as_str().map(str::to_owned))
            .expect("the file carries its checkpoint"),
        starts_after: lines[0]["archived_before"]["seq"].as_i64(),
        through: lines.last().unwrap()["chain_head"]["seq"].as_i64().unwrap(),
    }
}

/// A checkpoint's size and root, read by the independent signed-note code above.
fn size_and_root(note: &str, key: &VerifierKey) -> (u64, H) {
    let text = open_note(note, key).expect("the checkpoint verifies independently");
    let mut lines = text.lines();
    lines.next();
    let size = lines.next().unwrap().parse().unwrap();
    let root = B64
        .decode(lines.next().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    (size, root)
}

fn entries_at_or_below(app: &TestApp, seq: i64) -> i64 {
    app.sql_lines(&format!(
        "SELECT CAST(COUNT(*) AS TEXT) AS line FROM audit_log WHERE seq <= {seq}"
    ))[0]
        .parse()
        .unwrap()
}

#[tokio::test]
async fn archiving_moves_old_entries_to_a_file_that_verifies_and_the_rest_stays_provable() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let vkey: Value = app
        .get("/audit/public-key/", &auditor.access)
        .await
        .json()
        .await
        .unwrap();
    let vkey = vkey["key"].as_str().unwrap().to_owned();
    let key = parse_vkey(&vkey);
    // An auditor keeps a checkpoint early (fewer than 16 entries: it will lie inside the
    // archive, at a size no stored subtree ends on) and one just before the archive.
    let kept_early = checkpoint_of(&app, &auditor).await;
    let (early_size, _) = size_and_root(&kept_early, &key);
    assert!(early_size > 0 && early_size < 16, "{early_size}");
    for _ in 0..40 {
        app.user().await;
    }
    let kept_late = checkpoint_of(&app, &auditor).await;
    let (late_size, _) = size_and_root(&kept_late, &key);

    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("archive-1.jsonl");
    let out = archive_all(&app, &first);
    assert!(
        out.status.success() && first.exists(),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let a1 = read_archive(&first);
    let b = a1.through;
    assert!(b >= 16 && b % 16 == 0, "{b}");
    assert_eq!(a1.starts_after, None);
    assert_eq!(a1.leaves.len() as i64, b);
    // Its checkpoint is of exactly the archived entries, checked independently.
    let (size, root) = size_and_root(&a1.checkpoint, &key);
    assert_eq!((size, root), (b as u64, mth(&a1.leaves)));
    // It verifies offline on its own, and an edited copy does not.
    let out = verify_offline(&first, &vkey, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edited = dir.path().join("edited.jsonl");
    let text = std::fs::read_to_string(&first).unwrap();
    std::fs::write(&edited, text.replacen("\"success\"", "\"denied\"", 1)).unwrap();
    assert!(!verify_offline(&edited, &vkey, &[]).status.success());

    // The database no longer holds them; its chain (from the anchor) verifies.
    assert_eq!(entries_at_or_below(&app, b), 0);
    let out = cli(&app, &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // More history; every leaf is known from the archive and the export.
    for _ in 0..4 {
        app.user().await;
    }
    let now = checkpoint_of(&app, &auditor).await;
    let (n, now_root) = size_and_root(&now, &key);
    let mut leaves = a1.leaves.clone();
    leaves.extend(exported_leaves(&app, &auditor).await);
    assert!(leaves.len() as u64 >= n);
    assert_eq!(now_root, mth(&leaves[..n as usize]));

    // Kept checkpoints: one the database can still check, one it sends to the archive.
    let report = verify_with(&app, &auditor, &[&kept_late, &kept_early]).await;
    assert_eq!(report["first_bad_seq"], Value::Null, "{report}");
    let late_checkable = late_size >= b as u64 || late_size % 16 == 0;
    assert_eq!(report["checkpoints"][0]["ok"], late_checkable, "{report}");
    assert_eq!(report["checkpoints"][1]["ok"], false, "{report}");
    assert!(report["checkpoints"][1]["problem"]
        .as_str()
        .unwrap()
        .contains("archived"));

    // Proofs about the rest verify independently; proofs that need archived entries are 400.
    for seq in [b as u64 + 1, n] {
        let res = app
            .get(
                &format!("/audit/proofs/inclusion/?seq={seq}&tree_size={n}"),
                &auditor.access,
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        let path = hashes(&body["audit_path"]);
        assert!(verify_inclusion(
            seq - 1,
            n,
            leaves[seq as usize - 1],
            &path,
            now_root
        ));
    }
    let res = app
        .get(
            &format!("/audit/proofs/inclusion/?seq=1&tree_size={n}"),
            &auditor.access,
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    for from in [b as u64, 16] {
        let res = app
            .get(
                &format!("/audit/proofs/consistency/?from={from}&to={n}"),
                &auditor.access,
            )
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        let proof = hashes(&body["proof"]);
        assert!(verify_consistency(
            from,
            n,
            &proof,
            mth(&leaves[..from as usize]),
            now_root
        ));
    }
    let res = app
        .get(
            &format!("/audit/proofs/consistency/?from={early_size}&to={n}"),
            &auditor.access,
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);

    // A whole export of what is left still verifies offline, against the new checkpoint.
    let export = dir.path().join("export.jsonl");
    std::fs::write(
        &export,
        app.get("/audit/export/", &auditor.access)
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let note = dir.path().join("now.txt");
    std::fs::write(&note, &now).unwrap();
    let out = verify_offline(&export, &vkey, &[&note]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second archive starts where the first ended, and verifies on its own too.
    for _ in 0..24 {
        app.user().await;
    }
    let second = dir.path().join("archive-2.jsonl");
    let out = archive_all(&app, &second);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a2 = read_archive(&second);
    assert_eq!(a2.starts_after, Some(b));
    assert!(a2.through > b && a2.through % 16 == 0);
    let out = verify_offline(&second, &vkey, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut all = a1.leaves.clone();
    all.extend(&a2.leaves);
    let (size, root) = size_and_root(&a2.checkpoint, &key);
    assert_eq!((size, root), (a2.through as u64, mth(&all)));

    // Archiving is audited, and a master-key rotation re-signs the anchor: the old version
    // retires and the chain still verifies.
    let actions =
        app.sql_lines("SELECT action AS line FROM audit_log WHERE action = 'audit.archive'");
    // (The first archive's own entry was old enough to go into the second archive.)
    assert_eq!(actions.len(), 1);
    assert!(std::fs::read_to_string(&second)
        .unwrap()
        .contains("\"audit.archive\""));
    assert!(cli(&app, &["keys", "rotate"]).status.success());
    let out = cli(&app, &["keys", "retire", "--version", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&app, &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn a_moved_or_removed_archive_anchor_is_caught_and_archive_never_overwrites_a_file() {
    let app = spawn_app().await;
    // The last checkpoint the vault signed lies inside what will be archived, at a size no
    // stored subtree ends on: the signer must still sign afterwards.
    let auditor = app.user_with_role(Role::Auditor).await;
    checkpoint_of(&app, &auditor).await;
    for _ in 0..40 {
        app.user().await;
    }
    let dir = tempfile::tempdir().unwrap();
    // Nothing older than the epoch: no file, nothing deleted.
    let none = dir.path().join("none.jsonl");
    let out = cli(
        &app,
        &[
            "audit",
            "archive",
            "--before",
            "0",
            "--to",
            none.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    assert!(!none.exists());
    // An existing file is never overwritten, and then nothing is deleted.
    let taken = dir.path().join("taken.jsonl");
    std::fs::write(&taken, "mine").unwrap();
    let out = archive_all(&app, &taken);
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "mine");
    assert_eq!(entries_at_or_below(&app, 16), 16);

    let file = dir.path().join("a.jsonl");
    assert!(archive_all(&app, &file).status.success());
    let b = read_archive(&file).through;
    checkpoint_of(&app, &auditor).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    for _ in 0..10 {
        app.user().await;
    }
    let verifies = |app: &TestApp| cli(app, &["audit", "verify"]).status.success();
    assert!(verifies(&app));
    // The attacker deletes the next 16 entries too and moves the anchor over them.
    app.sql(&format!(
        "UPDATE audit_head SET archived_seq = {} WHERE id = 1",
        b + 16
    ));
    assert!(!verifies(&app));
    app.sql(&format!(
        "UPDATE audit_head SET archived_seq = {b} WHERE id = 1"
    ));
    assert!(verifies(&app));
    // … or removes the anchor, so the log would seem to start at entry 1.
    let note = app.sql_lines("SELECT archived_note AS line FROM audit_head WHERE id = 1");
    assert!(!note.is_empty());
    app.sql("UPDATE audit_head SET archived_seq = 0, archived_note = NULL WHERE id = 1");
    assert!(!verifies(&app));
    // … or writes an anchor of their own.
    app.sql(&format!(
        "UPDATE audit_head SET archived_seq = {b}, archived_note = 'origin\narchive\n{b}\nAAAA\n\n\u{2014} origin AAAA\n' WHERE id = 1"
    ));
    assert!(!verifies(&app));
}

// ---------------------------------------------------------------------------------------
// Nothing the database holds vouches for itself (SPEC §14, issue 29).

/// The head's sequence number.
fn head_seq(app: &TestApp) -> i64 {
    app.sql_lines("SELECT CAST(seq AS TEXT) AS line FROM audit_head WHERE id = 1")[0]
        .parse()
        .unwrap()
}

/// A merchant with a credential; each call of the returned path's reveal adds one entry.
async fn revealer(app: &TestApp) -> (TestUser, String) {
    let owner = app.user().await;
    let created = app
        .create_credential(&owner, "pagamio", "live", "pagamio-password-0029")
        .await;
    let path = format!(
        "/payments/credentials/{}/get-private-key/",
        created["id"].as_i64().unwrap()
    );
    (owner, path)
}

/// Reveals until the log holds at least `at_least` entries and a multiple of 16 (a size the
/// stored tree ends a subtree on); the new size.
async fn grow_to_a_multiple_of_16(
    app: &TestApp,
    owner: &TestUser,
    path: &str,
    at_least: i64,
) -> i64 {
    while head_seq(app) < at_least || head_seq(app) % 16 != 0 {
        assert_eq!(app.get(path, &owner.access).await.status(), StatusCode::OK);
    }
    head_seq(app)
}

/// The attacker with database write access but no keyring: rewrites entry `seq`'s actor
/// name, then recomputes every later chain hash and the head's hash. `audit_tree` is left
/// as it is.
fn rewrite_entry_and_rechain(app: &TestApp, seq: i64, actor_name: &str) {
    use diesel::prelude::*;
    use hazina::audit::chain::AuditRow;
    use hazina::db::schema::{audit_head as head, audit_log as log};

    let mut conn = app.conn();
    let rows: Vec<AuditRow> = log::table
        .filter(log::seq.ge(seq))
        .order(log::seq.asc())
        .select(AuditRow::as_select())
        .load(&mut *conn)
        .unwrap();
    let mut prev = rows[0].prev_hash.clone();
    for mut row in rows {
        if row.seq == seq {
            row.actor_name = Some(actor_name.into());
        }
        row.prev_hash = prev.clone();
        row.hash = row.compute_hash().to_vec();
        diesel::update(log::table.filter(log::seq.eq(row.seq)))
            .set((
                log::actor_name.eq(&row.actor_name),
                log::prev_hash.eq(&row.prev_hash),
                log::hash.eq(&row.hash),
            ))
            .execute(&mut *conn)
            .unwrap();
        prev = row.hash;
    }
    diesel::update(head::table)
        .set(head::hash.eq(&prev))
        .execute(&mut *conn)
        .unwrap();
}

async fn readyz(app: &TestApp) -> StatusCode {
    app.client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
}

async fn alarms(app: &TestApp) -> String {
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with("hazina_audit_checkpoint_alarms_total"))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_rewritten_reveal_with_every_later_hash_recomputed_fails_verification_where_the_stored_tree_disagrees(
) {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let (owner, path) = revealer(&app).await;
    let size = grow_to_a_multiple_of_16(&app, &owner, &path, 40).await;
    // A checkpoint the security team keeps, of a size the stored tree ends a subtree on.
    let kept = checkpoint_of(&app, &auditor).await;
    assert_eq!(kept.lines().nth(1).unwrap(), size.to_string());
    for _ in 0..3 {
        assert_eq!(app.get(&path, &owner.access).await.status(), StatusCode::OK);
    }
    // A reveal inside the second stored 16-entry subtree, hidden under another name.
    let reveal: i64 = app.sql_lines(
        "SELECT CAST(MIN(seq) AS TEXT) AS line FROM audit_log \
         WHERE action = 'credential.reveal' AND seq > 20",
    )[0]
    .parse()
    .unwrap();
    assert!(reveal <= 32, "{reveal}");
    rewrite_entry_and_rechain(&app, reveal, "someone-else");

    // The chain alone is self-consistent; the stored tree, computed when the entries were
    // written, is not what the entries now produce. The finest it can name is the first entry
    // of the smallest stored subtree (16 entries) holding the rewritten one.
    let subtree_start = (reveal - 1) / 16 * 16 + 1;
    let report: Value = app
        .get("/audit/verify/", &auditor.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_bad_seq"], subtree_start, "{report}");
    // The kept checkpoint no longer verifies: its root is recomputed from the entries.
    let verdict = verify_with(&app, &auditor, &[&kept]).await;
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["first_bad_seq"], subtree_start, "{verdict}");
    assert_eq!(verdict["checkpoints"][0]["ok"], false, "{verdict}");
    assert!(verdict["checkpoints"][0]["problem"]
        .as_str()
        .unwrap()
        .contains("rewritten"));
    // The command line agrees, with and without the checkpoint.
    let file = app.dir.path().join("kept.txt");
    std::fs::write(&file, &kept).unwrap();
    for args in [
        &["audit", "verify"][..],
        &["audit", "verify", "--checkpoint", file.to_str().unwrap()][..],
    ] {
        let out = cli(&app, args);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(stdout["first_bad_seq"], subtree_start, "{stdout}");
    }
    // And so does the console.
    let mut visitor = crate::console::Visitor::signed_in(&app, &auditor).await;
    let page = visitor.get("/console/audit/verify/").await;
    assert!(
        page.html.contains(&format!(
            "The log has been altered: entry #{subtree_start} "
        )),
        "{}",
        page.html
    );
}

#[tokio::test]
async fn the_signer_refuses_a_root_that_the_entries_since_its_last_checkpoint_do_not_produce() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let (owner, path) = revealer(&app).await;
    let signed = checkpoint_of(&app, &auditor).await;
    let signed_size: i64 = signed.lines().nth(1).unwrap().parse().unwrap();
    assert!(signed_size < 16, "{signed_size}");
    grow_to_a_multiple_of_16(&app, &owner, &path, 32).await;
    // An entry after the last checkpoint, inside a stored subtree, rewritten with the chain.
    rewrite_entry_and_rechain(&app, 20, "someone-else");

    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz(&app).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(alarms(&app).await, "hazina_audit_checkpoint_alarms_total 1");
    let stored: Vec<String> =
        app.sql_lines("SELECT last_checkpoint AS line FROM audit_signer WHERE id = 1");
    assert_eq!(stored, [signed], "nothing new was signed");
}

#[tokio::test]
async fn the_signer_refuses_a_log_whose_entries_no_longer_chain_onto_its_last_checkpoint() {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    let (owner, path) = revealer(&app).await;
    let size = grow_to_a_multiple_of_16(&app, &owner, &path, 32).await;
    let signed = checkpoint_of(&app, &auditor).await;
    assert_eq!(signed.lines().nth(1).unwrap(), size.to_string());
    for _ in 0..5 {
        assert_eq!(app.get(&path, &owner.access).await.status(), StatusCode::OK);
    }
    // The attacker rewrites an entry the checkpoint covers and every later hash, and has the
    // tree after the checkpoint rebuilt over the new hashes (a restart catches it up): the
    // stored subtrees up to the checkpoint still fold to its signed root.
    rewrite_entry_and_rechain(&app, size - 3, "someone-else");
    app.sql(&format!(
        "DELETE FROM audit_tree WHERE ((idx + 1) << level) > {size};
         UPDATE audit_head SET tree_size = {size} WHERE id = 1;"
    ));
    let node = app.spawn_node().await;

    let res = node.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz(&node).await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_cleared_or_older_signer_row_is_tampering_while_the_running_signer_remembers_a_later_checkpoint(
) {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    for _ in 0..3 {
        app.user().await;
    }
    let older = checkpoint_of(&app, &auditor).await;
    for _ in 0..3 {
        app.user().await;
    }
    let latest = checkpoint_of(&app, &auditor).await;
    let size: u64 = latest.lines().nth(1).unwrap().parse().unwrap();

    // An older genuine checkpoint written back: the log still extends it, but this signer
    // signed a later one.
    app.sql(&format!(
        "UPDATE audit_signer SET last_checkpoint = '{older}' WHERE id = 1"
    ));
    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz(&app).await, StatusCode::SERVICE_UNAVAILABLE);

    // The attack the row alone cannot stop: cut the log back, then clear the row so that
    // nothing in the database remembers what was signed.
    truncate_log(&app, size - 2);
    app.sql("UPDATE audit_signer SET last_checkpoint = NULL WHERE id = 1");
    let res = app.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz(&app).await, StatusCode::SERVICE_UNAVAILABLE);
    let stored: Vec<Option<String>> = {
        use diesel::prelude::*;
        use hazina::db::schema::audit_signer;
        audit_signer::table
            .select(audit_signer::last_checkpoint)
            .load(&mut *app.conn())
            .unwrap()
    };
    assert_eq!(stored, [None], "nothing was signed over the cut log");
}

#[tokio::test]
async fn a_restarted_signer_reads_its_last_checkpoint_back_from_the_checkpoint_file_and_refuses_a_cleared_row(
) {
    let app = spawn_app().await;
    let auditor = app.user_with_role(Role::Auditor).await;
    for _ in 0..3 {
        app.user().await;
    }
    let first = checkpoint_of(&app, &auditor).await;
    for _ in 0..3 {
        app.user().await;
    }
    let last = checkpoint_of(&app, &auditor).await;
    let size: u64 = last.lines().nth(1).unwrap().parse().unwrap();
    // The checkpoint file as the publisher writes it: notes back to back, the newest last.
    let file = app.dir.path().join("published-checkpoints.txt");
    std::fs::write(&file, format!("{first}{last}")).unwrap();

    truncate_log(&app, size - 2);
    app.sql("UPDATE audit_signer SET last_checkpoint = NULL WHERE id = 1");
    let setting = file.display().to_string();
    let restarted = app
        .spawn_node_with(&[
            ("HAZINA_AUDIT_CHECKPOINT_FILE", setting.as_str()),
            ("HAZINA_AUDIT_CHECKPOINT_SECONDS", "86400"),
        ])
        .await;

    let res = restarted.get("/audit/checkpoint/", &auditor.access).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz(&restarted).await, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        alarms(&restarted).await,
        "hazina_audit_checkpoint_alarms_total 1"
    );
    // The command line, given the same file, refuses too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hazina"))
        .args(["audit", "checkpoint"])
        .current_dir(app.dir.path())
        .env("HAZINA_DATABASE_URL", app.db.url())
        .env("HAZINA_KEYRING", &app.keyring_path)
        .env("HAZINA_AUDIT_CHECKPOINT_FILE", &file)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{first}{last}")
    );
}

#[tokio::test]
async fn archiving_recent_entries_is_refused_without_force_and_the_archive_entry_records_what_moved(
) {
    let app = spawn_app().await;
    for _ in 0..40 {
        app.user().await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recent.jsonl");
    let before = (unix_now() + 60).to_string();
    let archive = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "archive",
            "--before",
            before.as_str(),
            "--to",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        cli(&app, &args)
    };
    // Minutes-old entries are younger than the retention minimum (30 days by default).
    let out = archive(&[]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("HAZINA_AUDIT_RETENTION_MIN_DAYS") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(!file.exists());
    assert_eq!(entries_at_or_below(&app, 16), 16);

    // With --force it archives, and its entry says what moved where.
    let out = archive(&["--force"]);
    assert!(out.status.success(), "{out:?}");
    let archived = read_archive(&file);
    let vkey = String::from_utf8(cli(&app, &["audit", "public-key"]).stdout).unwrap();
    let (_, root) = size_and_root(&archived.checkpoint, &parse_vkey(vkey.trim()));
    let sha = hex::encode(Sha256::digest(std::fs::read(&file).unwrap()));
    let recorded =
        app.sql_lines("SELECT reference AS line FROM audit_log WHERE action = 'audit.archive'");
    assert_eq!(
        recorded,
        [format!(
            "seq 1-{} sha256 {sha} root {}",
            archived.through,
            hex::encode(root)
        )]
    );
}
