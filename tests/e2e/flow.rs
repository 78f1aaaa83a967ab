//! The whole path, written once and run on every backend pair:
//! connector → Kafka → broker → store → consent → lookup → audit.

use crate::harness::{Broker, Db, TestEnv};
use serde_json::{json, Value};

async fn full_flow(db: Db, broker: Broker) {
    let env = TestEnv::new(db, broker).await;
    let hub = env.start().await;
    let (source, rows) = env.sample(40);

    // The connector publishes every row; the broker stores every certificate.
    let report = env.run_connector(&source).await;
    assert!(
        report.contains("published 40, already done 0, rejected 0"),
        "{report}"
    );
    assert_eq!(hub.wait_for_certificates(40).await, 40);
    // A second run publishes nothing twice.
    let report = env.run_connector(&source).await;
    assert!(report.contains("published 0, already done 40"), "{report}");
    assert_eq!(hub.running.store.record_counts().await.unwrap(), (40, 40));
    // The operator sees what ingest did and where its time went.
    let metrics = reqwest::get(format!("{}/metrics", hub.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert_eq!(
        value("datarun_ingest_records_total{outcome=\"stored\"}"),
        40.0
    );
    assert!(value("datarun_ingest_batches_total") >= 1.0);
    assert!(value("datarun_ingest_stage_seconds_total{stage=\"check\"}") > 0.0);
    assert!(value("datarun_ingest_stage_seconds_total{stage=\"store\"}") > 0.0);

    let child = rows[0]["baby_id_no"].clone();
    let mother = rows[0]["mother_id_no"].clone();
    let other_child = rows[1]["baby_id_no"].clone();
    let mother_token = env.citizen_token(&mother).await;
    let caseworker = env.caseworker_token("public_security").await;
    let tax_caseworker = env.caseworker_token("tax").await;
    let auditor = env.auditor_token().await;

    // The parent grants a one-use consent for the child's birth certificate.
    let grant = json!({
        "subject": child,
        "requester_department": "public_security",
        "record_types": ["health.birth_certificate"],
        "purpose": "household_registration",
        "max_uses": 1
    });
    let (status, consent) = hub.post("/v1/consents", &mother_token, grant.clone()).await;
    assert_eq!(status, 201, "{consent}");
    let consent_id = consent["consent_id"].as_str().unwrap().to_owned();
    assert_eq!(consent["granted_by_guardian"], true);

    // A parent cannot consent for somebody else's child.
    let mut foreign = grant.clone();
    foreign["subject"] = json!(other_child);
    let (status, body) = hub.post("/v1/consents", &mother_token, foreign).await;
    assert_eq!(status, 403, "{body}");

    let lookup = |consent: &str, subject: &str| json!({ "consent_id": consent, "subject": subject, "record_type": "health.birth_certificate", "purpose": "household_registration" });
    // Another department's caseworker cannot use it, and learns neither that it exists
    // nor whose it is; scope is checked before the use count.
    let (status, body) = hub
        .post("/v1/lookups", &tax_caseworker, lookup(&consent_id, &child))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("consent_not_found")),
        "{body}"
    );
    assert!(
        !body.to_string().contains("public_security"),
        "the refusal does not name the consent's department: {body}"
    );
    // Nor can it be used for another subject.
    let (status, body) = hub
        .post(
            "/v1/lookups",
            &caseworker,
            lookup(&consent_id, &other_child),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("subject_not_consented")),
        "{body}"
    );
    // Without a consent there is nothing to look up.
    let unknown = format!("consent_{}", "0".repeat(32));
    let (status, body) = hub
        .post("/v1/lookups", &caseworker, lookup(&unknown, &child))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("consent_not_found")),
        "{body}"
    );
    // Without a token, or with the wrong role, the request is refused.
    let (status, _) = hub
        .post("/v1/lookups", "drt_bogus", lookup(&consent_id, &child))
        .await;
    assert_eq!(status, 401);
    let (status, body) = hub
        .post("/v1/lookups", &mother_token, lookup(&consent_id, &child))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("wrong_role"))
    );

    // The caseworker looks the certificate up: the fields are the department's data.
    let (status, body) = hub
        .post("/v1/lookups", &caseworker, lookup(&consent_id, &child))
        .await;
    assert_eq!(status, 200, "{body}");
    let certificate = &body["certificates"][0];
    assert_eq!(certificate["certificate_id"], rows[0]["cert_no"].as_str());
    assert_eq!(
        certificate["fields"]["child_name"],
        rows[0]["baby_name"].as_str()
    );
    assert_eq!(
        certificate["fields"]["mother_name"],
        rows[0]["mother_name"].as_str()
    );
    // Household registration does not need the parents' ID numbers: not released.
    assert!(
        certificate["fields"].get("mother_id_number").is_none(),
        "{certificate}"
    );
    let sex = if rows[0]["baby_sex"] == "男" {
        "MALE"
    } else {
        "FEMALE"
    };
    assert_eq!(certificate["fields"]["child_sex"], sex);
    assert_eq!(
        certificate["fields"]["date_of_birth"],
        rows[0]["birth_date"].as_str()
    );
    assert_eq!(certificate["issuing_department"], "health");

    // The second use of a one-use consent is refused and says why.
    let (status, body) = hub
        .post("/v1/lookups", &caseworker, lookup(&consent_id, &child))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("consent_exhausted")),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("used up"));

    // The auditor sees every access to the child's data, allowed and refused.
    let (status, body) = hub
        .get(&format!("/v1/audit/events?subject={child}"), &auditor)
        .await;
    assert_eq!(status, 200, "{body}");
    let events: Vec<(String, String, Option<String>)> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
                e["reason"].as_str().map(Into::into),
            )
        })
        .collect();
    let expected: Vec<(String, String, Option<String>)> = vec![
        ("consent_granted".into(), "recorded".into(), None),
        (
            "lookup".into(),
            "refused".into(),
            Some("consent_not_found".into()),
        ),
        (
            "lookup".into(),
            "refused".into(),
            Some("consent_not_found".into()),
        ),
        ("lookup".into(), "allowed".into(), None),
        (
            "lookup".into(),
            "refused".into(),
            Some("consent_exhausted".into()),
        ),
    ];
    assert_eq!(events, expected);
    // The audit log holds pseudonyms, never the ID number.
    assert!(!body.to_string().contains(&child));
    // A citizen cannot read the auditors' trail; the parent sees the child's access log.
    let (status, _) = hub.get("/v1/audit/events", &mother_token).await;
    assert_eq!(status, 403);
    let (status, log) = hub.get("/v1/me/access-log", &mother_token).await;
    assert_eq!(status, 200);
    let allowed: Vec<&Value> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "allowed")
        .collect();
    assert_eq!(allowed.len(), 1, "{log}");
    assert_eq!(allowed[0]["department"], "public_security");
    assert_eq!(allowed[0]["purpose"], "household_registration");

    // The chain verifies, through the CLI and the API.
    let (code, out) = env.cli(&["audit", "verify"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit log intact"), "{out}");
    let (_, verified) = hub.get("/v1/audit/verify", &auditor).await;
    assert_eq!(verified["intact"], true);
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_sqlite_mock_kafka() {
    full_flow(Db::Sqlite, Broker::Mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_postgres_mock_kafka() {
    full_flow(Db::Postgres, Broker::Mock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_sqlite_tansu() {
    full_flow(Db::Sqlite, Broker::Tansu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_postgres_tansu() {
    full_flow(Db::Postgres, Broker::Tansu).await;
}

/// Concurrent uses of a one-use consent: exactly one succeeds.
async fn one_use_consent_under_concurrency(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let (source, rows) = env.sample(3);
    env.run_connector(&source).await;
    assert_eq!(hub.wait_for_certificates(3).await, 3);
    let child = rows[2]["baby_id_no"].clone();
    let mother = env.citizen_token(&rows[2]["mother_id_no"]).await;
    let caseworker = env.caseworker_token("public_security").await;
    let grant = json!({
        "subject": child, "requester_department": "public_security",
        "record_types": ["health.birth_certificate"], "purpose": "household_registration"
    });
    let (status, consent) = hub.post("/v1/consents", &mother, grant).await;
    assert_eq!(status, 201);
    let body = json!({ "consent_id": consent["consent_id"], "subject": child, "record_type": "health.birth_certificate", "purpose": "household_registration" });
    // A hundred lookups race on separate tasks (and connections).
    let handles: Vec<_> = (0..100)
        .map(|_| {
            let (http, url, token, body) = (
                hub.http.clone(),
                format!("{}/v1/lookups", hub.base),
                caseworker.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap();
                (status, body["error"]["code"].as_str().map(str::to_owned))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for handle in handles {
        answers.push(handle.await.unwrap());
    }
    let allowed = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(allowed, 1, "{answers:?}");
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .all(|a| *a == (403, Some("consent_exhausted".to_owned()))),
        "{answers:?}"
    );
    // The audit holds exactly one release and 99 refusals of this consent.
    let auditor = env.auditor_token().await;
    let (_, trail) = hub
        .get(
            &format!(
                "/v1/audit/events?kind=lookup&consent_id={}&limit=1000",
                consent["consent_id"].as_str().unwrap()
            ),
            &auditor,
        )
        .await;
    let events = trail["events"].as_array().unwrap();
    assert_eq!(events.len(), 100, "{trail}");
    assert_eq!(
        events.iter().filter(|e| e["outcome"] == "allowed").count(),
        1
    );
    assert!(events
        .iter()
        .filter(|e| e["outcome"] != "allowed")
        .all(|e| e["outcome"] == "refused" && e["reason"] == "consent_exhausted"));
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_use_consent_under_concurrency_sqlite() {
    one_use_consent_under_concurrency(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_use_consent_under_concurrency_postgres() {
    one_use_consent_under_concurrency(Db::Postgres).await;
}
