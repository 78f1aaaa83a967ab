//! Hostile input from a real third-party client (Python confluent-kafka): poison shapes
//! that the hub's own publisher would never build, on every partition, each followed by
//! genuine records. No message may stop ingest: every genuine record is stored, every
//! poison message is dead-lettered (digested when it is too large to forward), and keys
//! from `datarun key generate` work in other toolchains.

use crate::harness::{header as header_of_message, run_python, Broker, Db, TestEnv};
use datarun_domain::envelope::header;
use datarun_domain::{DepartmentId, KeyId, RecordId, SignedRecord};
use datarun_kafka::wire;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The envelope headers of `record`, as (name, value) pairs in wire order.
fn envelope_headers(record: &SignedRecord) -> Vec<(String, Vec<u8>)> {
    let e = &record.envelope;
    [
        (header::RECORD_ID, e.record_id.to_string()),
        (header::DEPARTMENT, e.department.to_string()),
        (header::RECORD_TYPE, e.record_type.to_string()),
        (header::SUBJECT, e.subject.clone()),
        (header::SIGNED_AT, e.signed_at_millis.to_string()),
        (header::KEY_ID, e.signing_key_id.to_string()),
        (header::SIGNATURE, hex::encode(&record.signature)),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.into_bytes()))
    .collect()
}

fn message(
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
) -> Value {
    json!({
        "partition": partition,
        "key_hex": key.map(hex::encode),
        "value_hex": value.map(hex::encode),
        "headers": headers.iter().map(|(n, v)| json!([n, hex::encode(v)])).collect::<Vec<_>>(),
    })
}

fn genuine(record: &SignedRecord, partition: i32) -> Value {
    message(
        partition,
        Some(record.envelope.subject.as_bytes()),
        Some(&record.payload),
        &envelope_headers(record),
    )
}

