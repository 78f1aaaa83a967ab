//! The fault-injection suite: real hub processes (the `datarun` binary, built in this
//! package as `datarun-under-test`) over a real tansu broker process and SQLite or
//! PostgreSQL, crashed with `kill -9` or an armed fault point (`DATARUN_FAULT_INJECT`,
//! an abort with no cleanup), restarted, and checked for the exactly-once effect:
//! every record stored once, every rejection recorded, audited and dead-lettered once,
//! the audit chain intact. Also the database stopped mid-ingest, the broker killed
//! mid-ingest, two hubs in one consumer group with one of them killed, and a
//! connector killed mid-backfill (each row on the topic once).
//!
//! `DATARUN_FAULT_RECORDS` sizes the crash scenario (default 100,000 records).

#[path = "../e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

use datarun_domain::SignedRecord;
use datarun_kafka::RecordPublisher;
use datarun_store::Store;
use harness::{Broker, BrokerHandle, Db, TestEnv};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;
use tokio::time::Instant;

const HUB_BINARY: &str = env!("CARGO_BIN_EXE_datarun-under-test");
const FAULT_INJECT_ENV: &str = "DATARUN_FAULT_INJECT";

/// A crashed hub's consumer-group session expires after this (`session.timeout.ms`).
/// tansu 0.6 lets a member that joins before then wait for the crashed member as its
/// group leader indefinitely, so a restart waits it out (a supervisor's restart delay).
const SESSION_EXPIRY: Duration = Duration::from_secs(11);

/// What the hubs log into `hubs.log` (`DATARUN_FAULT_LOG` overrides): warnings, and the
/// partitions each hub is given and the offset it starts from, for reading a failure.
const HUB_LOG: &str = "warn,datarun_kafka=info";

/// No scenario may run longer than its limit (a few times what it takes on a 2-core
/// machine): a hang is a failure with the progress it made, and the whole suite stays
/// within CI's time even when every scenario fails.
const CRASH_SCENARIO_LIMIT: Duration = Duration::from_secs(10 * 60);
const SCENARIO_LIMIT: Duration = Duration::from_secs(5 * 60);

/// How long the department's feeder waits for the hub to handle anything before it
/// fails the scenario.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// Runs a scenario alone (each loads both cores) and within `limit`.
async fn bounded(limit: Duration, scenario: impl std::future::Future<Output = ()>) {
    let _serial = SERIAL.lock().await;
    if tokio::time::timeout(limit, scenario).await.is_err() {
        panic!("the scenario did not finish within {limit:?}");
    }
}

/// Scenarios run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn crash_scenario_records() -> usize {
    std::env::var("DATARUN_FAULT_RECORDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000)
}

/// A hub process started with `datarun serve`, killed when dropped.
struct HubProcess {
    child: Child,
    base: String,
    log: PathBuf,
}

