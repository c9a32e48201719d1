//! `bench/activity`: a shared activity's goodput and repair latency, beside raw UDP multicast
//! sending the same bytes with no reliability at all (the physical anchor: what the link
//! carries at that load), and an idle activity's cost, beside Clique's.
//!
//! For each number of members (2, 5, 10) and each loss (0 %, 5 %, 20 % of every packet every
//! host receives), a fresh lab (nbhd-lab namespaces on one bridge) with one `nbhd up` per
//! member; h1 shares an activity, the others join it by name. Then:
//! - nbhd: h1 posts N posts of SIZE bytes as fast as its API takes them (each returns once
//!   stored); every other member follows its events. Goodput is N × SIZE over the time from the
//!   first post to the moment the last member holds all N; repair latency (from a member
//!   noticing a packet missing to holding it) is what each member's `nbhd stats` measured.
//! - raw: the same N datagrams of SIZE bytes from h1 to a multicast group at the same rate (the
//!   offered load nbhd's poster achieved), counted where they arrive: no repair, what is lost is
//!   lost.
//!
//! Idle: 10 members, nothing posted, the activity's packets counted on the bridge for a few
//! minutes; Clique's figure is from its constants (a keepalive per member every 180 s).
//!
//!   cargo build --release -p nbhd -p nbhd-bench && sudo target/release/activity \
//!       [--posts N] [--size BYTES] [--members 2,5,10] [--loss 0,5,20] [--idle-minutes M]

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nbhd_bench::nbhd_bin;
use nbhd_daemon::contract::{Event, Request};
use nbhd_daemon::control::Client;
use nbhd_daemon::DataDir;
use nbhd_lab::{is_root, wait_for, Lab};
use serde_json::Value;

/// The raw anchor's group and port (apart from any activity's).
const RAW_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 77);
const RAW_PORT: u16 = 47777;
/// Clique's keepalive interval (telepathy-salut, gibber-r-multicast-transport.c).
const CLIQUE_KEEPALIVE_S: f64 = 180.0;
/// Clique's first repair request waits at least this (its NACK delay is 150–250 ms).
const CLIQUE_REPAIR_FLOOR_MS: f64 = 150.0;

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `activity raw-send SRC COUNT SIZE PPS`: COUNT datagrams of SIZE bytes to the raw group out
/// of the interface with address SRC, paced at PPS. Prints the unix ns of the first and last.
fn raw_send(args: &[String]) {
    let src: Ipv4Addr = args[0].parse().expect("SRC");
    let (count, size): (usize, usize) = (args[1].parse().unwrap(), args[2].parse().unwrap());
    let pps: f64 = args[3].parse().unwrap();
    let s = UdpSocket::bind((src, 0)).expect("bind");
    let sock = socket2::SockRef::from(&s);
    sock.set_multicast_if_v4(&src).expect("multicast if");
    sock.set_multicast_ttl_v4(1).expect("ttl");
    let mut payload = vec![b'x'; size];
    let start = Instant::now();
    let first = unix_ns();
    for k in 0..count {
        let due = start + Duration::from_secs_f64(k as f64 / pps);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        payload[..8].copy_from_slice(&(k as u64).to_be_bytes());
        let _ = s.send_to(&payload, (RAW_GROUP, RAW_PORT));
    }
    println!("{first} {}", unix_ns());
}

/// `activity raw-recv IFADDR WAIT_S`: counts datagrams to the raw group until WAIT_S seconds
/// pass with nothing (after the first) or at all. Prints `packets bytes first_ns last_ns`.
fn raw_recv(args: &[String]) {
    let ifaddr: Ipv4Addr = args[0].parse().expect("IFADDR");
    let wait = Duration::from_secs_f64(args[1].parse().unwrap());
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, RAW_PORT)).expect("bind");
    s.join_multicast_v4(&RAW_GROUP, &ifaddr).expect("join");
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(8 << 20);
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    println!("ready");
    let mut buf = vec![0u8; 65536];
    let (mut packets, mut bytes, mut first, mut last) = (0u64, 0u64, 0u128, 0u128);
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        match s.recv(&mut buf) {
            Ok(n) => {
                let t = unix_ns();
                if packets == 0 {
                    first = t;
                }
                last = t;
                packets += 1;
                bytes += n as u64;
                quiet_since = Instant::now();
            }
            Err(_) if quiet_since.elapsed() >= wait => break,
            Err(_) => {}
        }
    }
    println!("{packets} {bytes} {first} {last}");
}

