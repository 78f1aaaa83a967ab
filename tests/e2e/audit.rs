//! Tamper evidence: change or delete one audit row straight in the SQLite file and
//! `datarun audit verify` fails, naming the first bad event.

use crate::harness::{repo_root, Broker, Db, TestEnv};
use serde_json::json;

/// How many events setting up the reference world audits before anything else: one
/// registration per schema file, one key registration per department, one per purpose.
pub fn setup_events() -> usize {
    datarun_cli::setup::schema_files(&repo_root().join("schemas"))
        .unwrap()
        .len()
        + datarun_cli::setup::DEPARTMENTS.len()
        + datarun_cli::setup::read_purposes(&repo_root().join("config").join("purposes.toml"))
            .unwrap()
            .len()
}

/// Three citizens each grant a consent for themselves: three audit events, after the
/// schema registrations `datarun up` audited. Returns the number of events.
async fn env_with_three_events() -> (TestEnv, usize) {
    let env = TestEnv::new(Db::Sqlite, Broker::Mock).await;
    let hub = env.start().await;
    for resident in [
        "440104198503125841",
        "440106199001012449",
        "440111197707153974",
    ] {
        let token = env.citizen_token(resident).await;
        let grant = json!({
            "subject": resident, "requester_department": "human_resources",
            "record_types": ["public_security.resident_id_card"], "purpose": "social_insurance_enrolment"
        });
        let (status, body) = hub.post("/v1/consents", &token, grant).await;
        assert_eq!(status, 201, "{body}");
    }
    hub.running.stop().await;
    let (code, out) = env.cli(&["audit", "verify"]).await;
    // `datarun up`'s schema registrations come first.
    let events = setup_events() + 3;
    assert_eq!(
        (code, out.trim()),
        (0, format!("audit log intact: {events} events").as_str())
    );
    (env, events)
}

fn sqlite(env: &TestEnv, statement: &str) {
    // An outside tool edits the file, as an attacker with disk access would.
    let script = "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit(); c.close()";
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            env.dir.join("datarun.db").to_str().unwrap(),
            statement,
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altering_one_audit_row_is_detected_and_named() {
    let (env, _) = env_with_three_events().await;
    sqlite(
        &env,
        "UPDATE audit_events SET department_id = 'tax' WHERE seq = 2",
    );
    let (code, out) = env.cli(&["audit", "verify"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit event 2"), "{out}");
    assert!(out.contains("altered"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_audit_rows_is_detected() {
    let (env, events) = env_with_three_events().await;
    sqlite(
        &env,
        &format!("DELETE FROM audit_events WHERE seq = {events}"),
    );
    let (code, out) = env.cli(&["audit", "verify"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("events deleted at the end"), "{out}");
    sqlite(&env, "DELETE FROM audit_events WHERE seq = 1");
    let (code, out) = env.cli(&["audit", "verify"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit event 1 is missing"), "{out}");
}