impl HubProcess {
    fn start(env: &TestEnv, fault: Option<&str>) -> Self {
        let port = datarun_kafka::broker::free_port().unwrap();
        let log = env.dir.join("hubs.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(HUB_BINARY);
        command
            .arg("--config")
            .arg(&env.config_file)
            .arg("serve")
            .env("DATARUN__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "DATARUN_LOG",
                std::env::var("DATARUN_FAULT_LOG").unwrap_or_else(|_| HUB_LOG.into()),
            )
            .env_remove(FAULT_INJECT_ENV)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if let Some(fault) = fault {
            command.env(FAULT_INJECT_ENV, fault);
        }
        HubProcess {
            child: command.spawn().expect("the hub binary"),
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Waits for the process to end by itself (an armed fault point aborts it).
    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the hub did not stop within {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `/readyz`: status and body, or None while the hub is not listening.
    async fn readyz(&self) -> Option<(u16, serde_json::Value)> {
        let response = reqwest::Client::new()
            .get(format!("{}/readyz", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.unwrap_or_default()))
    }

    async fn metric(&self, name: &str) -> Option<u64> {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sample certificates signed with the health key; every `bad_every`-th has a flipped
/// payload byte (a `signature_invalid` rejection, so dead letters are part of the run).
struct Sample {
    records: Vec<SignedRecord>,
    bad: BTreeSet<String>,
}

async fn signed_sample(env: &TestEnv, count: usize, seed: u64, bad_every: usize) -> Sample {
    let connector = env.health_connector().await;
    let key =
        datarun_domain::keys::parse_private_key(&std::fs::read(env.health_key_file()).unwrap())
            .unwrap();
    let rows = datarun_connector::sample::birth_certificates(count, seed);
    let mut bad = BTreeSet::new();
    let records = rows
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let mut record = connector.sign_row(row, &key).unwrap();
            if bad_every > 0 && index % bad_every == bad_every - 1 {
                let middle = record.payload.len() / 2;
                record.payload[middle] ^= 0x01;
                bad.insert(record.envelope.record_id.to_string());
            }
            record
        })
        .collect();
    Sample { records, bad }
}

/// Publishes `records` as a department would, keeping at most `window` of them ahead of
/// what the hub has handled (stored or rejected): tansu 0.6's SQLite engine answers a
/// fetch in time proportional to the backlog behind it, so a 100,000-record backlog
/// published at once starves its heartbeats; a steady producer is also the realistic load.
/// One record per producer batch: tansu's in-memory engine, which the large scenarios
/// use, serves fetches only from batch boundaries (see `TansuStorage::Memory`), so a hub
/// resuming inside a batch would never be given the rest of it.
fn feed(
    env: &TestEnv,
    store: &Store,
    records: Vec<SignedRecord>,
    window: usize,
) -> tokio::task::JoinHandle<()> {
    let mut kafka = env.kafka();
    kafka
        .properties
        .insert("batch.num.messages".into(), "1".into());
    let store = store.clone();
    tokio::spawn(async move {
        let publisher = RecordPublisher::new(&kafka).unwrap();
        let mut published = 0;
        for chunk in records.chunks(2_000) {
            let mut last = (0, Instant::now());
            loop {
                let (records, _, rejected, _) = counts(&store).await;
                let handled = (records.max(0) + rejected.max(0)) as usize;
                if published < handled + window {
                    break;
                }
                if handled != last.0 {
                    last = (handled, Instant::now());
                }
                assert!(
                    last.1.elapsed() < STALL_LIMIT,
                    "the hub handled nothing for {STALL_LIMIT:?}: {handled} of {published} published records handled"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            publisher.publish_all(chunk).await.unwrap();
            published += chunk.len();
        }
    })
}

/// Polls until `done` says so, or panics after `timeout` with what `progress` shows.
async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (bool, String)>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let (done, progress) = check().await;
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?} ({progress})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `records` records are stored and `lettered` rejections dead-lettered, or
/// until nothing changed for a minute (or `limit` passed): the exactly-once check that
/// follows then says what is missing, and where.
async fn wait_handled(store: &Store, records: usize, lettered: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = (counts(store).await, Instant::now());
    loop {
        let now = counts(store).await;
        if now.0 >= records as i64 && now.3 >= lettered as i64 {
            return;
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
        if last.1.elapsed() > Duration::from_secs(60) || Instant::now() > deadline {
            eprintln!("ingest stopped short at {now:?}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn counts(store: &Store) -> (i64, i64, i64, i64) {
    let (records, certificates) = store.record_counts().await.unwrap_or((-1, -1));
    let (rejected, lettered) = store.rejection_counts().await.unwrap_or((-1, -1));
    (records, certificates, rejected, lettered)
}

/// For a failure's message: the records topic's messages that are neither stored nor
/// rejected, as `partition: first..=last (count)` blocks.
async fn unhandled_messages(env: &TestEnv, store: &Store) -> String {
    let kafka = env.kafka();
    let topic = kafka.records_topic("health.birth_certificate");
    let Ok(messages) = datarun_kafka::read_topic(&kafka, &topic, Duration::from_secs(5)).await
    else {
        return "the records topic could not be read".into();
    };
    let ids: Vec<String> = messages
        .iter()
        .map(|m| harness::header(m, datarun_kafka::wire::RECORD_ID))
        .collect();
    let stored = store.stored_record_ids(&ids).await.unwrap_or_default();
    let rejected: BTreeSet<(i64, i64)> = store
        .rejections(&datarun_store::RejectionFilter {
            limit: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    let mut blocks: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    for (message, id) in messages.iter().zip(&ids) {
        let position = (i64::from(message.partition), message.offset);
        if stored.contains(id) || rejected.contains(&position) {
            continue;
        }
        let partition = blocks.entry(message.partition).or_default();
        match partition.last_mut() {
            Some(block) if block.1 + 1 == message.offset => block.1 = message.offset,
            _ => partition.push((message.offset, message.offset)),
        }
    }
    let text: Vec<String> = blocks
        .iter()
        .flat_map(|(partition, ranges)| {
            ranges.iter().map(move |(first, last)| {
                format!("{partition}: {first}..={last} ({})", last - first + 1)
            })
        })
        .collect();
    format!(
        "{} messages on the topic; unhandled: [{}]",
        messages.len(),
        text.join(", ")
    )
}

/// The premise of every scenario: the broker delivered each partition from where the
/// group left it, without gaps (a hub process warns in its log when not).
fn assert_no_skipped_offsets(env: &TestEnv) {
    let path = env.dir.join("hubs.log");
    let log = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        !log.contains("the broker skipped offsets"),
        "the broker skipped offsets: see {}",
        path.display()
    );
}

/// The exactly-once effect: `stored` records and certificates, `rejected` messages each
/// recorded, audited and dead-lettered once, and an audit chain that verifies.
async fn assert_exactly_once(env: &TestEnv, store: &Store, stored: usize, rejected: usize) {
    let stored = stored as i64;
    let rejected_count = rejected as i64;
    assert_no_skipped_offsets(env);
    let now = counts(store).await;
    if now != (stored, stored, rejected_count, rejected_count) {
        let unhandled = unhandled_messages(env, store).await;
        panic!(
            "(records, certificates, rejections, dead-lettered rejections) are {now:?}, \
             expected {:?}; {unhandled}; the hubs' log is {}",
            (stored, stored, rejected_count, rejected_count),
            env.dir.join("hubs.log").display()
        );
    }
    let audited = store
        .audit_events(&datarun_store::AuditFilter {
            kind: Some("ingest_rejected".into()),
            limit: rejected as i64 + 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audited.len(), rejected, "each rejection audited once");
    assert!(
        store.verify_audit_chain().await.unwrap().is_ok(),
        "the audit chain verifies"
    );
    assert_eq!(
        store.dangling_references().await.unwrap(),
        0,
        "no certificate or guardian points at nothing"
    );
    if rejected > 0 {
        // Dead letters are at-least-once: a crash between publishing one and recording
        // that may send it twice, but every rejected message has one.
        let letters = datarun_kafka::read_topic(
            &env.kafka(),
            &env.kafka().dead_letter_topic(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let positions: BTreeSet<(String, String)> = letters
            .iter()
            .map(|letter| {
                (
                    harness::header(letter, datarun_kafka::wire::SOURCE_PARTITION),
                    harness::header(letter, datarun_kafka::wire::SOURCE_OFFSET),
                )
            })
            .collect();
        assert_eq!(positions.len(), rejected, "one dead letter per rejection");
    }
}

/// `kill -9` at six points of the ingest path and once from outside, restarting each
/// time, over a 100,000-record backlog.
async fn crash_at_every_step(db: Db) {
    let env = TestEnv::new(db, Broker::TansuInMemory).await;
    let store = env.prepare().await;
    let total = crash_scenario_records();
    let started = Instant::now();
    let sample = signed_sample(&env, total, 5, 250).await;
    let valid = total - sample.bad.len();
    eprintln!("{total} records signed in {:?}", started.elapsed());
    let feeder = feed(&env, &store, sample.records, 20_000);

    // Each run handles a few batches (of up to 1,000 messages; one dead letter per 250
    // records) and dies at its point, well before the backlog is gone.
    let faults = [
        "ingest.after_checks:3",
        "store.before_commit:3",
        "ingest.after_store_commit:2",
        "ingest.after_dead_letter:5",
        "ingest.before_offsets:3",
        "ingest.after_offsets_stored:2",
    ];
    let mut progress = Vec::new();
    for fault in faults {
        let mut hub = HubProcess::start(&env, Some(fault));
        let status = hub.wait_exit(Duration::from_secs(60)).await;
        assert_eq!(
            status.signal(),
            Some(6),
            "{fault}: the hub aborted at its fault point ({status}):\n{}",
            hub.log_tail()
        );
        progress.push((fault, counts(&store).await, started.elapsed().as_secs()));
        tokio::time::sleep(SESSION_EXPIRY).await;
    }
    // kill -9 from outside, at whatever the hub is doing once it made progress.
    let before = counts(&store).await.0;
    let mut hub = HubProcess::start(&env, None);
    wait_until(
        Duration::from_secs(120),
        "progress before kill -9",
        || async {
            let now = counts(&store).await.0;
            (
                now >= before + 3_000 || now >= valid as i64,
                format!("{now}"),
            )
        },
    )
    .await;
    hub.kill();
    progress.push(("kill -9", counts(&store).await, started.elapsed().as_secs()));
    tokio::time::sleep(SESSION_EXPIRY).await;
    eprintln!(
        "after each crash: (records, certificates, rejections, dead-lettered), seconds: {progress:?}"
    );

    let hub = HubProcess::start(&env, None);
    feeder.await.unwrap();
    wait_handled(&store, valid, sample.bad.len(), Duration::from_secs(300)).await;
    eprintln!("all ingested after {:?}", started.elapsed());
    // Let a redelivery that would store something twice show itself.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exactly_once(&env, &store, valid, sample.bad.len()).await;
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step_sqlite() {
    bounded(CRASH_SCENARIO_LIMIT, crash_at_every_step(Db::Sqlite)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step_postgres() {
    bounded(CRASH_SCENARIO_LIMIT, crash_at_every_step(Db::Postgres)).await;
}

/// A PostgreSQL server of this test's own, on a free port, that can be stopped.
struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn bin_dir() -> PathBuf {
        let output = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("pg_config (PostgreSQL's server package)");
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    }

    /// Runs a PostgreSQL program, as the `postgres` user when this test runs as root
    /// (the server refuses to run as root).
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let binary = self.bin.join(program);
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut command = if is_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(binary);
            c
        } else {
            Command::new(binary)
        };
        command
            .args(args)
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn start_new() -> Self {
        let dir = std::env::temp_dir().join(harness::unique("datarun_pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let server = PrivatePostgres {
            bin: Self::bin_dir(),
            port: datarun_kafka::broker::free_port().unwrap(),
            dir,
        };
        let data = server.data().display().to_string();
        let init = server.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        server.start();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("postgres.log").display().to_string();
        let data = self.data().display().to_string();
        let started = self.run(
            "pg_ctl",
            &["-D", &data, "-o", &options, "-l", &log, "-w", "start"],
        );
        assert!(
            started.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&started.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server at once, as a crash or a pulled cable would look to clients.
    fn stop(&self) {
        let data = self.data().display().to_string();
        let stopped = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        assert!(
            stopped.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.data().display().to_string();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The database stopped for 30 s mid-ingest: ingest pauses and retries, `/readyz` answers
/// 503 naming the database, then everything is stored once and `/readyz` recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_postgres() {
    bounded(SCENARIO_LIMIT, database_outage()).await;
}

async fn database_outage() {
    let postgres = PrivatePostgres::start_new();
    let env =
        TestEnv::on_postgres(Db::Postgres, Broker::TansuInMemory, &postgres.admin_url()).await;
    let store = env.prepare().await;
    let sample = signed_sample(&env, 12_000, 17, 500).await;
    let valid = sample.records.len() - sample.bad.len();
    let bad = sample.bad.len();
    let mut records = sample.records;
    // Published while the database is down, so the hub has a batch to retry however
    // far it got before the outage.
    let during_outage = records.split_off(records.len() - 500);
    // The department publishes steadily (up to 4,000 ahead of the hub).
    let feeder = feed(&env, &store, records, 4_000);
    let hub = HubProcess::start(&env, None);
    wait_until(Duration::from_secs(120), "ingest starts", || async {
        let now = counts(&store).await.0;
        (now > 0, format!("{now}"))
    })
    .await;
    postgres.stop();
    let stopped_at = Instant::now();
    let mut kafka = env.kafka();
    kafka
        .properties
        .insert("batch.num.messages".into(), "1".into());
    RecordPublisher::new(&kafka)
        .unwrap()
        .publish_all(&during_outage)
        .await
        .unwrap();
    wait_until(Duration::from_secs(20), "/readyz answers 503", || async {
        let ready = hub.readyz().await;
        (matches!(&ready, Some((503, _))), format!("{ready:?}"))
    })
    .await;
    let (_, body) = hub.readyz().await.unwrap();
    assert_eq!(body["ready"], false, "{body}");
    assert!(
        body["checks"]["database"]
            .as_str()
            .is_some_and(|s| s.starts_with("unavailable")),
        "{body}"
    );
    while stopped_at.elapsed() < Duration::from_secs(30) {
        let (status, _) = hub.readyz().await.expect("the hub stays up");
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    postgres.start();
    feeder.await.unwrap();
    wait_handled(&store, valid, bad, Duration::from_secs(180)).await;
    let (status, body) = hub.readyz().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        hub.metric("datarun_ingest_retries_total").await.unwrap() > 0,
        "ingest paused and retried"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exactly_once(&env, &store, valid, bad).await;
    drop(hub);
    store.close().await;
}

/// The broker killed with `kill -9` mid-ingest and restarted: nothing lost, nothing
/// stored twice.
async fn broker_crash(db: Db) {
    let mut env = TestEnv::new(db, Broker::Tansu).await;
    let sample = {
        let store = env.prepare().await;
        store.close().await;
        signed_sample(&env, 3_000, 23, 400).await
    };
    let valid = sample.records.len() - sample.bad.len();
    let bad = sample.bad.len();
    let hub = env.start().await;
    let store = hub.running.store.clone();
    // The producer rides out the broker's absence (idempotent, retrying).
    let feeder = feed(&env, &store, sample.records, 1_000);
    wait_until(Duration::from_secs(120), "ingest starts", || async {
        let now = counts(&store).await.0;
        (now > 0, format!("{now}"))
    })
    .await;
    let BrokerHandle::Tansu(broker) = &mut env.broker else {
        unreachable!("a tansu scenario")
    };
    broker.kill();
    let at_kill = counts(&store).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart().unwrap();
    feeder.await.unwrap();
    wait_handled(&store, valid, bad, Duration::from_secs(180)).await;
    eprintln!("at the broker's kill: {at_kill:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exactly_once(&env, &store, valid, bad).await;
    hub.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_sqlite() {
    bounded(SCENARIO_LIMIT, broker_crash(Db::Sqlite)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_crash_postgres() {
    bounded(SCENARIO_LIMIT, broker_crash(Db::Postgres)).await;
}

/// Two hub processes in one consumer group over one PostgreSQL database, one killed
/// mid-run (and restarted): together they store every record once, and every corrected certificate ends
/// at its correction, never at the older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_one_killed_postgres() {
    bounded(SCENARIO_LIMIT, two_hubs_one_killed()).await;
}

async fn two_hubs_one_killed() {
    let env = TestEnv::new(Db::Postgres, Broker::TansuInMemory).await;
    let store = env.prepare().await;
    let connector = env.health_connector().await;
    let key =
        datarun_domain::keys::parse_private_key(&std::fs::read(env.health_key_file()).unwrap())
            .unwrap();
    let rows = datarun_connector::sample::birth_certificates(12_000, 29);
    let now = datarun_store::now_millis();
    let mut records = Vec::new();
    let mut corrected: BTreeMap<String, String> = BTreeMap::new();
    for (index, row) in rows.iter().enumerate() {
        records.push(connector.sign_row_at(row, &key, now - 60_000).unwrap());
        if index % 10 == 0 {
            let mut correction = row.clone();
            correction.insert("baby_name".into(), format!("更正{index}"));
            correction.insert("updated_at".into(), "2026-11-01 09:00:00".into());
            let record = connector.sign_row_at(&correction, &key, now).unwrap();
            corrected.insert(
                row["cert_no"].clone(),
                record.envelope.record_id.to_string(),
            );
            records.push(record);
        }
    }
    let total = records.len();
    let mut first = HubProcess::start(&env, None);
    let second = HubProcess::start(&env, None);
    let feeder = feed(&env, &store, records, 6_000);
    let stored = r#"datarun_ingest_records_total{outcome="stored"}"#;
    wait_until(Duration::from_secs(120), "both hubs ingest", || async {
        let (a, b) = (first.metric(stored).await, second.metric(stored).await);
        (
            a.unwrap_or(0) > 0 && b.unwrap_or(0) > 0,
            format!("stored by each: {a:?} {b:?}"),
        )
    })
    .await;
    first.kill();
    // Its supervisor restarts it once its session expired: tansu 0.6 moves a silent
    // member's partitions only when a member joins, not on the survivor's heartbeats.
    tokio::time::sleep(SESSION_EXPIRY).await;
    let first = HubProcess::start(&env, None);
    feeder.await.unwrap();
    wait_handled(&store, total, 0, Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_no_skipped_offsets(&env);
    let handled = counts(&store).await;
    if handled != (total as i64, rows.len() as i64, 0, 0) {
        panic!(
            "(records, certificates, rejections, dead-lettered) are {handled:?}, expected {:?}; {}",
            (total, rows.len(), 0, 0),
            unhandled_messages(&env, &store).await
        );
    }
    for (certificate, correction) in &corrected {
        let (current, signed_at) = store.current_version(certificate).await.unwrap().unwrap();
        assert_eq!(&current, correction, "{certificate} ends at its correction");
        assert_eq!(signed_at, now);
    }
    assert!(store.verify_audit_chain().await.unwrap().is_ok());
    assert_eq!(store.dangling_references().await.unwrap(), 0);
    drop((first, second));
}

/// A connector process (`datarun connector run`), its output in `connector.log`.
fn start_connector(env: &TestEnv, source: &std::path::Path, fault: Option<&str>) -> Child {
    let log = env.dir.join("connector.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut command = Command::new(HUB_BINARY);
    command
        .arg("--config")
        .arg(&env.config_file)
        .args(["connector", "run"])
        .arg(harness::repo_root().join("connectors/health.birth_certificate"))
        .arg("--source")
        .arg(source)
        .arg("--state-dir")
        .arg(env.dir.join("connector-state"))
        .arg("--signing-key")
        .arg(env.health_key_file())
        .env("DATARUN_LOG", "warn,datarun_connector=info")
        .env_remove(FAULT_INJECT_ENV)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    if let Some(fault) = fault {
        command.env(FAULT_INJECT_ENV, fault);
    }
    command.spawn().expect("the datarun binary")
}

/// The connector's checkpoint: (rows acknowledged, rows the batch in flight reaches).
fn connector_checkpoint(env: &TestEnv) -> (u64, u64) {
    let path = env
        .dir
        .join("connector-state/health.birth_certificate.checkpoint.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        return (0, 0);
    };
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        value["rows_acknowledged"].as_u64().unwrap(),
        value["publishing_through"].as_u64().unwrap(),
    )
}

async fn wait_child(child: &mut Child, timeout: Duration, log: &std::path::Path) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the connector did not finish within {timeout:?}; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A connector killed with `kill -9` at three random moments of a 100,000-row backfill,
/// and aborted once between the broker's acknowledgement of a batch and its checkpoint,
/// then run to the end while a hub ingests: the topic holds each record id exactly once
/// and the store every record.
async fn connector_killed_mid_backfill(db: Db) {
    let env = TestEnv::new(db, Broker::TansuInMemory).await;
    let store = env.prepare().await;
    let total = crash_scenario_records();
    let rows = datarun_connector::sample::birth_certificates(total, 41);
    let source = env.dir.join("backfill.csv");
    datarun_connector::sample::write_csv(&source, &rows).unwrap();
    let log = env.dir.join("connector.log");
    let hub = HubProcess::start(&env, None);
    let started = Instant::now();
    let mut kills = Vec::new();
    // Each run gets a little further (4 % of the rows) before it is killed.
    let step = total as u64 / 25;
    for _ in 0..3 {
        let before = connector_checkpoint(&env).0;
        let mut connector = start_connector(&env, &source, None);
        wait_until(Duration::from_secs(120), "connector progress", || async {
            let now = connector_checkpoint(&env).0;
            (now >= before + step, format!("{now} rows acknowledged"))
        })
        .await;
        // A pseudo-random moment within the next batches.
        let pause = started.elapsed().subsec_nanos() % 400;
        tokio::time::sleep(Duration::from_millis(u64::from(pause))).await;
        connector.kill().unwrap();
        connector.wait().unwrap();
        kills.push((pause, connector_checkpoint(&env)));
    }
    eprintln!("kill -9 after (ms, (acknowledged, in flight through)): {kills:?}");
    let mut connector = start_connector(&env, &source, Some("connector.before_checkpoint:5"));
    let status = wait_child(&mut connector, Duration::from_secs(120), &log).await;
    assert_eq!(
        status.signal(),
        Some(6),
        "the connector aborted at its fault point ({status}); see {}",
        log.display()
    );
    let (acknowledged, through) = connector_checkpoint(&env);
    assert!(
        through > acknowledged,
        "the aborted run left a batch acknowledged by the broker but not checkpointed"
    );
    let unfinished = through - acknowledged;

    let output = Command::new(HUB_BINARY)
        .arg("--config")
        .arg(&env.config_file)
        .args(["connector", "run"])
        .arg(harness::repo_root().join("connectors/health.birth_certificate"))
        .arg("--source")
        .arg(&source)
        .arg("--state-dir")
        .arg(env.dir.join("connector-state"))
        .arg("--signing-key")
        .arg(env.health_key_file())
        .env_remove(FAULT_INJECT_ENV)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .trim_end()
            .ends_with(&format!("found on the topic after a crash {unfinished}")),
        "the restarted connector found the {unfinished} rows the aborted run had delivered: {stdout}"
    );

    let kafka = env.kafka();
    let messages = datarun_kafka::read_topic(
        &kafka,
        &kafka.records_topic("health.birth_certificate"),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for message in &messages {
        *per_id
            .entry(harness::header(message, datarun_kafka::wire::RECORD_ID))
            .or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        twice.is_empty(),
        "records on the topic more than once: {twice:?}"
    );
    assert_eq!(per_id.len(), total, "every source row is on the topic");
    wait_handled(&store, total, 0, Duration::from_secs(300)).await;
    assert_exactly_once(&env, &store, total, 0).await;
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_killed_mid_backfill_sqlite() {
    bounded(
        CRASH_SCENARIO_LIMIT,
        connector_killed_mid_backfill(Db::Sqlite),
    )
    .await;
}
