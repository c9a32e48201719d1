//! `bench/invite`: invitation latency when the network half-breaks, beside the anchor of
//! telepathy-salut's way (a plain TCP sender: connect, send, give up when the kernel does).
//!
//! Three hosts in network namespaces (nbhd-lab) running `nbhd up`; alice invites bob in each
//! condition, in this order:
//! - healthy: N invitations over a working network;
//! - fault on a live stream: alice's stream to bob is open and working, then the seed's fault
//!   (the bridge silently drops every IP packet from alice to bob); invitations 1 to 10 after it,
//!   each printed, against the goal max(2 × healthy p50, 5 ms) from the second on; and how long
//!   after the first courier win alice's doctor names the broken direction;
//! - seed black hole: N more under the same fault;
//! - black hole + 20 % loss: N more with 20 % random loss on every host as well.
//!
//! The anchor: 20 plain TCP connects from alice to bob in parallel under the black hole, default
//! kernel settings: how many delivered, and how long until the kernel gave up.
//!
//!   cargo build --release -p nbhd -p nbhd-bench && sudo target/release/invite [--count N] [--nbhd PATH]
//!
//! `--nbhd PATH` measures another build of `nbhd` (an older release, for a before/after).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nbhd_bench::nbhd_bin;
use nbhd_lab::{is_root, wait_for, Lab};

struct Bench {
    lab: Lab,
    bin: PathBuf,
    dirs: Vec<PathBuf>,
}

impl Bench {
    fn nbhd(&self, i: usize, args: &[&str]) -> std::process::Output {
        let mut c = self.lab.command(i, self.bin.to_str().expect("utf-8"));
        c.arg("--data-dir").arg(&self.dirs[i]).args(args);
        c.output().expect("run nbhd")
    }

