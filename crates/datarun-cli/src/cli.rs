//! The subcommands. `run` takes the arguments and an output writer, so tests drive the
//! CLI in-process and read what it prints.

use crate::app;
use crate::config::Config;
use crate::setup;
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use datarun_api::registry::SensitivityRaises;
use datarun_connector::{Connector, RunOptions};
use datarun_domain::{DepartmentId, KeyId, RecordType, ResidentId, Role};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "datarun",
    version,
    about = "Cross-department data-sharing exchange hub"
)]
struct Cli {
    /// Configuration file (default: config/datarun.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Overrides hub.data_dir.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Overrides database.url (sqlite://FILE or postgres://…).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Overrides http.listen.
    #[arg(long, global = true)]
    listen: Option<std::net::SocketAddr>,
    /// Overrides kafka.bootstrap_servers.
    #[arg(long, global = true)]
    bootstrap_servers: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start everything on this machine: a local broker, the store, the reference
    /// departments, the health connector with sample data, ingest and the HTTP API.
    Up {
        /// Use kafka.bootstrap_servers instead of starting a local tansu broker.
        #[arg(long)]
        no_broker: bool,
        /// How many sample people to generate on first start (every department's
        /// records about them).
        #[arg(long, default_value_t = 1000)]
        people: usize,
    },
    /// Run ingest and the HTTP API (production: broker and database are external).
    Serve,
    /// Create or upgrade the database schema.
    Migrate,
    #[command(subcommand)]
    Department(DepartmentCommand),
    #[command(subcommand)]
    Key(KeyCommand),
    #[command(subcommand)]
    Schema(SchemaCommand),
    #[command(subcommand)]
    Purpose(PurposeCommand),
    #[command(subcommand)]
    Token(TokenCommand),
    #[command(subcommand)]
    Connector(ConnectorCommand),
    #[command(subcommand)]
    Entitlement(EntitlementCommand),
    #[command(subcommand)]
    Sample(SampleCommand),
    #[command(subcommand)]
    Audit(AuditCommand),
    #[command(subcommand)]
    Rejects(RejectsCommand),
    /// Measure the hot paths on a fresh hub (figures only; see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check a document the hub signed (a lookup response, a consent artefact) against
    /// the hub's public keys, offline: exit 0 and the signing key's id when it is intact.
    VerifyResponse {
        /// The document: the JSON body as received.
        file: PathBuf,
        /// The hub's keys as `GET /v1/hub/keys` answers them, saved to a file.
        #[arg(
            long,
            conflicts_with = "public_key",
            required_unless_present = "public_key"
        )]
        keys: Option<PathBuf>,
        /// One hub public key, 64 hex digits.
        #[arg(long)]
        public_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Sign and publish generated birth certificates, then on the same records: raw
    /// consume, verify + decode alone, and ingest end to end.
    Ingest {
        #[arg(long, value_enum, default_value = "sqlite")]
        backend: crate::bench::Backend,
        #[arg(long, value_enum, default_value = "mock")]
        broker: crate::bench::Broker,
        #[arg(long, default_value_t = 20_000)]
        records: usize,
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_admin_url: String,
    },
    /// Consented, audited lookups, each under its own one-use consent.
    Lookup {
        #[arg(long, value_enum, default_value = "sqlite")]
        backend: crate::bench::Backend,
        #[arg(long, default_value_t = 10_000)]
        certificates: usize,
        #[arg(long, default_value_t = 5_000)]
        lookups: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
        postgres_admin_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum DepartmentCommand {
    /// Register (or rename) a department.
    Add {
        department: String,
        #[arg(long)]
        name: String,
    },
    /// Allow a department to publish a record type.
    Allow {
        department: String,
        record_type: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Generate an Ed25519 key pair: writes the private key (PKCS#8 v1, mode 0600, never
    /// over an existing file) and prints the public key in hex.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// der or pem (default: pem for a .pem file, der otherwise).
        #[arg(long, value_enum)]
        format: Option<setup::KeyFormat>,
    },
    /// Register a department's public key in the trust registry.
    Register {
        #[arg(long)]
        department: String,
        #[arg(long)]
        key_id: String,
        /// 32-byte Ed25519 public key, hex.
        #[arg(long)]
        public_key: String,
        /// Validity start, Unix milliseconds (default: always).
        #[arg(long, default_value_t = 0)]
        not_before: i64,
        /// Validity end, Unix milliseconds (default: none).
        #[arg(long)]
        not_after: Option<i64>,
    },
    /// Revoke a key now: every record signed with it that the hub receives from now on
    /// is rejected (key_revoked), whatever signing time it claims.
    Revoke { key_id: String },
    /// Give a department a new key: generates <data_dir>/keys/<department>-<ms>.pk8,
    /// registers it, ends the department's other keys after the overlap, and points
    /// <data_dir>/keys/<department>.current at it, so the department's connectors sign
    /// with it from their next batch, without a restart. Audited (key_rotated).
    Rotate {
        department: String,
        /// How long records under the old keys are still taken (90s, 30m, 24h, 7d).
        #[arg(long, default_value = "24h")]
        overlap: String,
    },
}

#[derive(Debug, Subcommand)]
enum SchemaCommand {
    /// Register schemas/<department>/<record>.v<N>.avsc.
    Register {
        file: PathBuf,
        /// Accept a version that adds a sensitive field or raises a field's
        /// sensitivity (the audit event lists what it raised).
        #[arg(long)]
        allow_sensitive: bool,
    },
}

#[derive(Debug, Subcommand)]
enum PurposeCommand {
    /// Register (add or replace) the purposes of a catalogue file like
    /// config/purposes.toml: titles, legal basis, and the fields each may need.
    Register { file: PathBuf },
    /// Print the registered catalogue as JSON.
    List,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an actor and print its bearer token (only shown once).
    Issue {
        #[arg(long)]
        role: String,
        /// For department systems and caseworkers.
        #[arg(long)]
        department: Option<String>,
        /// For citizens: their resident ID number.
        #[arg(long)]
        resident_id: Option<String>,
        #[arg(long)]
        name: String,
        /// How long the token lasts (`8h`, `30d`); default: auth.person_token_hours, or
        /// auth.department_token_hours for a department's system.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a token, or every token of an actor. When the command returns, no running
    /// hub on this database honours them (each polls for revocations every 100 ms).
    Revoke {
        /// The token itself (a leaked one).
        #[arg(long, conflicts_with = "actor", required_unless_present = "actor")]
        token: Option<String>,
        /// An actor id (`caseworker_…`): all its tokens.
        #[arg(long)]
        actor: Option<String>,
    },
}

/// Which record types a department may pull in bulk from the change feed (GET
/// /v1/feed, a sink connector). Audited.
#[derive(Debug, Subcommand)]
enum EntitlementCommand {
    Grant {
        department: String,
        record_type: String,
    },
    Revoke {
        department: String,
        record_type: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConnectorCommand {
    /// Each connector under the connectors folder: position, lag behind its source,
    /// rows published and rejected, rate, last error.
    Status {
        /// Checkpoint folder (default: <data_dir>/connectors).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// One connector folder instead of all of them.
        folder: Option<PathBuf>,
        /// Its source file or URL, as given to `connector run --source`.
        #[arg(long)]
        source: Option<PathBuf>,
    },
    /// Publish a connector's source rows that are not yet acknowledged.
    Run {
        folder: PathBuf,
        /// The department's private key (default: <data_dir>/keys/<signing_key_id>.pk8).
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Source file instead of the one in connector.toml.
        #[arg(long)]
        source: Option<PathBuf>,
        /// Checkpoint folder (default: <data_dir>/connectors).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// A `sql` source stops once it has caught up (by default it polls until
        /// stopped; an `http` source serves until stopped).
        #[arg(long)]
        once: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SampleCommand {
    /// Write every department's source files for one generated population, and
    /// `sample/manifest.json` with the number of records of each type.
    Generate {
        #[arg(long, default_value_t = 1000)]
        people: usize,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// The folder to write `sample/…` into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write generated birth certificates in the health department's CSV format.
    BirthCertificates {
        #[arg(long, default_value_t = 1000)]
        count: usize,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RejectsCommand {
    /// Dead-lettered records, newest first: time, reason, field, record id and
    /// department as claimed (and whether the signature verified), source position.
    List {
        /// Only this reason code (docs/dead-letter.md).
        #[arg(long)]
        reason: Option<String>,
        /// Only rejections since this time: Unix milliseconds, or a duration ago such as 30m, 2h, 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the audit chain; exits 1 naming the first bad event.
    Verify,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(data_dir) = &cli.data_dir {
        config.hub.data_dir = data_dir.clone();
    }
    if let Some(url) = &cli.database_url {
        config.database.url = url.clone();
    }
    if let Some(listen) = cli.listen {
        config.http.listen = listen;
    }
    if let Some(servers) = &cli.bootstrap_servers {
        config.kafka.bootstrap_servers = servers.clone();
        config.broker.start_local = false;
    }
    Ok(config)
}

/// Runs the CLI; returns the process exit code.
pub async fn run(args: &[String], out: &mut dyn Write) -> anyhow::Result<u8> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { 2 } else { 0 };
            write!(out, "{}", error.render())?;
            return Ok(code);
        }
    };
    let config = load_config(&cli)?;
    match cli.command {
        Command::Up { no_broker, people } => up(config, !no_broker, people, out).await,
        Command::Serve => {
            let store = app::open_store(&config).await?;
            let running = app::start(&config, store).await?;
            writeln!(out, "datarun listening on http://{}", running.http_addr)?;
            wait_for_ctrl_c().await;
            running.stop().await;
            Ok(0)
        }
        Command::Migrate => {
            app::open_store(&config).await?;
            writeln!(out, "database is up to date")?;
            Ok(0)
        }
        Command::Department(command) => {
            let store = app::open_store(&config).await?;
            match command {
                DepartmentCommand::Add { department, name } => {
                    store
                        .add_department(&DepartmentId::parse(&department)?, &name)
                        .await?;
                    writeln!(out, "department {department} registered")?;
                }
                DepartmentCommand::Allow {
                    department,
                    record_type,
                } => {
                    store
                        .allow_publish(
                            &DepartmentId::parse(&department)?,
                            &RecordType::parse(&record_type)?,
                        )
                        .await?;
                    writeln!(out, "{department} may publish {record_type}")?;
                }
            }
            Ok(0)
        }
        Command::Key(command) => {
            match command {
                KeyCommand::Generate { out: file, format } => {
                    let format = format.unwrap_or_else(|| setup::KeyFormat::for_path(&file));
                    let public_key = setup::generate_key(&file, format)?;
                    writeln!(out, "{}", hex::encode(public_key))?;
                }
                KeyCommand::Register {
                    department,
                    key_id,
                    public_key,
                    not_before,
                    not_after,
                } => {
                    let store = app::open_store(&config).await?;
                    let public_key =
                        hex::decode(public_key.trim()).context("public key must be hex")?;
                    store
                        .add_signing_key(
                            setup::OPERATOR_CLI,
                            &DepartmentId::parse(&department)?,
                            &KeyId::parse(&key_id)?,
                            &public_key,
                            not_before,
                            not_after,
                        )
                        .await?;
                    writeln!(out, "key {key_id} registered for {department}")?;
                }
                KeyCommand::Rotate {
                    department,
                    overlap,
                } => {
                    let department = DepartmentId::parse(&department)?;
                    let overlap_millis = parse_duration_millis(&overlap)?;
                    let store = app::open_store(&config).await?;
                    let key_dir = config.hub.data_dir.join("keys");
                    let key_id =
                        KeyId::parse(&format!("{department}-{}", datarun_store::now_millis()))?;
                    let key_file = key_dir.join(format!("{key_id}.pk8"));
                    let public_key = setup::generate_key(&key_file, setup::KeyFormat::Der)?;
                    let ended = store
                        .rotate_signing_key(
                            setup::OPERATOR_CLI,
                            &department,
                            &key_id,
                            &public_key,
                            overlap_millis,
                        )
                        .await?;
                    // Only a registered key becomes current: a connector never signs
                    // with a key the hub does not know.
                    datarun_connector::keys::set_current_key(&key_dir, &department, &key_id)?;
                    writeln!(
                        out,
                        "key {key_id} registered for {department} ({}); {} taken for {overlap} more; \
                         connectors signing from {} switch at their next batch",
                        key_file.display(),
                        if ended.is_empty() {
                            "no earlier key is".to_owned()
                        } else {
                            format!("records under {} are", ended.join(", "))
                        },
                        key_dir.display()
                    )?;
                }
                KeyCommand::Revoke { key_id } => {
                    let store = app::open_store(&config).await?;
                    store
                        .revoke_signing_key(
                            setup::OPERATOR_CLI,
                            &KeyId::parse(&key_id)?,
                            datarun_store::now_millis(),
                        )
                        .await?;
                    writeln!(out, "key {key_id} revoked")?;
                }
            }
            Ok(0)
        }
        Command::Entitlement(command) => {
            let store = app::open_store(&config).await?;
            match command {
                EntitlementCommand::Grant {
                    department,
                    record_type,
                } => {
                    store
                        .grant_entitlement(
                            setup::OPERATOR_CLI,
                            &DepartmentId::parse(&department)?,
                            &RecordType::parse(&record_type)?,
                        )
                        .await?;
                    writeln!(
                        out,
                        "{department} may pull {record_type} from the change feed"
                    )?;
                }
                EntitlementCommand::Revoke {
                    department,
                    record_type,
                } => {
                    store
                        .revoke_entitlement(
                            setup::OPERATOR_CLI,
                            &DepartmentId::parse(&department)?,
                            &RecordType::parse(&record_type)?,
                        )
                        .await?;
                    writeln!(out, "{department} may no longer pull {record_type}")?;
                }
            }
            Ok(0)
        }
        Command::Schema(SchemaCommand::Register {
            file,
            allow_sensitive,
        }) => {
            let store = app::open_store(&config).await?;
            let raises = if allow_sensitive {
                SensitivityRaises::Allow
            } else {
                SensitivityRaises::Refuse
            };
            let (record_type, version) = setup::register_schema_file(&store, &file, raises).await?;
            writeln!(out, "{record_type} version {version} registered")?;
            Ok(0)
        }
        Command::Purpose(PurposeCommand::Register { file }) => {
            let store = app::open_store(&config).await?;
            let registered = setup::register_purposes(&store, &file).await?;
            writeln!(
                out,
                "{registered} purpose(s) registered from {}",
                file.display()
            )?;
            Ok(0)
        }
        Command::Purpose(PurposeCommand::List) => {
            let store = app::open_store(&config).await?;
            let purposes = store.purposes().await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&purposes)?)?;
            Ok(0)
        }
        Command::Token(TokenCommand::Issue {
            role,
            department,
            resident_id,
            name,
            ttl,
        }) => {
            let store = app::open_store(&config).await?;
            let role = Role::parse(&role).with_context(|| {
                format!(
                    "role must be department, caseworker, citizen, auditor or operator, not {role}"
                )
            })?;
            let department = department.as_deref().map(DepartmentId::parse).transpose()?;
            let resident_id = resident_id.as_deref().map(ResidentId::parse).transpose()?;
            let lifetime_millis = match &ttl {
                Some(ttl) => parse_duration_millis(ttl)?,
                None => {
                    let hours = if role == Role::Department {
                        config.auth.department_token_hours
                    } else {
                        config.auth.person_token_hours
                    };
                    i64::from(hours) * 3_600_000
                }
            };
            let lifetime = std::time::Duration::from_millis(lifetime_millis.max(0) as u64);
            let (actor, token) = store
                .create_actor(
                    role,
                    department.as_ref(),
                    resident_id.as_ref(),
                    &name,
                    lifetime,
                )
                .await?;
            eprintln!(
                "issued a token for {} ({}), valid for {}",
                actor.actor_id,
                role.as_str(),
                ttl.unwrap_or_else(|| format!("{}h", lifetime_millis / 3_600_000))
            );
            writeln!(out, "{token}")?;
            Ok(0)
        }
        Command::Token(TokenCommand::Revoke { token, actor }) => {
            let store = app::open_store(&config).await?;
            let target = match (token, actor) {
                (Some(token), _) => datarun_store::RevokeTarget::Token(token),
                (None, Some(actor)) => datarun_store::RevokeTarget::Actor(actor),
                (None, None) => bail!("name --token or --actor"),
            };
            match store.revoke_tokens(setup::OPERATOR_CLI, &target).await {
                Ok(revoked) => {
                    writeln!(out, "{revoked} token(s) revoked")?;
                    Ok(0)
                }
                Err(datarun_store::StoreError::NotFound(_)) => {
                    eprintln!("no live token matches");
                    Ok(1)
                }
                Err(error) => Err(error.into()),
            }
        }
        Command::Connector(ConnectorCommand::Status {
            state_dir,
            folder,
            source,
        }) => {
            let state_dir = state_dir.unwrap_or_else(|| config.hub.data_dir.join("connectors"));
            let folders = match folder {
                Some(folder) => vec![folder],
                None => connector_folders(&config.hub.connectors_dir)?,
            };
            writeln!(
                out,
                "{:<44} {:<6} {:<28} {:>8} {:>10} {:>9} {:>9}  last error",
                "connector", "source", "position", "lag", "published", "rejected", "rows/s"
            )?;
            for folder in folders {
                let connector = Connector::load(&folder)?;
                let status = connector.status(&state_dir, source.as_deref()).await?;
                writeln!(
                    out,
                    "{:<44} {:<6} {:<28} {:>8} {:>10} {:>9} {:>9.0}  {}",
                    status.name,
                    status.source_kind,
                    status.position,
                    status
                        .lag_rows
                        .map_or("?".to_owned(), |lag| lag.to_string()),
                    status.published_total,
                    status.rejected_total,
                    status.rate,
                    status.last_error.map_or("-".to_owned(), |error| format!(
                        "{} (at {})",
                        error.message, error.at_millis
                    )),
                )?;
            }
            Ok(0)
        }
        Command::Connector(ConnectorCommand::Run {
            folder,
            signing_key,
            source,
            state_dir,
            once,
        }) => {
            if datarun_connector::sink::Sink::is_sink(&folder) {
                let sink = datarun_connector::sink::Sink::load(&folder)?;
                let target = source.as_ref().map(|path| path.display().to_string());
                let report = tokio::select! {
                    report = sink.run(once, target.as_deref()) => report?,
                    _ = wait_for_ctrl_c() => {
                        writeln!(out, "sink {}: stopped", sink.name())?;
                        return Ok(0);
                    }
                };
                writeln!(
                    out,
                    "sink {}: applied {} records in {} pages, feed position {}",
                    sink.name(),
                    report.records,
                    report.pages,
                    report.cursor
                )?;
                return Ok(0);
            }
            let mut connector = Connector::load(&folder)?;
            // The schema's registry id, from the hub's database this command is
            // configured with (the values carry it: Confluent's wire format).
            let store = app::open_store(&config).await?;
            setup::resolve_connector_schema(&store, &mut connector).await?;
            store.close().await;
            // Without --signing-key the connector follows the department's key
            // directory, and `datarun key rotate` switches it without a restart.
            let key_dir = config.hub.data_dir.join("keys");
            let options = RunOptions {
                key_dir: signing_key.is_none().then(|| key_dir.clone()),
                signing_key_file: signing_key.unwrap_or_else(|| {
                    key_dir.join(format!("{}.pk8", connector.config.signing_key_id))
                }),
                state_dir: state_dir.unwrap_or_else(|| config.hub.data_dir.join("connectors")),
                source_override: source,
                batch_size: 500,
                progress: Some(print_progress),
                once,
            };
            // Stopping (Ctrl-C) mid-batch is safe: the next run finds on the
            // topic what this one sent and did not checkpoint.
            let kafka = config.kafka_settings();
            let report = tokio::select! {
                report = connector.run(&kafka, &options) => report?,
                _ = wait_for_ctrl_c() => {
                    writeln!(out, "connector {}: stopped", connector.name())?;
                    return Ok(0);
                }
            };
            writeln!(
                out,
                "connector {}: published {}, already done {}, rejected {}, found on the topic after a crash {}",
                connector.name(),
                report.published,
                report.already_done,
                report.rejected,
                report.recovered
            )?;
            Ok(0)
        }
        Command::Sample(SampleCommand::Generate {
            people,
            seed,
            out: folder,
        }) => {
            let population = datarun_connector::population::generate(people, seed);
            population.write(&folder)?;
            writeln!(
                out,
                "wrote {} people's records to {}:",
                population.people,
                folder.join("sample").display()
            )?;
            for (record_type, count) in population.counts() {
                writeln!(out, "  {record_type:<45} {count:>7}")?;
            }
            Ok(0)
        }
        Command::Sample(SampleCommand::BirthCertificates {
            count,
            seed,
            out: file,
        }) => {
            datarun_connector::sample::write_csv(
                &file,
                &datarun_connector::sample::birth_certificates(count, seed),
            )?;
            writeln!(
                out,
                "wrote {count} birth certificates to {}",
                file.display()
            )?;
            Ok(0)
        }
        Command::Bench(BenchCommand::Ingest {
            backend,
            broker,
            records,
            postgres_admin_url,
        }) => {
            crate::bench::ingest(backend, broker, records, &postgres_admin_url, out)
                .await?
                .remove()
                .await?;
            Ok(0)
        }
        Command::Bench(BenchCommand::Lookup {
            backend,
            certificates,
            lookups,
            concurrency,
            postgres_admin_url,
        }) => {
            crate::bench_lookup::lookups(
                backend,
                certificates,
                lookups,
                concurrency,
                &postgres_admin_url,
                out,
            )
            .await?;
            Ok(0)
        }
        Command::Rejects(RejectsCommand::List {
            reason,
            since,
            limit,
            json,
        }) => {
            if let Some(reason) = &reason {
                if datarun_domain::RejectReason::from_code(reason).is_none() {
                    bail!("{reason} is not a rejection reason code (docs/dead-letter.md)");
                }
            }
            let since_millis = since.as_deref().map(parse_since).transpose()?;
            let store = app::open_store(&config).await?;
            let entries = store
                .rejections(&datarun_store::RejectionFilter {
                    reason,
                    since_millis,
                    limit,
                })
                .await?;
            for entry in &entries {
                if json {
                    writeln!(out, "{}", serde_json::to_string(entry)?)?;
                } else {
                    writeln!(
                        out,
                        "{}  {:<22} {:<24} {:<40} {:<16} {}  {}[{}]@{}  {}",
                        entry.rejected_at_millis,
                        entry.reason,
                        entry.field.as_deref().unwrap_or("-"),
                        entry.record_id.as_deref().unwrap_or("-"),
                        entry.department.as_deref().unwrap_or("-"),
                        if entry.verified {
                            "verified"
                        } else {
                            "claimed"
                        },
                        entry.topic,
                        entry.partition,
                        entry.offset,
                        entry.message,
                    )?;
                }
            }
            if !json {
                writeln!(out, "{} rejections", entries.len())?;
            }
            Ok(0)
        }
        Command::VerifyResponse {
            file,
            keys,
            public_key,
        } => verify_response(&file, keys.as_deref(), public_key.as_deref(), out),
        Command::Audit(AuditCommand::Verify) => {
            let store = app::open_store(&config).await?;
            match store.verify_audit_chain().await? {
                Ok(events) => {
                    writeln!(out, "audit log intact: {events} events")?;
                    Ok(0)
                }
                Err(chain_break) => {
                    writeln!(out, "audit log BROKEN: {chain_break}")?;
                    Ok(1)
                }
            }
        }
    }
}

/// Most bytes of a document or key file `verify-response` reads.
const VERIFY_FILE_MAX: u64 = 64 * 1024 * 1024;

fn read_json_file(path: &Path) -> anyhow::Result<serde_json::Value> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    anyhow::ensure!(
        size <= VERIFY_FILE_MAX,
        "{} is larger than 64 MiB",
        path.display()
    );
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// `datarun verify-response`: exit 0 when intact, 1 when not, with the reason.
fn verify_response(
    file: &Path,
    keys: Option<&Path>,
    public_key: Option<&str>,
    out: &mut dyn std::io::Write,
) -> anyhow::Result<u8> {
    let document = read_json_file(file)?;
    let parse_key = |text: &str| -> anyhow::Result<[u8; 32]> {
        hex::decode(text.trim())
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
            .context("a public key is 64 hex digits")
    };
    let mut known = Vec::new();
    if let Some(text) = public_key {
        let key = parse_key(text)?;
        known.push((datarun_domain::signed::hub_key_id(&key), key));
    }
    if let Some(path) = keys {
        let listed = read_json_file(path)?;
        for entry in listed["keys"]
            .as_array()
            .context("the keys file holds {\"keys\": [...]}, as GET /v1/hub/keys answers")?
        {
            let key = parse_key(entry["public_key"].as_str().unwrap_or_default())?;
            // The id is derived from the key, never taken from the file.
            known.push((datarun_domain::signed::hub_key_id(&key), key));
        }
    }
    match datarun_domain::signed::verify_document(&document, &known) {
        Ok(key_id) => {
            writeln!(out, "intact: signed by the hub with key {key_id}")?;
            Ok(0)
        }
        Err(problem) => {
            writeln!(out, "NOT VALID: {problem}")?;
            Ok(1)
        }
    }
}

/// `--since`: Unix milliseconds, or a duration ago (`90s`, `30m`, `2h`, `7d`).
fn parse_since(text: &str) -> anyhow::Result<i64> {
    if let Ok(millis) = text.parse::<i64>() {
        return Ok(millis);
    }
    let ago = parse_duration_millis(text)
        .with_context(|| "--since must be Unix milliseconds or a duration like 30m, 2h, 7d")?;
    Ok(datarun_store::now_millis() - ago)
}

/// A duration like `90s`, `30m`, `24h` or `7d`, in milliseconds.
fn parse_duration_millis(text: &str) -> anyhow::Result<i64> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let unit_millis: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => bail!("{text:?} is not a duration like 90s, 30m, 24h or 7d"),
    };
    let amount: i64 = number
        .parse()
        .with_context(|| format!("{text:?}: not a whole number of {unit}"))?;
    if !(0..=3_650 * 86_400).contains(&amount.saturating_mul(unit_millis / 1_000)) {
        bail!("{text:?}: a duration from 0 to ten years");
    }
    Ok(amount * unit_millis)
}

/// The backfill's progress on stderr: redrawn in place on a terminal, a line per batch
/// otherwise (a log keeps them all).
fn print_progress(progress: &datarun_connector::Progress) {
    use std::io::IsTerminal;
    let line = progress.line();
    if std::io::stderr().is_terminal() {
        let end = if progress.done >= progress.total {
            "\n"
        } else {
            ""
        };
        eprint!("\r{line}{end}");
    } else {
        eprintln!("{line}");
    }
}

async fn wait_for_ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// `datarun up`: everything on one machine, with sample data and a walkthrough.
async fn up(
    mut config: Config,
    start_broker: bool,
    people: usize,
    out: &mut dyn Write,
) -> anyhow::Result<u8> {
    let data_dir = config.hub.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let _broker = if start_broker && config.broker.start_local {
        let broker =
            datarun_kafka::broker::TansuBroker::start(&data_dir.join("kafka"), config.broker.port)
                .context(
                    "starting the local tansu broker (scripts/install-tansu.sh installs it)",
                )?;
        config.kafka.bootstrap_servers = broker.bootstrap_servers();
        writeln!(
            out,
            "kafka: local tansu broker on {}",
            broker.bootstrap_servers()
        )?;
        Some(broker)
    } else {
        None
    };
    let store = app::open_store(&config).await?;
    setup::reference_world(
        &store,
        &config.hub.schemas_dir,
        &config.hub.purposes_file,
        &data_dir,
    )
    .await?;
    let manifest = data_dir.join("sample").join("manifest.json");
    if !manifest.exists() {
        let population = datarun_connector::population::generate(people, 2026);
        population.write(&data_dir)?;
        writeln!(out, "sample: {} people generated", population.people)?;
    }
    let expected: std::collections::BTreeMap<String, i64> =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&manifest)?)?["records"]
            .as_object()
            .context("sample/manifest.json has no record counts")?
            .iter()
            .map(|(record_type, count)| (record_type.clone(), count.as_i64().unwrap_or(0)))
            .collect();
    let running = app::start(&config, store.clone()).await?;
    for folder in connector_folders(&config.hub.connectors_dir)? {
        let mut connector = Connector::load(&folder)?;
        if connector.config.source.file_path().is_none() {
            writeln!(
                out,
                "connector {}: not a file source, so not part of the sample data (datarun connector run starts it)",
                connector.name()
            )?;
            continue;
        }
        setup::resolve_connector_schema(&store, &mut connector).await?;
        let options = RunOptions {
            signing_key_file: data_dir
                .join("keys")
                .join(format!("{}.pk8", connector.config.signing_key_id)),
            key_dir: Some(data_dir.join("keys")),
            state_dir: data_dir.join("connectors"),
            source_override: connector
                .config
                .source
                .file_path()
                .map(|path| data_dir.join(path)),
            batch_size: 500,
            progress: Some(print_progress),
            once: true,
        };
        let report = connector.run(&config.kafka_settings(), &options).await?;
        writeln!(
            out,
            "connector {}: published {}, already done {}",
            connector.name(),
            report.published,
            report.already_done
        )?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let stored = store.certificate_counts().await?;
        let complete = expected
            .iter()
            .all(|(record_type, count)| stored.get(record_type).copied().unwrap_or(0) >= *count);
        if complete || tokio::time::Instant::now() > deadline {
            for (record_type, count) in &expected {
                let have = stored.get(record_type).copied().unwrap_or(0);
                writeln!(out, "store: {record_type:<45} {have:>7} of {count}")?;
            }
            if !complete {
                let (rejected, _) = store.rejection_counts().await?;
                writeln!(
                    out,
                    "warning: not every sample record is stored after 3 minutes ({rejected} rejected: datarun rejects list)"
                )?;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sample_file = data_dir.join("sample").join("birth_certificates.csv");
    write_walkthrough(out, &config, running.http_addr, &sample_file)?;
    out.flush()?;
    wait_for_ctrl_c().await;
    writeln!(out, "stopping…")?;
    running.stop().await;
    store.close().await;
    Ok(0)
}

fn write_walkthrough(
    out: &mut dyn Write,
    config: &Config,
    addr: std::net::SocketAddr,
    sample: &Path,
) -> anyhow::Result<()> {
    let rows = csv_first_row(sample)?;
    let (child, mother) = (&rows["baby_id_no"], &rows["mother_id_no"]);
    let exe = std::env::current_exe().context("locating the datarun binary")?;
    let exe = exe.display();
    let data = config.hub.data_dir.display();
    let url = format!("http://{addr}");
    if child.is_empty() || mother.is_empty() {
        bail!("sample file has no child or mother ID in its first row");
    }
    writeln!(
        out,
        r#"
datarun is up: {url}   (health {url}/healthz, metrics {url}/metrics)
Walkthrough — paste into another terminal, in this folder:

D="{exe} --data-dir {data}"
# 1. tokens: a mother (citizen), a public-security caseworker, an auditor
MOTHER=$($D token issue --role citizen --resident-id {mother} --name "sample mother")
CASEWORKER=$($D token issue --role caseworker --department public_security --name "counter 3")
AUDITOR=$($D token issue --role auditor --name "auditor")
# 2. the mother grants a one-use consent for her child's birth certificate
CONSENT=$(curl -s -X POST {url}/v1/consents -H "Authorization: Bearer $MOTHER" -H 'content-type: application/json' \
  -d '{{"subject":"{child}","requester_department":"public_security","record_types":["health.birth_certificate"],"purpose":"household_registration","max_uses":1}}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["consent_id"])')
echo "consent: $CONSENT"
# 3. the caseworker looks the certificate up under that consent (200, the certificate's fields)
curl -s -X POST {url}/v1/lookups -H "Authorization: Bearer $CASEWORKER" -H 'content-type: application/json' \
  -d "{{\"consent_id\":\"$CONSENT\",\"subject\":\"{child}\",\"record_type\":\"health.birth_certificate\",\"purpose\":\"household_registration\"}}"; echo
# 4. a second lookup with the same consent is refused (403, consent_exhausted)
curl -s -X POST {url}/v1/lookups -H "Authorization: Bearer $CASEWORKER" -H 'content-type: application/json' \
  -d "{{\"consent_id\":\"$CONSENT\",\"subject\":\"{child}\",\"record_type\":\"health.birth_certificate\",\"purpose\":\"household_registration\"}}"; echo
# 5. the audit trail for the child, and the chain check
curl -s "{url}/v1/audit/events?subject={child}" -H "Authorization: Bearer $AUDITOR"; echo
curl -s {url}/v1/me/access-log -H "Authorization: Bearer $MOTHER"; echo
$D audit verify

Stop with Ctrl-C; running the same command again keeps everything stored."#
    )?;
    Ok(())
}

/// The connector folders under `connectors_dir` (each holds a `connector.toml`), sorted.
fn connector_folders(connectors_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(connectors_dir)
        .with_context(|| format!("reading {}", connectors_dir.display()))?
    {
        let path = entry?.path();
        if path.join("connector.toml").is_file() {
            folders.push(path);
        }
    }
    folders.sort();
    Ok(folders)
}

fn csv_first_row(path: &Path) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("empty sample file")?
        .split(',')
        .collect();
    let first: Vec<&str> = lines
        .next()
        .context("sample file has no rows")?
        .split(',')
        .collect();
    Ok(header
        .into_iter()
        .zip(first)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}
