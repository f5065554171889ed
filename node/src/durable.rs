//! Replacing a small file so that a crash leaves the old version or the new one, never half
//! of either: the new bytes go to a randomly named file in the same directory, are fsync'd,
//! and are renamed over the old name; then the directory is fsync'd so the rename itself
//! survives a power cut.
//!
//! [`Staged`] splits that in two so the new file can be checked where it lies before it
//! takes effect (a sudoers drop-in goes through `visudo -c` first).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::Error;

fn io(what: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The text of the file at `path`, or `None` when there is no such file (a missing config or
/// ledger means "nothing yet"; any other failure is an error).
pub fn read_if_exists(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io("cannot read", path, source)),
    }
}

/// New contents written and fsync'd under a temporary name beside their destination; dropped
/// without [`commit`](Self::commit), the temporary file is removed.
#[derive(Debug)]
pub struct Staged {
    temp: tempfile::NamedTempFile,
}

impl Staged {
    /// Writes `bytes` with permissions `mode` to a new file in `dir` whose name starts with
    /// `prefix` and is otherwise random.
    ///
    /// Choose a prefix the directory's reader ignores: sudo skips names containing a dot, so
    /// a staged drop-in never takes effect before it is checked.
    pub fn write(dir: &Path, prefix: &str, mode: u32, bytes: &[u8]) -> Result<Self, Error> {
        let mut temp = tempfile::Builder::new()
            .prefix(prefix)
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempfile_in(dir)
            .map_err(|e| io("cannot create a file in", dir, e))?;
        temp.as_file_mut()
            .write_all(bytes)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|e| io("cannot write", temp.path(), e))?;
        Ok(Self { temp })
    }

    /// Where the staged file lies now.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// Renames the staged file to `path` (in the same directory), replacing what was there,
    /// and makes the rename durable.
    pub fn commit(self, path: &Path) -> Result<(), Error> {
        self.temp
            .persist(path)
            .map_err(|e| io("cannot write", path, e.error))?;
        sync_parent(path)
    }

    /// Like [`commit`](Self::commit), but fails if `path` exists: never replaces a file.
    pub fn commit_new(self, path: &Path) -> Result<(), Error> {
        self.temp
            .persist_noclobber(path)
            .map_err(|e| io("cannot write", path, e.error))?;
        sync_parent(path)
    }
}

/// Replaces `path` with `bytes` (permissions `mode`) as described in the module docs.
pub fn replace_file(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), Error> {
    Staged::write(&parent_of(path), ".mesh-", mode, bytes)?.commit(path)
}

/// Removes `path` durably; a file already gone is not an error.
pub fn remove_file(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot remove", path, e)),
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn sync_parent(path: &Path) -> Result<(), Error> {
    let dir = parent_of(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", &dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_has_the_new_bytes_and_mode_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger");
        replace_file(&path, 0o600, b"old").unwrap();
        replace_file(&path, 0o640, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_staged_file_dropped_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let staged = Staged::write(dir.path(), ".x.", 0o440, b"rule").unwrap();
        assert!(staged.path().exists());
        drop(staged);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        remove_file(&dir.path().join("never-there")).unwrap();
    }
}
