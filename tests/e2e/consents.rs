//! Consent as the citizen controls it and tokens as the operator does, on SQLite and
//! PostgreSQL: every lookup refusal code from a real request; pause, resume and revoke in
//! one call each, effective on the very next lookup, refused changes audited; tokens that
//! expire and are revoked at once on every hub of one database; one failing lookup that
//! leaves the rest of its group-committed batch alone.

use crate::harness::{Broker, Db, TestEnv, TestHub};
use serde_json::{json, Value};

const BIRTH: &str = "health.birth_certificate";

/// The code of a refused request, with its status.
fn refusal(status: u16, body: &Value) -> (u16, String) {
    (
        status,
        body["error"]["code"].as_str().unwrap_or("-").to_owned(),
    )
}

struct Family {
    child: String,
    other_child: String,
    mother: String,
    caseworker: String,
}

async fn family(env: &TestEnv, hub: &TestHub) -> Family {
    let (source, rows) = env.sample(2);
    env.run_connector(&source).await;
    assert_eq!(hub.wait_for_certificates(2).await, 2);
    Family {
        child: rows[0]["baby_id_no"].clone(),
        other_child: rows[1]["baby_id_no"].clone(),
        mother: env.citizen_token(&rows[0]["mother_id_no"]).await,
        caseworker: env.caseworker_token("public_security").await,
    }
}

fn grant(subject: &str, extra: Value) -> Value {
    let mut grant = json!({
        "subject": subject,
        "requester_department": "public_security",
        "record_types": [BIRTH],
        "purpose": "household_registration",
        "max_uses": 5
    });
    for (key, value) in extra.as_object().unwrap() {
        grant[key] = value.clone();
    }
    grant
}

fn lookup(consent: &Value, subject: &str, extra: Value) -> Value {
    let mut lookup = json!({
        "consent_id": consent["consent_id"],
        "subject": subject,
        "record_type": BIRTH,
        "purpose": "household_registration",
    });
    for (key, value) in extra.as_object().unwrap() {
        lookup[key] = value.clone();
    }
    lookup
}

