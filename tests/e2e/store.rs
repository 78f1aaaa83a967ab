//! The batch store's rules, on SQLite and PostgreSQL: records in one batch see the
//! records before them, the newest version of a certificate becomes current, and a
//! rejection is recorded and audited once however often its batch is retried.

use crate::harness::{Broker, Db, TestEnv};
use datarun_domain::{RejectReason, Rejection};
use datarun_store::{
    AuditFilter, IngestItem, IngestOutcome, MessageSource, RejectedRecord, StoredRecord, Verdict,
};

fn source(offset: i64) -> MessageSource {
    MessageSource {
        topic: "records.health.birth_certificate".into(),
        partition: 0,
        offset,
        message_digest: format!("{offset:064x}"),
    }
}

/// A content digest standing for `label` (distinct labels, distinct digests).
fn digest(label: &str) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest[..label.len()].copy_from_slice(label.as_bytes());
    digest
}

fn record(
    offset: i64,
    id: &str,
    certificate: &str,
    department: &str,
    signed_at: i64,
    digest: &str,
) -> IngestItem {
    let mut fields = serde_json::Map::new();
    fields.insert("version".into(), serde_json::json!(id));
    IngestItem {
        source: source(offset),
        verdict: Verdict::Accept(StoredRecord {
            record_id: id.into(),
            certificate_id: certificate.into(),
            record_type: "health.birth_certificate".into(),
            schema_version: 1,
            department: department.into(),
            subject: "440303201506303948".into(),
            signed_at,
            signing_key_id: "health-2026".into(),
            content_digest: self::digest(digest),
            signature: vec![0; 64],
            fields_json: serde_json::Value::Object(fields).to_string(),
            guardians: vec!["440104198503125841".into()],
            status: "VALID".into(),
            superseded_by: None,
        }),
    }
}

fn rejected(
    offset: i64,
    record_id: &str,
    reason: RejectReason,
    digest: Option<&str>,
) -> IngestItem {
    IngestItem {
        source: source(offset),
        verdict: Verdict::Reject(RejectedRecord {
            rejection: Rejection::at(reason, "datarun-key-id", "refused"),
            record_id: Some(record_id.into()),
            department: Some("health".into()),
            record_type: Some("health.birth_certificate".into()),
            verified: false,
            content_digest: digest.map(self::digest),
        }),
    }
}

fn codes(outcomes: &[IngestOutcome]) -> Vec<&'static str> {
    outcomes
        .iter()
        .map(|outcome| match outcome {
            IngestOutcome::Stored => "stored",
            IngestOutcome::Duplicate => "duplicate",
            IngestOutcome::Rejected { rejection, .. } => rejection.reason.code(),
        })
        .collect()
}

