//! What every multi-host test file shares: running `nbhd` inside a lab host, starting daemons,
//! reading their JSON. Each test file includes it with `mod common;`.
#![allow(dead_code)] // each test file uses its own share of these

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nbhd_lab::{wait_for, Lab};
use serde_json::Value;

pub const NBHD: &str = env!("CARGO_BIN_EXE_nbhd");

pub fn support(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(file)
        .display()
        .to_string()
}

pub fn data_dir(lab: &Lab, i: usize) -> PathBuf {
    lab.dir.join(format!("data-h{}", i + 1))
}

/// Runs `nbhd --data-dir <h's dir> ARGS` inside host `i`.
pub fn nbhd(lab: &Lab, i: usize, dir: &Path, args: &[&str]) -> Output {
    let mut c = lab.command(i, NBHD);
    c.arg("--data-dir").arg(dir).args(args);
    c.output().expect("run nbhd")
}

pub fn start(lab: &mut Lab, i: usize, nick: &str, extra: &[&str]) -> u32 {
    let log = lab.dir.join(format!("nbhd-h{}-{nick}.log", i + 1));
    start_logged(lab, i, nick, extra, &log)
}

/// Starts host `i`'s daemon again on its data dir (after a kill), logging to a file of its own.
pub fn restart(lab: &mut Lab, i: usize, nick: &str) -> u32 {
    let log = lab
        .dir
        .join(format!("nbhd-h{}-{nick}-restarted.log", i + 1));
    start_logged(lab, i, nick, &[], &log)
}

pub fn start_logged(lab: &mut Lab, i: usize, nick: &str, extra: &[&str], log: &Path) -> u32 {
    let dir = data_dir(lab, i);
    let log = log.to_path_buf();
    let mut c = lab.command(i, NBHD);
    c.env("NBHD_LOG", "info")
        .arg("--data-dir")
        .arg(&dir)
        .args(["up", "--nick", nick])
        .args(extra);
    let pid = lab.spawn_command(c, &log).expect("spawn nbhd up");
    // The control socket appears once the daemon has its data dir, lock, interfaces and sockets.
    let ok = wait_for(Duration::from_secs(20), || {
        nbhd(lab, i, &dir, &["status", "--json"]).status.success()
    });
    assert!(
        ok.is_some(),
        "daemon on h{} did not come up; log:\n{}",
        i + 1,
        read(&log)
    );
    pid
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

pub fn peers(lab: &Lab, i: usize) -> Vec<Value> {
    let out = nbhd(lab, i, &data_dir(lab, i), &["peers", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

pub fn nicks(lab: &Lab, i: usize) -> Vec<String> {
    let mut v: Vec<String> = peers(lab, i)
        .iter()
        .filter_map(|p| p["nick"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

/// Waits until host `i` lists `instance`; its row. On timeout, the panic shows `log`.
pub fn wait_for_listed(lab: &Lab, i: usize, instance: &str, log: &Path, what: &str) -> Value {
    wait_for(Duration::from_secs(20), || {
        peers(lab, i).iter().any(|p| p["instance"] == instance)
    })
    .unwrap_or_else(|| {
        panic!(
            "nbhd did not list {instance}: {:?}; {what} log:\n{}",
            peers(lab, i),
            read(log)
        )
    });
    peers(lab, i)
        .into_iter()
        .find(|p| p["instance"] == instance)
        .expect("listed")
}

pub fn status(lab: &Lab, i: usize) -> Value {
    let out = nbhd(lab, i, &data_dir(lab, i), &["status", "--json"]);
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// Runs `nbhd --json ARGS` on host `i`; (exit code, parsed stdout).
pub fn nbhd_json(lab: &Lab, i: usize, args: &[&str]) -> (Option<i32>, Value) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = nbhd(lab, i, &data_dir(lab, i), &a);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Starts `nbhd events --json` on host `i`, one event per line into a file; the file's path.
pub fn follow_events(lab: &mut Lab, i: usize) -> PathBuf {
    let log = lab.dir.join(format!("events-h{}.jsonl", i + 1));
    let mut c = lab.command(i, NBHD);
    c.arg("--data-dir")
        .arg(data_dir(lab, i))
        .args(["events", "--json"]);
    lab.spawn_command(c, &log).expect("nbhd events");
    log
}
