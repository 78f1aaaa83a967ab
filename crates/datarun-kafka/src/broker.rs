//! Kafka-protocol brokers the hub can start itself: librdkafka's in-process mock
//! cluster for fast tests, and a `tansu` broker process (installed by
//! `scripts/install-tansu.sh`) for the end-to-end suite and the one-command demo.

use crate::{KafkaError, Result};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// librdkafka's in-process mock cluster; lives as long as this value.
pub struct MockKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl MockKafka {
    pub fn start() -> Result<Self> {
        Ok(Self {
            cluster: MockCluster::new(1)?,
        })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The mock cluster does not implement the CreateTopics API; topics are made here.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        Ok(self.cluster.create_topic(topic, partitions, 1)?)
    }
}

/// Where the `tansu` binary is: `$DATARUN_TANSU_BIN`, `~/.cargo/bin/tansu`, or `PATH`.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("DATARUN_TANSU_BIN") {
        return PathBuf::from(path);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    if let Some(candidate) = cargo_home.map(|home| home.join("bin").join("tansu")) {
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("tansu")
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| KafkaError::Broker(e.to_string()))?;
    Ok(listener
        .local_addr()
        .map_err(|e| KafkaError::Broker(e.to_string()))?
        .port())
}

/// A `tansu` broker child process storing its log in SQLite; killed when dropped.
pub struct TansuBroker {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    storage: TansuStorage,
}

/// Where a tansu broker keeps its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TansuStorage {
    /// `data_dir/tansu.db`: survives a crash; tansu 0.6 serves a fetch in time that
    /// grows with the backlog behind it, so it suits thousands of records, not 100,000.
    Sqlite,
    /// In the broker's memory: fast at any backlog, lost when the broker stops. tansu
    /// 0.6's in-memory engine serves a fetch from the first stored *producer batch* at or
    /// after the offset asked for, where Kafka serves the batch holding it: a consumer
    /// resuming inside a batch (after a restart or a rebalance) never sees the rest of
    /// that batch. Use it with producers that send one record per batch.
    Memory,
}

impl TansuBroker {
    /// Starts a broker on `port` with its data in `data_dir/tansu.db`, and waits until it listens.
    pub fn start(data_dir: &Path, port: u16) -> Result<Self> {
        Self::start_with(data_dir, port, TansuStorage::Sqlite)
    }

    /// Starts a broker with the given storage engine.
    pub fn start_with(data_dir: &Path, port: u16, storage: TansuStorage) -> Result<Self> {
        let child = Self::spawn(data_dir, port, storage)?;
        let mut broker = Self {
            child,
            port,
            data_dir: data_dir.to_owned(),
            storage,
        };
        broker.wait_listening(Duration::from_secs(30))?;
        Ok(broker)
    }

    /// Starts the broker again on the same port and data (after [`TansuBroker::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.child = Self::spawn(&self.data_dir, self.port, self.storage)?;
        self.wait_listening(Duration::from_secs(30))
    }

    fn spawn(data_dir: &Path, port: u16, storage: TansuStorage) -> Result<Child> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| KafkaError::Broker(format!("{}: {e}", data_dir.display())))?;
        let url = format!("tcp://127.0.0.1:{port}");
        // tansu resolves the SQLite path relative to its working directory.
        let storage = match storage {
            TansuStorage::Sqlite => "sqlite://tansu.db",
            TansuStorage::Memory => "memory://tansu/",
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("tansu.log"))
            .map_err(|e| KafkaError::Broker(format!("tansu.log: {e}")))?;
        let binary = tansu_binary();
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .current_dir(data_dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| KafkaError::Broker(e.to_string()))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| {
                KafkaError::Broker(format!(
                    "cannot start {}: {e} (run scripts/install-tansu.sh)",
                    binary.display()
                ))
            })?;
        Ok(child)
    }

    fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(KafkaError::Broker(format!(
                    "tansu exited at start with {status}"
                )));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(KafkaError::Broker(format!(
            "tansu did not listen on port {} within {timeout:?}",
            self.port
        )))
    }

    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker as a crash would (SIGKILL).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
