//! `nbhd-trace`: find where packets die by correlating captures taken on several hosts.
//!
//! In the founding bug report two engineers compared two tcpdump traces by hand and saw that
//! A's SYNs never reached B while A's mDNS did. This crate does that comparison for any number of
//! hosts on captures of millions of packets, in two streaming passes and bounded memory:
//!
//! 1. [`hosts`]: which host took each capture (its own addresses, from the traffic), and a
//!    sub-sample of packets to use as clock anchors;
//! 2. [`clock`]: each capture's clock offset and drift against the first one, from packets seen
//!    on both sides (broadcast and multicast from third hosts are ideal: no direction bias);
//! 3. [`matcher`]: every packet a host sent, matched one-to-one by content to its copy in each
//!    other capture within a time window, giving its fate (arrived, with one-way delay, or lost);
//! 4. [`report`]: per direction and class, sent / arrived / lost with a confidence interval, and
//!    verdicts in plain language (first of all the seed's `unicast-black-hole`).
//!
//! It is independent of the other nbhd crates: it reads files and writes a report.

pub mod clock;
pub mod hosts;
pub mod matcher;
pub mod packet;
pub mod read;
pub mod report;
pub mod synth;

use std::fmt;
use std::path::{Path, PathBuf};

pub use matcher::{Fate, Outcome};
pub use report::Report;

/// A capture to correlate, with an optional host name given by the user (`--host NAME=FILE`).
#[derive(Clone, Debug)]
pub struct Input {
    pub path: PathBuf,
    pub name: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// How far (ns, after clock correction) a copy may be from its original in time.
    pub window_ns: i64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            window_ns: 1_000_000_000,
        }
    }
}

/// An error that names the file, and the byte offset where it applies.
#[derive(Debug)]
pub struct TraceError {
    pub file: PathBuf,
    pub offset: Option<u64>,
    pub what: String,
}

impl TraceError {
    pub fn at(file: &Path, offset: u64, what: &str) -> TraceError {
        TraceError {
            file: file.to_path_buf(),
            offset: Some(offset),
            what: what.to_string(),
        }
    }

    pub fn io(file: &Path, e: std::io::Error) -> TraceError {
        TraceError {
            file: file.to_path_buf(),
            offset: None,
            what: e.to_string(),
        }
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(o) => write!(f, "{}: at byte {o}: {}", self.file.display(), self.what),
            None => write!(f, "{}: {}", self.file.display(), self.what),
        }
    }
}

impl std::error::Error for TraceError {}

/// Correlates the captures. `on_fate`, if given, hears the fate of every packet a captured host
/// sent towards another captured host (tests use it to check every single packet).
pub fn analyze(
    inputs: &[Input],
    opts: &Options,
    on_fate: Option<&mut dyn FnMut(&Fate)>,
) -> Result<Report, TraceError> {
    if inputs.is_empty() {
        return Err(TraceError {
            file: PathBuf::new(),
            offset: None,
            what: "no capture given".into(),
        });
    }
    // Pass one reads each capture in its own thread.
    let scans = std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|i| scope.spawn(|| hosts::scan(&i.path)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let hosts = hosts::identify(inputs, &scans);
    let clocks = clock::estimate(&scans, &hosts);
    let result = matcher::run(inputs, &hosts, &clocks, opts, on_fate)?;
    Ok(report::build(&hosts, &clocks, result))
}
