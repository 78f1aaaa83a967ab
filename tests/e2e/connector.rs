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