struct Config {
    posts: usize,
    size: usize,
}

struct Member {
    dir: DataDir,
}

/// One lab of `n` members in one activity: (lab, members, the activity's id, its port).
fn lab_with_activity(bin: &Path, n: usize) -> (Lab, Vec<Member>, String, u16) {
    let mut lab = Lab::new(n).expect("lab");
    let mut members = Vec::new();
    for i in 0..n {
        let dir = lab.dir.join(format!("data-h{}", i + 1));
        let mut c = lab.command(i, bin.to_str().expect("utf-8"));
        c.env("NBHD_LOG", "warn").arg("--data-dir").arg(&dir).args([
            "up",
            "--nick",
            &format!("m{}", i + 1),
        ]);
        let log = lab.dir.join(format!("nbhd-h{}.log", i + 1));
        lab.spawn_command(c, &log).expect("nbhd up");
        members.push(Member {
            dir: DataDir::resolve(Some(dir)),
        });
    }
    let call = |i: usize, r: &Request| -> Option<Value> {
        Client::connect(&members[i].dir).ok()?.call(r).ok()
    };
    for i in 0..n {
        wait_for(Duration::from_secs(30), || {
            call(i, &Request::Status).is_some()
        })
        .expect("daemon up");
    }
    let share = call(
        0,
        &Request::Share {
            name: "bench".into(),
            private: false,
            kind: "bench".into(),
        },
    )
    .expect("share");
    let id = share["id"].as_str().expect("id").to_string();
    let port: u16 = share["group"]
        .as_str()
        .and_then(|g| g.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("group:port");
    for i in 1..n {
        let joined = wait_for(Duration::from_secs(30), || {
            call(
                i,
                &Request::Join {
                    activity: "bench".into(),
                },
            )
            .is_some()
        });
        joined.expect("join by name");
    }
    let all_in = wait_for(Duration::from_secs(60), || {
        (0..n).all(|i| {
            call(i, &Request::Activities).is_some_and(|v| {
                v.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["id"] == id.as_str() && x["members"] == n as u64)
                })
            })
        })
    });
    all_in.expect("every member counts every member");
    (lab, members, id, port)
}

struct Run {
    members: usize,
    loss: u8,
    offered_pps: f64,
    raw_delivered: f64,
    raw_mbps: f64,
    raw_pps: f64,
    nbhd_delivered: f64,
    nbhd_mbps: f64,
    nbhd_pps: f64,
    /// (median over members of their p50, worst p99), ms, and how many repairs.
    repair: Option<(f64, f64, u64)>,
}

