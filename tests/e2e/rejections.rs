//! Bad input: every forged, unauthorised, malformed or replayed record lands in the
//! dead-letter topic with its reason code and field, is audited, and is not stored.

use crate::harness::{dead_letters, run_python, Broker, Db, TestEnv};
use datarun_domain::envelope::framing;
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
    let connector = env.health_connector().await;
    let health_key =
        datarun_domain::keys::parse_private_key(&std::fs::read(env.health_key_file()).unwrap())
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
            "operator-cli",
            &DepartmentId::parse("tax").unwrap(),
            &KeyId::parse("tax-desk-2026").unwrap(),
            tax_key.public_key().as_ref(),
            0,
            None,
        )
        .await
        .unwrap();
    let id = |text: &str| RecordId::parse(text).unwrap();
    // A health key revoked a minute ago, one that expired, and one not valid until next year.
    let now = datarun_store::now_millis();
    let health = DepartmentId::parse("health").unwrap();
    let mut health_keys = Vec::new();
    for (seed, key_id, not_before, not_after) in [
        (8u8, "health-2019", 0, None),
        (9, "health-2020", 0, Some(now - 1_000)),
        (10, "health-2030", now + 365 * 86_400_000, None),
    ] {
        let key = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let key_id = KeyId::parse(key_id).unwrap();
        store
            .add_signing_key(
                "operator-cli",
                &health,
                &key_id,
                key.public_key().as_ref(),
                not_before,
                not_after,
            )
            .await
            .unwrap();
        health_keys.push((key, key_id));
    }
    store
        .revoke_signing_key("operator-cli", &health_keys[0].1, now - 60_000)
        .await
        .unwrap();
    let signed_by = |index: usize, record_id: &str, signed_at: i64| {
        let (key, key_id) = &health_keys[index];
        resign(&second, key, |r| {
            r.envelope.record_id = id(record_id);
            r.envelope.signing_key_id = key_id.clone();
            r.envelope.signed_at_millis = signed_at;
        })
    };
    const YEAR: i64 = 365 * 86_400_000;

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
                r.envelope.record_id = id("health-unknown-key");
                r.envelope.signing_key_id = KeyId::parse("nobody-1").unwrap();
            }),
        ),
        ("signature_invalid", {
            let mut forged = resign(&second, &health_key, |r| {
                r.envelope.record_id = id("health-forged")
            });
            forged.payload[10] ^= 0x01;
            forged
        }),
        (
            "publisher_not_allowed",
            resign(&second, &tax_key, |r| {
                r.envelope.record_id = id("tax-r1");
                r.envelope.department = DepartmentId::parse("tax").unwrap();
                r.envelope.signing_key_id = KeyId::parse("tax-desk-2026").unwrap();
            }),
        ),
        // Signed today with the revoked key, and the same back-dated to 2013: both refused.
        ("key_revoked", signed_by(0, "health-revoked-now", now)),
        (
            "key_revoked",
            signed_by(0, "health-revoked-backdated", now - 13 * YEAR),
        ),
        (
            "key_expired",
            signed_by(1, "health-expired-backdated", now - 2 * YEAR),
        ),
        ("key_not_yet_valid", signed_by(2, "health-too-early", now)),
        // Ten years ahead: refused, so it cannot block the certificate's corrections.
        (
            "signed_in_future",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("health-future");
                r.envelope.signed_at_millis = now + 10 * YEAR;
            }),
        ),
        (
            "unknown_schema",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("health-unregistered-id");
                let (_, body) = framing::unframe(&r.payload).unwrap();
                r.payload = framing::frame(999_999, body);
            }),
        ),
        (
            "wire_format_invalid",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("health-bare-avro");
                r.payload = framing::unframe(&r.payload).unwrap().1.to_vec();
            }),
        ),
        (
            "schema_invalid",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("health-garbage");
                let (schema_id, _) = framing::unframe(&r.payload).unwrap();
                r.payload = framing::frame(schema_id, b"this is not avro");
            }),
        ),
        (
            "identifier_invalid",
            resign(&bad_identifier, &health_key, |r| {
                r.envelope.record_id = id("health-bad-id")
            }),
        ),
        (
            "subject_mismatch",
            resign(&second, &health_key, |r| {
                r.envelope.record_id = id("health-mismatch");
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
                r.envelope.record_id = id("health-stale");
                r.envelope.signed_at_millis -= 86_400_000;
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
    let undecodable = letters
        .iter()
        .find(|(reason, _, _)| reason == "schema_invalid")
        .unwrap();
    assert_eq!(
        undecodable.1, "certificate_id",
        "a body that does not decode under a registered id names where it breaks"
    );

    // The record signed ten years ahead did not block the certificate: a genuine
    // correction signed now is stored as its newest version.
    let mut correction_row = rows[1].clone();
    correction_row.insert("baby_name".into(), "更正 Corrected".into());
    let correction = connector.sign_row(&correction_row, &health_key).unwrap();
    publisher.publish(&correction).await.unwrap();
    assert_eq!(hub.wait_for_certificates(2).await, 2);

    // Operators see every rejection, without payload values, from the CLI and HTTP.
    let (code, listing) = env.cli(&["rejects", "list", "--json"]).await;
    assert_eq!(code, 0, "{listing}");
    let listed: Vec<serde_json::Value> = listing
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed.len(), cases.len(), "{listing}");
    for entry in &listed {
        assert!(entry["dead_letter_form"].is_string(), "{entry}");
    }
    let (code, revoked) = env
        .cli(&[
            "rejects",
            "list",
            "--reason",
            "key_revoked",
            "--since",
            "1h",
        ])
        .await;
    assert_eq!(code, 0);
    assert!(revoked.contains("2 rejections"), "{revoked}");
    assert!(revoked.contains("health-revoked-backdated"), "{revoked}");
    let operator = env.token(&["--role", "operator", "--name", "ops"]).await;
    let (status, body) = hub
        .get("/v1/operator/rejections?reason=signed_in_future", &operator)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rejections"][0]["record_id"], "health-future");
    assert_eq!(body["rejections"][0]["verified"], true);
    let (status, body) = hub
        .get("/v1/operator/rejections?reason=nonsense", &operator)
        .await;
    assert_eq!(status, 400, "{body}");
    let caseworker = env.caseworker_token("health").await;
    let (status, _) = hub.get("/v1/operator/rejections", &caseworker).await;
    assert_eq!(status, 403);
    // No personal identifier or payload value reaches a rejection message.
    let all_text = format!("{listing}{revoked}");
    for row in &rows {
        for column in [
            "baby_id_no",
            "mother_id_no",
            "father_id_no",
            "birth_date",
            "baby_name",
            "mother_name",
        ] {
            let value = row[column].as_str();
            assert!(
                value.is_empty() || !all_text.contains(value),
                "{column} leaked"
            );
        }
    }

    // Nothing but the genuine records was stored, and every rejection was audited.
    assert_eq!(store.record_counts().await.unwrap(), (2, 2));
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
            "operator-cli",
            &DepartmentId::parse("health").unwrap(),
            &KeyId::parse("health-py").unwrap(),
            key.public_key().as_ref(),
            0,
            None,
        )
        .await
        .unwrap();
    let connector = env.health_connector().await;
    let row = datarun_connector::sample::birth_certificates(1, 11).remove(0);
    let template = connector.sign_row(&row, &key).unwrap();
    let job = serde_json::json!({
        "bootstrap": env.kafka().bootstrap_servers,
        "topic": env.kafka().records_topic("health.birth_certificate"),
        "seed_hex": hex::encode(seed),
        "payload_hex": hex::encode(&template.payload),
        "envelope": {
            "record_id": "health-py-record",
            "department": "health",
            "record_type": "health.birth_certificate",
            "subject": template.envelope.subject,
            "signed_at_millis": template.envelope.signed_at_millis,
            "key_id": "health-py",
        },
        "variants": ["payload_flipped", "signature_flipped", "valid"],
    });
    run_python("publish_signed.py", &job);

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
            "health-py-record-payload_flipped".to_owned(),
        ),
        (
            "signature_invalid".to_owned(),
            "health-py-record-signature_flipped".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);
    assert_eq!(hub.running.store.record_counts().await.unwrap(), (1, 1));
    hub.running.stop().await;
}