async fn every_refusal_code_from_a_real_request(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let f = family(&env, &hub).await;
    let other_caseworker = env.caseworker_token("public_security").await;
    let tax_caseworker = env.caseworker_token("tax").await;
    let (_, me) = hub.get("/v1/whoami", &f.caseworker).await;
    let consent = |extra: Value| {
        let (hub, mother, child) = (&hub, &f.mother, &f.child);
        async move {
            let (status, consent) = hub.post("/v1/consents", mother, grant(child, extra)).await;
            assert_eq!(status, 201, "{consent}");
            consent
        }
    };
    let plain = consent(json!({})).await;
    let named_caseworker = consent(json!({ "caseworker": me["actor_id"] })).await;
    let named_fields = consent(json!({ "fields": ["child_name"] })).await;
    let one_use = consent(json!({ "max_uses": 1 })).await;
    let (status, _) = hub
        .post(
            "/v1/lookups",
            &f.caseworker,
            lookup(&one_use, &f.child, json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let revoked = consent(json!({})).await;
    let path = format!(
        "/v1/consents/{}/revoke",
        revoked["consent_id"].as_str().unwrap()
    );
    assert_eq!(hub.post(&path, &f.mother, json!({})).await.0, 200);
    let paused = consent(json!({})).await;
    let path = format!(
        "/v1/consents/{}/pause",
        paused["consent_id"].as_str().unwrap()
    );
    assert_eq!(hub.post(&path, &f.mother, json!({})).await.0, 200);
    let expired = consent(json!({})).await;
    env.execute_sql(&format!(
        "UPDATE consents SET expires_at = 1 WHERE consent_id = '{}'",
        expired["consent_id"].as_str().unwrap()
    ))
    .await;
    let unknown = json!({ "consent_id": format!("consent_{}", "0".repeat(32)) });

    #[rustfmt::skip]
    let cases: Vec<(&str, &String, Value, &str)> = vec![
        ("unknown consent", &f.caseworker, lookup(&unknown, &f.child, json!({})), "consent_not_found"),
        ("another department", &tax_caseworker, lookup(&plain, &f.child, json!({})), "consent_not_found"),
        ("another caseworker", &other_caseworker, lookup(&named_caseworker, &f.child, json!({})), "wrong_requester"),
        ("another subject", &f.caseworker, lookup(&plain, &f.other_child, json!({})), "subject_not_consented"),
        ("another purpose", &f.caseworker, lookup(&plain, &f.child, json!({ "purpose": "school_enrolment" })), "purpose_not_allowed"),
        ("a field the purpose does not need", &f.caseworker, lookup(&plain, &f.child, json!({ "fields": ["mother_id_number"] })), "purpose_not_allowed"),
        ("a record type not consented", &f.caseworker, lookup(&plain, &f.child, json!({ "record_type": "education.student_status" })), "record_type_not_consented"),
        ("a field not consented", &f.caseworker, lookup(&named_fields, &f.child, json!({ "fields": ["child_sex"] })), "field_not_consented"),
        ("revoked", &f.caseworker, lookup(&revoked, &f.child, json!({})), "consent_revoked"),
        ("paused", &f.caseworker, lookup(&paused, &f.child, json!({})), "consent_paused"),
        ("expired", &f.caseworker, lookup(&expired, &f.child, json!({})), "consent_expired"),
        ("used up", &f.caseworker, lookup(&one_use, &f.child, json!({})), "consent_exhausted"),
    ];
    let auditor = env.auditor_token().await;
    for (case, token, body, expected) in cases {
        let (status, answer) = hub.post("/v1/lookups", token, body).await;
        assert_eq!(
            refusal(status, &answer),
            (403, expected.to_owned()),
            "{case}: {answer}"
        );
        // Audited, with the same code.
        let seq = answer["error"]["audit_seq"]
            .as_i64()
            .unwrap_or_else(|| panic!("{case}: {answer}"));
        let (_, trail) = hub
            .get(
                &format!("/v1/audit/events?after_seq={}&limit=1", seq - 1),
                &auditor,
            )
            .await;
        assert_eq!(trail["events"][0]["reason"], expected, "{case}: {trail}");
        assert!(
            !answer.to_string().contains(&f.child),
            "{case}: no ID number echoed"
        );
    }
    // And the allowed ones, for contrast: the named caseworker, the named field.
    let (status, body) = hub
        .post(
            "/v1/lookups",
            &f.caseworker,
            lookup(&named_caseworker, &f.child, json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = hub
        .post(
            "/v1/lookups",
            &f.caseworker,
            lookup(&named_fields, &f.child, json!({ "fields": ["child_name"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let fields = body["certificates"][0]["fields"].as_object().unwrap();
    assert_eq!(fields.keys().collect::<Vec<_>>(), vec!["child_name"]);
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_code_from_a_real_request_sqlite() {
    every_refusal_code_from_a_real_request(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_code_from_a_real_request_postgres() {
    every_refusal_code_from_a_real_request(Db::Postgres).await;
}

async fn pause_resume_revoke_take_one_call_each(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let f = family(&env, &hub).await;
    let (status, consent) = hub
        .post("/v1/consents", &f.mother, grant(&f.child, json!({})))
        .await;
    assert_eq!(status, 201, "{consent}");
    assert_eq!(consent["status"], "ACTIVE");
    let id = consent["consent_id"].as_str().unwrap();
    let look = || {
        hub.post(
            "/v1/lookups",
            &f.caseworker,
            lookup(&consent, &f.child, json!({})),
        )
    };
    assert_eq!(look().await.0, 200);

    let (status, paused) = hub
        .post(&format!("/v1/consents/{id}/pause"), &f.mother, json!({}))
        .await;
    assert_eq!(
        (status, paused["status"].as_str()),
        (200, Some("PAUSED")),
        "{paused}"
    );
    let (status, body) = look().await;
    assert_eq!(refusal(status, &body), (403, "consent_paused".into()));
    // Pausing twice is refused, says why, and is audited.
    let (status, body) = hub
        .post(&format!("/v1/consents/{id}/pause"), &f.mother, json!({}))
        .await;
    assert_eq!(refusal(status, &body), (409, "consent_paused".into()));

    let (status, resumed) = hub
        .post(&format!("/v1/consents/{id}/resume"), &f.mother, json!({}))
        .await;
    assert_eq!(
        (status, resumed["status"].as_str()),
        (200, Some("ACTIVE")),
        "{resumed}"
    );
    assert_eq!(look().await.0, 200);

    // Someone else cannot revoke it, and learns nothing; the attempt is audited.
    let stranger = env.citizen_token(&f.other_child).await;
    let (status, body) = hub
        .post(&format!("/v1/consents/{id}/revoke"), &stranger, json!({}))
        .await;
    assert_eq!(refusal(status, &body), (404, "consent_not_found".into()));

    let (status, revoked) = hub
        .post(&format!("/v1/consents/{id}/revoke"), &f.mother, json!({}))
        .await;
    assert_eq!(
        (status, revoked["status"].as_str()),
        (200, Some("REVOKED")),
        "{revoked}"
    );
    let (status, body) = look().await;
    assert_eq!(refusal(status, &body), (403, "consent_revoked".into()));
    let (status, body) = hub
        .post(&format!("/v1/consents/{id}/resume"), &f.mother, json!({}))
        .await;
    assert_eq!(refusal(status, &body), (409, "consent_revoked".into()));

    // The consent's history, oldest first, as its grantor and the requester see it.
    let (status, detail) = hub.get(&format!("/v1/consents/{id}"), &f.mother).await;
    assert_eq!(status, 200, "{detail}");
    let history: Vec<(String, String, Option<String>)> = detail["history"]
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
    let step = |kind: &str, outcome: &str, reason: Option<&str>| {
        (kind.to_owned(), outcome.to_owned(), reason.map(Into::into))
    };
    assert_eq!(
        history,
        vec![
            step("consent_granted", "recorded", None),
            step("lookup", "allowed", None),
            step("consent_paused", "recorded", None),
            step("lookup", "refused", Some("consent_paused")),
            step("consent_paused", "refused", Some("consent_paused")),
            step("consent_resumed", "recorded", None),
            step("lookup", "allowed", None),
            step("consent_revoked", "refused", Some("consent_not_found")),
            step("consent_revoked", "recorded", None),
            step("lookup", "refused", Some("consent_revoked")),
            step("consent_resumed", "refused", Some("consent_revoked")),
        ]
    );
    assert_eq!(detail["consent"]["status"], "REVOKED");
    let (status, _) = hub.get(&format!("/v1/consents/{id}"), &f.caseworker).await;
    assert_eq!(
        status, 200,
        "the requester department sees what it was allowed"
    );
    let (status, body) = hub.get(&format!("/v1/consents/{id}"), &stranger).await;
    assert_eq!(refusal(status, &body), (404, "consent_not_found".into()));
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_revoke_take_one_call_each_sqlite() {
    pause_resume_revoke_take_one_call_each(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_revoke_take_one_call_each_postgres() {
    pause_resume_revoke_take_one_call_each(Db::Postgres).await;
}

async fn tokens_expire_and_revoke_on_every_hub(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    // A second hub on the same database: its token cache must hear of revocations too.
    let other_hub = env.start().await;
    let operator = env.token(&["--role", "operator", "--name", "op"]).await;

    // A short-lived token works, then expires, also when cached.
    let short = env
        .token(&["--role", "auditor", "--name", "a", "--ttl", "2s"])
        .await;
    assert_eq!(hub.get("/v1/whoami", &short).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let (status, body) = hub.get("/v1/whoami", &short).await;
    assert_eq!(refusal(status, &body), (401, "token_expired".into()));

    // Revoked through one hub's operator endpoint while cached on both: refused by
    // both as soon as the revocation answers.
    let caseworker = env.caseworker_token("public_security").await;
    for h in [&hub, &other_hub] {
        assert_eq!(h.get("/v1/whoami", &caseworker).await.0, 200);
    }
    let (status, body) = hub
        .post(
            "/v1/operator/tokens/revoke",
            &operator,
            json!({ "token": caseworker }),
        )
        .await;
    assert_eq!((status, body["revoked"].as_i64()), (200, Some(1)), "{body}");
    for h in [&hub, &other_hub] {
        let (status, body) = h.get("/v1/whoami", &caseworker).await;
        assert_eq!(refusal(status, &body), (401, "unauthenticated".into()));
    }
    // Only an operator may.
    let citizen = env.citizen_token("440104198503125841").await;
    let (status, body) = hub
        .post(
            "/v1/operator/tokens/revoke",
            &citizen,
            json!({ "token": operator }),
        )
        .await;
    assert_eq!(refusal(status, &body), (403, "wrong_role".into()));

    // `datarun token revoke --actor` from another process's view (the CLI): all of an
    // actor's tokens, on both hubs, by the time the command returns.
    for h in [&hub, &other_hub] {
        assert_eq!(h.get("/v1/whoami", &citizen).await.0, 200);
    }
    let (_, me) = hub.get("/v1/whoami", &citizen).await;
    let (code, out) = env
        .cli(&[
            "token",
            "revoke",
            "--actor",
            me["actor_id"].as_str().unwrap(),
        ])
        .await;
    assert_eq!((code, out.trim()), (0, "1 token(s) revoked"));
    for h in [&hub, &other_hub] {
        assert_eq!(h.get("/v1/whoami", &citizen).await.0, 401);
    }
    let (code, _) = env
        .cli(&[
            "token",
            "revoke",
            "--actor",
            me["actor_id"].as_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 1, "nothing left to revoke");

    // Logging out ends one's own token.
    let auditor = env.auditor_token().await;
    let (status, _) = other_hub.post("/v1/logout", &auditor, json!({})).await;
    assert_eq!(status, 204);
    assert_eq!(hub.get("/v1/whoami", &auditor).await.0, 401);

    // Every revocation is audited.
    let auditor = env.auditor_token().await;
    let (_, events) = hub
        .get("/v1/audit/events?kind=token_revoked", &auditor)
        .await;
    let by: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["detail"]["by"].as_str().unwrap())
        .collect();
    assert_eq!(by, vec!["token", "actor", "token"], "{events}");
    other_hub.running.stop().await;
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_revoke_on_every_hub_sqlite() {
    tokens_expire_and_revoke_on_every_hub(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_revoke_on_every_hub_postgres() {
    tokens_expire_and_revoke_on_every_hub(Db::Postgres).await;
}

/// A lookup that fails inside the group-committed batch (here: a consent row that no
/// longer reads) is rolled back alone and audited as failed; the other lookups queued
/// with it are answered and audited as if it had not been there.
async fn one_failing_lookup_leaves_its_batch_alone(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let f = family(&env, &hub).await;
    let mut consents = Vec::new();
    for _ in 0..12 {
        let (status, consent) = hub
            .post(
                "/v1/consents",
                &f.mother,
                grant(&f.child, json!({ "max_uses": 1 })),
            )
            .await;
        assert_eq!(status, 201);
        consents.push(consent);
    }
    let broken = consents.pop().unwrap();
    env.execute_sql(&format!(
        "UPDATE consents SET record_types = 'not a record type' WHERE consent_id = '{}'",
        broken["consent_id"].as_str().unwrap()
    ))
    .await;
    consents.insert(5, broken.clone());
    let requests: Vec<_> = consents
        .iter()
        .map(|consent| {
            let (http, url, token, body) = (
                hub.http.clone(),
                format!("{}/v1/lookups", hub.base),
                f.caseworker.clone(),
                lookup(consent, &f.child, json!({})),
            );
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                response.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    assert_eq!(statuses[5], 500, "{statuses:?}");
    statuses.remove(5);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let auditor = env.auditor_token().await;
    let (_, trail) = hub.get("/v1/audit/events?kind=lookup", &auditor).await;
    let outcomes: Vec<&str> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "allowed").count(),
        11,
        "{trail}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "failed").count(),
        1,
        "{trail}"
    );
    let (_, verified) = hub.get("/v1/audit/verify", &auditor).await;
    assert_eq!(verified["intact"], true, "{verified}");
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_lookup_leaves_its_batch_alone_sqlite() {
    one_failing_lookup_leaves_its_batch_alone(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_lookup_leaves_its_batch_alone_postgres() {
    one_failing_lookup_leaves_its_batch_alone(Db::Postgres).await;
}

/// A lookup response and a consent artefact are signed by the hub: `datarun
/// verify-response` accepts them as received and refuses them with one field changed,
/// and so does OpenSSL with the recipe in docs/signed-responses.md.
async fn responses_are_signed_by_the_hub(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let f = family(&env, &hub).await;
    let (status, consent) = hub
        .post("/v1/consents", &f.mother, grant(&f.child, json!({})))
        .await;
    assert_eq!(status, 201, "{consent}");
    let (status, response) = hub
        .post(
            "/v1/lookups",
            &f.caseworker,
            lookup(&consent, &f.child, json!({})),
        )
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["hub_signature"]["algorithm"], "Ed25519");
    let (status, keys) = hub.get("/v1/hub/keys", "").await;
    assert_eq!(status, 200, "{keys}");
    let keys_file = env.dir.join("hub-keys.json");
    std::fs::write(&keys_file, keys.to_string()).unwrap();
    let verify = |document: &Value, name: &str| {
        let file = env.dir.join(name);
        std::fs::write(&file, serde_json::to_string_pretty(document).unwrap()).unwrap();
        let (env, keys_file) = (&env, keys_file.clone());
        async move {
            env.cli(&[
                "verify-response",
                file.to_str().unwrap(),
                "--keys",
                keys_file.to_str().unwrap(),
            ])
            .await
        }
    };
    let (code, out) = verify(&response, "response.json").await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(response["hub_signature"]["key_id"].as_str().unwrap()),
        "{out}"
    );
    let (code, _) = verify(&consent, "consent.json").await;
    assert_eq!(code, 0, "the consent artefact is signed too");
    let mut changed = response.clone();
    changed["certificates"][0]["fields"]["child_name"] = json!("someone else");
    let (code, out) = verify(&changed, "changed.json").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT VALID"), "{out}");

    // The documented recipe with standard tools: jq for the canonical form, OpenSSL
    // for the Ed25519 check.
    let recipe = format!(
        r#"set -e
cd {dir}
jq -cjS 'del(.hub_signature)' response.json > signed.bin
jq -rj '.hub_signature.value' response.json | xxd -r -p > signature.bin
jq -rj --arg id "$(jq -r .hub_signature.key_id response.json)" '.keys[] | select(.key_id == $id) | .public_key' hub-keys.json \
  | sed 's/^/302a300506032b6570032100/' | xxd -r -p > hub.der
openssl pkey -pubin -inform DER -in hub.der -out hub.pem
openssl pkeyutl -verify -pubin -inkey hub.pem -rawin -in signed.bin -sigfile signature.bin"#,
        dir = env.dir.display()
    );
    let run = std::process::Command::new("bash")
        .arg("-c")
        .arg(&recipe)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && said.contains("Signature Verified Successfully"),
        "{said} {}",
        String::from_utf8_lossy(&run.stderr)
    );
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_signed_by_the_hub_sqlite() {
    responses_are_signed_by_the_hub(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_signed_by_the_hub_postgres() {
    responses_are_signed_by_the_hub(Db::Postgres).await;
}

/// 一件事一次办: one school-enrolment request under one consent, granted by a parent,
/// returns the child's birth certificate and student status and the parent's household
/// register and residence permit, signed as one response and audited as four accesses,
/// each in the access log of the person it is about.
async fn a_bundle_returns_the_school_enrolment_records(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let population = datarun_connector::population::generate(600, 23);
    population.write(&env.dir).unwrap();
    let file = |record_type: &str| {
        population
            .files
            .iter()
            .find(|f| f.record_type == record_type)
            .unwrap()
    };
    let bundle = [
        BIRTH,
        "education.student_status",
        "public_security.household_register",
        "public_security.residence_permit",
    ];
    let mut total = 0;
    for record_type in bundle {
        let source = file(record_type);
        let folder = crate::harness::repo_root()
            .join("connectors")
            .join(record_type);
        let (code, out) = env
            .cli(&[
                "connector",
                "run",
                folder.to_str().unwrap(),
                "--source",
                env.dir.join(source.path).to_str().unwrap(),
                "--state-dir",
                env.dir.join("state").to_str().unwrap(),
            ])
            .await;
        assert_eq!(code, 0, "{out}");
        total += source.rows.len();
    }
    assert_eq!(hub.wait_for_certificates(total as i64).await, total as i64);
    // A pupil whose mother lives away from her household registration.
    let has = |record_type: &str, column: &str, id: &str| {
        file(record_type)
            .rows
            .iter()
            .filter(|r| r[column] == id)
            .count()
    };
    let (child, mother) = file(BIRTH)
        .rows
        .iter()
        .map(|r| (r["baby_id_no"].clone(), r["mother_id_no"].clone()))
        .find(|(child, mother)| {
            has("education.student_status", "sfzh", child) == 1
                && has("public_security.household_register", "GMSFHM", mother) == 1
                && has("public_security.residence_permit", "GMSFHM", mother) == 1
        })
        .expect("the sample population has such a family");
    let mother_token = env.citizen_token(&mother).await;
    let (status, consent) = hub
        .post(
            "/v1/consents",
            &mother_token,
            json!({
                "subject": child,
                "requester_department": "education",
                "record_types": bundle,
                "purpose": "school_enrolment",
            }),
        )
        .await;
    assert_eq!(status, 201, "{consent}");
    let caseworker = env.caseworker_token("education").await;
    let ask = json!({
        "consent_id": consent["consent_id"],
        "subject": child,
        "record_types": bundle,
        "purpose": "school_enrolment",
    });
    let (status, response) = hub.post("/v1/lookups", &caseworker, ask.clone()).await;
    assert_eq!(status, 200, "{response}");
    let certificates = response["certificates"].as_array().unwrap();
    let whose: Vec<(&str, &str)> = certificates
        .iter()
        .map(|c| {
            (
                c["record_type"].as_str().unwrap(),
                c["subject"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        whose,
        vec![
            (bundle[0], child.as_str()),
            (bundle[1], child.as_str()),
            (bundle[2], mother.as_str()),
            (bundle[3], mother.as_str()),
        ],
        "{response}"
    );
    // Each record holds only what school enrolment needs.
    assert!(certificates[0]["fields"].get("mother_id_number").is_none());
    assert!(certificates[0]["fields"]["child_name"].is_string());
    assert!(certificates[3]["fields"]["residence_address"].is_string());
    // Signed as one document.
    let (_, keys) = hub.get("/v1/hub/keys", "").await;
    let keys: Vec<(String, [u8; 32])> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let key: [u8; 32] = hex::decode(k["public_key"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            (datarun_domain::signed::hub_key_id(&key), key)
        })
        .collect();
    datarun_domain::signed::verify_document(&response, &keys).unwrap();
    // Audited as four accesses: the child's two in the child's log, the mother's two
    // in hers. One use of the consent.
    let auditor = env.auditor_token().await;
    for (person, expected) in [
        (&child, [bundle[0], bundle[1]]),
        (&mother, [bundle[2], bundle[3]]),
    ] {
        let (_, trail) = hub
            .get(
                &format!("/v1/audit/events?kind=lookup&subject={person}"),
                &auditor,
            )
            .await;
        let record_types: Vec<&str> = trail["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["outcome"], "allowed", "{e}");
                e["detail"]["record_type"].as_str().unwrap()
            })
            .collect();
        assert_eq!(record_types, expected, "{trail}");
    }
    let (_, own_log) = hub.get("/v1/me/access-log", &mother_token).await;
    let about: Vec<&str> = own_log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "lookup")
        .map(|e| e["about"].as_str().unwrap())
        .collect();
    assert_eq!(about, vec!["self", "self", "child", "child"], "{own_log}");
    let (status, body) = hub.post("/v1/lookups", &caseworker, ask).await;
    assert_eq!(refusal(status, &body), (403, "consent_exhausted".into()));
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_returns_the_school_enrolment_records_sqlite() {
    a_bundle_returns_the_school_enrolment_records(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_returns_the_school_enrolment_records_postgres() {
    a_bundle_returns_the_school_enrolment_records(Db::Postgres).await;
}

/// 授权代理、亲友代办: an elderly citizen registers a relative as delegate; the relative
/// grants within the delegation's scope and is refused outside it or once it is revoked,
/// every refusal audited in the principal's log. A minor's guardian named only by the
/// household register (no birth certificate stored) is recognised; an adult stranger is not.
async fn delegates_grant_within_scope(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let population = datarun_connector::population::generate(120, 5);
    population.write(&env.dir).unwrap();
    let households = population
        .files
        .iter()
        .find(|f| f.record_type == "public_security.household_register")
        .unwrap();
    let folder = crate::harness::repo_root()
        .join("connectors")
        .join("public_security.household_register");
    let (code, out) = env
        .cli(&[
            "connector",
            "run",
            folder.to_str().unwrap(),
            "--source",
            env.dir.join(households.path).to_str().unwrap(),
            "--state-dir",
            env.dir.join("state").to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let total = households.rows.len() as i64;
    assert_eq!(hub.wait_for_certificates(total).await, total);

    let elder = "440104194005060012";
    let relative = "440104197001010011";
    let stranger = "440106199001012449";
    let elder_token = env.citizen_token(elder).await;
    let relative_token = env.citizen_token(relative).await;
    let stranger_token = env.citizen_token(stranger).await;
    let (status, delegation) = hub
        .post(
            "/v1/delegations",
            &elder_token,
            json!({
                "delegate": relative,
                "relation": "relative",
                "record_types": ["public_security.resident_id_card"],
                "purposes": ["medical_insurance_enrolment"],
                "expires_in_days": 30,
            }),
        )
        .await;
    assert_eq!(status, 201, "{delegation}");
    let grant = |record_type: &str, purpose: &str| {
        json!({
            "subject": elder,
            "requester_department": "human_resources",
            "record_types": [record_type],
            "purpose": purpose,
        })
    };
    let id_card = "public_security.resident_id_card";
    // Within scope: accepted, and the consent says who granted it and under what.
    let (status, consent) = hub
        .post(
            "/v1/consents",
            &relative_token,
            grant(id_card, "medical_insurance_enrolment"),
        )
        .await;
    assert_eq!(status, 201, "{consent}");
    assert_eq!(consent["subject"], elder);
    assert_eq!(consent["granted_by"], relative);
    assert_eq!(consent["delegation_id"], delegation["delegation_id"]);
    assert_eq!(consent["granted_by_guardian"], false);
    // Outside it: another purpose, another record type.
    for (record_type, purpose) in [
        (id_card, "social_insurance_enrolment"),
        (
            "public_security.household_register",
            "medical_insurance_enrolment",
        ),
    ] {
        let (status, body) = hub
            .post("/v1/consents", &relative_token, grant(record_type, purpose))
            .await;
        assert_eq!(
            refusal(status, &body),
            (403, "delegate_out_of_scope".into()),
            "{record_type} {purpose}"
        );
    }
    // No delegation at all.
    let (status, _) = hub
        .post(
            "/v1/consents",
            &stranger_token,
            grant(id_card, "medical_insurance_enrolment"),
        )
        .await;
    assert_eq!(status, 403);
    // A delegate previews a department's request only within the delegation's scope:
    // nothing of the principal's beyond it.
    let caseworker = env.caseworker_token("human_resources").await;
    let ask = |record_type: &str, purpose: &str| json!({ "subject": elder, "record_types": [record_type], "purpose": purpose });
    let (status, inside) = hub
        .post(
            "/v1/consent-requests",
            &caseworker,
            ask(id_card, "medical_insurance_enrolment"),
        )
        .await;
    assert_eq!(status, 201, "{inside}");
    let (status, outside) = hub
        .post(
            "/v1/consent-requests",
            &caseworker,
            ask("tax.tax_payment_certificate", "housing_loan_assessment"),
        )
        .await;
    assert_eq!(status, 201, "{outside}");
    let preview = |request: &Value| {
        format!(
            "/v1/consent-requests/{}/preview",
            request["request_id"].as_str().unwrap()
        )
    };
    assert_eq!(hub.get(&preview(&inside), &relative_token).await.0, 200);
    assert_eq!(hub.get(&preview(&outside), &relative_token).await.0, 404);
    let (_, listed) = hub.get("/v1/consent-requests", &relative_token).await;
    let listed: Vec<&Value> = listed["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["request_id"])
        .collect();
    assert_eq!(
        listed,
        vec![&inside["request_id"]],
        "only what the delegate may decide"
    );
    // The principal revokes it: the next grant is refused.
    let id = delegation["delegation_id"].as_str().unwrap();
    let (status, revoked) = hub
        .post(
            &format!("/v1/delegations/{id}/revoke"),
            &elder_token,
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    let (status, body) = hub
        .post(
            "/v1/consents",
            &relative_token,
            grant(id_card, "medical_insurance_enrolment"),
        )
        .await;
    assert_eq!(refusal(status, &body), (403, "delegation_revoked".into()));
    let (status, body) = hub
        .post(
            &format!("/v1/delegations/{id}/revoke"),
            &stranger_token,
            json!({}),
        )
        .await;
    assert_eq!(refusal(status, &body), (404, "delegation_not_found".into()));
    // The elder's access log shows it all, refused grants included.
    let (_, log) = hub.get("/v1/me/access-log", &elder_token).await;
    let seen: Vec<(String, String, Option<String>)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
                e["reason"].as_str().map(Into::into),
            )
        })
        .collect();
    let step = |kind: &str, outcome: &str, reason: Option<&str>| {
        (kind.to_owned(), outcome.to_owned(), reason.map(Into::into))
    };
    assert_eq!(
        seen,
        vec![
            step("delegation_registered", "recorded", None),
            step("consent_granted", "recorded", None),
            step("consent_granted", "refused", Some("delegate_out_of_scope")),
            step("consent_granted", "refused", Some("delegate_out_of_scope")),
            step(
                "consent_granted",
                "refused",
                Some("not_subject_or_guardian")
            ),
            step("consent_requested", "recorded", None),
            step("consent_requested", "recorded", None),
            step("consent_request_previewed", "recorded", None),
            step("delegation_revoked", "recorded", None),
            step("consent_granted", "refused", Some("delegation_revoked")),
        ],
        "{log}"
    );

    // A minor's guardian from the household register alone.
    let row = households
        .rows
        .iter()
        .find(|r| !r["JHRSFHM"].is_empty())
        .expect("a minor in the sample households");
    let (minor, guardian) = (row["GMSFHM"].clone(), row["JHRSFHM"].clone());
    let guardian_token = env.citizen_token(&guardian).await;
    let minor_grant = json!({
        "subject": minor,
        "requester_department": "education",
        "record_types": ["public_security.household_register"],
        "purpose": "school_enrolment",
    });
    let (status, body) = hub
        .post("/v1/consents", &guardian_token, minor_grant.clone())
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["granted_by_guardian"], true);
    let (status, _) = hub.post("/v1/consents", &stranger_token, minor_grant).await;
    assert_eq!(status, 403);
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegates_grant_within_scope_sqlite() {
    delegates_grant_within_scope(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegates_grant_within_scope_postgres() {
    delegates_grant_within_scope(Db::Postgres).await;
}

/// 秒批: a citizen asks for a tax-paid proof and a social-insurance enrolment proof and
/// gets each at once, signed, with its own id, stating only what the stored records
/// say; a caseworker shown the id reads it back (audited); a citizen with nothing to
/// prove is told so, and that is audited too.
async fn instant_proofs_come_from_stored_data(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let population = datarun_connector::population::generate(200, 31);
    population.write(&env.dir).unwrap();
    let mut total = 0;
    for record_type in [
        "tax.tax_payment_certificate",
        "human_resources.social_insurance_enrolment",
    ] {
        let file = population
            .files
            .iter()
            .find(|f| f.record_type == record_type)
            .unwrap();
        let folder = crate::harness::repo_root()
            .join("connectors")
            .join(record_type);
        let (code, out) = env
            .cli(&[
                "connector",
                "run",
                folder.to_str().unwrap(),
                "--source",
                env.dir.join(file.path).to_str().unwrap(),
                "--state-dir",
                env.dir.join("state").to_str().unwrap(),
            ])
            .await;
        assert_eq!(code, 0, "{out}");
        total += file.rows.len() as i64;
    }
    assert_eq!(hub.wait_for_certificates(total).await, total);
    let rows = |record_type: &str| {
        &population
            .files
            .iter()
            .find(|f| f.record_type == record_type)
            .unwrap()
            .rows
    };
    // A citizen taxpayer who is also enrolled in social insurance.
    let taxpayer = rows("tax.tax_payment_certificate")
        .iter()
        .map(|r| r["nsrsbh"].clone())
        .find(|id| {
            id.len() == 18
                && rows("human_resources.social_insurance_enrolment")
                    .iter()
                    .any(|r| &r["aac002"] == id)
        })
        .expect("a citizen who pays tax and is enrolled");
    let paid: i64 = rows("tax.tax_payment_certificate")
        .iter()
        .filter(|r| r["nsrsbh"] == taxpayer)
        .map(|r| r["sjse_fen"].parse::<i64>().unwrap())
        .sum();
    let citizen = env.citizen_token(&taxpayer).await;
    let (status, proof) = hub
        .post(
            "/v1/proofs",
            &citizen,
            json!({ "kind": "tax_paid", "from": "2025-01-01", "to": "2025-12-31" }),
        )
        .await;
    assert_eq!(status, 201, "{proof}");
    assert_eq!(proof["facts"]["total_paid_fen"], paid, "{proof}");
    assert_eq!(proof["subject"], taxpayer);
    assert!(proof["proof_id"].as_str().unwrap().starts_with("proof_"));
    assert!(proof["hub_signature"]["value"].is_string());
    let (status, enrolment) = hub
        .post(
            "/v1/proofs",
            &citizen,
            json!({ "kind": "social_insurance_enrolment" }),
        )
        .await;
    assert_eq!(status, 201, "{enrolment}");
    let first = &enrolment["facts"]["enrolments"][0];
    assert!(first["employer_name"].is_string(), "{enrolment}");
    assert!(
        first.get("monthly_base_fen").is_none(),
        "the contribution base is never stated"
    );
    // Nothing paid in 2020: nothing to prove.
    let (status, body) = hub
        .post(
            "/v1/proofs",
            &citizen,
            json!({ "kind": "tax_paid", "from": "2020-01-01", "to": "2020-12-31" }),
        )
        .await;
    assert_eq!(refusal(status, &body), (422, "nothing_to_prove".into()));
    // A caseworker shown the id reads the same proof back, signed; a stranger cannot.
    let caseworker = env.caseworker_token("human_resources").await;
    let path = format!("/v1/proofs/{}", proof["proof_id"].as_str().unwrap());
    let (status, read) = hub.get(&path, &caseworker).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["facts"], proof["facts"]);
    assert_eq!(
        read["hub_signature"], proof["hub_signature"],
        "deterministic Ed25519"
    );
    let stranger = env.citizen_token("440106199001012449").await;
    let (status, _) = hub.get(&path, &stranger).await;
    assert_eq!(status, 404);
    // All of it in the citizen's own access log.
    let (_, log) = hub.get("/v1/me/access-log", &citizen).await;
    let seen: Vec<(&str, &str)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| (e["kind"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("proof_issued", "recorded"),
            ("proof_issued", "recorded"),
            ("proof_issued", "refused"),
            ("proof_read", "allowed"),
        ],
        "{log}"
    );
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_proofs_come_from_stored_data_sqlite() {
    instant_proofs_come_from_stored_data(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_proofs_come_from_stored_data_postgres() {
    instant_proofs_come_from_stored_data(Db::Postgres).await;
}

/// Quotas per caseworker answer 429 with Retry-After, audited once per dry spell; a
/// caseworker looking up many distinct people in a short time raises one
/// `harvesting_suspected` alarm.
async fn quotas_and_the_harvesting_alarm(db: Db) {
    let mut env = TestEnv::new(db, Broker::Mock).await;
    env.config.lookups.caseworker_per_minute = 5;
    env.config.lookups.harvest_distinct_subjects = 3;
    let hub = env.start().await;
    let caseworker = env.caseworker_token("public_security").await;
    let ask = |subject: &str| {
        json!({
            "consent_id": format!("consent_{}", "0".repeat(32)),
            "subject": subject,
            "record_type": BIRTH,
            "purpose": "household_registration",
        })
    };
    let subjects = [
        "440104198503125841",
        "440106199001012449",
        "440111197707153974",
        "440104194005060012",
        "440104197001010011",
    ];
    for subject in subjects {
        let (status, body) = hub.post("/v1/lookups", &caseworker, ask(subject)).await;
        assert_eq!(refusal(status, &body), (403, "consent_not_found".into()));
    }
    for _ in 0..3 {
        let response = hub
            .http
            .post(format!("{}/v1/lookups", hub.base))
            .bearer_auth(&caseworker)
            .json(&ask(subjects[0]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 429);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=12).contains(&retry_after), "{retry_after}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "quota_exceeded");
    }
    // Another caseworker is not held up.
    let other = env.caseworker_token("public_security").await;
    let (status, _) = hub.post("/v1/lookups", &other, ask(subjects[0])).await;
    assert_eq!(status, 403);
    let auditor = env.auditor_token().await;
    let (_, me) = hub.get("/v1/whoami", &caseworker).await;
    let (_, quota) = hub
        .get("/v1/audit/events?kind=quota_exceeded", &auditor)
        .await;
    let events = quota["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "once per dry spell: {quota}");
    assert_eq!(events[0]["actor"], me["actor_id"]);
    assert_eq!(events[0]["reason"], "caseworker_quota");
    let (_, alarms) = hub
        .get("/v1/audit/events?kind=harvesting_suspected", &auditor)
        .await;
    let alarms = alarms["events"].as_array().unwrap();
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0]["actor"], me["actor_id"]);
    assert_eq!(alarms[0]["detail"]["distinct_subjects"], 4);
    assert!(
        !alarms[0].to_string().contains(subjects[0]),
        "no ID number in the alarm"
    );
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_the_harvesting_alarm_sqlite() {
    quotas_and_the_harvesting_alarm(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_the_harvesting_alarm_postgres() {
    quotas_and_the_harvesting_alarm(Db::Postgres).await;
}

/// A department requests consent; the parent previews exactly what would be released,
/// approves (the consent it grants releases the same fields) or declines; a request is
/// decided once; a stranger sees none of it.
async fn request_preview_approve(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let f = family(&env, &hub).await;
    let ask = json!({
        "subject": f.child,
        "record_types": [BIRTH],
        "purpose": "household_registration",
        "note": "新生儿入户办理",
    });
    let (status, request) = hub
        .post("/v1/consent-requests", &f.caseworker, ask.clone())
        .await;
    assert_eq!(status, 201, "{request}");
    assert_eq!(request["status"], "PENDING");
    let id = request["request_id"].as_str().unwrap();
    // The parent sees it among the requests about their child.
    let (_, listed) = hub.get("/v1/consent-requests", &f.mother).await;
    assert!(
        listed["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["request_id"] == id),
        "{listed}"
    );
    let (status, preview) = hub
        .get(&format!("/v1/consent-requests/{id}/preview"), &f.mother)
        .await;
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["purpose"]["title_zh"], "新生儿入户");
    assert!(preview["purpose"]["legal_basis"]
        .as_str()
        .unwrap()
        .contains("户口登记条例"));
    assert_eq!(
        preview["request"]["requester_department"],
        "public_security"
    );
    let previewed = &preview["certificates"][0]["fields"];
    assert!(previewed["child_name"].is_string(), "{preview}");
    assert!(previewed.get("mother_id_number").is_none(), "{preview}");
    let stranger = env.citizen_token("440106199001012449").await;
    let (status, _) = hub
        .get(&format!("/v1/consent-requests/{id}/preview"), &stranger)
        .await;
    assert_eq!(status, 404);

    let (status, approved) = hub
        .post(
            &format!("/v1/consent-requests/{id}/approve"),
            &f.mother,
            json!({}),
        )
        .await;
    assert_eq!(status, 201, "{approved}");
    assert_eq!(approved["request"]["status"], "APPROVED");
    let consent = &approved["consent"];
    assert_eq!(approved["request"]["consent_id"], consent["consent_id"]);
    let (status, body) = hub
        .post(
            &format!("/v1/consent-requests/{id}/approve"),
            &f.mother,
            json!({}),
        )
        .await;
    assert_eq!(refusal(status, &body), (409, "request_not_pending".into()));
    // The department sees it approved, and its lookup releases what the preview showed.
    let (_, seen) = hub
        .get(&format!("/v1/consent-requests/{id}"), &f.caseworker)
        .await;
    assert_eq!(seen["status"], "APPROVED");
    let (status, looked) = hub
        .post(
            "/v1/lookups",
            &f.caseworker,
            lookup(consent, &f.child, json!({})),
        )
        .await;
    assert_eq!(status, 200, "{looked}");
    assert_eq!(&looked["certificates"][0]["fields"], previewed);

    // Declined: no consent.
    let (_, second) = hub.post("/v1/consent-requests", &f.caseworker, ask).await;
    let id = second["request_id"].as_str().unwrap();
    let (status, declined) = hub
        .post(
            &format!("/v1/consent-requests/{id}/decline"),
            &f.mother,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, declined["request"]["status"].as_str()),
        (200, Some("DECLINED")),
        "{declined}"
    );
    let (_, consents) = hub.get("/v1/consents", &f.mother).await;
    assert_eq!(
        consents["consents"].as_array().unwrap().len(),
        1,
        "{consents}"
    );
    // A purpose that does not need the record type cannot even be asked for.
    let (status, body) = hub
        .post(
            "/v1/consent-requests",
            &f.caseworker,
            json!({ "subject": f.child, "record_types": ["tax.tax_payment_certificate"], "purpose": "household_registration" }),
        )
        .await;
    assert_eq!(refusal(status, &body), (403, "purpose_not_allowed".into()));
    let auditor = env.auditor_token().await;
    let (_, trail) = hub
        .get(&format!("/v1/audit/events?subject={}", f.child), &auditor)
        .await;
    let kinds: Vec<&str> = trail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "consent_requested",
            "consent_request_previewed",
            "consent_granted",
            "lookup",
            "consent_requested",
            "consent_request_declined",
        ],
        "{trail}"
    );
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_preview_approve_sqlite() {
    request_preview_approve(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_preview_approve_postgres() {
    request_preview_approve(Db::Postgres).await;
}