fn run(bin: &Path, cfg: &Config, n: usize, loss: u8) -> Run {
    let (mut lab, members, id, _port) = lab_with_activity(bin, n);
    for i in 0..n {
        lab.loss(i, loss).expect("loss");
    }
    // nbhd: followers first (nothing is missed), then the poster.
    let (tx, rx) = mpsc::channel::<(usize, u64)>();
    for (i, m) in members.iter().enumerate().skip(1) {
        let mut c = Client::connect(&m.dir).expect("control socket");
        c.subscribe().expect("events");
        let (tx, id, want) = (tx.clone(), id.clone(), cfg.posts);
        std::thread::spawn(move || {
            let mut got = 0usize;
            let _ = c.each_event(|ev| {
                if let Event::Post { at, activity, .. } = ev {
                    if activity == id {
                        got += 1;
                        if got == want {
                            let _ = tx.send((i, at));
                            return false;
                        }
                    }
                }
                true
            });
        });
    }
    drop(tx);
    let mut poster = Client::connect(&members[0].dir).expect("control socket");
    let start_ms = unix_ns() / 1_000_000;
    let started = Instant::now();
    for k in 0..cfg.posts {
        let mut text = format!("{k:08} ");
        text.extend(std::iter::repeat_n(
            'x',
            cfg.size.saturating_sub(text.len()),
        ));
        poster
            .call(&Request::Post {
                activity: id.clone(),
                text: Some(text),
                bytes: None,
            })
            .expect("post");
    }
    let posting = started.elapsed();
    let offered_pps = cfg.posts as f64 / posting.as_secs_f64();
    // Every member holds all N (or 60 s pass).
    let mut done: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.len() < n - 1 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, at)) => done.push(at),
            Err(_) => break,
        }
    }
    let nbhd_delivered = done.len() as f64 / (n - 1) as f64;
    let last_ms = done.iter().copied().max().unwrap_or(start_ms as u64);
    let secs = (last_ms as f64 - start_ms as f64).max(1.0) / 1000.0;
    let total = (cfg.posts * cfg.size) as f64;
    let (nbhd_mbps, nbhd_pps) = if done.len() == n - 1 {
        (total / secs / 1e6, cfg.posts as f64 / secs)
    } else {
        (f64::NAN, f64::NAN)
    };
    let mut p50s = Vec::new();
    let (mut p99, mut repaired) = (0f64, 0u64);
    for m in members.iter().skip(1) {
        let s = Client::connect(&m.dir)
            .and_then(|mut c| c.call(&Request::Stats))
            .expect("stats");
        let a = &s["activity"];
        repaired += a["repaired"].as_u64().unwrap_or(0);
        if let Some(l) = a["repair_latency_ms"].as_object() {
            p50s.push(l["p50"].as_f64().unwrap_or(f64::NAN));
            p99 = p99.max(l["p99"].as_f64().unwrap_or(0.0));
        }
    }
    p50s.sort_by(|a, b| a.total_cmp(b));
    let repair = (!p50s.is_empty()).then(|| (p50s[p50s.len() / 2], p99, repaired));

    // Raw: the same datagrams at the same rate, counted where they arrive.
    let me = std::env::current_exe().expect("own path");
    let me = me.to_str().expect("utf-8");
    let mut recv_logs = Vec::new();
    for i in 1..n {
        let log = lab.dir.join(format!("raw-recv-h{}.txt", i + 1));
        let ip = lab.host(i).ip.to_string();
        lab.spawn(i, &[me, "raw-recv", &ip, "2"], &log)
            .expect("raw-recv");
        recv_logs.push(log);
    }
    for log in &recv_logs {
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(log).is_ok_and(|s| s.starts_with("ready"))
        })
        .expect("receiver ready");
    }
    let src = lab.host(0).ip.to_string();
    let out = lab
        .exec(
            0,
            &[
                me,
                "raw-send",
                &src,
                &cfg.posts.to_string(),
                &cfg.size.to_string(),
                &format!("{offered_pps}"),
            ],
        )
        .expect("raw-send");
    let sent: Vec<u128> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let first_sent = sent.first().copied().unwrap_or(0);
    let (mut delivered, mut mbps, mut pps) = (Vec::new(), Vec::new(), Vec::new());
    for log in &recv_logs {
        let finished = wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(log).is_ok_and(|s| s.lines().count() >= 2)
        });
        finished.expect("receiver done");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let v: Vec<u128> = text
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let (packets, last) = (v[0] as f64, v[3]);
        let secs = (last.saturating_sub(first_sent)) as f64 / 1e9;
        delivered.push(packets / cfg.posts as f64);
        mbps.push(packets * cfg.size as f64 / secs.max(1e-3) / 1e6);
        pps.push(packets / secs.max(1e-3));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Run {
        members: n,
        loss,
        offered_pps,
        raw_delivered: mean(&delivered),
        raw_mbps: mean(&mbps),
        raw_pps: mean(&pps),
        nbhd_delivered,
        nbhd_mbps,
        nbhd_pps,
        repair,
    }
}

fn idle(bin: &Path, minutes: f64) -> (f64, u64) {
    let (lab, _members, _id, port) = lab_with_activity(bin, 10);
    // The quick sessions after the joins are over well within this.
    std::thread::sleep(Duration::from_secs(10));
    lab.count_udp(port).expect("count");
    std::thread::sleep(Duration::from_secs_f64(minutes * 60.0));
    let (packets, _) = lab.udp_counter(port).expect("counter");
    (packets as f64 / minutes, packets)
}

