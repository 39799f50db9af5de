use crate::helpers::*;

#[tokio::test]
async fn create_then_list_shows_the_credential_without_key_material() {
    let app = spawn_app().await;
    let alice = app.user().await;
    let created = app
        .create_credential(&alice, "kopokopo", "sandbox", "kk_secret_canary_0001")
        .await;
    let res = app.get("/payments/credentials/", &alice.access).await;
    assert_eq!(res.status(), 200);
    let list: serde_json::Value = res.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], created["id"]);
    assert!(!list.to_string().contains("kk_secret_canary_0001"));
}
