//! Bad input: every forged, unauthorised, malformed or replayed record lands in the
//! dead-letter topic with its reason code and field, is audited, and is not stored.

use crate::harness::{dead_letters, repo_root, Broker, Db, TestEnv};
use datarun_connector::Connector;
use datarun_domain::{DepartmentId, KeyId, RecordId, SignedRecord};
use datarun_kafka::RecordPublisher;
use datarun_store::AuditFilter;
use ring::signature::{Ed25519KeyPair, KeyPair};
use std::collections::BTreeSet;

fn resign(
    record: &SignedRecord,
    key: &Ed25519KeyPair,
    change: impl FnOnce(&mut SignedRecord),
) -> SignedRecord {
    let mut changed = record.clone();
    change(&mut changed);
    changed.envelope.clone().sign(changed.payload, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_reason_reaches_the_dead_letter_topic() {
    let env = TestEnv::new(Db::Sqlite, Broker::Mock).await;
    let hub = env.start().await;
    let store = &hub.running.store;
    let connector = Connector::load(&repo_root().join("connectors/health")).unwrap();
    let health_key =
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&std::fs::read(env.health_key_file()).unwrap())
            .unwrap();
    let rows = datarun_connector::sample::birth_certificates(3, 5);
    let first = connector.sign_row(&rows[0], &health_key).unwrap();
    let second = connector.sign_row(&rows[1], &health_key).unwrap();
    let publisher = RecordPublisher::new(&env.kafka()).unwrap();

    // The genuine record is stored; publishing it again is a harmless duplicate.
    publisher.publish(&first).await.unwrap();
    assert_eq!(hub.wait_for_certificates(1).await, 1);
    publisher.publish(&first).await.unwrap();

    // A tax key, registered properly: tax may not publish birth certificates.
    let tax_key = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
    store
        .add_signing_key(
            &DepartmentId::parse("tax").unwrap(),
            &KeyId::parse("tax-2026").unwrap(),
            tax_key.public_key().as_ref(),
            0,
            None,
        )
        .await
        .unwrap();
    // A health key revoked long ago.
    let old_key = Ed25519KeyPair::from_seed_unchecked(&[8; 32]).unwrap();
    let old_key_id = KeyId::parse("health-2019").unwrap();
    store
        .add_signing_key(
            &DepartmentId::parse("health").unwrap(),
            &old_key_id,
            old_key.public_key().as_ref(),
            0,
            None,
        )
        .await
        .unwrap();
    store.revoke_signing_key(&old_key_id, 1_000).await.unwrap();

    let id = |text: &str| RecordId::parse(text).unwrap();
    let mut bad_child = rows[2].clone();
    let original = bad_child["baby_id_no"].clone();
    let wrong_check = if original.ends_with('0') { '1' } else { '0' };
    bad_child.insert(
        "baby_id_no".into(),
        format!("{}{wrong_check}", &original[..17]),
    );
    let bad_identifier = connector.sign_row(&bad_child, &health_key).unwrap();

    let cases: Vec<(&str, SignedRecord)> = vec![
        (
            "unknown_key",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("r-unknown-key");
                r.envelope.signing_key_id = KeyId::parse("nobody-1").unwrap();
            }),
        ),
        ("signature_invalid", {
            let mut forged = resign(&second, &health_key, |r| {
                r.envelope.record_id = id("r-forged")
            });
            forged.payload[10] ^= 0x01;
            forged
        }),
        (
            "publisher_not_allowed",
            resign(&second, &tax_key, |r| {
                r.envelope.record_id = id("r-tax");
                r.envelope.department = DepartmentId::parse("tax").unwrap();
                r.envelope.signing_key_id = KeyId::parse("tax-2026").unwrap();
            }),
        ),
        (
            "key_not_valid",
            resign(&second, &old_key, |r| {
                r.envelope.record_id = id("r-old-key");
                r.envelope.signing_key_id = old_key_id.clone();
            }),
        ),
        (
            "schema_unknown",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("r-v9");
                r.envelope.schema_version = 9;
            }),
        ),
        (
            "schema_invalid",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("r-garbage");
                r.payload = b"this is not avro".to_vec();
            }),
        ),
        (
            "identifier_invalid",
            resign(&bad_identifier, &health_key, |r| {
                r.envelope.record_id = id("r-bad-id")
            }),
        ),
        (
            "subject_mismatch",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("r-mismatch");
                r.envelope.subject = rows[0]["baby_id_no"].clone();
            }),
        ),
        (
            "replayed",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = first.envelope.record_id.clone()
            }),
        ),
        (
            "stale_version",
            resign(&first, &health_key, |r| {
                r.envelope.record_id = id("r-stale");
                r.envelope.issued_at_millis -= 86_400_000;
            }),
        ),
    ];
    for (_, record) in &cases {
        publisher.publish(record).await.unwrap();
    }
    assert_eq!(
        hub.wait_for_rejections(cases.len() as u64).await,
        cases.len() as u64
    );

    let letters = dead_letters(&env.kafka(), cases.len()).await;
    let got: BTreeSet<(String, String)> = letters
        .iter()
        .map(|(reason, _, record_id)| (reason.clone(), record_id.clone()))
        .collect();
    let expected: BTreeSet<(String, String)> = cases
        .iter()
        .map(|(reason, r)| (reason.to_string(), r.envelope.record_id.to_string()))
        .collect();
    assert_eq!(got, expected);
    let identifier = letters
        .iter()
        .find(|(reason, _, _)| reason == "identifier_invalid")
        .unwrap();
    assert_eq!(
        identifier.1, "child_id_number",
        "the field path names the bad field"
    );

    // Nothing but the genuine record was stored, and every rejection was audited.
    assert_eq!(store.record_counts().await.unwrap(), (1, 1));
    assert_eq!(
        hub.running
            .ingest_stats
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let audited = store
        .audit_events(&AuditFilter {
            kind: Some("ingest_rejected".into()),
            limit: 100,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.len(), cases.len());
    hub.running.stop().await;
}

/// A department publishing with a third-party client (Python confluent-kafka) and its own
/// implementation of the signing input: the genuine record is stored; one flipped byte in
/// payload or signature sends the record to the dead-letter topic as `signature_invalid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_client_records_are_verified_byte_for_byte() {
    let env = TestEnv::new(Db::Sqlite, Broker::Tansu).await;
    let hub = env.start().await;
    let seed = [42u8; 32];
    let key = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
    hub.running
        .store
        .add_signing_key(
            &DepartmentId::parse("health").unwrap(),
            &KeyId::parse("health-py").unwrap(),
            key.public_key().as_ref(),
            0,
            None,
        )
        .await
        .unwrap();
    let connector = Connector::load(&repo_root().join("connectors/health")).unwrap();
    let row = datarun_connector::sample::birth_certificates(1, 11).remove(0);
    let template = connector.sign_row(&row, &key).unwrap();
    let job = serde_json::json!({
        "bootstrap": env.kafka().bootstrap_servers,
        "topic": env.kafka().records_topic("health.birth_certificate"),
        "seed_hex": hex::encode(seed),
        "payload_hex": hex::encode(&template.payload),
        "envelope": {
            "record_id": "py-record",
            "department": "health",
            "record_type": "health.birth_certificate",
            "schema_version": 1,
            "subject": template.envelope.subject,
            "issued_at_millis": template.envelope.issued_at_millis,
            "key_id": "health-py",
        },
        "variants": ["payload_flipped", "signature_flipped", "valid"],
    });
    let mut child = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python/publish_signed.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "publisher failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert_eq!(
        hub.wait_for_certificates(1).await,
        1,
        "the genuine record is stored"
    );
    assert_eq!(hub.wait_for_rejections(2).await, 2);
    let letters = dead_letters(&env.kafka(), 2).await;
    let got: BTreeSet<(String, String)> = letters
        .into_iter()
        .map(|(reason, _, id)| (reason, id))
        .collect();
    let expected: BTreeSet<(String, String)> = [
        (
            "signature_invalid".to_owned(),
            "py-record-payload_flipped".to_owned(),
        ),
        (
            "signature_invalid".to_owned(),
            "py-record-signature_flipped".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);
    assert_eq!(hub.running.store.record_counts().await.unwrap(), (1, 1));
    hub.running.stop().await;
}
