//! Secret files (department signing keys, the pseudonym key): created atomically with
//! mode 0600 and never overwritten, and refused when others can read them.

use anyhow::{bail, Context};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path`, which must not exist: into a 0600 temporary file in the
/// same folder, flushed to disk, then linked into place (which fails if `path` appeared
/// meanwhile). A crash leaves the whole file or none; no one else can ever read it.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    let name = path
        .file_name()
        .context("a secret file needs a file name")?
        .to_string_lossy();
    let mut suffix = [0u8; 8];
    datarun_store::fill_random(&mut suffix)?;
    let temporary = folder.join(format!(".{name}.{}.tmp", hex::encode(suffix)));
    let result = (|| -> anyhow::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::hard_link(&temporary, path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow::anyhow!(
                    "{} exists already; a secret is never overwritten",
                    path.display()
                )
            } else {
                anyhow::anyhow!("writing {}: {error}", path.display())
            }
        })?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&temporary);
    result?;
    if let Ok(directory) = std::fs::File::open(folder) {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Reads a secret file, refusing one that its group or others may read.
pub fn read_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {mode:o}); a secret must be private: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_whole_and_never_overwritten() {
        let folder = std::env::temp_dir().join(format!("datarun-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        let path = folder.join("keys").join("k.pk8");
        write_new_secret(&path, b"first").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret(&path).unwrap(), b"first");
        let error = write_new_secret(&path, b"second").unwrap_err();
        assert!(error.to_string().contains("never overwritten"), "{error}");
        assert_eq!(read_secret(&path).unwrap(), b"first");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read_secret(&path).unwrap_err();
        assert!(error.to_string().contains("chmod 600"), "{error}");
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
