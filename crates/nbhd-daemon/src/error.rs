//! Errors that end a command, each with the exit code of the CLI contract (DESIGN.md §6) and a
//! one-line message that says what to do.

use std::fmt;
use std::path::PathBuf;

/// Exit codes of DESIGN.md §6; scripts depend on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    NotFound = 1,
    Usage = 2,
    NoDaemon = 3,
    AlreadyRunning = 4,
    DataDirUnwritable = 5,
}

#[derive(Debug)]
pub enum DaemonError {
    Usage(String),
    NoDaemon(PathBuf),
    AlreadyRunning(PathBuf),
    DataDirUnwritable(PathBuf, std::io::Error),
    NotFound(String),
    Other(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            DaemonError::Usage(_) => ExitCode::Usage,
            DaemonError::NoDaemon(_) => ExitCode::NoDaemon,
            DaemonError::AlreadyRunning(_) => ExitCode::AlreadyRunning,
            DaemonError::DataDirUnwritable(..) => ExitCode::DataDirUnwritable,
            DaemonError::NotFound(_) | DaemonError::Other(_) => ExitCode::NotFound,
        }
    }

    pub fn other(context: &str, e: impl fmt::Display) -> DaemonError {
        DaemonError::Other(format!("{context}: {e}"))
    }
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Usage(m) => write!(f, "{m}"),
            DaemonError::NoDaemon(d) => write!(
                f,
                "no daemon is running on data dir {}: start one with `nbhd up --nick NAME` (same --data-dir)",
                d.display()
            ),
            DaemonError::AlreadyRunning(d) => write!(
                f,
                "a daemon already runs on data dir {}: stop it first, or give this one another --data-dir",
                d.display()
            ),
            DaemonError::DataDirUnwritable(d, e) => write!(
                f,
                "cannot write data dir {} ({e}): fix its permissions or choose another with --data-dir",
                d.display()
            ),
            DaemonError::NotFound(m) => write!(f, "{m}"),
            DaemonError::Other(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for DaemonError {}
