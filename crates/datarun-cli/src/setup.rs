//! Registering the reference world: departments, keys, permissions, schemas, purposes.
//! `datarun up` runs it on every start; every step is idempotent.

use anyhow::Context;
use datarun_api::registry::SensitivityRaises;
use datarun_domain::{DepartmentId, KeyId, RecordType};
use datarun_store::Store;
use std::path::{Path, PathBuf};

/// The departments of the reference world: (id, display name).
pub const DEPARTMENTS: [(&str, &str); 7] = [
    ("public_security", "广东省公安厅 Public Security"),
    ("civil_affairs", "广东省民政厅 Civil Affairs"),
    ("health", "广东省卫生健康委员会 Health"),
    (
        "human_resources",
        "广东省人力资源和社会保障厅 Human Resources and Social Security",
    ),
    (
        "market_regulation",
        "广东省市场监督管理局 Market Regulation",
    ),
    ("tax", "国家税务总局广东省税务局 Tax"),
    ("education", "广东省教育厅 Education"),
];

/// The purpose catalogue file: `[[purpose]]` tables (`config/purposes.toml`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurposeCatalogue {
    purpose: Vec<datarun_domain::Purpose>,
}

/// Most purposes one catalogue file may hold.
const CATALOGUE_MAX: usize = 500;

/// Reads a purpose catalogue file.
pub fn read_purposes(path: &Path) -> anyhow::Result<Vec<datarun_domain::Purpose>> {
    let metadata = std::fs::metadata(path)
        .with_context(|| format!("reading the purpose catalogue {}", path.display()))?;
    anyhow::ensure!(
        metadata.len() <= 4 * 1024 * 1024,
        "{} is larger than 4 MiB",
        path.display()
    );
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the purpose catalogue {}", path.display()))?;
    let catalogue: PurposeCatalogue = toml::from_str(&text)
        .with_context(|| format!("parsing the purpose catalogue {}", path.display()))?;
    anyhow::ensure!(
        catalogue.purpose.len() <= CATALOGUE_MAX,
        "{}: at most {CATALOGUE_MAX} purposes",
        path.display()
    );
    Ok(catalogue.purpose)
}

/// Registers every purpose of a catalogue file; returns how many.
pub async fn register_purposes(store: &Store, path: &Path) -> anyhow::Result<usize> {
    let purposes = read_purposes(path)?;
    for purpose in &purposes {
        store
            .register_purpose(OPERATOR_CLI, purpose)
            .await
            .with_context(|| format!("registering purpose {}", purpose.code))?;
    }
    Ok(purposes.len())
}

/// How a private key file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyFormat {
    /// PKCS#8 v1 DER (`openssl pkey -inform DER`).
    Der,
    /// PKCS#8 v1 PEM (`-----BEGIN PRIVATE KEY-----`).
    Pem,
}

impl KeyFormat {
    /// PEM for a `.pem` file name, DER otherwise.
    pub fn for_path(path: &Path) -> Self {
        if path.extension().is_some_and(|e| e == "pem") {
            Self::Pem
        } else {
            Self::Der
        }
    }
}

/// Writes a new Ed25519 private key (PKCS#8 v1, RFC 8410) to `path`, mode 0600, never
/// over an existing file; returns its public key.
pub fn generate_key(path: &Path, format: KeyFormat) -> anyhow::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    datarun_store::fill_random(&mut seed)?;
    let document = match format {
        KeyFormat::Der => datarun_domain::keys::pkcs8_v1_der(&seed),
        KeyFormat::Pem => datarun_domain::keys::pkcs8_v1_pem(&seed).into_bytes(),
    };
    crate::secrets::write_new_secret(path, &document)?;
    public_key_of(path)
}

/// The public key of the private key in `path` (DER or PEM, PKCS#8 v1 or v2).
pub fn public_key_of(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = crate::secrets::read_secret(path)?;
    let key_pair = datarun_domain::keys::parse_private_key(&bytes)
        .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))?;
    Ok(datarun_domain::keys::public_key(&key_pair))
}

/// `schemas/<department>/<record>.v<N>.avsc` → (record type, version).
pub fn schema_identity(path: &Path) -> anyhow::Result<(RecordType, u32)> {
    let department = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .context("schema file must sit in its department's folder")?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("schema file name")?;
    let stem = name
        .strip_suffix(".avsc")
        .context("schema file must end in .avsc")?;
    let (record, version) = stem
        .rsplit_once(".v")
        .context("schema file must be named <record>.v<N>.avsc")?;
    let version: u32 = version.parse().context("schema version must be a number")?;
    let record_type = RecordType::parse(&format!("{department}.{record}"))?;
    Ok((record_type, version))
}