    /// One invitation from alice to bob: (latency ms, path), or None if not delivered.
    fn invite(&self, name: &str) -> Option<(f64, String)> {
        let out = self.nbhd(0, &["--json", "invite", "bob", name, "--timeout", "20"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return None;
        }
        let latency = field(&text, "latency_ms").and_then(|v| v.parse().ok())?;
        Some((latency, field(&text, "via").unwrap_or("?").to_string()))
    }

    /// Alice's doctor row for bob says unicast-broken, our direction broken, theirs fine.
    fn doctor_names_the_fault(&self) -> bool {
        let out = self.nbhd(0, &["--json", "doctor"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let Some(row) = text.split('}').find(|r| r.contains("\"nick\":\"bob\"")) else {
            return false;
        };
        field(row, "state") == Some("unicast-broken")
            && field(row, "unicast_out") == Some("broken")
            && field(row, "unicast_in") == Some("ok")
    }
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

fn row(name: &str, count: usize, lat: &[f64], paths: &[String]) {
    let mut by: std::collections::BTreeMap<&str, usize> = Default::default();
    for p in paths {
        *by.entry(p.as_str()).or_default() += 1;
    }
    let paths: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if lat.is_empty() {
        println!("{name:<26} {:>9}", format!("0/{count}"));
        return;
    }
    println!(
        "{name:<26} {:>9} {:>7.2} {:>7.2} {:>7.2} {:>7.2}  {}",
        format!("{}/{count}", lat.len()),
        pct(lat, 0.5),
        pct(lat, 0.9),
        pct(lat, 0.99),
        pct(lat, 1.0),
        paths.join(", ")
    );
}

fn main() {
    let mut count = 200usize;
    let mut bin = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--count" => count = args.next().and_then(|v| v.parse().ok()).expect("--count N"),
            "--nbhd" => bin = Some(PathBuf::from(args.next().expect("--nbhd PATH"))),
            "-h" | "--help" => {
                println!("usage: invite [--count N] [--nbhd PATH]   (needs root)");
                return;
            }
            o => panic!("unknown argument {o}"),
        }
    }
    if !is_root() {
        eprintln!("bench/invite needs root (network namespaces)");
        std::process::exit(2);
    }
    let bin = bin.unwrap_or_else(nbhd_bin);
    let mut lab = Lab::new(3).expect("lab");
    let dirs: Vec<PathBuf> = (0..3).map(|i| lab.dir.join(format!("data-{i}"))).collect();
    for (i, nick) in ["alice", "bob", "carol"].iter().enumerate() {
        let mut c = lab.command(i, bin.to_str().expect("utf-8"));
        c.env("NBHD_LOG", "warn")
            .arg("--data-dir")
            .arg(&dirs[i])
            .args(["up", "--nick", nick]);
        let log = lab.dir.join(format!("{nick}.log"));
        lab.spawn_command(c, &log).expect("nbhd up");
    }
    let b = Bench { lab, bin, dirs };
    let bob_seen = || {
        String::from_utf8_lossy(&b.nbhd(0, &["--json", "peers"]).stdout)
            .contains("\"nick\":\"bob\"")
    };
    wait_for(Duration::from_secs(30), bob_seen).expect("alice sees bob");
    let version = String::from_utf8_lossy(&b.nbhd(0, &["--version"]).stdout)
        .trim()
        .to_string();

    println!(
        "# bench/invite: alice invites bob (3 hosts, namespaces on one bridge); {version} at {}",
        b.bin.display()
    );
    println!(
        "{:<26} {:>9} {:>7} {:>7} {:>7} {:>7}  paths",
        "condition", "delivered", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );

    // Healthy.
    let (mut lat, mut paths) = (Vec::new(), Vec::new());
    for k in 0..count {
        if let Some((l, p)) = b.invite(&format!("healthy {k}")) {
            lat.push(l);
            paths.push(p);
        }
    }
    row("healthy", count, &lat, &paths);
    let healthy_p50 = if lat.is_empty() {
        f64::NAN
    } else {
        pct(&lat, 0.5)
    };

    // Fault on a live stream: the stream is open (the healthy run just used it).
    b.lab.drop_unicast(0, 1).expect("drop");
    let mut after = Vec::new();
    let mut doctor_after = None;
    for k in 1..=10 {
        let r = b.invite(&format!("after the fault {k}"));
        if k == 1 && r.is_some() {
            // The first invitation's reply is the courier's win: how long until the doctor
            // names the broken direction?
            let since = Instant::now();
            doctor_after = wait_for(Duration::from_secs(5), || b.doctor_names_the_fault())
                .map(|_| since.elapsed());
        }
        after.push(r);
    }
    let goal = (2.0 * healthy_p50).max(5.0);
    let fmt: Vec<String> = after
        .iter()
        .map(|r| match r {
            Some((l, p)) => format!("{l:.2} ({p})"),
            None => "lost".into(),
        })
        .collect();
    println!(
        "fault on a live stream     invitations 1-10 after the fault, ms: {}",
        fmt.join(", ")
    );
    let met = after[1..]
        .iter()
        .all(|r| r.as_ref().is_some_and(|(l, _)| *l <= goal));
    println!(
        "                           goal from the 2nd on: each within max(2 × healthy p50, 5 ms) = {goal:.2} ms: {}",
        if met { "met" } else { "NOT met" }
    );
    println!(
        "                           doctor names the broken direction {} after the first courier win (goal: within 1 s)",
        doctor_after.map_or("never (5 s)".to_string(), |d| format!("{} ms", d.as_millis()))
    );

    // The seed black hole, then with loss.
    for (name, loss) in [("seed black hole", false), ("black hole + 20 % loss", true)] {
        if loss {
            for i in 0..3 {
                b.lab.loss(i, 20).expect("loss");
            }
        }
        let (mut lat, mut paths) = (Vec::new(), Vec::new());
        for k in 0..count {
            if let Some((l, p)) = b.invite(&format!("{name} {k}")) {
                lat.push(l);
                paths.push(p);
            }
        }
        row(name, count, &lat, &paths);
        if loss && !lat.is_empty() {
            println!(
                "                           goal: p99 under 500 ms ({:.2}) and worst under 1 s ({:.2}): {}",
                pct(&lat, 0.99),
                pct(&lat, 1.0),
                if pct(&lat, 0.99) < 500.0 && pct(&lat, 1.0) < 1000.0 && lat.len() == count {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }

    // The anchor: what Salut had. A plain TCP connect + send from alice to bob's port, 20 in
    // parallel, under the black hole, with the kernel's default SYN retries.
    b.lab.clear_faults().expect("clear");
    b.lab.drop_unicast(0, 1).expect("drop");
    let port = {
        let out = b.nbhd(0, &["--json", "peers"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        field(&text, "port").unwrap_or("5298").to_string()
    };
    anchor(&b.lab, &port);
}

fn anchor(lab: &Lab, port: &str) {
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
    println!();
    println!("# what trust costs (issue 15), in this process:");
    for line in nbhd_bench::crypto::costs() {
        println!("  {line}");
    }
}
