//! A department's signing keys as files in a key directory: `<key_id>.pk8` for each
//! key, and `<department>.current` naming the key the department's connectors sign
//! with. `datarun key rotate` writes a new key and then moves the pointer; a connector
//! that follows the directory reads the pointer before every batch and switches
//! without a restart.

use crate::{ConnectorError, Result};
use datarun_domain::{DepartmentId, KeyId};
use ring::signature::Ed25519KeyPair;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A key and the id the hub knows it by.
#[derive(Debug)]
pub struct Signer {
    pub key_id: KeyId,
    pub key_pair: Ed25519KeyPair,
}

impl Signer {
    /// Loads a private key file (PKCS#8 v1 or v2, DER or PEM).
    pub fn load(file: &Path, key_id: KeyId) -> Result<Self> {
        let bytes = std::fs::read(file).map_err(|source| ConnectorError::Io {
            path: file.to_owned(),
            source,
        })?;
        let key_pair = datarun_domain::keys::parse_private_key(&bytes).map_err(|error| {
            ConnectorError::Key {
                path: file.to_owned(),
                message: error.to_string(),
            }
        })?;
        Ok(Self { key_id, key_pair })
    }
}

fn pointer(key_dir: &Path, department: &DepartmentId) -> PathBuf {
    key_dir.join(format!("{department}.current"))
}

/// Makes `key_id` the department's current key (an atomic rename: a connector reads the
/// old pointer or the new one, never half).
pub fn set_current_key(key_dir: &Path, department: &DepartmentId, key_id: &KeyId) -> Result<()> {
    let path = pointer(key_dir, department);
    let temporary = path.with_extension("current.tmp");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ConnectorError::Io { path, source }
    };
    std::fs::write(&temporary, format!("{key_id}\n")).map_err(io(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(io(&path))
}

/// The department's current key id, if a rotation named one.
pub fn current_key_id(key_dir: &Path, department: &DepartmentId) -> Result<Option<KeyId>> {
    let path = pointer(key_dir, department);
    match std::fs::read_to_string(&path) {
        Ok(text) => KeyId::parse(text.trim())
            .map(Some)
            .map_err(|error| ConnectorError::Key {
                path,
                message: error.to_string(),
            }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConnectorError::Io { path, source }),
    }
}

/// The key a running connector signs with: a fixed file, or the department's current
/// key in a key directory, looked up again before each batch.
pub(crate) struct KeyRing {
    follow: Option<(PathBuf, DepartmentId)>,
    current: Arc<Signer>,
}

impl KeyRing {
    /// With `key_dir`, the department's current key there (the configured one until a
    /// rotation names another); without, `file` under `key_id`.
    pub(crate) fn open(
        file: &Path,
        key_id: &KeyId,
        key_dir: Option<&Path>,
        department: &DepartmentId,
    ) -> Result<Self> {
        let current = match key_dir {
            Some(dir) => match current_key_id(dir, department)? {
                Some(current) => Signer::load(&dir.join(format!("{current}.pk8")), current)?,
                None => Signer::load(file, key_id.clone())?,
            },
            None => Signer::load(file, key_id.clone())?,
        };
        Ok(Self {
            follow: key_dir.map(|dir| (dir.to_owned(), department.clone())),
            current: Arc::new(current),
        })
    }

    /// The key to sign the next batch with.
    pub(crate) fn current(&mut self) -> Result<Arc<Signer>> {
        if let Some((dir, department)) = &self.follow {
            if let Some(named) = current_key_id(dir, department)? {
                if named != self.current.key_id {
                    let signer = Signer::load(&dir.join(format!("{named}.pk8")), named)?;
                    tracing::info!(
                        department = %department,
                        from = %self.current.key_id,
                        to = %signer.key_id,
                        "signing key rotated: the next batch is signed with the new key"
                    );
                    self.current = Arc::new(signer);
                }
            }
        }
        Ok(self.current.clone())
    }
}