fn list(v: &str) -> Vec<u64> {
    v.split(',')
        .map(|x| x.trim().parse().expect("a number"))
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("raw-send") => return raw_send(&args[1..]),
        Some("raw-recv") => return raw_recv(&args[1..]),
        _ => {}
    }
    let mut cfg = Config {
        posts: 1000,
        size: 1024,
    };
    let (mut members, mut losses, mut idle_minutes) = (vec![2, 5, 10], vec![0, 5, 20], 3.0);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{a} wants a value"))
        };
        match a.as_str() {
            "--posts" => cfg.posts = val().parse().expect("--posts N"),
            "--size" => cfg.size = val().parse().expect("--size BYTES"),
            "--members" => members = list(&val()),
            "--loss" => losses = list(&val()),
            "--idle-minutes" => idle_minutes = val().parse().expect("--idle-minutes M"),
            "-h" | "--help" => {
                println!("usage: activity [--posts N] [--size BYTES] [--members 2,5,10] [--loss 0,5,20] [--idle-minutes M]   (needs root)");
                return;
            }
            o => panic!("unknown argument {o}"),
        }
    }
    if !is_root() {
        eprintln!("bench/activity needs root (network namespaces)");
        std::process::exit(2);
    }
    let bin = nbhd_bin();
    println!(
        "# bench/activity: one poster, {} posts of {} bytes, as fast as its API takes them; raw UDP multicast sends the same datagrams at the same rate",
        cfg.posts, cfg.size
    );
    println!("# loss: that share of every packet every host receives is dropped (nftables); Clique's repair cannot start before {CLIQUE_REPAIR_FLOOR_MS} ms");
    println!(
        "{:>7} {:>5} {:>8} | {:>9} {:>7} {:>8} | {:>9} {:>7} {:>8} {:>6} | {:>10} {:>10} {:>8}",
        "members",
        "loss",
        "offered",
        "raw deliv",
        "MB/s",
        "posts/s",
        "nbhd all",
        "MB/s",
        "posts/s",
        "×raw",
        "repair p50",
        "repair p99",
        "repaired"
    );
    let mut goal_goodput = None;
    let mut goal_repair = None;
    for &n in &members {
        for &l in &losses {
            let r = run(&bin, &cfg, n as usize, l as u8);
            let ratio = r.nbhd_mbps / r.raw_mbps;
            let (p50, p99, repaired) = match r.repair {
                Some((a, b, c)) => (format!("{a:.2} ms"), format!("{b:.2} ms"), c.to_string()),
                None => ("-".into(), "-".into(), "0".into()),
            };
            println!(
                "{:>7} {:>4}% {:>6.0}/s | {:>8.1}% {:>7.3} {:>8.0} | {:>8.0}% {:>7.3} {:>8.0} {:>5.2}× | {:>10} {:>10} {:>8}",
                r.members, r.loss, r.offered_pps,
                r.raw_delivered * 100.0, r.raw_mbps, r.raw_pps,
                r.nbhd_delivered * 100.0, r.nbhd_mbps, r.nbhd_pps, ratio,
                p50, p99, repaired
            );
            if r.loss == 0 {
                let worst: f64 = goal_goodput.map_or(ratio, |g: f64| g.min(ratio));
                goal_goodput = Some(worst);
            }
            if r.loss == 20 {
                if let Some((p50, _, _)) = r.repair {
                    let worst: f64 = goal_repair.map_or(p50, |g: f64| g.max(p50));
                    goal_repair = Some(worst);
                }
            }
        }
    }
    if let Some(g) = goal_goodput {
        println!(
            "goal: at 0% loss, nbhd goodput >= 70% of raw ({} byte posts): worst {:.0}%: {}",
            cfg.size,
            g * 100.0,
            if g >= 0.7 { "met" } else { "NOT met" }
        );
    }
    if let Some(g) = goal_repair {
        println!(
            "goal: at 20% loss, repair p50 < 50 ms (Clique: >= {CLIQUE_REPAIR_FLOOR_MS} ms by design): worst {g:.2} ms: {}",
            if g < 50.0 { "met" } else { "NOT met" }
        );
    }
    if idle_minutes > 0.0 {
        let (per_min, packets) = idle(&bin, idle_minutes);
        println!(
            "idle activity, 10 members: {per_min:.1} packets/min ({packets} in {idle_minutes} min); Clique: {:.1} packets/min (a keepalive per member every {CLIQUE_KEEPALIVE_S} s)",
            10.0 * 60.0 / CLIQUE_KEEPALIVE_S
        );
    }
    println!("# what trust costs (issue 15), in this process:");
    for line in nbhd_bench::crypto::costs() {
        println!("  {line}");
    }
}
