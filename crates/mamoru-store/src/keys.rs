//! Key files under `DATA_DIR/keys/`, one 32-byte secret each (see
//! `mamoru_core::keys`). Created with mode 0600 in a 0700 directory, never
//! overwritten. Creation is safe against a concurrent first start of two
//! processes (the pipe command and `mamoru serve`): each key is written to a
//! temporary file, synced, and hard-linked into place, which fails if another
//! process got there first, in which case that process's key is used.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mamoru_core::keys::KEY_FILES;
pub use mamoru_core::keys::Keys;
use mamoru_core::seal::Sealer;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: a key file must hold exactly 32 bytes")]
    Length { path: PathBuf },
    #[error("{path} already exists; refusing to overwrite key material")]
    Exists { path: PathBuf },
    #[error("the system random source failed")]
    Random,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

/// Loads the keys, creating any that are missing (first start).
pub fn load_or_create(data_dir: &Path) -> Result<Keys, KeyError> {
    let dir = keys_dir(data_dir);
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err(&dir))?;
    let mut out = [[0u8; 32]; 3];
    for (slot, name) in out.iter_mut().zip(KEY_FILES) {
        let path = dir.join(name);
        match read_key(&path) {
            Ok(k) => *slot = k,
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                create_key(&path)?;
                *slot = read_key(&path)?;
            }
            Err(e) => return Err(e),
        }
    }
    let [token, address, index] = out;
    Ok(Keys { token, address, index })
}

/// Creates all keys for `mamoru init`; fails if any exists.
pub fn create_new(data_dir: &Path) -> Result<Keys, KeyError> {
    let dir = keys_dir(data_dir);
    for name in KEY_FILES {
        let path = dir.join(name);
        if path.exists() {
            return Err(KeyError::Exists { path });
        }
    }
    load_or_create(data_dir)
}

fn read_key(path: &Path) -> Result<[u8; 32], KeyError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::with_capacity(33);
    Read::by_ref(&mut f).take(33).read_to_end(&mut buf).map_err(io_err(path))?;
    buf.try_into().map_err(|_| KeyError::Length { path: path.to_path_buf() })
}

fn create_key(path: &Path) -> Result<(), KeyError> {
    let mut key = [0u8; 32];
    // A throwaway sealer gives access to ring's system random source.
    Sealer::new(&[0; 32], &[0; 32]).random(&mut key).map_err(|_| KeyError::Random)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&key).and_then(|()| f.sync_all()).map_err(io_err(&tmp))?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(KeyError::Io { path: path.to_path_buf(), source: e }),
    }
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = create_new(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!((a.token, a.address, a.index), (b.token, b.address, b.index));
        assert_ne!(a.token, a.address);
        for name in KEY_FILES {
            let mode = fs::metadata(keys_dir(dir.path()).join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        assert!(matches!(create_new(dir.path()), Err(KeyError::Exists { .. })));
    }

    #[test]
    fn truncated_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        fs::write(keys_dir(dir.path()).join("token.key"), b"short").unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(KeyError::Length { .. })));
    }
}
