//! Secret keys on disk, with OpenSSH's rule: a key file anyone but its owner can read is not
//! used at all.
//!
//! New keys are written to a temporary file created with mode 0600 (never briefly wider),
//! flushed to disk, then renamed into place, so a crash leaves either no key or a whole one.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use mesh_proto::SecretKey;

use crate::error::Error;

/// Permission bits a secret key file must not have: any access for group or others.
const FORBIDDEN_MODE_BITS: u32 = 0o077;
/// A key file is one short line; anything much larger is not a key file.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Reads the secret key at `path`, refusing it if group or others may access it.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, Error> {
    let io_error = |what, source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::KeyFileMissing {
            path: path.to_owned(),
            hint: "enroll first (`mesh node join` or `mesh login`)",
        },
        _ => io_error("cannot open", e),
    })?;
    // Check the permissions of the file we opened, not of whatever the path names later.
    let meta = file.metadata().map_err(|e| io_error("cannot stat", e))?;
    let mode = meta.mode() & 0o7777;
    if mode & FORBIDDEN_MODE_BITS != 0 {
        return Err(Error::KeyFileTooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(|e| io_error("cannot read", e))?;
    SecretKey::from_file_text(&text).map_err(|source| Error::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Writes `key` to `path` with mode 0600, refusing to replace an existing file.
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), Error> {
    let io_error = |what, source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    };
    if fs::symlink_metadata(path).is_ok() {
        return Err(Error::KeyFileExists {
            path: path.to_owned(),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    // A temporary file left by a crashed writer with our pid would block create_new forever.
    // remove_file does not follow symlinks, so this never deletes anything but that entry.
    let _ = fs::remove_file(&temp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_error("cannot create", e))?;
        // The umask can only remove bits, but say exactly what we mean anyway.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("cannot set permissions on", e))?;
        file.write_all(key.to_file_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("cannot write", e))?;
        // A hard link fails if the target appeared meanwhile, where a rename would replace it.
        fs::hard_link(&temp, path).map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => Error::KeyFileExists {
                path: path.to_owned(),
            },
            _ => io_error("cannot create", e),
        })?;
        if let Ok(dir) = File::open(dir) {
            // Make the new directory entry durable; failure here loses nothing already written.
            let _ = dir.sync_all();
        }
        Ok(())
    })();
    let _ = fs::remove_file(&temp);
    result
}

/// Reads the key at `path`, or creates one there if there is none.
pub fn load_or_create_secret_key(path: &Path) -> Result<SecretKey, Error> {
    match read_secret_key(path) {
        Err(Error::KeyFileMissing { .. }) => {
            let key = SecretKey::generate().map_err(|source| Error::Invalid {
                path: path.to_owned(),
                source,
            })?;
            write_secret_key(path, &key)?;
            Ok(key)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_keys_are_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = SecretKey::from_seed(&[4; 32]);
        write_secret_key(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(read_secret_key(&path).unwrap().node_id(), key.node_id());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_key_readable_by_group_or_others_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_secret_key(&path, &SecretKey::from_seed(&[4; 32])).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o601] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret_key(&path).unwrap_err();
            assert!(
                matches!(err, Error::KeyFileTooOpen { mode: m, .. } if m == mode),
                "{err}"
            );
            let message = err.to_string();
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            assert!(message.contains("chmod 600"), "{message}");
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_secret_key(&path).is_ok(), "owner-only read is fine");
    }

    #[test]
    fn an_existing_key_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let first = SecretKey::from_seed(&[1; 32]);
        write_secret_key(&path, &first).unwrap();
        let err = write_secret_key(&path, &SecretKey::from_seed(&[2; 32])).unwrap_err();
        assert!(matches!(err, Error::KeyFileExists { .. }), "{err}");
        assert_eq!(read_secret_key(&path).unwrap().node_id(), first.node_id());
    }

    #[test]
    fn load_or_create_creates_once_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let created = load_or_create_secret_key(&path).unwrap();
        let loaded = load_or_create_secret_key(&path).unwrap();
        assert_eq!(created.node_id(), loaded.node_id());
    }

    #[test]
    fn missing_and_garbage_keys_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let err = read_secret_key(&path).unwrap_err().to_string();
        assert!(err.contains("enroll first"), "{err}");
        fs::write(&path, "not a key").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = read_secret_key(&path).unwrap_err().to_string();
        assert!(err.contains("does not start with"), "{err}");
    }
}
