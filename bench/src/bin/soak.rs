//! `bench/soak`: many daemons for a long while under random faults (issue 11): the seed's black
//! hole moving between pairs, loss bursts, daemons killed and restarted, one host flooding
//! forged announcements for a while. Prints what was tried and what was lost (nothing should
//! be), the daemons' memory after warm-up and at the end, and every kind of log line at WARN
//! and above. The test command runs the same for two minutes (crates/nbhd/tests/soak.rs).
//!
//!   cargo build --release -p nbhd -p nbhd-bench && sudo target/release/soak \
//!       [--hosts N] [--minutes M] [--seed S]

use std::time::Duration;

use nbhd_bench::{nbhd_bin, soak};
use nbhd_lab::is_root;

fn main() {
    let mut cfg = soak::Config {
        hosts: 20,
        duration: Duration::from_secs(30 * 60),
        seed: 2026,
        nbhd: nbhd_bin(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{a} wants a value"));
        match a.as_str() {
            "--hosts" => cfg.hosts = val().parse().expect("--hosts N"),
            "--minutes" => {
                cfg.duration =
                    Duration::from_secs_f64(val().parse::<f64>().expect("--minutes M") * 60.0)
            }
            "--seed" => cfg.seed = val().parse().expect("--seed S"),
            "-h" | "--help" => {
                println!("usage: soak [--hosts N] [--minutes M] [--seed S]   (needs root)");
                return;
            }
            o => panic!("unknown argument {o}"),
        }
    }
    if !is_root() {
        eprintln!("bench/soak needs root (network namespaces)");
        std::process::exit(2);
    }
    println!(
        "# bench/soak: {} daemons, {:.0} minutes, seed {}; nbhd at {}",
        cfg.hosts,
        cfg.duration.as_secs_f64() / 60.0,
        cfg.seed,
        cfg.nbhd.display()
    );
    let r = soak::run(&cfg, |p| eprintln!("soak: {p}"));
    print!("{}", soak::print(&r));
    let lost = r.missing.len() + r.unannounced.len() + r.duplicated.len();
    println!(
        "nothing lost or shown twice: {}; errors in the logs: {}",
        if lost == 0 { "yes" } else { "NO" },
        r.errors.len()
    );
    for e in &r.errors {
        println!("  {e}");
    }
}
