//! Secret keys on disk, with OpenSSH's rules: a key file anyone but its owner can read, or that
//! another user owns, is not used at all.
//!
//! New keys are written to a temporary file with a random name in the key's own directory,
//! created with mode 0600 (never briefly wider), flushed to disk, then hard-linked into place
//! and the directory flushed, so a crash leaves either no key or a whole one. The link fails if
//! a key appeared meanwhile, where a rename would silently replace it: of two writers racing for
//! one path, exactly one succeeds and its key is the one on disk.
//!
//! Reading opens the path without following a symbolic link and without blocking, then judges
//! the file it opened (type, owner, mode), not whatever the path names a moment later.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_proto::SecretKey;
use nix::libc;

use crate::error::Error;

/// Permission bits a secret key file must not have: any access for group or others.
const FORBIDDEN_MODE_BITS: u32 = 0o077;
/// A key file is one short line; anything much larger is not a key file.
const MAX_KEY_FILE_LEN: u64 = 4096;
/// How many temporary names to try before giving up. A name is taken only by a leftover of a
/// crashed writer that drew the same random number, so a second try practically always works.
const TEMP_NAME_ATTEMPTS: usize = 8;

/// Reads the secret key at `path`, refusing it unless it is a regular file owned by the
/// effective user that neither group nor others may access.
pub fn read_secret_key(path: &Path) -> Result<SecretKey, Error> {
    let io_error = |what, source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    };
    // O_NOFOLLOW: a symbolic link could point at someone else's file. O_NONBLOCK: opening a
    // FIFO for reading would otherwise wait forever for a writer; on a regular file it changes
    // nothing.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::KeyFileMissing {
                path: path.to_owned(),
                hint: "enroll first (`mesh node join` or `mesh login`)",
            },
            _ if e.raw_os_error() == Some(libc::ELOOP) => Error::KeyFileNotRegular {
                path: path.to_owned(),
                kind: "a symbolic link",
            },
            _ => io_error("cannot open", e),
        })?;
    // Judge the file we opened, not whatever the path names later.
    let meta = file.metadata().map_err(|e| io_error("cannot stat", e))?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        return Err(Error::KeyFileNotRegular {
            path: path.to_owned(),
            kind: describe_file_type(file_type),
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(Error::KeyFileWrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
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

/// Names what a non-regular file is, for the error message.
fn describe_file_type(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

/// Writes `key` to `path` with mode 0600, refusing to replace an existing file.
///
/// Safe against other writers of the same path, in this process or another: exactly one gets
/// `Ok`, its key is the one on disk, and every other gets [`Error::KeyFileExists`].
pub fn write_secret_key(path: &Path, key: &SecretKey) -> Result<(), Error> {
    let io_error = |what, path: &Path, source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let exists = || Error::KeyFileExists {
        path: path.to_owned(),
    };
    if fs::symlink_metadata(path).is_ok() {
        return Err(exists());
    }
    let file_name = path.file_name().ok_or_else(|| {
        io_error(
            "cannot create",
            path,
            std::io::Error::new(
                ErrorKind::InvalidInput,
                "not a file name; give the key file's path",
            ),
        )
    })?;
    let dir = parent_dir(path);
    let (temp, mut file) = create_temp_file(dir, file_name)?;
    let result = (|| {
        // The umask can only remove bits, but say exactly what we mean anyway.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error("cannot set permissions on", &temp, e))?;
        file.write_all(key.to_file_text().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("cannot write", &temp, e))?;
        // A hard link fails if the target appeared meanwhile, where a rename would replace it.
        fs::hard_link(&temp, path).map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => exists(),
            _ => io_error("cannot create", path, e),
        })
    })();
    // The temporary name is ours alone (random, created exclusively), so removing it can
    // never delete another writer's file.
    let _ = fs::remove_file(&temp);
    result?;
    sync_dir(dir)
}

/// The directory `path` is in; a bare file name is in the current directory.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Creates a new, empty file with mode 0600 and a random name next to the key, for writing
/// the key before it is linked into place.
fn create_temp_file(dir: &Path, file_name: &std::ffi::OsStr) -> Result<(PathBuf, File), Error> {
    let mut last_error = None;
    for _ in 0..TEMP_NAME_ATTEMPTS {
        let mut name = OsString::from(".");
        name.push(file_name);
        name.push(format!(".tmp-{:016x}", random_u64()));
        let temp = dir.join(name);
        // create_new is O_CREAT|O_EXCL: it never opens an existing file or follows a link,
        // and the mode applies from the moment the file exists.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last_error = Some((temp, e)),
            Err(e) => {
                return Err(Error::Io {
                    what: "cannot create",
                    path: temp,
                    source: e,
                });
            }
        }
    }
    let (path, source) = last_error.unwrap_or_else(|| {
        (
            dir.to_owned(),
            std::io::Error::from(ErrorKind::AlreadyExists),
        )
    });
    Err(Error::Io {
        what: "cannot create a temporary file",
        path,
        source,
    })
}

/// A number for a temporary file name: different on every call in this process (a counter)
/// and across processes (std seeds `RandomState` from the operating system's random source).
/// It needs to be unique, not secret: the file is created exclusively with mode 0600.
fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// Makes a new directory entry durable: without this a crash can lose the key just written.
fn sync_dir(dir: &Path) -> Result<(), Error> {
    let io_error = |what, source| Error::Io {
        what,
        path: dir.to_owned(),
        source,
    };
    let handle = File::open(dir).map_err(|e| io_error("cannot open directory", e))?;
    match handle.sync_all() {
        // Some file systems cannot sync a directory at all; there is nothing more to do there.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other.map_err(|e| io_error("cannot sync directory", e)),
    }
}

/// Reads the key at `path`, or creates one there if there is none.
///
/// If another process or thread creates the key first, this returns that key: every caller
/// ends up with the one key on disk.
pub fn load_or_create_secret_key(path: &Path) -> Result<SecretKey, Error> {
    match read_secret_key(path) {
        Err(Error::KeyFileMissing { .. }) => {
            let key = SecretKey::generate().map_err(|source| Error::Invalid {
                path: path.to_owned(),
                source,
            })?;
            match write_secret_key(path, &key) {
                Ok(()) => Ok(key),
                // Lost the race to another creator: its key is whole on disk (it is linked only
                // once written and synced), and it is the one to use.
                Err(Error::KeyFileExists { .. }) => read_secret_key(path),
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::NodeId;

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

    /// Key `i` of a test: distinct for every `i`.
    fn nth_key(i: usize) -> SecretKey {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        seed[31] = 0xa5;
        SecretKey::from_seed(&seed)
    }

    #[test]
    fn concurrent_writers_of_one_path_have_exactly_one_winner_whose_key_is_on_disk() {
        const THREADS: usize = 8;
        for round in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("node.key");
            let barrier = std::sync::Barrier::new(THREADS);
            let results: Vec<(usize, Result<(), Error>)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|i| {
                        let (path, barrier) = (&path, &barrier);
                        s.spawn(move || {
                            let key = nth_key(round * THREADS + i);
                            barrier.wait();
                            (i, write_secret_key(path, &key))
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let winners: Vec<usize> = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(i, _)| *i)
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            for (i, r) in &results {
                if let Err(e) = r {
                    assert!(matches!(e, Error::KeyFileExists { .. }), "writer {i}: {e}");
                }
            }
            let on_disk = read_secret_key(&path).unwrap();
            assert_eq!(
                on_disk.node_id(),
                nth_key(round * THREADS + winners[0]).node_id(),
                "round {round}: the key on disk is the one whose writer got Ok"
            );
            let names: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["node.key"], "round {round}: temporary files left");
        }
    }

    #[test]
    fn concurrent_load_or_create_all_get_the_one_key_that_won() {
        const THREADS: usize = 8;
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("node.key");
            let barrier = std::sync::Barrier::new(THREADS);
            let keys: Vec<NodeId> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|_| {
                        let (path, barrier) = (&path, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            load_or_create_secret_key(path).unwrap().node_id()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = read_secret_key(&path).unwrap().node_id();
            assert!(
                keys.iter().all(|k| *k == on_disk),
                "{keys:?} vs {on_disk:?}"
            );
        }
    }

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let status = std::process::Command::new("mkfifo")
            .args(["-m", "600"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let reader_path = path.clone();
        // Detached: if the read blocks on the FIFO, the test fails instead of hanging with it.
        std::thread::spawn(move || {
            let _ = tx.send(read_secret_key(&reader_path));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO as a key hung");
        let err = result.unwrap_err();
        assert!(matches!(err, Error::KeyFileNotRegular { .. }), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_symlink_is_refused_even_to_a_good_key() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.key");
        write_secret_key(&real, &SecretKey::from_seed(&[4; 32])).unwrap();
        let link = dir.path().join("node.key");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = read_secret_key(&link).unwrap_err();
        assert!(matches!(err, Error::KeyFileNotRegular { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_directory_is_refused_as_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        let err = read_secret_key(&path).unwrap_err();
        assert!(matches!(err, Error::KeyFileNotRegular { .. }), "{err}");
    }

    #[test]
    fn a_key_owned_by_another_user_is_refused_with_the_fix() {
        let euid = nix::unistd::geteuid().as_raw();
        if euid != 0 {
            // Only root can give a file away; as anyone else there is nothing to set up.
            eprintln!("skipped: needs root to chown a file to another uid");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_secret_key(&path, &SecretKey::from_seed(&[4; 32])).unwrap();
        std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
        let err = read_secret_key(&path).unwrap_err();
        assert!(
            matches!(
                err,
                Error::KeyFileWrongOwner {
                    owner: 4242,
                    euid: 0,
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("uid 4242"), "{message}");
        assert!(message.contains("chown"), "{message}");
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("node.key")), Path::new("."));
        assert_eq!(
            parent_dir(Path::new("/etc/mesh/node.key")),
            Path::new("/etc/mesh")
        );
        assert_eq!(parent_dir(Path::new("keys/node.key")), Path::new("keys"));
    }

    #[test]
    fn a_bare_file_name_is_written_in_the_current_directory() {
        // The only test that changes the working directory; nextest runs each test in its
        // own process, so no other test sees it.
        let dir = tempfile::tempdir().unwrap();
        std::env::set_current_dir(dir.path()).unwrap();
        let key = SecretKey::from_seed(&[6; 32]);
        write_secret_key(Path::new("bare.key"), &key).unwrap();
        assert_eq!(
            read_secret_key(&dir.path().join("bare.key"))
                .unwrap()
                .node_id(),
            key.node_id()
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
