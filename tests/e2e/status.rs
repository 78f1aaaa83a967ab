//! Status changes are records: a department revokes (吊销) or re-issues (换发) a
//! certificate by publishing a new version with its status; the store follows and a
//! lookup reports each certificate's status.

use crate::harness::{Broker, Db, TestEnv};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The health connector with the department's status columns mapped, reading JSON lines.
fn status_connector(env: &TestEnv) -> PathBuf {
    let health = std::fs::read_to_string(
        env.config
            .hub
            .connectors_dir
            .join("health.birth_certificate/connector.toml"),
    )
    .unwrap();
    let mut text = String::new();
    let mut in_source = false;
    for line in health.lines() {
        if let Some(relative) = line.strip_prefix("schema = ") {
            let schema = env
                .config
                .hub
                .connectors_dir
                .join("health.birth_certificate")
                .join(relative.trim_matches('"'));
            text.push_str(&format!("schema = \"{}\"\n", schema.display()));
        } else if line == "[source]" {
            in_source = true;
            text.push_str("[source]\nkind = \"jsonl\"\npath = \"births.jsonl\"\n");
        } else if in_source && !line.starts_with('[') {
        } else {
            in_source = false;
            text.push_str(line);
            text.push('\n');
            if line == "[mapping.fields]" {
                text.push_str(
                    "status = \"cert_status\"\nstatus_reason = \"status_note\"\nsuperseded_by = \"replaced_by\"\n",
                );
            }
        }
    }
    text.push_str(
        "\n[mapping.values.status]\n\"有效\" = \"VALID\"\n\"吊销\" = \"REVOKED\"\n\"注销\" = \"CANCELLED\"\n\"已换发\" = \"SUPERSEDED\"\n",
    );
    let folder = env.dir.join("connectors/health.birth_status");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("connector.toml"), text).unwrap();
    folder
}

/// Publishes `rows` through the status connector (a fresh source file each time).
async fn publish(
    env: &TestEnv,
    folder: &std::path::Path,
    name: &str,
    rows: &[BTreeMap<String, String>],
) {
    let source = env.dir.join(format!("{name}.jsonl"));
    let lines: Vec<String> = rows.iter().map(|row| json!(row).to_string()).collect();
    std::fs::write(&source, lines.join("\n")).unwrap();
    let (code, out) = env
        .cli(&[
            "connector",
            "run",
            folder.to_str().unwrap(),
            "--source",
            source.to_str().unwrap(),
            "--state-dir",
            env.dir.join(format!("state-{name}")).to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("published {},", rows.len())), "{out}");
}

fn with_status(
    mut row: BTreeMap<String, String>,
    status: &str,
    note: &str,
    replaced_by: &str,
    updated_at: &str,
) -> BTreeMap<String, String> {
    row.insert("cert_status".into(), status.into());
    row.insert("status_note".into(), note.into());
    row.insert("replaced_by".into(), replaced_by.into());
    row.insert("updated_at".into(), updated_at.into());
    row
}

async fn status_changes_are_records(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let folder = status_connector(&env);
    let rows = datarun_connector::sample::birth_certificates(3, 91);
    let issued: Vec<_> = rows[..2]
        .iter()
        .map(|row| with_status(row.clone(), "有效", "", "", "2026-03-01 09:00:00"))
        .collect();
    publish(&env, &folder, "issued", &issued).await;
    assert_eq!(hub.wait_for_certificates(2).await, 2);

    let caseworker = env.caseworker_token("public_security").await;
    let lookup = |row: &BTreeMap<String, String>| {
        let row = row.clone();
        let env = &env;
        let hub = &hub;
        let caseworker = caseworker.clone();
        async move {
            let mother = env.citizen_token(&row["mother_id_no"]).await;
            let (status, consent) = hub
                .post(
                    "/v1/consents",
                    &mother,
                    json!({
                        "subject": row["baby_id_no"],
                        "requester_department": "public_security",
                        "record_types": ["health.birth_certificate"],
                        "purpose": "household_registration",
                        "max_uses": 1
                    }),
                )
                .await;
            assert_eq!(status, 201, "{consent}");
            let (status, body) = hub
                .post(
                    "/v1/lookups",
                    &caseworker,
                    json!({
                        "consent_id": consent["consent_id"],
                        "subject": row["baby_id_no"],
                        "record_type": "health.birth_certificate",
                        "purpose": "household_registration"
                    }),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
            for certificate in body["certificates"].as_array().unwrap() {
                by_id.insert(
                    certificate["certificate_id"].as_str().unwrap().to_owned(),
                    certificate.clone(),
                );
            }
            by_id
        }
    };
    let before = lookup(&rows[0]).await;
    assert_eq!(before[&rows[0]["cert_no"]]["status"], "VALID");

    // 吊销: the first certificate is revoked. 换发: the second is re-issued under a new
    // certificate number, and the old one names its replacement.
    let replacement_id = rows[2]["cert_no"].clone();
    let mut replacement = rows[1].clone();
    replacement.insert("cert_no".into(), replacement_id.clone());
    let changes = vec![
        with_status(
            rows[0].clone(),
            "吊销",
            "出生医学证明信息有误",
            "",
            "2026-06-01 10:00:00",
        ),
        with_status(replacement, "有效", "", "", "2026-06-01 10:00:00"),
        with_status(
            rows[1].clone(),
            "已换发",
            "",
            &replacement_id,
            "2026-06-01 10:00:00",
        ),
    ];
    publish(&env, &folder, "changes", &changes).await;
    assert_eq!(hub.wait_for_certificates(3).await, 3);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while hub.running.store.record_counts().await.unwrap().0 < 5 {
        if tokio::time::Instant::now() > deadline {
            let (_, rejects) = env.cli(&["rejects", "list", "--json"]).await;
            panic!(
                "the status changes were not stored: {:?}, rejected: {rejects}",
                hub.running.store.record_counts().await.unwrap()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let revoked = lookup(&rows[0]).await;
    let certificate = &revoked[&rows[0]["cert_no"]];
    assert_eq!(certificate["status"], "REVOKED", "{certificate}");
    assert_eq!(
        certificate["fields"]["status_reason"],
        "出生医学证明信息有误"
    );
    let reissued = lookup(&rows[1]).await;
    assert_eq!(reissued.len(), 2, "{reissued:?}");
    let old = &reissued[&rows[1]["cert_no"]];
    assert_eq!(old["status"], "SUPERSEDED", "{old}");
    assert_eq!(old["superseded_by"], replacement_id.as_str());
    assert_eq!(reissued[&replacement_id]["status"], "VALID");

    // A re-issue that does not say by what is refused, and the certificate keeps its
    // status.
    let unnamed = vec![with_status(
        rows[0].clone(),
        "已换发",
        "",
        "",
        "2026-07-01 10:00:00",
    )];
    publish(&env, &folder, "unnamed", &unnamed).await;
    assert_eq!(hub.wait_for_rejections(1).await, 1);
    let letters = crate::harness::dead_letters(&env.kafka(), 1).await;
    assert_eq!(letters[0].0, "schema_invalid", "{letters:?}");
    let (current, _) = hub
        .running
        .store
        .current_version(&rows[0]["cert_no"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        current,
        revoked[&rows[0]["cert_no"]]["record_id"].as_str().unwrap()
    );
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_are_records_sqlite() {
    status_changes_are_records(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_are_records_postgres() {
    status_changes_are_records(Db::Postgres).await;
}
