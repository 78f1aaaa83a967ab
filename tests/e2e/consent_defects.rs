//! The consent defects issue 9 lists, each shown fixed on SQLite and PostgreSQL: a
//! refused grant is audited; a parent reads an adult child's access log no more; the
//! access log pages newest first through any number of events; a malformed consent id
//! is refused before it reaches SQL.

use crate::harness::{Broker, Db, TestEnv};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// A valid resident ID number for someone born on `birth` (YYYYMMDD) in Guangzhou.
fn resident_id(birth: &str, sequence: &str) -> String {
    let body = format!("440104{birth}{sequence}");
    format!(
        "{body}{}",
        datarun_domain::ResidentId::check_character(&body)
    )
}

async fn consent_defects_are_fixed(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    // Two children of one mother: a minor, and one who came of age in 2019.
    let mut rows = datarun_connector::sample::birth_certificates(2, 57);
    let adult = resident_id("20010315", "123");
    let mother = rows[0]["mother_id_no"].clone();
    rows[1].insert("baby_id_no".into(), adult.clone());
    rows[1].insert("birth_date".into(), "2001-03-15".into());
    rows[1].insert("issue_date".into(), "2001-03-20".into());
    rows[1].insert("mother_id_no".into(), mother.clone());
    let mother_name = rows[0]["mother_name"].clone();
    rows[1].insert("mother_name".into(), mother_name);
    let source = env.dir.join("family.csv");
    datarun_connector::sample::write_csv(&source, &rows).unwrap();
    env.run_connector(&source).await;
    assert_eq!(hub.wait_for_certificates(2).await, 2);
    let minor = rows[0]["baby_id_no"].clone();
    let mother_token = env.citizen_token(&mother).await;
    let adult_token = env.citizen_token(&adult).await;
    let auditor = env.auditor_token().await;
    let caseworker = env.caseworker_token("public_security").await;
    let grant = |subject: &str| {
        json!({
            "subject": subject,
            "requester_department": "public_security",
            "record_types": ["health.birth_certificate"],
            "purpose": "household_registration",
            "max_uses": 1
        })
    };

    // A false guardianship claim is refused and audited, naming the rule.
    let stranger = env.citizen_token(&resident_id("19800101", "456")).await;
    let (status, body) = hub.post("/v1/consents", &stranger, grant(&minor)).await;
    assert_eq!(status, 403, "{body}");
    let (_, trail) = hub
        .get(&format!("/v1/audit/events?subject={minor}"), &auditor)
        .await;
    let refused: Vec<&Value> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "consent_granted" && e["outcome"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{trail}");
    assert_eq!(refused[0]["reason"], "not_subject_or_guardian");

    // The adult child consents for themself; the mother for the minor.
    let (status, _) = hub.post("/v1/consents", &adult_token, grant(&adult)).await;
    assert_eq!(status, 201);
    let (status, consent) = hub.post("/v1/consents", &mother_token, grant(&minor)).await;
    assert_eq!(status, 201, "{consent}");
    let (status, body) = hub.post("/v1/consents", &mother_token, grant(&adult)).await;
    assert_eq!(
        status, 403,
        "a parent does not consent for an adult child: {body}"
    );

    // A malformed consent id is refused before SQL, and the next lookup is unharmed.
    let lookup = |consent_id: &str| json!({ "consent_id": consent_id, "subject": minor, "record_type": "health.birth_certificate", "purpose": "household_registration" });
    for bad in [
        "consent_\u{0}",
        "x".repeat(10_000).as_str(),
        "consent_ABCDEF",
    ] {
        let (status, body) = hub.post("/v1/lookups", &caseworker, lookup(bad)).await;
        assert_eq!(status, 400, "{body}");
    }

    // A caseworker floods the minor's log with 1,010 refused lookups, then uses the
    // consent once: the newest entry is the first the mother sees.
    let unknown = format!("consent_{}", "0".repeat(32));
    for _ in 0..1_010 {
        let (status, _) = hub.post("/v1/lookups", &caseworker, lookup(&unknown)).await;
        assert_eq!(status, 403);
    }
    let consent_id = consent["consent_id"].as_str().unwrap();
    let (status, allowed) = hub
        .post("/v1/lookups", &caseworker, lookup(consent_id))
        .await;
    assert_eq!(status, 200, "{allowed}");

    let mut seen = Vec::new();
    let mut about = BTreeSet::new();
    let mut before: Option<i64> = None;
    let mut first_page = None;
    loop {
        let path = match before {
            Some(before) => format!("/v1/me/access-log?limit=300&before={before}"),
            None => "/v1/me/access-log?limit=300".to_owned(),
        };
        let (status, page) = hub.get(&path, &mother_token).await;
        assert_eq!(status, 200, "{page}");
        if first_page.is_none() {
            first_page = Some(page.clone());
        }
        for entry in page["entries"].as_array().unwrap() {
            seen.push(entry["seq"].as_i64().unwrap());
            about.insert(entry["about"].as_str().unwrap().to_owned());
        }
        match page["next_before"].as_i64() {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    let first = &first_page.unwrap()["entries"][0];
    assert_eq!(first["seq"], allowed["audit_seq"], "newest first: {first}");
    assert_eq!(first["outcome"], "allowed");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "strictly newest first"
    );
    // About the minor: the stranger's refused grant, her grant, 1,010 refusals, one
    // release. Nothing about the adult child (their own grant, her refused one).
    assert_eq!(seen.len(), 1 + 1 + 1_010 + 1, "every event, once");
    assert_eq!(about, BTreeSet::from(["child".to_owned()]));
    // The adult child sees both: their own grant and their mother's refused one.
    let (_, adults_own) = hub.get("/v1/me/access-log", &adult_token).await;
    let entries = adults_own["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{adults_own}");
    assert!(entries.iter().all(|e| e["about"] == "self"));
    assert_eq!(
        entries[0]["outcome"], "refused",
        "newest first: {adults_own}"
    );
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_defects_are_fixed_sqlite() {
    consent_defects_are_fixed(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_defects_are_fixed_postgres() {
    consent_defects_are_fixed(Db::Postgres).await;
}
