//! The data dir (DESIGN.md §5): where it is, that it is writable, that one daemon owns it, and
//! that nobody else can read it.
//!
//! Layout: `nbhd.db` (the store, with its `-wal` and `-shm`), `nbhd.sock` (control socket),
//! `lock`, `api` (the web/API address), `token` (the API bearer token). The store holds the
//! identity key, every activity key and every message, and the token and the socket are
//! each a way to command the daemon: the dir is 0700 and every file in it 0600 (threat model,
//! the local user). Modes are set explicitly, never left to the umask, and a daemon that finds
//! them wider (a data dir from before, or a hand's `chmod`) narrows them and says so.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::DaemonError;

/// The data dir's mode: its owner only. Also the mode of any parent we create for it, as the
/// XDG base directory spec asks of `$XDG_DATA_HOME`.
pub const DIR_MODE: u32 = 0o700;
/// Every file in the data dir: its owner only.
pub const FILE_MODE: u32 = 0o600;

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
    pub fn lock_file(&self) -> PathBuf {
        self.path.join("lock")
    }

    /// Creates the dir if needed (0700), narrows it and its files to their owner if they were
    /// wider, and proves the dir writable by writing into it.
    pub fn ensure_writable(&self) -> Result<(), DaemonError> {
        let err = |e| DaemonError::DataDirUnwritable(self.path.clone(), e);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.path)
            .map_err(err)?;
        tighten(&self.path, DIR_MODE).map_err(err)?;
        // The lock and the store narrow their own files as they open them.
        for file in [self.socket(), self.token_file(), self.api_file()] {
            tighten(&file, FILE_MODE).map_err(err)?;
        }
        let probe = self.path.join(".write-test");
        create_private(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(err)?;
        let _ = fs::remove_file(probe);
        Ok(())
    }

    /// Takes the data dir's lock for the life of the returned file (one daemon per data dir).
    pub fn lock(&self) -> Result<File, DaemonError> {
        let path = self.lock_file();
        let f = create_private(&path)
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

    /// Writes a file atomically (temp + rename), with the given mode (whatever the umask, and
    /// whatever a temp file left by a crash had).
    pub fn write_file(&self, path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(mode)
                .open(&tmp)?;
            f.set_permissions(Permissions::from_mode(mode))?;
            f.write_all(content)?;
            f.sync_all()?;
        }
        fs::rename(tmp, path)
    }
}

/// The store's `-wal` or `-shm` file: SQLite names them after the store's full file name.
pub fn sidecar(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens `path` for writing (creating it, keeping what it holds) with mode [`FILE_MODE`]. The
/// umask can only narrow a new file's mode; a file that was already there keeps its own, so
/// it is narrowed here.
pub fn create_private(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(path)?;
    let old = f.metadata()?.permissions().mode() & 0o7777;
    if old & !FILE_MODE != 0 {
        f.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(|e| in_context(path, FILE_MODE, e))?;
        warn_narrowed(path, old, FILE_MODE);
    }
    Ok(f)
}

/// Narrows `path` to `mode` if it grants anything more, with a warning naming the path and its
/// old mode; a path that does not exist is left so. The error names the path.
pub fn tighten(path: &Path, mode: u32) -> io::Result<()> {
    let old = match fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(in_context(path, mode, e)),
    };
    if old & !mode == 0 {
        return Ok(());
    }
    fs::set_permissions(path, Permissions::from_mode(mode))
        .map_err(|e| in_context(path, mode, e))?;
    warn_narrowed(path, old, mode);
    Ok(())
}

fn warn_narrowed(path: &Path, old: u32, mode: u32) {
    tracing::warn!(
        path = %path.display(),
        old_mode = %format_args!("{old:04o}"),
        mode = %format_args!("{mode:04o}"),
        "open to other local users: narrowed to its owner"
    );
}

fn in_context(path: &Path, mode: u32, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("making {} private (mode {mode:04o}): {e}", path.display()),
    )
}
