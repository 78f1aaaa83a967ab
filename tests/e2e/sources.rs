//! The connector's live sources: a department's own SQL table polled by a watermark
//! (SQLite and PostgreSQL), and the HTTP push endpoint answered only after the broker
//! acknowledged.

use crate::harness::{self, Broker, BrokerHandle, Db, TestEnv};
use datarun_connector::{Connector, RunOptions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// A connector folder in the test's directory: the health connector's mapping with
/// `source` instead of its CSV file.
fn connector_folder(env: &TestEnv, name: &str, source: &str) -> PathBuf {
    let health_folder = env
        .config
        .hub
        .connectors_dir
        .join("health.birth_certificate");
    let health = std::fs::read_to_string(health_folder.join("connector.toml")).unwrap();
    let mut text = String::new();
    let mut skipping = false;
    for line in health.lines() {
        if let Some(relative) = line.strip_prefix("schema = ") {
            let schema = health_folder.join(relative.trim_matches('"'));
            text.push_str(&format!("schema = \"{}\"\n", schema.display()));
            continue;
        }
        if line == "[source]" {
            text.push_str(source);
            text.push('\n');
            skipping = true;
            continue;
        }
        if skipping && line.starts_with('[') {
            skipping = false;
        }
        if !skipping {
            text.push_str(line);
            text.push('\n');
        }
    }
    let folder = env.dir.join("connectors").join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("connector.toml"), text).unwrap();
    folder
}

/// Starts the connector in `folder` in this process, polling or serving until aborted.
async fn start_connector(env: &TestEnv, folder: &std::path::Path) -> tokio::task::JoinHandle<()> {
    let mut connector = Connector::load(folder).unwrap();
    let store = datarun_cli::app::open_store(&env.config).await.unwrap();
    datarun_cli::setup::resolve_connector_schema(&store, &mut connector)
        .await
        .unwrap();
    store.close().await;
    let kafka = env.kafka();
    let options = RunOptions {
        signing_key_file: env.health_key_file(),
        key_dir: None,
        state_dir: env.dir.join("connector-state"),
        source_override: None,
        batch_size: 500,
        progress: None,
        once: false,
    };
    tokio::spawn(async move {
        if let Err(error) = connector.run(&kafka, &options).await {
            panic!("the connector stopped: {error}");
        }
    })
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The department's table, on the engine under test.
enum DepartmentDb {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl DepartmentDb {
    async fn create(env: &TestEnv, db: Db) -> (Self, String) {
        let columns: Vec<String> = datarun_connector::sample::BIRTH_COLUMNS
            .iter()
            .filter(|c| **c != "updated_at" && **c != "cert_no")
            .map(|c| format!("{c} TEXT NOT NULL"))
            .collect();
        match db {
            Db::Sqlite => {
                let url = format!("sqlite://{}?mode=rwc", env.dir.join("his.db").display());
                let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
                sqlx::query(&format!(
                    "CREATE TABLE birth_register (cert_no TEXT PRIMARY KEY, {}, updated_at INTEGER NOT NULL)",
                    columns.join(", ")
                ))
                .execute(&pool)
                .await
                .unwrap();
                sqlx::query("CREATE INDEX birth_register_changed ON birth_register (updated_at)")
                    .execute(&pool)
                    .await
                    .unwrap();
                let read_url = format!("sqlite://{}", env.dir.join("his.db").display());
                (Self::Sqlite(pool), read_url)
            }
            Db::Postgres => {
                let admin = harness::postgres_admin_url();
                let name = harness::unique("his");
                datarun_store::Store::create_postgres_database(&admin, &name)
                    .await
                    .unwrap();
                let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                sqlx::query(&format!(
                    "CREATE TABLE birth_register (cert_no TEXT PRIMARY KEY, {}, updated_at timestamptz NOT NULL)",
                    columns.join(", ")
                ))
                .execute(&pool)
                .await
                .unwrap();
                sqlx::query("CREATE INDEX birth_register_changed ON birth_register (updated_at)")
                    .execute(&pool)
                    .await
                    .unwrap();
                (Self::Postgres(pool), url)
            }
        }
    }

    /// Inserts or updates `row` with its change time `changed_millis`, in its own
    /// transaction, committed now.
    async fn upsert(&self, row: &BTreeMap<String, String>, changed_millis: i64) {
        let (sql, values) = upsert_sql(row, self.is_postgres());
        match self {
            Self::Sqlite(pool) => {
                let mut query = sqlx::query(&sql);
                for value in values {
                    query = query.bind(value);
                }
                query.bind(changed_millis).execute(pool).await.unwrap();
            }
            Self::Postgres(pool) => {
                let mut query = sqlx::query(&sql);
                for value in values {
                    query = query.bind(value);
                }
                query.bind(changed_millis).execute(pool).await.unwrap();
            }
        }
    }

    fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }
}

/// `INSERT … ON CONFLICT DO UPDATE` of a sample row, the change time bound last.
fn upsert_sql(row: &BTreeMap<String, String>, postgres: bool) -> (String, Vec<String>) {
    let columns: Vec<&str> = datarun_connector::sample::BIRTH_COLUMNS
        .iter()
        .copied()
        .filter(|c| *c != "updated_at")
        .collect();
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let changed = if postgres {
        format!(
            "to_timestamp(${}::double precision / 1000)",
            columns.len() + 1
        )
    } else {
        format!("${}", columns.len() + 1)
    };
    let updates: Vec<String> = columns
        .iter()
        .filter(|c| **c != "cert_no")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO birth_register ({}, updated_at) VALUES ({}, {changed})
         ON CONFLICT (cert_no) DO UPDATE SET {}, updated_at = excluded.updated_at",
        columns.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    );
    let values = columns.iter().map(|c| row[*c].clone()).collect();
    (sql, values)
}

