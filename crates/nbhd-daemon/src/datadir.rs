//! The data dir (DESIGN.md §5): where it is, that it is writable, and that one daemon owns it.
//!
//! Layout: `nbhd.db` (the store), `nbhd.sock` (control socket), `lock`, `api` (the web/API
//! address), `token` (0600, the API bearer token).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::DaemonError;

#[derive(Clone, Debug)]
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    /// `--data-dir`, else `$NBHD_DATA_DIR`, else `$XDG_DATA_HOME/nbhd`, else `~/.local/share/nbhd`.
    pub fn resolve(explicit: Option<PathBuf>) -> DataDir {
        let path = explicit
            .or_else(|| {
                std::env::var_os("NBHD_DATA_DIR")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| {
                std::env::var_os("XDG_DATA_HOME")
                    .filter(|v| !v.is_empty())
                    .map(|d| PathBuf::from(d).join("nbhd"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/nbhd"))
            })
            .unwrap_or_else(|| PathBuf::from(".nbhd"));
        DataDir { path }
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join("nbhd.sock")
    }
    pub fn store(&self) -> PathBuf {
        self.path.join("nbhd.db")
    }
    pub fn api_file(&self) -> PathBuf {
        self.path.join("api")
    }
    pub fn token_file(&self) -> PathBuf {
        self.path.join("token")
    }

    /// Creates the dir if needed and proves it writable by writing into it.
    pub fn ensure_writable(&self) -> Result<(), DaemonError> {
        let err = |e| DaemonError::DataDirUnwritable(self.path.clone(), e);
        fs::create_dir_all(&self.path).map_err(err)?;
        let probe = self.path.join(".write-test");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(err)?;
        let _ = fs::remove_file(probe);
        Ok(())
    }

    /// Takes the data dir's lock for the life of the returned file (one daemon per data dir).
    pub fn lock(&self) -> Result<File, DaemonError> {
        let path = self.path.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DaemonError::DataDirUnwritable(self.path.clone(), e))?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                DaemonError::AlreadyRunning(self.path.clone())
            } else {
                DaemonError::DataDirUnwritable(self.path.clone(), e)
            });
        }
        Ok(f)
    }

    /// Writes a file atomically (temp + rename), with the given mode.
    pub fn write_file(&self, path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(mode)
                .open(&tmp)?;
            f.write_all(content)?;
            f.sync_all()?;
        }
        fs::rename(tmp, path)
    }
}
