//! Typed, layered configuration: defaults < config file < environment
//! (`DATARUN__SECTION__KEY`) < command-line flags. Unknown keys are an error.
//! Secrets (the pseudonym key) come from a file under the data directory or the
//! environment, never from committed configuration.

use anyhow::{bail, Context};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hub: HubConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub ingest: IngestConfig,
    pub broker: BrokerConfig,
    pub auth: AuthConfig,
    pub lookups: LookupsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupsConfig {
    /// Lookups one caseworker may make per minute on this instance.
    pub caseworker_per_minute: u32,
    /// Lookups for one purpose per minute on this instance, all caseworkers together.
    pub purpose_per_minute: u32,
    /// Distinct people one caseworker may look up within `harvest_window_minutes`
    /// before a `harvesting_suspected` alarm is audited.
    pub harvest_distinct_subjects: u32,
    pub harvest_window_minutes: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// How long a token `datarun token issue` gives a department's system lasts, hours.
    pub department_token_hours: u32,
    /// How long a token given to a person (caseworker, citizen, auditor, operator)
    /// lasts, hours: a working shift.
    pub person_token_hours: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// How far ahead of the hub's clock a record's `signed_at` may be, seconds.
    pub max_clock_skew_secs: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Where the embedded database, keys, the local broker's log and connector state live.
    pub data_dir: PathBuf,
    /// The `schemas/` folder registered by `datarun up`.
    pub schemas_dir: PathBuf,
    /// The `connectors/` folder.
    pub connectors_dir: PathBuf,
    /// The purpose catalogue registered by `datarun up`.
    pub purposes_file: PathBuf,
    /// The pseudonym key file; empty means `<data_dir>/secrets/pseudonym.key`.
    pub pseudonym_key_file: PathBuf,
    /// This hub instance's Ed25519 key for the documents it signs (PKCS#8, DER or PEM);
    /// empty means `<data_dir>/keys/hub.pk8`, created on first start.
    pub signing_key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://FILE` or `postgres://…`; empty means `sqlite://<data_dir>/datarun.db`.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topic_prefix: String,
    pub group_id: String,
    /// Static membership in the group (`group.instance.id`, KIP-345): on Apache Kafka a
    /// restarted or crashed hub gets its partitions back at once, without a rebalance
    /// or waiting out its predecessor's session. Empty: dynamic membership (the
    /// default: librdkafka's mock cluster and tansu 0.6 do not implement the fast
    /// rejoin, and tansu assigns a static member only after about 6 s). `auto`:
    /// `<group_id>-<host>-<hash of the data directory>`, stable across restarts and
    /// distinct per hub. Two running hubs must never share one; the broker fences the
    /// older.
    pub instance_id: String,
    pub partitions: i32,
    /// Create missing topics at start (off where the cluster's operators own topics).
    pub create_topics: bool,
    /// Record types the broker consumes; empty: every record type registered in the
    /// schema registry when the hub starts.
    pub record_types: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `datarun up` starts a local tansu broker on `port` when true.
    pub start_local: bool,
    pub port: u16,
}

const DEFAULTS: &str = r#"
[hub]
data_dir = "data"
schemas_dir = "schemas"
connectors_dir = "connectors"
purposes_file = "config/purposes.toml"
pseudonym_key_file = ""
signing_key_file = ""

[database]
url = ""

[http]
listen = "127.0.0.1:8080"

[kafka]
bootstrap_servers = "127.0.0.1:19092"
topic_prefix = "datarun."
group_id = "datarun-ingest"
instance_id = ""
partitions = 3
create_topics = true
record_types = []

[ingest]
max_clock_skew_secs = 300

[broker]
start_local = true
port = 19092

[auth]
department_token_hours = 2160
person_token_hours = 12

