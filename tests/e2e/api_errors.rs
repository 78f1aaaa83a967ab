//! Bad input at the HTTP API gets a clear, specific error and writes nothing.

use crate::harness::{Broker, Db, TestEnv};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_specific_messages() {
    let env = TestEnv::new(Db::Sqlite, Broker::Mock).await;
    let hub = env.start().await;
    let citizen = env.citizen_token("440104198503125841").await;
    let caseworker = env.caseworker_token("public_security").await;
    let grant = json!({
        "subject": "440104198503125841", "requester_department": "public_security",
        "record_types": ["health.birth_certificate"], "purpose": "household_registration"
    });

    let check = |status: u16, body: serde_json::Value, code: &str, fragment: &str| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(fragment),
            "{message:?} should mention {fragment:?}"
        );
    };
    let mut bad = grant.clone();
    bad["subject"] = json!("440104198503125840");
    let (status, body) = hub.post("/v1/consents", &citizen, bad).await;
    check(status, body, "invalid_request", "check character");
    let mut bad = grant.clone();
    bad["purpose"] = json!("curiosity");
    let (status, body) = hub.post("/v1/consents", &citizen, bad).await;
    check(
        status,
        body,
        "invalid_request",
        "not in the purpose catalogue",
    );
    let mut bad = grant.clone();
    bad["max_uses"] = json!(0);
    let (status, body) = hub.post("/v1/consents", &citizen, bad).await;
    check(status, body, "invalid_request", "max_uses");
    let mut bad = grant.clone();
    bad["colour"] = json!("blue");
    let (status, body) = hub.post("/v1/consents", &citizen, bad).await;
    check(status, body, "invalid_request", "colour");
    let mut bad = grant.clone();
    bad["record_types"] = json!(["birth_certificate"]);
    let (status, body) = hub.post("/v1/consents", &citizen, bad).await;
    check(status, body, "invalid_request", "record type");
    let consent_id = format!("consent_{}", "0".repeat(32));
    let lookup = json!({ "consent_id": consent_id, "subject": "4401041985031258", "record_type": "health.birth_certificate", "purpose": "household_registration" });
    let (status, body) = hub.post("/v1/lookups", &caseworker, lookup).await;
    check(
        status,
        body,
        "invalid_request",
        "must be 18 characters, got 16",
    );
    let lookup = json!({ "consent_id": "c", "subject": "440104198503125841", "record_type": "health.birth_certificate", "purpose": "household_registration" });
    let (status, body) = hub.post("/v1/lookups", &caseworker, lookup).await;
    check(
        status,
        body,
        "invalid_request",
        "consent_id: consent_ followed by 32 lowercase hex digits",
    );

    let response = hub
        .http
        .post(format!("{}/v1/consents", hub.base))
        .bearer_auth(&citizen)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");

    let response = hub
        .http
        .get(format!("{}/v1/consents", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    // Nothing was granted. The two grants the store refused (an unknown purpose, no
    // uses) are audited as refused grants; requests that were not even well-formed
    // are not.
    let (status, body) = hub.get("/v1/consents", &citizen).await;
    assert_eq!(status, 200);
    assert_eq!(body["consents"], json!([]));
    let (code, out) = env.cli(&["audit", "verify"]).await;
    let events = crate::audit::setup_events() + 2;
    assert_eq!(
        (code, out.trim()),
        (0, format!("audit log intact: {events} events").as_str())
    );
    hub.running.stop().await;
}
