//! Spawns the hub as production builds it: fresh data directory, fresh database
//! (SQLite file or a new PostgreSQL database), fresh topic names, HTTP on port 0,
//! against librdkafka's mock cluster or a real `tansu` broker process.

use datarun_cli::config::Config;
use datarun_kafka::broker::{MockKafka, TansuBroker, TansuStorage};
use datarun_kafka::KafkaSettings;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Mock,
    /// A tansu process storing its log in SQLite (durable across a broker crash).
    Tansu,
    /// A tansu process keeping its log in memory (for 100,000-record backlogs; the fault
    /// suite, which shares this harness, uses it).
    #[allow(dead_code)]
    TansuInMemory,
}

pub enum BrokerHandle {
    Mock(MockKafka),
    Tansu(TansuBroker),
}

impl BrokerHandle {
    pub fn start(kind: Broker, dir: &Path) -> Self {
        match kind {
            Broker::Mock => BrokerHandle::Mock(MockKafka::start().expect("mock cluster")),
            Broker::Tansu | Broker::TansuInMemory => {
                let port = datarun_kafka::broker::free_port().expect("free port");
                let storage = if kind == Broker::Tansu {
                    TansuStorage::Sqlite
                } else {
                    TansuStorage::Memory
                };
                BrokerHandle::Tansu(
                    TansuBroker::start_with(&dir.join("kafka"), port, storage)
                        .expect("tansu broker (scripts/install-tansu.sh)"),
                )
            }
        }
    }

