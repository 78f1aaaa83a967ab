//! The batch store's rules, on SQLite and PostgreSQL: records in one batch see the
//! records before them, and the newest version of a certificate becomes current.

use crate::harness::{Broker, Db, TestEnv};
use datarun_store::{StoreOutcome, StoredRecord};

fn record(
    id: &str,
    certificate: &str,
    department: &str,
    issued_at: i64,
    digest: &str,
) -> StoredRecord {
    let mut fields = serde_json::Map::new();
    fields.insert("version".into(), serde_json::json!(id));
    StoredRecord {
        record_id: id.into(),
        certificate_id: certificate.into(),
        record_type: "health.birth_certificate".into(),
        schema_version: 1,
        department: department.into(),
        subject: "440303201506303948".into(),
        issued_at,
        signing_key_id: "health-2026".into(),
        content_digest: digest.into(),
        signature_hex: "00".into(),
        fields,
        guardians: vec!["440104198503125841".into()],
    }
}

async fn batch_rules(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let store = datarun_cli::app::open_store(&env.config).await.unwrap();
    let batch = vec![
        record("a1", "CERT-A", "health", 100, "d-a1"),
        record("a1", "CERT-A", "health", 100, "d-a1"),
        record("a0", "CERT-A", "health", 50, "d-a0"),
        record("x1", "CERT-A", "tax", 500, "d-x1"),
        record("a1", "CERT-A", "health", 300, "d-other"),
        record("a2", "CERT-A", "health", 200, "d-a2"),
        record("b1", "CERT-B", "health", 100, "d-b1"),
    ];
    let outcomes = store.store_records(&batch).await.unwrap();
    use StoreOutcome::*;
    assert_eq!(
        outcomes,
        vec![
            Stored,
            Duplicate,
            Stale,
            ForeignCertificate,
            Replayed,
            Stored,
            Stored
        ]
    );
    // History keeps both accepted versions of A; the current version is the newest.
    assert_eq!(store.record_counts().await.unwrap(), (3, 2));
    // A second delivery of the whole batch changes nothing.
    let again = store.store_records(&batch).await.unwrap();
    assert_eq!(
        again,
        vec![
            Duplicate,
            Duplicate,
            Stale,
            ForeignCertificate,
            Replayed,
            Duplicate,
            Duplicate
        ]
    );
    assert_eq!(store.record_counts().await.unwrap(), (3, 2));
    assert!(store
        .is_guardian_of("440104198503125841", "440303201506303948")
        .await
        .unwrap());
    assert_eq!(
        store.wards_of("440104198503125841").await.unwrap(),
        vec!["440303201506303948".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rules_sqlite() {
    batch_rules(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rules_postgres() {
    batch_rules(Db::Postgres).await;
}
