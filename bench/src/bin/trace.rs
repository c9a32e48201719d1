//! `bench/trace`: `nbhd trace` on a pair of ~1 M-packet captures, side by side with the tool
//! people use today, `tshark -r FILE -T fields -e frame.time_epoch -e ip.src -e ip.dst -e ip.id
//! -e tcp.flags`, on the same files: packets per second and peak memory of each, and the ratios.
//!
//!   cargo build --release -p nbhd -p nbhd-bench && target/release/trace [--packets N]...
//!
//! The captures come from `gen_trace_pair` (same scenario generator as the tests).
//!
//! Each `--packets N` adds a run with captures of about N packets each (default: 1000000, plus
//! 3000000 to show that memory does not grow with the capture). Needs `tshark` on PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

struct Run {
    seconds: f64,
    peak_rss_mb: f64,
}

/// Runs a command to completion; its wall time and peak RSS (from wait4's rusage).
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
fn measure(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(rc, pid, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed: status {status}"
    );
    Run {
        seconds,
        peak_rss_mb: usage.ru_maxrss as f64 / 1024.0,
    }
}

fn count_packets(path: &Path) -> u64 {
    let mut r = nbhd_trace::read::CaptureReader::open(path).expect("open");
    let mut n = 0;
    while r.next_frame().expect("read").is_some() {
        n += 1;
    }
    n
}

fn main() {
    let mut sizes: Vec<usize> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--packets" => sizes.push(
                args.next()
                    .and_then(|v| v.parse().ok())
                    .expect("--packets N"),
            ),
            "-h" | "--help" => {
                println!("usage: trace [--packets N]...   (default: 1000000 and 3000000)");
                return;
            }
            other => panic!("unknown argument {other}"),
        }
    }
    if sizes.is_empty() {
        sizes = vec![1_000_000, 3_000_000];
    }
    let exe = std::env::current_exe().expect("own path");
    let nbhd = exe.parent().expect("bin dir").join("nbhd");
    assert!(
        nbhd.exists(),
        "{} not built: run `cargo build --release -p nbhd -p nbhd-bench` first",
        nbhd.display()
    );
    let tshark_version = Command::new("tshark")
        .arg("--version")
        .output()
        .expect("tshark on PATH (apt-get install tshark)");
    let tshark_version = String::from_utf8_lossy(&tshark_version.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let dir = std::env::temp_dir().join(format!("nbhd-bench-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    println!("# bench/trace: nbhd trace vs {tshark_version}");
    println!("# machine: {} cores; captures: 2 hosts, Ethernet, pcapng (ns), 5 % loss one way, clock offset 2.5 s + 40 ppm", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!();
    println!(
        "{:>10} {:>12} | {:>10} {:>12} {:>9} | {:>10} {:>12} {:>9} | {:>8} {:>9}",
        "pkts/file",
        "total pkts",
        "nbhd s",
        "nbhd pkt/s",
        "nbhd MB",
        "tshark s",
        "tshark pkt/s",
        "tshark MB",
        "speed ×",
        "memory ×"
    );
    for n in sizes {
        // Two hosts: every packet is in the sender's capture and (unless lost) the receiver's.
        // Written by a child process, so this one stays small: a child's peak RSS as wait4
        // reports it starts from its parent's size at fork.
        let gen_dir = dir.join(n.to_string());
        let gen = Command::new(exe.with_file_name("gen_trace_pair"))
            .arg(n.to_string())
            .arg(&gen_dir)
            .status()
            .expect("gen_trace_pair");
        assert!(gen.success(), "gen_trace_pair failed");
        let paths: Vec<PathBuf> = (0..2)
            .map(|h| gen_dir.join(format!("h{h}.pcapng")))
            .collect();
        let total: u64 = paths.iter().map(|p| count_packets(p)).sum();
        let ours = measure(Command::new(&nbhd).arg("trace").arg("--json").args(&paths));
        let mut theirs = Run {
            seconds: 0.0,
            peak_rss_mb: 0.0,
        };
        for p in &paths {
            let r = measure(Command::new("tshark").arg("-r").arg(p).args([
                "-T",
                "fields",
                "-e",
                "frame.time_epoch",
                "-e",
                "ip.src",
                "-e",
                "ip.dst",
                "-e",
                "ip.id",
                "-e",
                "tcp.flags",
            ]));
            theirs.seconds += r.seconds;
            theirs.peak_rss_mb = theirs.peak_rss_mb.max(r.peak_rss_mb);
        }
        let (ours_rate, theirs_rate) = (total as f64 / ours.seconds, total as f64 / theirs.seconds);
        println!(
            "{:>10} {:>12} | {:>10.2} {:>12.0} {:>9.1} | {:>10.2} {:>12.0} {:>9.1} | {:>8.1} {:>9.2}",
            total / 2,
            total,
            ours.seconds,
            ours_rate,
            ours.peak_rss_mb,
            theirs.seconds,
            theirs_rate,
            theirs.peak_rss_mb,
            ours_rate / theirs_rate,
            ours.peak_rss_mb / theirs.peak_rss_mb
        );
        for p in &paths {
            let _ = std::fs::remove_file(p);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("# speed ×: nbhd packets/s over tshark's (goal ≥ 50); memory ×: nbhd peak RSS over tshark's (goal: nbhd < 300 MB at any size)");
}