    pub fn bootstrap_servers(&self) -> String {
        match self {
            BrokerHandle::Mock(mock) => mock.bootstrap_servers(),
            BrokerHandle::Tansu(tansu) => tansu.bootstrap_servers(),
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique lower-case name for this test: `<prefix>_<unix seconds>_<pid>_<n>`.
/// `scripts/clean-test-leftovers.sh` drops databases and folders older than an hour.
pub fn unique(prefix: &str) -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{seconds}_{}_{n}", std::process::id())
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn postgres_admin_url() -> String {
    std::env::var("DATARUN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Everything a test needs, before the hub is started.
pub struct TestEnv {
    pub dir: PathBuf,
    pub config: Config,
    pub config_file: PathBuf,
    pub broker: BrokerHandle,
}

impl TestEnv {
    pub async fn new(db: Db, broker: Broker) -> Self {
        Self::on_postgres(db, broker, &postgres_admin_url()).await
    }

    /// Like [`TestEnv::new`], with PostgreSQL databases created through `postgres_admin`.
    pub async fn on_postgres(db: Db, broker: Broker, postgres_admin: &str) -> Self {
        Self::build(db, broker, postgres_admin, false).await
    }

    /// A world as it was before any schema had a second version: only the `.v1.avsc`
    /// files are registered and the connectors publish version 1, so a test can evolve a
    /// subject from version 1 itself.
    pub async fn first_versions(db: Db, broker: Broker) -> Self {
        Self::build(db, broker, &postgres_admin_url(), true).await
    }

    async fn build(db: Db, broker: Broker, postgres_admin: &str, first_versions: bool) -> Self {
        let name = unique("datarun");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let root = repo_root();
        let (schemas_dir, connectors_dir, purposes_file) = if first_versions {
            first_version_world(&root, &dir.join("first-versions"))
        } else {
            (
                root.join("schemas"),
                root.join("connectors"),
                root.join("config").join("purposes.toml"),
            )
        };
        let broker = BrokerHandle::start(broker, &dir);
        let database_url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.join("datarun.db").display()),
            Db::Postgres => {
                datarun_store::Store::create_postgres_database(postgres_admin, &name)
                    .await
                    .expect("PostgreSQL on 127.0.0.1:5432 (scripts/test.sh starts it)");
                let base = postgres_admin.rsplit_once('/').unwrap().0;
                format!("{base}/{name}")
            }
        };
        let config_text = format!(
            r#"
[hub]
data_dir = "{data}"
schemas_dir = "{schemas}"
connectors_dir = "{connectors}"
purposes_file = "{purposes}"
[database]
url = "{database_url}"
[http]
listen = "127.0.0.1:0"
[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{name}."
group_id = "{name}-ingest"
partitions = 2
create_topics = {create_topics}
[broker]
start_local = false
[lookups]
# Tests flood lookups on purpose; the quota scenario sets its own limits.
caseworker_per_minute = 1000000
purpose_per_minute = 1000000
harvest_distinct_subjects = 1000000
"#,
            data = dir.display(),
            schemas = schemas_dir.display(),
            connectors = connectors_dir.display(),
            purposes = purposes_file.display(),
            bootstrap = broker.bootstrap_servers(),
            create_topics = matches!(broker, BrokerHandle::Tansu(_)),
        );
        let config_file = dir.join("datarun.toml");
        std::fs::write(&config_file, config_text).unwrap();
        let config = Config::load(Some(&config_file), std::iter::empty()).unwrap();
        if let BrokerHandle::Mock(mock) = &broker {
            // The mock cluster creates no topics by itself: one per schema's record type.
            let kafka = config.kafka_settings();
            let mut topics = vec![kafka.dead_letter_topic()];
            for file in datarun_cli::setup::schema_files(&schemas_dir).unwrap() {
                let (record_type, _) = datarun_cli::setup::schema_identity(&file).unwrap();
                let topic = kafka.records_topic(record_type.as_str());
                if !topics.contains(&topic) {
                    topics.push(topic);
                }
            }
            for topic in topics {
                mock.create_topic(&topic, config.kafka.partitions).unwrap();
            }
        }
        TestEnv {
            dir,
            config,
            config_file,
            broker,
        }
    }

    pub fn kafka(&self) -> KafkaSettings {
        self.config.kafka_settings()
    }

    /// Runs the CLI in-process with this environment's config; returns (exit code, stdout).
    pub async fn cli(&self, args: &[&str]) -> (u8, String) {
        let mut argv = vec![
            "datarun".to_owned(),
            "--config".to_owned(),
            self.config_file.display().to_string(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let mut out = Vec::new();
        let code = datarun_cli::cli::run(&argv, &mut out)
            .await
            .unwrap_or_else(|e| panic!("datarun {args:?}: {e:#}"));
        (code, String::from_utf8(out).unwrap())
    }

    /// Issues a token through the CLI.
    pub async fn token(&self, args: &[&str]) -> String {
        let mut argv = vec!["token", "issue"];
        argv.extend_from_slice(args);
        let (code, out) = self.cli(&argv).await;
        assert_eq!(code, 0, "{out}");
        out.trim().to_owned()
    }

    /// A token for `department`'s own system (reads the registry).
    pub async fn department_token(&self, department: &str) -> String {
        self.token(&[
            "--role",
            "department",
            "--department",
            department,
            "--name",
            "his",
        ])
        .await
    }

    pub async fn citizen_token(&self, resident_id: &str) -> String {
        self.token(&[
            "--role",
            "citizen",
            "--resident-id",
            resident_id,
            "--name",
            "citizen",
        ])
        .await
    }

    pub async fn caseworker_token(&self, department: &str) -> String {
        self.token(&[
            "--role",
            "caseworker",
            "--department",
            department,
            "--name",
            "caseworker",
        ])
        .await
    }

    pub async fn auditor_token(&self) -> String {
        self.token(&["--role", "auditor", "--name", "auditor"])
            .await
    }

    /// Runs one SQL statement on the hub's database, behind the hub's back (a test
    /// that needs a state no API makes: an expired consent, a corrupt row).
    pub async fn execute_sql(&self, sql: &str) {
        let url = self.config.database_url();
        if url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        } else {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }

    /// Generates `count` sample certificates into the test's folder.
    pub fn sample(&self, count: usize) -> (PathBuf, Vec<BTreeMap<String, String>>) {
        let rows = datarun_connector::sample::birth_certificates(count, 99);
        let path = self.dir.join("birth_certificates.csv");
        datarun_connector::sample::write_csv(&path, &rows).unwrap();
        (path, rows)
    }

    /// Opens (and migrates) the store, registers the reference world and creates the
    /// topics, as `datarun up` does before it starts the hub.
    pub async fn prepare(&self) -> datarun_store::Store {
        let store = datarun_cli::app::open_store(&self.config).await.unwrap();
        datarun_cli::setup::reference_world(
            &store,
            &self.config.hub.schemas_dir,
            &self.config.hub.purposes_file,
            &self.config.hub.data_dir,
        )
        .await
        .unwrap();
        if self.config.kafka.create_topics {
            let kafka = self.kafka();
            let topics = [
                kafka.records_topic("health.birth_certificate"),
                kafka.dead_letter_topic(),
            ];
            datarun_kafka::ensure_topics(&kafka, &topics, self.config.kafka.partitions)
                .await
                .unwrap();
        }
        store
    }

    /// Opens the store, registers the reference world and starts the hub.
    pub async fn start(&self) -> TestHub {
        let store = self.prepare().await;
        let running = datarun_cli::app::start(&self.config, store).await.unwrap();
        TestHub {
            base: format!("http://{}", running.http_addr),
            http: reqwest::Client::new(),
            running,
        }
    }

    pub fn health_key_file(&self) -> PathBuf {
        self.config
            .hub
            .data_dir
            .join("keys")
            .join("health-2026.pk8")
    }

    /// The health connector, given its schema's registry id from the prepared hub.
    pub async fn health_connector(&self) -> datarun_connector::Connector {
        let mut connector = datarun_connector::Connector::load(
            &self
                .config
                .hub
                .connectors_dir
                .join("health.birth_certificate"),
        )
        .unwrap();
        let store = datarun_cli::app::open_store(&self.config).await.unwrap();
        datarun_cli::setup::resolve_connector_schema(&store, &mut connector)
            .await
            .unwrap();
        store.close().await;
        connector
    }

    pub async fn run_connector(&self, source: &Path) -> String {
        let connector = self
            .config
            .hub
            .connectors_dir
            .join("health.birth_certificate");
        let (code, out) = self
            .cli(&[
                "connector",
                "run",
                connector.to_str().unwrap(),
                "--source",
                source.to_str().unwrap(),
            ])
            .await;
        assert_eq!(code, 0, "{out}");
        out
    }
}

/// Copies of the repository's `.v1.avsc` schemas and of its connectors, each set to
/// publish version 1, under `into`: (schemas dir, connectors dir).
fn first_version_world(root: &Path, into: &Path) -> (PathBuf, PathBuf, PathBuf) {
    // The catalogue without the fields version 2 added (a purpose names only fields of
    // registered schemas).
    let mut catalogue = std::fs::read_to_string(root.join("config").join("purposes.toml")).unwrap();
    for field in ["status", "status_reason", "superseded_by"] {
        catalogue = catalogue
            .replace(&format!("\"{field}\","), "")
            .replace(&format!(", \"{field}\""), "");
    }
    std::fs::create_dir_all(into).unwrap();
    let purposes = into.join("purposes.toml");
    std::fs::write(&purposes, catalogue).unwrap();
    let schemas = into.join("schemas");
    let connectors = into.join("connectors");
    for file in datarun_cli::setup::schema_files(&root.join("schemas")).unwrap() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".v1.avsc") {
            continue;
        }
        let department = file.parent().unwrap().file_name().unwrap();
        let target = schemas.join(department).join(&name);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, &target).unwrap();
    }
    for entry in std::fs::read_dir(root.join("connectors")).unwrap() {
        let folder = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(folder.join("connector.toml")) else {
            continue;
        };
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("schema_version = ") {
                out.push_str("schema_version = 1\n");
            } else if let Some(path) = line.strip_prefix("schema = ") {
                let relative = path.trim_matches('"').replace(".v2.avsc", ".v1.avsc");
                let relative = relative.trim_start_matches("../../schemas/");
                out.push_str(&format!(
                    "schema = \"{}\"\n",
                    schemas.join(relative).display()
                ));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        let target = connectors.join(folder.file_name().unwrap());
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("connector.toml"), out).unwrap();
    }
    (schemas, connectors, purposes)
}

pub struct TestHub {
    pub base: String,
    pub http: reqwest::Client,
    pub running: datarun_cli::app::Running,
}

impl TestHub {
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Waits until at least `count` certificates are stored.
    pub async fn wait_for_certificates(&self, count: i64) -> i64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (_, certificates) = self.running.store.record_counts().await.unwrap();
            if certificates >= count || tokio::time::Instant::now() > deadline {
                return certificates;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the ingest has rejected at least `count` records.
    pub async fn wait_for_rejections(&self, count: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let rejected = self.running.ingest_stats.rejected.load(Ordering::Relaxed);
            if rejected >= count || tokio::time::Instant::now() > deadline {
                return rejected;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The last value of header `name` on a message, as text (empty when absent).
pub fn header(message: &datarun_kafka::IncomingRecord, name: &str) -> String {
    message
        .headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// Reads the dead-letter topic: (reason, field, record id) per message.
pub async fn dead_letters(
    settings: &KafkaSettings,
    expected: usize,
) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let messages = datarun_kafka::read_topic(
            settings,
            &settings.dead_letter_topic(),
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        let letters: Vec<_> = messages
            .iter()
            .map(|m| {
                (
                    header(m, datarun_kafka::wire::REJECT_REASON),
                    header(m, datarun_kafka::wire::REJECT_FIELD),
                    header(m, datarun_kafka::wire::RECORD_ID),
                )
            })
            .collect();
        if letters.len() >= expected || tokio::time::Instant::now() > deadline {
            return letters;
        }
    }
}

/// Runs one of `tests/python/*.py` with a JSON job on stdin; panics with its stderr if it
/// fails, returns its stdout.
pub fn run_python(script: &str, job: &Value) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python").join(script))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (scripts/ensure-python.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
