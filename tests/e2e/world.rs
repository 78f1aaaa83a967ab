//! `datarun up` brings the whole reference world up, as a newcomer runs it: every
//! department, key, schema and connector, and one generated population ingested until
//! the store holds exactly the records the generator wrote, type by type.

use crate::harness::{repo_root, Broker, Db, TestEnv};
use std::collections::BTreeMap;
use std::time::Duration;

async fn reference_world_comes_up(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let log = env.dir.join("up.log");
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_datarun-under-test"))
        .arg("--config")
        .arg(&env.config_file)
        .args(["up", "--no-broker", "--people", "300"])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let output = loop {
        let output = std::fs::read_to_string(&log).unwrap_or_default();
        if output.contains("datarun is up") {
            break output;
        }
        if let Some(status) = up.try_wait().unwrap() {
            panic!("datarun up exited with {status}:\n{output}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "datarun up did not come up:\n{output}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // The generator's counts, and exactly those certificates stored.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.dir.join("sample/manifest.json")).unwrap(),
    )
    .unwrap();
    let generated: BTreeMap<String, i64> = manifest["records"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, n)| (t.clone(), n.as_i64().unwrap()))
        .collect();
    let record_types: std::collections::BTreeSet<String> =
        datarun_cli::setup::schema_files(&repo_root().join("schemas"))
            .unwrap()
            .iter()
            .map(|file| {
                datarun_cli::setup::schema_identity(file)
                    .unwrap()
                    .0
                    .to_string()
            })
            .collect();
    assert_eq!(
        generated
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        record_types,
        "sample data for every record type"
    );
    assert!(generated.values().all(|n| *n > 0), "{generated:?}");
    let store = datarun_cli::app::open_store(&env.config).await.unwrap();
    assert_eq!(
        store.certificate_counts().await.unwrap(),
        generated,
        "the store holds exactly the generated records:\n{output}"
    );
    let total: i64 = generated.values().sum();
    assert_eq!(store.record_counts().await.unwrap(), (total, total));
    assert_eq!(store.rejection_counts().await.unwrap(), (0, 0));
    // Every department has its key and publishes only its own record types.
    for record_type in generated.keys() {
        let department = record_type.split('.').next().unwrap();
        let key = store
            .trusted_key(&format!("{department}-2026"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no key for {department}"));
        assert_eq!(key.department, department);
        let files = datarun_cli::setup::schema_files(&repo_root().join("schemas"))
            .unwrap()
            .iter()
            .filter(|file| {
                datarun_cli::setup::schema_identity(file)
                    .unwrap()
                    .0
                    .as_str()
                    == record_type
            })
            .count();
        assert_eq!(
            store
                .schema_versions(record_type, false)
                .await
                .unwrap()
                .len(),
            files,
            "every version of {record_type} is registered"
        );
    }
    for record_type in generated.keys() {
        assert!(
            output.contains(&format!("connector {record_type}: published")),
            "{output}"
        );
    }
    assert!(store.verify_audit_chain().await.unwrap().is_ok());
    store.close().await;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status();
    let _ = up.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_world_comes_up_sqlite() {
    reference_world_comes_up(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_world_comes_up_postgres() {
    reference_world_comes_up(Db::Postgres).await;
}
