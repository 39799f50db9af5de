//! Several stateless hazina nodes on one database (SPEC §5): everything they must agree on
//! lives in the database. On SQLite the nodes share one file; on PostgreSQL one database.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

#[tokio::test]
async fn a_credential_created_on_one_node_is_served_by_the_other() {
    let a = spawn_app().await;
    let b = a.spawn_node().await;
    let alice = a.user().await;
    let created = a
        .create_credential(&alice, "mpesa", "live", "mpesa-two-nodes-canary")
        .await;
    let id = created["id"].as_i64().unwrap();

    let res = b
        .get(
            &format!("/payments/credentials/{id}/get-private-key/"),
            &alice.access,
        )
        .await;

    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["private_key"], "mpesa-two-nodes-canary");
}

#[tokio::test]
async fn racing_creates_on_two_nodes_give_exactly_one_201_and_one_409() {
    let a = spawn_app().await;
    let b = a.spawn_node().await;
    for round in 0..5 {
        let alice = a.user().await;
        let body = json!({
            "provider": "kopokopo",
            "api_key": "kk-api",
            "private_key": format!("race-key-{round}-abcdef"),
            "environment": "sandbox",
        });
        let (ra, rb) = tokio::join!(
            a.post("/payments/credentials/", &alice.access, &body),
            b.post("/payments/credentials/", &alice.access, &body),
        );
        let mut statuses = vec![ra.status().as_u16(), rb.status().as_u16()];
        statuses.sort();
        assert_eq!(statuses, vec![201, 409], "round {round}");
        let list: Value = a
            .get("/payments/credentials/", &alice.access)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_refresh_token_spent_on_one_node_is_refused_by_the_other_and_revokes_the_session() {
    let a = spawn_app().await;
    let b = a.spawn_node().await;
    let alice = a.user().await;
    let refresh = json!({ "refresh_token": alice.refresh });

    let first = a
        .client
        .post(a.url("/users/token/refresh/"))
        .json(&refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let pair: Value = first.json().await.unwrap();

    let replay = b
        .client
        .post(b.url("/users/token/refresh/"))
        .json(&refresh)
        .send()
        .await
        .unwrap();
    assert_error(
        replay,
        StatusCode::UNAUTHORIZED,
        "Invalid or expired refresh token",
    )
    .await;

    // The whole session is gone on both nodes: the newest tokens no longer work either.
    let newest = json!({ "refresh_token": pair["refresh_token"] });
    let res = a
        .client
        .post(a.url("/users/token/refresh/"))
        .json(&newest)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let access = pair["access_token"].as_str().unwrap();
    assert_eq!(
        a.get("/payments/credentials/", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        b.get("/payments/credentials/", access).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_logout_on_one_node_is_honoured_by_the_other() {
    let a = spawn_app().await;
    let b = a.spawn_node().await;
    let alice = a.user().await;
    assert_eq!(
        b.get("/payments/credentials/", &alice.access)
            .await
            .status(),
        StatusCode::OK
    );

    let res = a.post_empty("/users/logout/", &alice.access).await;
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(
        b.get("/payments/credentials/", &alice.access)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let refresh = json!({ "refresh_token": alice.refresh });
    let res = b
        .client
        .post(b.url("/users/token/refresh/"))
        .json(&refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn concurrent_rotations_over_two_nodes_leave_a_gap_free_version_sequence() {
    const ROTATIONS: usize = 200;
    // Every version is kept (the cap would shred the oldest: SPEC §15).
    let keep_all = [("HAZINA_MAX_VERSIONS", "1000")];
    let a = spawn_app_with(&keep_all).await;
    let b = a.spawn_node_with(&keep_all).await;
    let alice = a.user().await;
    let created = a
        .create_credential(&alice, "pagamio", "sandbox", "pagamio-initial-key")
        .await;
    let id = created["id"].as_i64().unwrap();
    let path = format!("/payments/credentials/{id}/rotate/");

    let requests = (0..ROTATIONS).map(|i| {
        let node = if i % 2 == 0 { &a } else { &b };
        let path = path.clone();
        let token = alice.access.clone();
        async move {
            let key = format!("pagamio-rotated-key-{i:04}");
            let res = node
                .post(&path, &token, &json!({ "private_key": key }))
                .await;
            assert_eq!(res.status(), StatusCode::OK, "rotation {i}");
            let body: Value = res.json().await.unwrap();
            (body["credentials"]["version"].as_i64().unwrap(), key)
        }
    });
    let acknowledged: BTreeMap<i64, String> = join_all(requests).await.into_iter().collect();

    // Every acknowledged rotation got its own version: 2..=201, no gaps, no duplicates.
    let versions: Vec<i64> = acknowledged.keys().copied().collect();
    assert_eq!(versions, (2..=(ROTATIONS as i64 + 1)).collect::<Vec<_>>());
    let stored = a.sql_lines(&format!(
        "SELECT CAST(version AS TEXT) AS line FROM credential_versions WHERE credential_id = {id} ORDER BY version"
    ));
    let stored: Vec<i64> = stored.iter().map(|v| v.parse().unwrap()).collect();
    assert_eq!(stored, (1..=(ROTATIONS as i64 + 1)).collect::<Vec<_>>());

    // The last version reveals the key of the last acknowledged rotation, on both nodes.
    let last_key = acknowledged.values().last().unwrap();
    for node in [&a, &b] {
        let res = node
            .get(
                &format!("/payments/credentials/{id}/get-private-key/"),
                &alice.access,
            )
            .await;
        let body: Value = res.json().await.unwrap();
        assert_eq!(&body["private_key"], last_key);
    }
}
