//! File-system helpers with the durability rules of the log.
//!
//! A file is durable only after `fsync` of the file and, when it was created or renamed, of its
//! directory. Metadata is replaced with temp file → fsync → rename → fsync directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, LogError, Result};

/// Suffix of temporary files (deleted at open).
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// Fsyncs a directory, making creations, renames and deletions in it durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).ctx(|| format!("opening directory {} to fsync it", dir.display()))?;
    f.sync_all().ctx(|| format!("fsyncing directory {}", dir.display()))
}

/// Creates a directory (and parents) if missing.
pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).ctx(|| format!("creating directory {}", dir.display()))
}

/// Durably replaces `path` with `bytes`: temp file, fsync, rename, fsync directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes).ctx(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsyncing {}", tmp.display()))?;
        fs::rename(&tmp, path).ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    match path.parent() {
        Some(dir) => fsync_dir(dir),
        None => Ok(()),
    }
}

/// `path` + `.tmp`.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Removes a file; a missing file is not an error.
pub(crate) fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io(format!("deleting {}", path.display()), e)),
    }
}

/// Renames a file if the source exists; returns whether it did.
pub(crate) fn rename_if_exists(from: &Path, to: &Path) -> Result<bool> {
    match fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LogError::io(format!("renaming {} to {}", from.display(), to.display()), e)),
    }
}

/// Lists the entries of a directory as (file name, path).
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))?;
    for entry in rd {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// An exclusive `flock` on `<dir>/.lock`, held for the life of a [`crate::Log`] and released by
/// the kernel when the process dies (even by SIGKILL).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock> {
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .ctx(|| format!("opening lock file {}", path.display()))?;
        // SAFETY: `flock` only reads the descriptor, which `file` keeps open for this call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(LogError::DirectoryLocked { path: dir.display().to_string() });
            }
            return Err(LogError::io(format!("locking {}", path.display()), err));
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("meta.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert!(!tmp_path(&p).exists());
    }

    #[test]
    fn second_lock_on_a_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DirLock::acquire(dir.path()).expect("first lock");
        let err = DirLock::acquire(dir.path()).expect_err("second lock must fail");
        assert!(matches!(err, LogError::DirectoryLocked { .. }), "{err}");
        drop(first);
        DirLock::acquire(dir.path()).expect("lock again after release");
    }

    #[test]
    fn removing_missing_files_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        remove_file_if_exists(&dir.path().join("nope")).expect("ok");
        assert!(!rename_if_exists(&dir.path().join("a"), &dir.path().join("b")).expect("ok"));
    }
}
