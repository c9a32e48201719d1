//! `bench/invite`: invitation latency when the network half-breaks, beside the anchor of
//! telepathy-salut's way (a plain TCP sender: connect, send, give up when the kernel does).
//!
//! Three hosts in network namespaces (nbhd-lab) running `nbhd up`; alice invites bob N times
//! (default 200) in each condition: healthy; the seed black hole (the bridge silently drops every
//! IP packet from alice to bob); the black hole plus 20 % random loss on every host. Prints
//! p50/p90/p99/max and the paths used. The anchor: 20 plain TCP connects from alice to bob in
//! parallel under the black hole, default kernel settings: how many delivered, and how long until
//! the kernel gave up.
//!
//!   cargo build --release -p nbhd -p nbhd-bench && sudo target/release/invite [--count N]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nbhd_bench::nbhd_bin;
use nbhd_lab::{is_root, wait_for, Lab};

fn nbhd(lab: &Lab, i: usize, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut c = lab.command(i, nbhd_bin().to_str().expect("utf-8"));
    c.arg("--data-dir").arg(dir).args(args);
    c.output().expect("run nbhd")
}

fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let mut count = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = args.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "-h" | "--help" => {
                println!("usage: invite [--count N]   (needs root)");
                return;
            }
            o => panic!("unknown argument {o}"),
        }
    }
    if !is_root() {
        eprintln!("bench/invite needs root (network namespaces)");
        std::process::exit(2);
    }
    let mut lab = Lab::new(3).expect("lab");
    let dirs: Vec<PathBuf> = (0..3).map(|i| lab.dir.join(format!("data-{i}"))).collect();
    for (i, nick) in ["alice", "bob", "carol"].iter().enumerate() {
        let mut c = lab.command(i, nbhd_bin().to_str().expect("utf-8"));
        c.env("NBHD_LOG", "warn")
            .arg("--data-dir")
            .arg(&dirs[i])
            .args(["up", "--nick", nick]);
        let log = lab.dir.join(format!("{nick}.log"));
        lab.spawn_command(c, &log).expect("nbhd up");
    }
    let bob_seen = || {
        String::from_utf8_lossy(&nbhd(&lab, 0, &dirs[0], &["--json", "peers"]).stdout)
            .contains("\"nick\":\"bob\"")
    };
    wait_for(Duration::from_secs(30), bob_seen).expect("alice sees bob");

    println!("# bench/invite: {count} invitations from alice to bob per condition (3 hosts, namespaces on one bridge)");
    println!(
        "{:<26} {:>9} {:>7} {:>7} {:>7} {:>7}  paths",
        "condition", "delivered", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, setup) in [
        ("healthy", 0u8),
        ("seed black hole", 1),
        ("black hole + 20 % loss", 2),
    ] {
        lab.clear_faults().expect("clear");
        if setup >= 1 {
            lab.drop_unicast(0, 1).expect("drop");
        }
        if setup == 2 {
            for i in 0..3 {
                lab.loss(i, 20).expect("loss");
            }
        }
        let mut lat = Vec::new();
        let mut paths: std::collections::BTreeMap<String, usize> = Default::default();
        for k in 0..count {
            let out = nbhd(
                &lab,
                0,
                &dirs[0],
                &[
                    "--json",
                    "invite",
                    "bob",
                    &format!("{name} {k}"),
                    "--timeout",
                    "20",
                ],
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() {
                lat.push(
                    field(&text, "latency_ms")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(f64::NAN),
                );
                *paths
                    .entry(field(&text, "via").unwrap_or("?").to_string())
                    .or_default() += 1;
            }
        }
        let paths: Vec<String> = paths.iter().map(|(k, v)| format!("{k} {v}")).collect();
        if lat.is_empty() {
            println!("{name:<26} {:>9}", format!("0/{count}"));
            continue;
        }
        println!(
            "{name:<26} {:>9} {:>7.2} {:>7.2} {:>7.2} {:>7.2}  {}",
            format!("{}/{count}", lat.len()),
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
            paths.join(", ")
        );
    }

    // The anchor: what Salut had. A plain TCP connect + send from alice to bob's port, 20 in
    // parallel, under the black hole, with the kernel's default SYN retries.
    lab.clear_faults().expect("clear");
    lab.drop_unicast(0, 1).expect("drop");
    let port = {
        let out = nbhd(&lab, 0, &dirs[0], &["--json", "peers"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        field(&text, "port").unwrap_or("5298").to_string()
    };
    let bob = lab.host(1).ip.to_string();
    let script = format!(
        "import socket,threading,time\n\
         res=[]\n\
         def one():\n  t=time.time()\n  try:\n    s=socket.create_connection(('{bob}',{port}),timeout=None); s.sendall(b'<message/>'); res.append(('ok',time.time()-t))\n  except Exception as e:\n    res.append(('fail',time.time()-t))\n\
         ts=[threading.Thread(target=one) for _ in range(20)]\n\
         [t.start() for t in ts]; [t.join() for t in ts]\n\
         ok=sum(1 for r in res if r[0]=='ok'); give=max(r[1] for r in res)\n\
         print(ok, round(give,1))\n"
    );
    let syn_retries =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_syn_retries").unwrap_or_default();
    let t = Instant::now();
    let out = lab.exec(0, &["python3", "-c", &script]).expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let (ok, give) = (it.next().unwrap_or("?"), it.next().unwrap_or("?"));
    println!();
    println!(
        "anchor (plain TCP as Salut, seed black hole, tcp_syn_retries={}): {ok}/20 delivered, the kernel gave up after {give} s (wall {:.0} s)",
        syn_retries.trim(),
        t.elapsed().as_secs_f64()
    );
}
