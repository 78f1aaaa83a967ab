//! Durability: records a connector handed to the broker survive a broker crash
//! (kill -9) and are stored exactly once across hub restarts.

use crate::harness::{Broker, BrokerHandle, Db, TestEnv};
use datarun_kafka::broker::TansuBroker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_records_survive_a_broker_crash_and_hub_restarts() {
    let mut env = TestEnv::new(Db::Sqlite, Broker::Tansu).await;
    // Register the reference world (and the health key) without running ingest yet.
    let store = datarun_cli::app::open_store(&env.config).await.unwrap();
    datarun_cli::setup::reference_world(
        &store,
        &env.config.hub.schemas_dir,
        &env.config.hub.purposes_file,
        &env.config.hub.data_dir,
    )
    .await
    .unwrap();
    let topics = vec![
        env.kafka().records_topic("health.birth_certificate"),
        env.kafka().dead_letter_topic(),
    ];
    datarun_kafka::ensure_topics(&env.kafka(), &topics, 2)
        .await
        .unwrap();
    let (source, _) = env.sample(60);
    let report = env.run_connector(&source).await;
    assert!(report.contains("published 60"), "{report}");

    // The broker dies hard and comes back on the same storage.
    let BrokerHandle::Tansu(broker) = &mut env.broker else {
        unreachable!()
    };
    let port: u16 = broker
        .bootstrap_servers()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    broker.kill();
    env.broker = BrokerHandle::Tansu(TansuBroker::start(&env.dir.join("kafka"), port).unwrap());

    let hub = env.start().await;
    assert_eq!(
        hub.wait_for_certificates(60).await,
        60,
        "every acknowledged record reached the store"
    );
    hub.running.stop().await;

    // A restarted hub (same consumer group) stores nothing twice.
    let hub = env.start().await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(hub.running.store.record_counts().await.unwrap(), (60, 60));
    hub.running.stop().await;
}

/// The Python department example (`connectors/examples/python/publish.py`), run as a
/// department would: a key from `datarun key generate`, registered; the schema from the
/// hub's registry through confluent-kafka's AvroSerializer; signed per docs/signing.md;
/// published with confluent-kafka. The hub verifies and stores the record.
async fn python_department_example_publishes(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let key_file = env.dir.join("department-key.pem");
    let (code, public_key) = env
        .cli(&["key", "generate", "--out", key_file.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{public_key}");
    let (code, out) = env
        .cli(&[
            "key",
            "register",
            "--department",
            "health",
            "--key-id",
            "health-python-2026",
            "--public-key",
            public_key.trim(),
        ])
        .await;
    assert_eq!(code, 0, "{out}");
    let token = env.department_token("health").await;
    // One record, with fields as the schema names them.
    let connector = env.health_connector().await;
    let seed = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
    let row = &datarun_connector::sample::birth_certificates(1, 99)[0];
    let signed = connector.sign_row(row, &seed).unwrap();
    let (_, body) = signed.unframed().unwrap();
    let today = datarun_domain::date::CivilDate::from_unix_millis_cst(datarun_store::now_millis());
    let valid = connector.schema.validate(body, today).unwrap();
    let records = env.dir.join("records.jsonl");
    std::fs::write(
        &records,
        format!(
            "{}\n",
            serde_json::json!({
                "record_id": "health-python-0001",
                "subject": valid.subject,
                "fields": serde_json::Value::Object(valid.fields),
            })
        ),
    )
    .unwrap();
    let output = std::process::Command::new("python3")
        .arg(crate::harness::repo_root().join("connectors/examples/python/publish.py"))
        .args([
            "--bootstrap",
            &env.kafka().bootstrap_servers,
            "--registry",
            &format!("{}/registry", hub.base),
            "--token",
            &token,
            "--key-file",
            key_file.to_str().unwrap(),
            "--key-id",
            "health-python-2026",
            "--record-type",
            "health.birth_certificate",
            "--topic-prefix",
            &env.config.kafka.topic_prefix,
            records.to_str().unwrap(),
        ])
        .output()
        .expect("python3 (scripts/ensure-python.sh)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), r#"{"published": 1}"#);
    assert_eq!(hub.wait_for_certificates(1).await, 1);
    let store = &hub.running.store;
    assert_eq!(
        store
            .stored_record_ids(&["health-python-0001".into()])
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.rejection_counts().await.unwrap(), (0, 0));
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_department_example_publishes_sqlite() {
    python_department_example_publishes(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_department_example_publishes_postgres() {
    python_department_example_publishes(Db::Postgres).await;
}