async fn poison_then_genuine(db: Db) {
    let env = TestEnv::new(db, Broker::Tansu).await;
    let hub = env.start().await;
    let connector = env.health_connector().await;
    let key =
        datarun_domain::keys::parse_private_key(&std::fs::read(env.health_key_file()).unwrap())
            .unwrap();
    let rows = datarun_connector::sample::birth_certificates(24, 77);
    let signed = |index: usize, record_id: &str| {
        let record = connector.sign_row(&rows[index], &key).unwrap();
        let mut envelope = record.envelope;
        envelope.record_id = RecordId::parse(record_id).unwrap();
        envelope.sign(record.payload, &key)
    };

    let partitions = env.config.kafka.partitions;
    let mut messages = Vec::new();
    // Expected per poison message: (reason, dead-letter form).
    let mut expected: Vec<(&str, &str)> = Vec::new();
    let mut genuine_ids = Vec::new();
    for partition in 0..partitions {
        let p = partition as usize;
        // 1. An unsigned message whose record-id header is 600,000 characters long.
        let giant = vec![(header::RECORD_ID.to_owned(), vec![b'a'; 600_000])];
        messages.push(message(partition, Some(b"x"), Some(b"junk"), &giant));
        expected.push(("oversized", "digested"));
        // 2. A genuine record with a forged signature header in front of the real one.
        let record = signed(p * 6, &format!("health-dupsig-{partition}"));
        let mut headers = envelope_headers(&record);
        headers.insert(
            headers.len() - 1,
            (
                header::SIGNATURE.to_owned(),
                hex::encode([0u8; 64]).into_bytes(),
            ),
        );
        messages.push(message(
            partition,
            Some(record.envelope.subject.as_bytes()),
            Some(&record.payload),
            &headers,
        ));
        expected.push(("envelope_invalid", "intact"));
        // 3. A genuine envelope over a 1.5 MiB value.
        let record = signed(p * 6 + 1, &format!("health-bigvalue-{partition}"));
        let big = vec![0x42u8; 3 << 19];
        messages.push(message(
            partition,
            Some(b"k"),
            Some(&big),
            &envelope_headers(&record),
        ));
        expected.push(("oversized", "digested"));
        // 4. A 10 KB key.
        let record = signed(p * 6 + 2, &format!("health-bigkey-{partition}"));
        messages.push(message(
            partition,
            Some(&[b'k'; 10_000]),
            Some(&record.payload),
            &envelope_headers(&record),
        ));
        expected.push(("oversized", "digested"));
        // 5. A hundred tracing headers.
        let record = signed(p * 6 + 3, &format!("health-headers-{partition}"));
        let mut headers = envelope_headers(&record);
        headers.extend((0..100).map(|i| (format!("trace-{i}"), b"t".to_vec())));
        messages.push(message(
            partition,
            Some(b"k"),
            Some(&record.payload),
            &headers,
        ));
        expected.push(("oversized", "digested"));
        // 6. No value at all (a tombstone) under a genuine envelope.
        let record = signed(p * 6 + 4, &format!("health-tombstone-{partition}"));
        messages.push(message(
            partition,
            Some(b"k"),
            None,
            &envelope_headers(&record),
        ));
        expected.push(("wire_format_invalid", "intact"));
        // 7. A correctly signed record, valid Avro, with a NUL character in a name:
        //    PostgreSQL's text type cannot hold it.
        let mut row = rows[12 + p].clone();
        row.insert("baby_name".into(), "王\0明".into());
        let record = connector.sign_row(&row, &key).unwrap();
        let mut envelope = record.envelope;
        envelope.record_id = RecordId::parse(&format!("health-nul-{partition}")).unwrap();
        messages.push(genuine(&envelope.sign(record.payload, &key), partition));
        expected.push(("schema_invalid", "intact"));
        // Then a genuine record on the same partition.
        let record = signed(p * 6 + 5, &format!("health-genuine-{partition}"));
        genuine_ids.push((
            rows[p * 6 + 5]["cert_no"].clone(),
            record.envelope.record_id.to_string(),
        ));
        messages.push(genuine(&record, partition));
    }
    run_python(
        "publish_raw.py",
        &json!({
            "bootstrap": env.kafka().bootstrap_servers,
            "topic": env.kafka().records_topic("health.birth_certificate"),
            "messages": messages,
        }),
    );

    let genuine_count = genuine_ids.len() as i64;
    assert_eq!(
        hub.wait_for_certificates(genuine_count).await,
        genuine_count,
        "every genuine record after the poison is stored"
    );
    assert_eq!(
        hub.wait_for_rejections(expected.len() as u64).await,
        expected.len() as u64
    );
    let store = &hub.running.store;
    assert_eq!(
        store.record_counts().await.unwrap(),
        (genuine_count, genuine_count)
    );
    for (certificate, record_id) in &genuine_ids {
        let (current, _) = store.current_version(certificate).await.unwrap().unwrap();
        assert_eq!(&current, record_id);
    }

    // Each poison message has one dead letter, in the form its size allows.
    let dead_letter_topic = env.kafka().dead_letter_topic();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let letters = loop {
        let letters =
            datarun_kafka::read_topic(&env.kafka(), &dead_letter_topic, Duration::from_secs(3))
                .await
                .unwrap();
        if letters.len() >= expected.len() || tokio::time::Instant::now() > deadline {
            break letters;
        }
    };
    let mut got: BTreeMap<(String, String), usize> = BTreeMap::new();
    for letter in &letters {
        let form = header_of_message(letter, wire::ORIGINAL);
        if form == "digested" {
            assert!(letter.payload.is_empty(), "a digested letter has no value");
            assert_eq!(
                header_of_message(letter, wire::ORIGINAL_VALUE_SHA256).len(),
                64
            );
            assert!(letter.key.as_ref().is_none_or(|k| k.len() <= 256));
        }
        *got.entry((header_of_message(letter, wire::REJECT_REASON), form))
            .or_default() += 1;
    }
    let mut want: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (reason, form) in &expected {
        *want
            .entry((reason.to_string(), form.to_string()))
            .or_default() += 1;
    }
    assert_eq!(got, want);
    // The intact duplicate-signature letter carries the original value and both headers.
    let dupsig = letters
        .iter()
        .find(|m| header_of_message(m, wire::REJECT_REASON) == "envelope_invalid")
        .unwrap();
    assert!(!dupsig.payload.is_empty());
    assert_eq!(
        dupsig
            .headers
            .iter()
            .filter(|(k, _)| k == header::SIGNATURE)
            .count(),
        2
    );

    // The operator listing names each, with no value longer than a record id.
    let (code, listing) = env.cli(&["rejects", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(listing.lines().count(), expected.len(), "{listing}");
    assert!(listing.lines().all(|line| line.len() < 2_000), "{listing}");
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_cannot_stop_ingest_sqlite() {
    poison_then_genuine(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_cannot_stop_ingest_postgres() {
    poison_then_genuine(Db::Postgres).await;
}

/// A key from `datarun key generate` loads in OpenSSL 3 and Python `cryptography`, is
/// created mode 0600, and signs records that the hub stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_keys_work_in_openssl_and_python() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(Db::Sqlite, Broker::Tansu).await;
    let hub = env.start().await;
    let mut public_keys = Vec::new();
    for name in ["dept.pk8", "dept.pem"] {
        let file = env.dir.join(name);
        let (code, out) = env
            .cli(&["key", "generate", "--out", file.to_str().unwrap()])
            .await;
        assert_eq!(code, 0, "{out}");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name} is readable by its owner only");
        let inform = if name.ends_with(".pem") { "PEM" } else { "DER" };
        let openssl = std::process::Command::new("openssl")
            .args(["pkey", "-inform", inform, "-in"])
            .arg(&file)
            .args(["-pubout", "-outform", "DER"])
            .output()
            .expect("openssl");
        assert!(
            openssl.status.success(),
            "openssl refused {name}: {}",
            String::from_utf8_lossy(&openssl.stderr)
        );
        // SubjectPublicKeyInfo for Ed25519: a 12-byte prefix, then the raw public key.
        assert_eq!(
            hex::encode(&openssl.stdout[12..]),
            out.trim(),
            "OpenSSL derives the public key the CLI printed"
        );
        // Never over an existing key.
        let argv: Vec<String> = [
            "datarun",
            "key",
            "generate",
            "--out",
            file.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let refused = datarun_cli::cli::run(&argv, &mut Vec::new()).await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("exists already")),
            "an existing key file is never overwritten"
        );
        public_keys.push((file, out.trim().to_owned()));
    }
    // Register both, publish one record with each from Python.
    let connector = env.health_connector().await;
    let rows = datarun_connector::sample::birth_certificates(2, 31);
    let throwaway = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
    for (index, (file, public_key)) in public_keys.iter().enumerate() {
        let key_id = format!("health-py{index}");
        hub.running
            .store
            .add_signing_key(
                "operator-cli",
                &DepartmentId::parse("health").unwrap(),
                &KeyId::parse(&key_id).unwrap(),
                &hex::decode(public_key).unwrap(),
                0,
                None,
            )
            .await
            .unwrap();
        let template = connector.sign_row(&rows[index], &throwaway).unwrap();
        run_python(
            "publish_signed.py",
            &json!({
                "bootstrap": env.kafka().bootstrap_servers,
                "topic": env.kafka().records_topic("health.birth_certificate"),
                "key_file": file,
                "payload_hex": hex::encode(&template.payload),
                "envelope": {
                    "record_id": format!("health-keyfile-{index}"),
                    "department": "health",
                    "record_type": "health.birth_certificate",
                    "subject": template.envelope.subject,
                    "signed_at_millis": datarun_store::now_millis(),
                    "key_id": key_id,
                },
                "variants": ["valid"],
            }),
        );
    }
    assert_eq!(hub.wait_for_certificates(2).await, 2);
    assert_eq!(
        hub.running
            .ingest_stats
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    hub.running.stop().await;
}