/// Registers one schema file after checking it parses with its annotations; `raises`
/// says whether it may add sensitive fields or raise a field's sensitivity.
pub async fn register_schema_file(
    store: &Store,
    path: &Path,
    raises: SensitivityRaises,
) -> anyhow::Result<(RecordType, u32)> {
    let (record_type, version) = schema_identity(path)?;
    let definition =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    datarun_schema::RecordSchema::parse(record_type.clone(), version, &definition)
        .with_context(|| format!("{}", path.display()))?;
    // A file names its version: refuse before registering if the registry would number
    // it otherwise (a gap, or a version taken by another schema).
    let registered = store.schema_versions(record_type.as_str(), true).await?;
    let print = datarun_schema::fingerprint(&definition);
    let already = registered.iter().any(|v| {
        !v.deleted && v.version == version && datarun_schema::fingerprint(&v.definition) == print
    });
    let next = registered.last().map_or(1, |v| v.version + 1);
    anyhow::ensure!(
        already || next == version,
        "{} is version {version} of {record_type}, but the registry's next version is {next}",
        path.display()
    );
    // The same path as the registry's REST API: compatibility, ids, audit.
    let registration =
        datarun_api::registry::register(store, OPERATOR_CLI, &record_type, &definition, raises)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {} ({})", path.display(), e.message, e.error_code))?;
    let assigned = match registration {
        datarun_store::Registration::Added { version, .. }
        | datarun_store::Registration::Existing { version, .. } => version,
    };
    anyhow::ensure!(
        assigned == version,
        "{} is version {version}, but the registry holds it as version {assigned} of {record_type}",
        path.display()
    );
    Ok((record_type, version))
}

/// Gives a connector its schema's registry id: the version its `connector.toml` names,
/// which must be registered with exactly the connector's schema file.
pub async fn resolve_connector_schema(
    store: &Store,
    connector: &mut datarun_connector::Connector,
) -> anyhow::Result<()> {
    let record_type = connector.record_type().to_string();
    let version = connector.config.schema_version;
    let versions = store.schema_versions(&record_type, true).await?;
    let registered = versions
        .iter()
        .find(|v| v.version == version)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{record_type} version {version} is not registered (datarun schema register)"
            )
        })?;
    anyhow::ensure!(
        datarun_schema::fingerprint(&registered.definition)
            == datarun_schema::fingerprint(&connector.schema.definition),
        "the connector's schema file differs from {record_type} version {version} as registered"
    );
    connector.set_schema_id(u32::try_from(registered.schema_id)?);
    Ok(())
}

/// The actor the command line's registry changes are audited as.
pub const OPERATOR_CLI: &str = "operator-cli";

/// Every `.avsc` under `schemas_dir`.
pub fn schema_files(schemas_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for department in std::fs::read_dir(schemas_dir)
        .with_context(|| format!("reading {}", schemas_dir.display()))?
    {
        let department = department?.path();
        if department.is_dir() {
            for file in std::fs::read_dir(&department)? {
                let file = file?.path();
                if file.extension().is_some_and(|e| e == "avsc") {
                    files.push(file);
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The reference world's signing key id of `department`: `<department>-2026`.
pub fn reference_key_id(department: &str) -> anyhow::Result<KeyId> {
    Ok(KeyId::parse(&format!("{department}-2026"))?)
}

/// Where the reference world keeps `department`'s private key under `data_dir`.
pub fn reference_key_file(data_dir: &Path, department: &str) -> PathBuf {
    data_dir.join("keys").join(format!("{department}-2026.pk8"))
}

/// Registers departments, schemas and the purpose catalogue; for every department, a signing key
/// (generated into `data_dir/keys/` on first start) and the right to publish the record
/// types its schemas declare — the reference world's policy, stated here once.
/// Returns the health department's key file.
pub async fn reference_world(
    store: &Store,
    schemas_dir: &Path,
    purposes_file: &Path,
    data_dir: &Path,
) -> anyhow::Result<PathBuf> {
    for (id, name) in DEPARTMENTS {
        store
            .add_department(&DepartmentId::parse(id)?, name)
            .await?;
    }
    // The schema directory is the operator's own declaration of each record type,
    // sensitive fields included: `up` accepts its raises, and the audit lists them.
    let mut record_types = Vec::new();
    for file in schema_files(schemas_dir)? {
        let (record_type, _) = register_schema_file(store, &file, SensitivityRaises::Allow).await?;
        record_types.push(record_type);
    }
    // After the schemas: a purpose names fields of registered record types.
    register_purposes(store, purposes_file).await?;
    for (id, _) in DEPARTMENTS {
        let department = DepartmentId::parse(id)?;
        let key_file = reference_key_file(data_dir, id);
        let public_key = if key_file.exists() {
            public_key_of(&key_file)?
        } else {
            generate_key(&key_file, KeyFormat::Der)?
        };
        store
            .add_signing_key(
                OPERATOR_CLI,
                &department,
                &reference_key_id(id)?,
                &public_key,
                0,
                None,
            )
            .await?;
        for record_type in record_types
            .iter()
            .filter(|t| t.department_part() == department.as_str())
        {
            store.allow_publish(&department, record_type).await?;
        }
    }
    Ok(reference_key_file(data_dir, "health"))
}