[lookups]
caseworker_per_minute = 120
purpose_per_minute = 6000
harvest_distinct_subjects = 50
harvest_window_minutes = 10
"#;

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Parses an environment value as a TOML value when it is one (numbers, booleans,
/// arrays), else as a string.
fn env_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

impl Config {
    /// Loads defaults, then `file` (or `config/datarun.toml` when it exists), then the environment.
    pub fn load(
        file: Option<&Path>,
        environment: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut table: toml::Table = toml::from_str(DEFAULTS).context("built-in defaults")?;
        let default_file = Path::new("config/datarun.toml");
        let file = file.or_else(|| default_file.exists().then_some(default_file));
        if let Some(file) = file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            let overlay: toml::Table =
                toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
            merge(&mut table, overlay);
        }
        for (name, value) in environment {
            let Some(path) = name.strip_prefix("DATARUN__") else {
                continue;
            };
            let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            let [section, key] = &parts[..] else {
                bail!("environment variable {name} must be DATARUN__SECTION__KEY");
            };
            let mut overlay = toml::Table::new();
            let mut inner = toml::Table::new();
            inner.insert(key.clone(), env_value(&value));
            overlay.insert(section.clone(), toml::Value::Table(inner));
            merge(&mut table, overlay);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .context("invalid configuration")?;
        Ok(config)
    }

    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}",
                self.hub.data_dir.join("datarun.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }

    /// This hub's `group.instance.id`, if it is a static member: `kafka.instance_id`,
    /// or for `auto` one derived from the host and the data directory.
    pub fn ingest_instance_id(&self) -> Option<String> {
        match self.kafka.instance_id.as_str() {
            "" => return None,
            "auto" => {}
            explicit => return Some(explicit.to_owned()),
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        let dir =
            std::fs::canonicalize(&self.hub.data_dir).unwrap_or_else(|_| self.hub.data_dir.clone());
        let digest =
            ring::digest::digest(&ring::digest::SHA256, dir.as_os_str().as_encoded_bytes());
        Some(format!(
            "{}-{host}-{}",
            self.kafka.group_id,
            hex::encode(&digest.as_ref()[..4])
        ))
    }

    pub fn quota_settings(&self) -> datarun_api::quotas::QuotaSettings {
        datarun_api::quotas::QuotaSettings {
            per_caseworker: self.lookups.caseworker_per_minute.max(1),
            per_purpose: self.lookups.purpose_per_minute.max(1),
            window: std::time::Duration::from_secs(60),
            harvest_subjects: self.lookups.harvest_distinct_subjects.max(1),
            harvest_window: std::time::Duration::from_secs(
                u64::from(self.lookups.harvest_window_minutes.max(1)) * 60,
            ),
        }
    }

    pub fn kafka_settings(&self) -> datarun_kafka::KafkaSettings {
        datarun_kafka::KafkaSettings::new(&self.kafka.bootstrap_servers, &self.kafka.topic_prefix)
    }

    pub fn ingest_settings(&self) -> datarun_ingest::IngestSettings {
        datarun_ingest::IngestSettings {
            max_clock_skew_millis: i64::from(self.ingest.max_clock_skew_secs) * 1000,
        }
    }

    /// The key for pseudonyms of personal identifiers: `$DATARUN_PSEUDONYM_KEY` (hex), or
    /// `hub.pseudonym_key_file` (default `<data_dir>/secrets/pseudonym.key`), created
    /// with 32 random bytes and mode 0600 on first use. At least 32 bytes either way.
    pub fn pseudonym_key(&self) -> anyhow::Result<Vec<u8>> {
        let minimum = datarun_store::PSEUDONYM_KEY_MIN_BYTES;
        if let Ok(text) = std::env::var("DATARUN_PSEUDONYM_KEY") {
            let key = hex::decode(text.trim()).context("DATARUN_PSEUDONYM_KEY must be hex")?;
            if key.len() < minimum {
                bail!(
                    "DATARUN_PSEUDONYM_KEY must be at least {minimum} bytes ({} hex digits)",
                    minimum * 2
                );
            }
            return Ok(key);
        }
        let path = if self.hub.pseudonym_key_file.as_os_str().is_empty() {
            self.hub.data_dir.join("secrets").join("pseudonym.key")
        } else {
            self.hub.pseudonym_key_file.clone()
        };
        if !path.exists() {
            let mut key = vec![0u8; 32];
            datarun_store::fill_random(&mut key)?;
            if let Err(error) = crate::secrets::write_new_secret(&path, &key) {
                // Another process may have created it a moment ago; read that one.
                if !path.exists() {
                    return Err(error);
                }
            }
        }
        let key = crate::secrets::read_secret(&path)?;
        if key.len() < minimum {
            bail!(
                "{} holds {} bytes; a pseudonym key is at least {minimum}",
                path.display(),
                key.len()
            );
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("datarun-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("datarun.toml");
        std::fs::write(
            &file,
            "[http]\nlisten = \"0.0.0.0:9000\"\n[kafka]\npartitions = 6\n",
        )
        .unwrap();
        let environment = vec![("DATARUN__KAFKA__PARTITIONS".to_owned(), "12".to_owned())];
        let config = Config::load(Some(&file), environment.into_iter()).unwrap();
        assert_eq!(config.http.listen.port(), 9000);
        assert_eq!(config.kafka.partitions, 12);
        assert_eq!(config.kafka.topic_prefix, "datarun.");
        assert!(config.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn the_example_file_lists_every_key_with_its_default() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/datarun.example.toml");
        let from_example = Config::load(Some(&example), std::iter::empty()).unwrap();
        let defaults = Config::load(Some(Path::new("/dev/null")), std::iter::empty()).unwrap();
        assert_eq!(format!("{from_example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let environment = vec![("DATARUN__HTTP__LISTNE".to_owned(), "x".to_owned())];
        let error = Config::load(None, environment.into_iter()).unwrap_err();
        assert!(format!("{error:#}").contains("listne"), "{error:#}");
    }

    #[test]
    fn static_membership_is_opt_in_and_auto_is_stable_per_data_directory() {
        let with = |instance: &str, data_dir: &str| {
            let environment = vec![
                (
                    "DATARUN__KAFKA__INSTANCE_ID".to_owned(),
                    instance.to_owned(),
                ),
                ("DATARUN__HUB__DATA_DIR".to_owned(), data_dir.to_owned()),
            ];
            Config::load(None, environment.into_iter())
                .unwrap()
                .ingest_instance_id()
        };
        assert_eq!(with("", "/srv/hub-a"), None);
        assert_eq!(with("hub-7", "/srv/hub-a").as_deref(), Some("hub-7"));
        let auto = with("auto", "/srv/hub-a").unwrap();
        assert!(auto.starts_with("datarun-ingest-"), "{auto}");
        assert_eq!(with("auto", "/srv/hub-a").unwrap(), auto);
        assert_ne!(with("auto", "/srv/hub-b").unwrap(), auto);
    }
}