fn now_millis() -> i64 {
    datarun_store::now_millis()
}

/// Inserts, an UPDATE, a row changed in the same millisecond as the watermark but
/// written after the poll that set it, and a row committed late by a long transaction
/// (PostgreSQL; on SQLite, whose writers take turns, a row whose change time is older
/// than rows already read): each reaches the store, none twice.
async fn sql_table_changes_reach_the_store(db: Db) {
    let env = TestEnv::new(db, Broker::Mock).await;
    let hub = env.start().await;
    let store = hub.running.store.clone();
    let (department, url) = DepartmentDb::create(&env, db).await;
    let folder = connector_folder(
        &env,
        "health.birth_register",
        &format!(
            "[source]\nkind = \"sql\"\nurl = \"{url}\"\ntable = \"birth_register\"\nkey = \"cert_no\"\nchanged_at = \"updated_at\"\nlag_seconds = 30\npoll_millis = 200\n"
        ),
    );
    let mut rows = datarun_connector::sample::birth_certificates(24, 61);
    // Keys in a known order for the same-millisecond case.
    rows.sort_by(|a, b| a["cert_no"].cmp(&b["cert_no"]));
    let base = now_millis() - 60_000;
    for (index, row) in rows[..20].iter().enumerate() {
        department.upsert(row, base + index as i64).await;
    }
    let connector = start_connector(&env, &folder).await;
    let stored = |n: i64| {
        let store = store.clone();
        async move { store.record_counts().await.unwrap().0 >= n }
    };
    wait_for("the table's rows stored", Duration::from_secs(30), || {
        stored(20)
    })
    .await;

    // An UPDATE is a new version of the certificate.
    let id = rows[3]["cert_no"].clone();
    let (before, _) = store.current_version(&id).await.unwrap().unwrap();
    let mut changed = rows[3].clone();
    changed.insert("baby_name".into(), "陈思远".into());
    department.upsert(&changed, now_millis()).await;
    wait_for("the update stored", Duration::from_secs(10), || stored(21)).await;
    let (after, _) = store.current_version(&id).await.unwrap().unwrap();
    assert_ne!(
        after, before,
        "the certificate's current version is the update"
    );

    // Same millisecond: the row with the later key is read and sets the watermark; a
    // row with an earlier key and the same change time is written afterwards.
    let same = now_millis();
    department.upsert(&rows[21], same).await;
    wait_for("the watermark row stored", Duration::from_secs(10), || {
        stored(22)
    })
    .await;
    department.upsert(&rows[20], same).await;
    wait_for(
        "a row in the watermark's millisecond, written after the poll",
        Duration::from_secs(10),
        || stored(23),
    )
    .await;

    // A long transaction: its row's change time is older than rows committed (and
    // read) before it.
    match &department {
        DepartmentDb::Postgres(pool) => {
            let mut long = pool.begin().await.unwrap();
            let (sql, values) = upsert_sql(&rows[22], true);
            let mut query = sqlx::query(&sql);
            for value in values {
                query = query.bind(value);
            }
            query.bind(now_millis()).execute(&mut *long).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            department.upsert(&rows[23], now_millis()).await;
            wait_for("the row committed first", Duration::from_secs(10), || {
                stored(24)
            })
            .await;
            long.commit().await.unwrap();
        }
        DepartmentDb::Sqlite(_) => {
            department.upsert(&rows[23], now_millis()).await;
            wait_for("the newer row", Duration::from_secs(10), || stored(24)).await;
            department.upsert(&rows[22], now_millis() - 5_000).await;
        }
    }
    wait_for("the row committed late", Duration::from_secs(10), || {
        stored(25)
    })
    .await;
    // Polls keep reading the window again: nothing more is published.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(store.record_counts().await.unwrap(), (25, 24));
    let kafka = env.kafka();
    let messages = datarun_kafka::read_topic(
        &kafka,
        &kafka.records_topic("health.birth_certificate"),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert_eq!(messages.len(), 25, "each row version on the topic once");
    connector.abort();
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_table_changes_reach_the_store_sqlite() {
    sql_table_changes_reach_the_store(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_table_changes_reach_the_store_postgres() {
    sql_table_changes_reach_the_store(Db::Postgres).await;
}

fn push_rows(rows: &[BTreeMap<String, String>]) -> Value {
    Value::Array(rows.iter().map(|row| json!(row)).collect())
}

/// The push endpoint answers 200 only once the broker holds the records; with the
/// broker down it answers 503 with Retry-After; the department's retry after the
/// broker is back is answered 200, and every record is on the topic and in the store
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_push_answers_after_the_broker_acknowledged() {
    let mut env = TestEnv::new(Db::Sqlite, Broker::Tansu).await;
    let hub = env.start().await;
    let port = datarun_kafka::broker::free_port().unwrap();
    let folder = connector_folder(
        &env,
        "health.birth_push",
        &format!(
            "[source]\nkind = \"http\"\nlisten = \"127.0.0.1:{port}\"\nack_timeout_seconds = 3\n"
        ),
    );
    let connector = start_connector(&env, &folder).await;
    let endpoint = format!("http://127.0.0.1:{port}/records");
    let http = reqwest::Client::new();
    wait_for(
        "the push endpoint listening",
        Duration::from_secs(10),
        || {
            let http = http.clone();
            async move {
                http.get(format!("http://127.0.0.1:{port}/healthz"))
                    .send()
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    let rows = datarun_connector::sample::birth_certificates(8, 71);
    let kafka = env.kafka();
    let topic = kafka.records_topic("health.birth_certificate");

    // Acknowledged means on the topic.
    let response = http
        .post(&endpoint)
        .json(&push_rows(&rows[..5]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let answered: BTreeSet<String> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["record_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(answered.len(), 5);
    let on_topic: BTreeSet<String> =
        datarun_kafka::read_topic(&kafka, &topic, Duration::from_secs(2))
            .await
            .unwrap()
            .iter()
            .map(|m| harness::header(m, datarun_kafka::wire::RECORD_ID))
            .collect();
    assert_eq!(
        on_topic, answered,
        "every acknowledged record is on the topic"
    );

    // A bad row refuses the request, and nothing of it is published.
    let mut bad = rows[5].clone();
    bad.insert("birth_date".into(), "2015-02-30".into());
    let response = http
        .post(&endpoint)
        .json(&push_rows(&[rows[6].clone(), bad]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "row_invalid");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("row 1:"),
        "{body}"
    );

    // The broker goes down: 503 with Retry-After, within the acknowledgement timeout.
    let BrokerHandle::Tansu(broker) = &mut env.broker else {
        unreachable!("a tansu scenario")
    };
    broker.kill();
    let started = Instant::now();
    let response = http
        .post(&endpoint)
        .json(&push_rows(&rows[5..]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(started.elapsed() < Duration::from_secs(10));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "broker_unavailable");

    // Back up: the department retries the same request until it is answered 200.
    broker.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let response = http
            .post(&endpoint)
            .json(&push_rows(&rows[5..]))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 503);
        assert!(
            Instant::now() < deadline,
            "the retries were never acknowledged"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(hub.wait_for_certificates(8).await, 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hub.running.store.record_counts().await.unwrap(), (8, 8));
    let messages = datarun_kafka::read_topic(&kafka, &topic, Duration::from_secs(2))
        .await
        .unwrap();
    let ids: Vec<String> = messages
        .iter()
        .map(|m| harness::header(m, datarun_kafka::wire::RECORD_ID))
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), distinct.len()),
        (8, 8),
        "each pushed record on the topic once, retries included"
    );
    connector.abort();
    hub.running.stop().await;
}
