//! Key rotation without downtime: `datarun key rotate` during a running backfill
//! switches the connector to the new key at its next batch, nothing is lost or stored
//! twice, the rotation is audited, and after the overlap the old key is refused.

use crate::harness::{Broker, Db, TestEnv};
use datarun_connector::{Connector, RunOptions};
use std::time::Duration;
use tokio::time::Instant;

/// Rows acknowledged so far, from the connector's checkpoint.
fn acknowledged(state_dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(state_dir.join("health.birth_certificate.checkpoint.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|value| value["rows_acknowledged"].as_u64())
        .unwrap_or(0)
}

async fn key_rotation_during_a_backfill(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let store = hub.running.store.clone();
    let total = 3_000;
    let rows = datarun_connector::sample::birth_certificates(total, 83);
    let source = env.dir.join("backfill.csv");
    datarun_connector::sample::write_csv(&source, &rows).unwrap();
    let state_dir = env.dir.join("connector-state");
    let key_dir = env.config.hub.data_dir.join("keys");
    let connector: Connector = env.health_connector().await;
    let kafka = env.kafka();
    let options = RunOptions {
        signing_key_file: env.health_key_file(),
        key_dir: Some(key_dir.clone()),
        state_dir: state_dir.clone(),
        source_override: Some(source),
        batch_size: 50,
        progress: None,
        once: true,
    };
    let backfill = tokio::spawn(async move { connector.run(&kafka, &options).await });

    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged(&state_dir) < 500 {
        assert!(Instant::now() < deadline, "the backfill did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let overlap = Duration::from_secs(20);
    let rotated_at = Instant::now();
    let (code, out) = env
        .cli(&["key", "rotate", "health", "--overlap", "20s"])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("records under health-2026 are taken for 20s more"),
        "{out}"
    );
    let report = backfill.await.unwrap().unwrap();
    assert!(
        acknowledged(&state_dir) == total as u64 && report.published == total as u64,
        "the backfill ran to the end: {report:?}"
    );

    assert_eq!(hub.wait_for_certificates(total as i64).await, total as i64);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.record_counts().await.unwrap(),
        (total as i64, total as i64),
        "nothing lost, nothing twice"
    );
    assert_eq!(
        store.rejection_counts().await.unwrap().0,
        0,
        "nothing refused"
    );
    let per_key = store.records_per_key().await.unwrap();
    let new_key = per_key
        .keys()
        .find(|key| key.as_str() != "health-2026")
        .cloned()
        .unwrap_or_else(|| panic!("no record under the new key: {per_key:?}"));
    assert!(new_key.starts_with("health-"), "{new_key}");
    assert!(
        per_key["health-2026"] >= 500 && per_key[&new_key] > 0,
        "records under both keys: {per_key:?}"
    );
    assert_eq!(per_key.values().sum::<i64>(), total as i64);

    // The rotation is audited, naming the key it ended.
    let rotations = store
        .audit_events(&datarun_store::AuditFilter {
            kind: Some("key_rotated".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rotations.len(), 1);
    let detail: serde_json::Value = serde_json::from_str(&rotations[0].detail).unwrap();
    assert_eq!(detail["key_id"], new_key.as_str());
    assert_eq!(detail["ended_keys"], serde_json::json!(["health-2026"]));
    assert_eq!(rotations[0].department.as_deref(), Some("health"));

    // After the overlap a record under the old key is refused and dead-lettered.
    tokio::time::sleep(overlap.saturating_sub(rotated_at.elapsed()) + Duration::from_secs(1)).await;
    let old = env.health_connector().await;
    let old_key =
        datarun_domain::keys::parse_private_key(&std::fs::read(env.health_key_file()).unwrap())
            .unwrap();
    let late_row = datarun_connector::sample::birth_certificates(1, 84).remove(0);
    let late = old.sign_row(&late_row, &old_key).unwrap();
    datarun_kafka::RecordPublisher::new(&env.kafka())
        .unwrap()
        .publish(&late)
        .await
        .unwrap();
    assert_eq!(hub.wait_for_rejections(1).await, 1);
    let letters = crate::harness::dead_letters(&env.kafka(), 1).await;
    assert_eq!(
        letters,
        vec![(
            "key_expired".to_owned(),
            "datarun-key-id".to_owned(),
            late.envelope.record_id.to_string()
        )]
    );
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_during_a_backfill_sqlite() {
    key_rotation_during_a_backfill(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_during_a_backfill_postgres() {
    key_rotation_during_a_backfill(Db::Postgres).await;
}