async fn batch_rules(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let store = datarun_cli::app::open_store(&env.config).await.unwrap();
    let batch = vec![
        record(1, "health-a1", "CERT-A", "health", 100, "d-a1"),
        record(2, "health-a1", "CERT-A", "health", 100, "d-a1"),
        record(3, "health-a0", "CERT-A", "health", 50, "d-a0"),
        record(4, "tax-x1", "CERT-A", "tax", 500, "d-x1"),
        record(5, "health-a1", "CERT-A", "health", 300, "d-other"),
        record(6, "health-a2", "CERT-A", "health", 200, "d-a2"),
        record(7, "health-b1", "CERT-B", "health", 100, "d-b1"),
        rejected(8, "health-c1", RejectReason::KeyRevoked, None),
        // Signed by a key revoked since, but the very record stored at offset 1.
        rejected(9, "health-a1", RejectReason::KeyRevoked, Some("d-a1")),
    ];
    let outcomes = store.store_batch(&batch).await.unwrap();
    assert_eq!(
        codes(&outcomes),
        vec![
            "stored",
            "duplicate",
            "stale_version",
            "publisher_not_allowed",
            "replayed",
            "stored",
            "stored",
            "key_revoked",
            "duplicate",
        ]
    );
    // History keeps both accepted versions of A; the current version is the newest.
    assert_eq!(store.record_counts().await.unwrap(), (3, 2));
    let rejections = |n| AuditFilter {
        kind: Some("ingest_rejected".into()),
        limit: n,
        ..AuditFilter::default()
    };
    let audited = store.audit_events(&rejections(100)).await.unwrap();
    assert_eq!(audited.len(), 4, "each rejection is audited once");
    // A retry of the whole batch changes nothing and audits nothing again.
    let again = store.store_batch(&batch).await.unwrap();
    assert_eq!(
        codes(&again),
        vec![
            "duplicate",
            "duplicate",
            "stale_version",
            "publisher_not_allowed",
            "replayed",
            "duplicate",
            "duplicate",
            "key_revoked",
            "duplicate",
        ]
    );
    assert_eq!(store.record_counts().await.unwrap(), (3, 2));
    assert_eq!(store.audit_events(&rejections(100)).await.unwrap().len(), 4);
    assert!(
        again.iter().all(|o| !matches!(
            o,
            IngestOutcome::Rejected {
                dead_lettered: true,
                ..
            }
        )),
        "nothing was marked dead-lettered yet"
    );
    // Once dead-lettered, a retry knows it.
    let revoked = source(8);
    store
        .mark_dead_lettered(&[(&revoked, "intact")])
        .await
        .unwrap();
    let third = store.store_batch(&batch[7..8]).await.unwrap();
    assert!(matches!(
        third[0],
        IngestOutcome::Rejected {
            dead_lettered: true,
            ..
        }
    ));
    // Another message at a reused position is a new message, not the old one.
    let mut reused = rejected(8, "health-c2", RejectReason::SignatureInvalid, None);
    reused.source.message_digest = "a".repeat(64);
    let outcome = store.store_batch(&[reused]).await.unwrap();
    assert_eq!(codes(&outcome), vec!["signature_invalid"]);
    assert_eq!(store.audit_events(&rejections(100)).await.unwrap().len(), 5);
    // An unverified claim is not attributed to the department it names.
    let events = store.audit_events(&rejections(100)).await.unwrap();
    let revoked_event = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("key_revoked"))
        .unwrap();
    assert_eq!(revoked_event.department, None);
    let detail: serde_json::Value = serde_json::from_str(&revoked_event.detail).unwrap();
    assert_eq!(detail["claimed_department"], "health");
    assert_eq!(detail["envelope_verified"], false);
    assert!(detail["unverified_fields"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("record_id")));
    assert!(store.verify_audit_chain().await.unwrap().is_ok());
    assert_eq!(store.dangling_references().await.unwrap(), 0);

    assert!(store
        .is_guardian_of("440104198503125841", "440303201506303948")
        .await
        .unwrap());
    assert_eq!(
        store.wards_of("440104198503125841").await.unwrap(),
        vec!["440303201506303948".to_owned()]
    );
    // New versions naming another guardian replace the guardians: the one the earlier
    // versions named is no longer the subject's guardian, though those versions stay.
    let renamed = |offset, id, certificate, signed_at| {
        let mut item = record(offset, id, certificate, "health", signed_at, id);
        if let Verdict::Accept(record) = &mut item.verdict {
            record.guardians = vec!["440104198001010013".into()];
        }
        item
    };
    let outcomes = store
        .store_batch(&[
            renamed(10, "health-a3", "CERT-A", 600),
            renamed(11, "health-b2", "CERT-B", 400),
        ])
        .await
        .unwrap();
    assert_eq!(codes(&outcomes), vec!["stored", "stored"]);
    assert!(!store
        .is_guardian_of("440104198503125841", "440303201506303948")
        .await
        .unwrap());
    assert!(store
        .wards_of("440104198503125841")
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .is_guardian_of("440104198001010013", "440303201506303948")
        .await
        .unwrap());
    assert_eq!(
        store.wards_of("440104198001010013").await.unwrap(),
        vec!["440303201506303948".to_owned()]
    );
    assert_eq!(store.record_counts().await.unwrap().0, 5);
    assert_eq!(store.dangling_references().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rules_sqlite() {
    batch_rules(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_rules_postgres() {
    batch_rules(Db::Postgres).await;
}

/// Writers storing versions of the same certificates at once, in different orders (two
/// hub instances over one database, or a rebalance): whatever interleaving happens, each
/// certificate's current version is its newest, and no version is lost or stored twice.
async fn concurrent_versions_never_regress(db: Db) {
    const WRITERS: usize = 6;
    const CERTIFICATES: usize = 40;
    let env = TestEnv::new(db, Broker::Mock).await;
    let store = datarun_cli::app::open_store(&env.config).await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut order: Vec<usize> = (0..CERTIFICATES).collect();
            order.rotate_left(writer * 7 % CERTIFICATES);
            if writer % 2 == 1 {
                order.reverse();
            }
            let mut stored = 0;
            for chunk in order.chunks(4) {
                let batch: Vec<IngestItem> = chunk
                    .iter()
                    .map(|&c| {
                        record(
                            (writer * 1000 + c) as i64,
                            &format!("health-c{c}-v{writer}"),
                            &format!("CERT-{c}"),
                            "health",
                            1_000 + writer as i64,
                            &format!("d-{c}-{writer}"),
                        )
                    })
                    .collect();
                for outcome in store.store_batch(&batch).await.unwrap() {
                    match outcome {
                        IngestOutcome::Stored => stored += 1,
                        IngestOutcome::Rejected { rejection, .. } => {
                            assert_eq!(rejection.reason, RejectReason::StaleVersion)
                        }
                        IngestOutcome::Duplicate => panic!("nothing was sent twice"),
                    }
                }
            }
            stored
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await.unwrap();
    }
    for c in 0..CERTIFICATES {
        let newest = WRITERS - 1;
        assert_eq!(
            store.current_version(&format!("CERT-{c}")).await.unwrap(),
            Some((format!("health-c{c}-v{newest}"), 1_000 + newest as i64)),
            "certificate {c} ends at its newest version"
        );
    }
    assert_eq!(
        store.record_counts().await.unwrap(),
        (stored, CERTIFICATES as i64)
    );
    let (rejected, _) = store.rejection_counts().await.unwrap();
    assert_eq!(
        stored + rejected,
        (WRITERS * CERTIFICATES) as i64,
        "every version was stored or refused as stale"
    );
    assert!(store.verify_audit_chain().await.unwrap().is_ok());
    assert_eq!(store.dangling_references().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_versions_never_regress_sqlite() {
    concurrent_versions_never_regress(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_versions_never_regress_postgres() {
    concurrent_versions_never_regress(Db::Postgres).await;
}

/// A running hub copies SQLite's write-ahead log into the database file in the
/// background, without a commit to trigger it: a copy of the database file alone, taken
/// after a checkpoint and without the log, holds every stored record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_checkpoints_copy_the_log_into_the_database_sqlite() {
    let env = TestEnv::new(Db::Sqlite, Broker::Mock).await;
    let store = datarun_cli::app::open_store(&env.config).await.unwrap();
    let batch: Vec<IngestItem> = (0..500)
        .map(|i| {
            record(
                i,
                &format!("health-c{i}"),
                &format!("CERT-C{i}"),
                "health",
                100,
                &format!("d-c{i}"),
            )
        })
        .collect();
    let outcomes = store.store_batch(&batch).await.unwrap();
    assert!(codes(&outcomes).iter().all(|code| *code == "stored"));
    let url = env.config.database_url();
    let path = std::path::PathBuf::from(url.trim_start_matches("sqlite://"));
    let key = env.config.pseudonym_key().unwrap();
    let copy_holds = |copy: std::path::PathBuf| {
        let (path, key) = (path.clone(), key.clone());
        async move {
            std::fs::copy(&path, &copy).unwrap();
            let copied =
                datarun_store::Store::connect(&format!("sqlite://{}", copy.display()), key)
                    .await
                    .unwrap();
            let (records, _) = copied.record_counts().await.unwrap();
            copied.close().await;
            records
        }
    };
    // Below SQLite's own automatic checkpoint: the records are only in the log.
    assert_eq!(copy_holds(env.dir.join("before.db")).await, 0);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let checkpoints = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .run_checkpoints(std::time::Duration::from_millis(20), async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    checkpoints.await.unwrap();
    assert_eq!(copy_holds(env.dir.join("after.db")).await, 500);
}

/// Under back-to-back ingest transactions, SQLite's write-ahead log still starts again
/// from its beginning once a checkpoint pass has copied it: the writer copies what was
/// committed during the pass before its next transaction. On its own the log would
/// only start again when a pass finished between two transactions, which a writer
/// committing back to back (a busy ingest) almost never leaves time for; the log then
/// grew by every transaction, each frame written into new file space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_starts_again_under_back_to_back_writes_sqlite() {
    let env = TestEnv::new(Db::Sqlite, Broker::Mock).await;
    let store = datarun_cli::app::open_store(&env.config).await.unwrap();
    // Made before the writes start, so the writer goes from one transaction to the next
    // at once. Subjects and guardians spread over the keys, as residents' ids do.
    const BATCHES: i64 = 60;
    const PER_BATCH: i64 = 1000;
    let batches: Vec<Vec<IngestItem>> = (0..BATCHES)
        .map(|b| {
            (0..PER_BATCH)
                .map(|i| {
                    let n = b * PER_BATCH + i;
                    let mut item = record(
                        n,
                        &format!("health-w{n}"),
                        &format!("CERT-W{n}"),
                        "health",
                        100,
                        &format!("d-w{n}"),
                    );
                    if let Verdict::Accept(stored) = &mut item.verdict {
                        let spread = |k: i64| {
                            format!("{:018}", (k * 2_654_435_761) % 999_999_999_999_999_989)
                        };
                        stored.subject = spread(n);
                        stored.guardians = vec![spread(n + 7_000_000), spread(n + 9_000_000)];
                    }
                    item
                })
                .collect()
        })
        .collect();
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for batch in &batches {
                let outcomes = store.store_batch(batch).await.unwrap();
                assert!(codes(&outcomes).iter().all(|code| *code == "stored"));
            }
        }
    });
    let mut passes = Vec::new();
    while !writer.is_finished() {
        passes.push(
            store
                .checkpoint()
                .await
                .unwrap()
                .expect("SQLite checkpoints"),
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    writer.await.unwrap();
    let frames: Vec<i64> = passes.iter().map(|pass| pass.log_frames).collect();
    let restarts = frames.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(
        restarts >= 3,
        "the log started again {restarts} times; its length at each pass: {frames:?}"
    );
    let (records, _) = store.record_counts().await.unwrap();
    assert_eq!(records, BATCHES * PER_BATCH);
}
