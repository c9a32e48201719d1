//! The soak (issue 11): many daemons for a long while under random faults, and the checks that
//! matter after it: nothing lost (every invitation whose `nbhd invite` said delivered is kept
//! by its receiver), nothing shown twice (each invitation event a receiver's log recorded, over
//! all its restarts, is recorded once), memory flat after warm-up, no unexplained error in any
//! log.
//!
//! Faults, drawn from a seeded generator: the seed's black hole (one direction of unicast
//! between a pair silently dropped) moving between pairs, bursts of 20 % loss on a host,
//! daemons killed with SIGKILL and restarted, and one host flooding forged mDNS announcements
//! for a while. `bench/soak` runs it long; the test command runs it for two minutes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nbhd_daemon::contract::Request;
use nbhd_daemon::control::Client;
use nbhd_daemon::DataDir;
use nbhd_lab::{wait_for, Lab};

pub struct Config {
    pub hosts: usize,
    pub duration: Duration,
    pub seed: u64,
    /// The `nbhd` binary.
    pub nbhd: PathBuf,
}

#[derive(Debug, Default)]
pub struct Report {
    pub invitations_tried: usize,
    pub delivered: usize,
    /// Delivered, by the path that carried them.
    pub by_path: BTreeMap<String, usize>,
    /// Delivered invitations their receiver does not keep.
    pub missing: Vec<String>,
    /// Invitations whose sender was told "not delivered" ...
    pub not_delivered: usize,
    /// ... of which the receiver keeps anyway (it got them; no receipt reached the sender
    /// within the timeout) ...
    pub not_delivered_kept: usize,
    /// ... and invitations no reply came for (the sender's daemon unreachable).
    pub unanswered: usize,
    /// Invitations a receiver announced (an `invitation` event) more than once, restarts
    /// included, and how many invitation events were seen in all.
    pub duplicated: Vec<String>,
    pub events: usize,
    /// Delivered invitations their receiver kept but never announced.
    pub unannounced: Vec<String>,
    pub kills: usize,
    pub black_holes: usize,
    pub loss_bursts: usize,
    pub flood_packets: u64,
    pub flood_seconds: f64,
    /// Per daemon never killed: RSS (MB) at the end of warm-up, at the end, and its peak.
    pub rss: Vec<(f64, f64, f64)>,
    /// Log lines at WARN and above, by what they say (numbers taken out), with their count.
    pub log_lines: BTreeMap<String, usize>,
    /// Of those, the ERRORs and panics.
    pub errors: Vec<String>,
}

/// xorshift: a run is replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Host {
    dir: DataDir,
    log: PathBuf,
    pid: Option<u32>,
    /// Killed at some point: its RSS is not a warm-up-to-end series.
    restarted: bool,
    /// Down until this time, then restarted.
    down_until: Option<Instant>,
}

fn nick(i: usize) -> String {
    format!("s{}", i + 1)
}

fn start(lab: &mut Lab, bin: &Path, i: usize, h: &mut Host) {
    let mut c = lab.command(i, bin.to_str().expect("utf-8"));
    // Warnings, and each event (an invitation's among them: the duplicate check reads them).
    c.env("NBHD_LOG", "warn,nbhd_daemon::daemon=info")
        .arg("--data-dir")
        .arg(&h.dir.path)
        .args(["up", "--nick", &nick(i)]);
    // Appended across restarts: the whole run's log.
    h.pid = Some(lab.spawn_command_appending(c, &h.log).expect("nbhd up"));
    let dir = h.dir.clone();
    wait_for(Duration::from_secs(30), || {
        Client::connect(&dir)
            .and_then(|mut c| c.call(&Request::Status))
            .is_ok()
    })
    .expect("daemon up");
}

fn call(h: &Host, r: &Request) -> Option<serde_json::Value> {
    Client::connect(&h.dir).ok()?.call(r).ok()
}

/// Does daemon `i` list every other daemon (whatever else a flood made it list)?
fn sees_all(hosts: &[Host], i: usize) -> bool {
    let nicks: Vec<String> = call(&hosts[i], &Request::Peers)
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["nick"].as_str().map(String::from))
        .collect();
    (0..hosts.len())
        .filter(|j| *j != i)
        .all(|j| nicks.contains(&nick(j)))
}

/// A process's resident memory, in MB (0 when it is gone).
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A forged mDNS response announcing a new instance `fake{k}@prank` at `ip` (PTR, SRV, TXT,
/// A), built by hand as a flooding host would.
pub fn forged_announcement(k: u64, ip: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0, 0, 0x84, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    let name = |m: &mut Vec<u8>, labels: &[&str]| {
        for l in labels {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
    };
    let rr = |m: &mut Vec<u8>, rtype: u16, ttl: u32, data: &[u8]| {
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(data);
    };
    let (inst, host) = (format!("fake{k}@prank"), format!("fake{k}"));
    let mut ptr = Vec::new();
    name(&mut ptr, &[&inst, "_presence", "_tcp", "local"]);
    name(&mut m, &["_presence", "_tcp", "local"]);
    rr(&mut m, 12, 4500, &ptr);
    let mut srv = vec![0, 0, 0, 0, 0x14, 0xb2];
    name(&mut srv, &[&host, "local"]);
    name(&mut m, &[&inst, "_presence", "_tcp", "local"]);
    rr(&mut m, 33, 120, &srv);
    name(&mut m, &[&inst, "_presence", "_tcp", "local"]);
    rr(&mut m, 16, 4500, b"\x09txtvers=1");
    name(&mut m, &[&host, "local"]);
    rr(&mut m, 1, 120, &ip.octets());
    m
}

/// Floods forged announcements from `src` (port 5353) until `stop`; counts into `sent`.
pub fn mdns_flood(src: Ipv4Addr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .expect("socket");
    let _ = s.set_reuse_address(true);
    let _ = s.set_reuse_port(true);
    s.bind(&SocketAddr::from((src, 5353)).into())
        .expect("bind 5353");
    s.set_multicast_if_v4(&src).expect("multicast if");
    let s: UdpSocket = s.into();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let bytes = forged_announcement(k, src);
        if s.send_to(&bytes, (Ipv4Addr::new(224, 0, 0, 251), 5353))
            .is_ok()
        {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        k += 1;
    }
}

/// Floods forged announcements until `stop`, each datagram from a forged source address: the
/// host part of `src`'s /24 cycles over every address but the first `skip` (the lab's real
/// hosts), and with `off_link` also over 192.168.77.0/24, which is on no lab interface. Built
/// whole (IPv4 and UDP headers by hand) on a raw socket, as a hostile host would; IPv4 lets
/// the UDP checksum be zero, and the kernel fills in the IP header's. At `rate` datagrams a
/// second, or as fast as it can (None). Counts into `sent`.
pub fn spoofed_mdns_flood(
    src: Ipv4Addr,
    skip: u8,
    off_link: bool,
    rate: Option<f64>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
    )?;
    s.set_multicast_if_v4(&src)?;
    s.set_multicast_ttl_v4(255)?;
    let group = Ipv4Addr::new(224, 0, 0, 251);
    let dest = SocketAddr::from((group, 5353)).into();
    let [a, b, c, _] = src.octets();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let host = skip + 1 + (k % u64::from(253 - skip)) as u8;
        let from = if off_link && k % 2 == 1 {
            Ipv4Addr::new(192, 168, 77, host)
        } else {
            Ipv4Addr::new(a, b, c, host)
        };
        let payload = forged_announcement(k, from);
        let udp_len = 8 + payload.len();
        let mut p = Vec::with_capacity(20 + udp_len);
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 255, 17, 0, 0]);
        p.extend_from_slice(&from.octets());
        p.extend_from_slice(&group.octets());
        p.extend_from_slice(&5353u16.to_be_bytes());
        p.extend_from_slice(&5353u16.to_be_bytes());
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(&payload);
        if s.send_to(&p, &dest).is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        k += 1;
        if let Some(rate) = rate.filter(|_| k.is_multiple_of(64)) {
            let due = std::time::Duration::from_secs_f64(k as f64 / rate);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
    }
    Ok(())
}

/// Applies the current faults: the black hole's pair and the host losing packets.
fn apply_faults(lab: &Lab, hole: Option<(usize, usize)>, lossy: Option<usize>) {
    lab.clear_faults().expect("clear faults");
    if let Some((a, b)) = hole {
        lab.drop_unicast(a, b).expect("black hole");
    }
    if let Some(i) = lossy {
        lab.loss(i, 20).expect("loss");
    }
}

/// A log line with its numbers taken out, so that lines saying the same thing group.
fn shape(line: &str) -> String {
    let body = line
        .split_once(" WARN ")
        .or_else(|| line.split_once(" ERROR "))
        .map_or(line, |(_, b)| b);
    body.chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect::<String>()
        .split(' ')
        .filter(|w| !w.contains('=') || w.starts_with("reason=") || w.starts_with("channel="))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(cfg: &Config, mut progress: impl FnMut(&str)) -> Report {
    let n = cfg.hosts;
    let mut lab = Lab::new(n).expect("lab");
    let mut hosts: Vec<Host> = (0..n)
        .map(|i| Host {
            dir: DataDir::resolve(Some(lab.dir.join(format!("data-{}", nick(i))))),
            log: lab.dir.join(format!("nbhd-{}.log", nick(i))),
            pid: None,
            restarted: false,
            down_until: None,
        })
        .collect();
    for (i, h) in hosts.iter_mut().enumerate() {
        start(&mut lab, &cfg.nbhd, i, h);
    }
    wait_for(Duration::from_secs(60), || {
        (0..n).all(|i| sees_all(&hosts, i))
    })
    .expect("every daemon sees every other");
    progress(&format!("{n} daemons see each other"));

    let mut rng = Rng(cfg.seed | 1);
    let mut report = Report::default();
    let started = Instant::now();
    let warm = cfg.duration / 5;
    let (flood_from, flood_for) = (
        cfg.duration / 5,
        (cfg.duration / 5).min(Duration::from_secs(60)),
    );
    // The black hole's pair, and the host losing packets until when.
    let mut hole: Option<(usize, usize)> = None;
    let mut lossy: Option<(usize, Instant)> = None;
    let mut rss_series: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut last_rss = Instant::now() - Duration::from_secs(60);
    let mut delivered: Vec<(usize, String)> = Vec::new();
    let mut not_delivered: Vec<(usize, String)> = Vec::new();
    let stop_flood = Arc::new(AtomicBool::new(false));
    let flood_sent = Arc::new(AtomicU64::new(0));
    let mut flood: Option<(std::thread::JoinHandle<std::io::Result<()>>, Instant)> = None;
    let mut k = 0usize;
    let mut last_report = Instant::now();
    while started.elapsed() < cfg.duration {
        let now = Instant::now();
        // Restarts that are due.
        for (i, h) in hosts.iter_mut().enumerate() {
            if h.down_until.is_some_and(|t| t <= now) {
                h.down_until = None;
                start(&mut lab, &cfg.nbhd, i, h);
            }
        }
        if lossy.is_some_and(|(_, until)| until <= now) {
            lossy = None;
            apply_faults(&lab, hole, None);
        }
        // The flood, once.
        if flood.is_none() && started.elapsed() >= flood_from {
            let (stop, sent) = (stop_flood.clone(), flood_sent.clone());
            let ip = lab.host(n - 1).ip;
            flood = Some((
                lab.thread_in(n - 1, move || mdns_flood(ip, stop, sent)),
                Instant::now(),
            ));
            progress("flood started");
        }
        if let Some((_, at)) = &flood {
            if at.elapsed() >= flood_for && !stop_flood.load(Ordering::Relaxed) {
                stop_flood.store(true, Ordering::Relaxed);
                report.flood_seconds = at.elapsed().as_secs_f64();
                progress("flood stopped");
            }
        }
        match rng.below(100) {
            0..=69 => {
                let (a, b) = (rng.below(n), rng.below(n));
                if a != b && hosts[a].down_until.is_none() {
                    k += 1;
                    report.invitations_tried += 1;
                    let r = call(
                        &hosts[a],
                        &Request::Invite {
                            peer: nick(b),
                            activity: format!("soak-{k}"),
                            timeout: 5.0,
                        },
                    );
                    let id = |v: &serde_json::Value| v["id"].as_str().unwrap_or("").to_string();
                    match r {
                        Some(v) if v["delivered"] == true => {
                            report.delivered += 1;
                            let via = v["via"].as_str().unwrap_or("?").to_string();
                            *report.by_path.entry(via).or_default() += 1;
                            delivered.push((b, id(&v)));
                        }
                        Some(v) => not_delivered.push((b, id(&v))),
                        None => report.unanswered += 1,
                    }
                }
            }
            70..=79 => {
                let (a, b) = (rng.below(n), rng.below(n));
                if a != b {
                    hole = Some((a, b));
                    report.black_holes += 1;
                    apply_faults(&lab, hole, lossy.map(|(i, _)| i));
                }
            }
            80..=87 if lossy.is_none() => {
                let i = rng.below(n);
                lossy = Some((i, now + Duration::from_secs(5)));
                report.loss_bursts += 1;
                apply_faults(&lab, hole, Some(i));
            }
            88..=91 => {
                let i = rng.below(n - 1); // the flooder's daemon stays
                let down = hosts.iter().filter(|h| h.down_until.is_some()).count();
                if down < 2 && hosts[i].down_until.is_none() {
                    if let Some(pid) = hosts[i].pid.take() {
                        lab.signal(pid, libc::SIGKILL);
                        lab.wait_exit(pid, Duration::from_secs(5));
                    }
                    hosts[i].restarted = true;
                    hosts[i].down_until = Some(now + Duration::from_secs(3 + rng.below(6) as u64));
                    report.kills += 1;
                }
            }
            _ => {}
        }
        if last_rss.elapsed() >= Duration::from_secs(10) {
            last_rss = Instant::now();
            for (i, h) in hosts.iter().enumerate() {
                if let (Some(pid), false) = (h.pid, h.restarted) {
                    rss_series[i].push(rss_mb(pid));
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            progress(&format!(
                "{:.0} s: {} invitations, {} delivered, {} kills, {} black holes, {} loss bursts",
                started.elapsed().as_secs_f64(),
                report.invitations_tried,
                report.delivered,
                report.kills,
                report.black_holes,
                report.loss_bursts
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_flood.store(true, Ordering::Relaxed);
    if let Some((t, _)) = flood {
        let _ = t.join();
    }
    report.flood_packets = flood_sent.load(Ordering::Relaxed);
    // The end: faults cleared, everyone back, everyone sees everyone.
    lab.clear_faults().expect("clear");
    for (i, h) in hosts.iter_mut().enumerate() {
        if h.down_until.take().is_some() {
            start(&mut lab, &cfg.nbhd, i, h);
        }
    }
    // A host that flooded is heard again once its fakes' SRV records expired (120 s) and its
    // own next announcement came (at most 90 s later).
    if wait_for(Duration::from_secs(240), || {
        (0..n).all(|i| sees_all(&hosts, i))
    })
    .is_none()
    {
        let lists: Vec<String> = (0..n)
            .map(|i| {
                let peers = call(&hosts[i], &Request::Peers)
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default();
                let real: Vec<String> = peers
                    .iter()
                    .filter(|p| {
                        p["instance"]
                            .as_str()
                            .is_some_and(|s| !s.ends_with("@prank"))
                    })
                    .map(|p| format!("{}={}", p["nick"], p["instance"]))
                    .collect();
                format!("{} lists {}", nick(i), real.join(" "))
            })
            .collect();
        panic!(
            "not everyone sees everyone 240 s after the faults ended:\n{}\nlogs in {}",
            lists.join("\n"),
            lab.dir.display()
        );
    }
    let warm_samples = (warm.as_secs() / 10) as usize;
    for s in &rss_series {
        if s.len() > warm_samples + 1 {
            let peak = s[warm_samples..].iter().cloned().fold(0.0, f64::max);
            report.rss.push((s[warm_samples], *s.last().unwrap(), peak));
        }
    }
    // Nothing lost: each delivered invitation kept by its receiver.
    let mut kept: Vec<Vec<String>> = vec![Vec::new(); n];
    for (i, h) in hosts.iter().enumerate() {
        let rows = call(h, &Request::Invitations)
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        kept[i] = rows
            .iter()
            .map(|r| r["id"].as_str().unwrap_or("").to_string())
            .collect();
    }
    for (to, id) in &delivered {
        if !kept[*to].contains(id) {
            report.missing.push(format!("{id} to {}", nick(*to)));
        }
    }
    report.not_delivered = not_delivered.len();
    report.not_delivered_kept = not_delivered
        .iter()
        .filter(|(to, id)| kept[*to].contains(id))
        .count();
    // Nothing twice: the store's primary key cannot hold a duplicate, so count what each
    // receiver announced (a restart that forgot an id would announce it again). The daemon
    // logs each invitation event as `…: invitation from=… id=… …` (daemon::on_event).
    let mut announced: Vec<BTreeMap<String, usize>> = vec![BTreeMap::new(); n];
    for (i, h) in hosts.iter().enumerate() {
        let text = std::fs::read_to_string(&h.log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(": invitation ")) {
            if let Some(id) = line.split_whitespace().find_map(|w| w.strip_prefix("id=")) {
                *announced[i].entry(id.to_string()).or_default() += 1;
                report.events += 1;
            }
        }
        for (id, c) in &announced[i] {
            if *c > 1 {
                report
                    .duplicated
                    .push(format!("{id} to {} ({c} times)", nick(i)));
            }
        }
    }
    // Every delivered invitation was announced by its receiver, too.
    for (to, id) in &delivered {
        if !announced[*to].contains_key(id) {
            report.unannounced.push(format!("{id} to {}", nick(*to)));
        }
    }
    for h in &hosts {
        let text = std::fs::read_to_string(&h.log).unwrap_or_default();
        for line in text.lines() {
            let bad = line.contains(" ERROR ") || line.contains("panicked");
            if bad || line.contains(" WARN ") {
                *report.log_lines.entry(shape(line)).or_default() += 1;
            }
            if bad {
                report.errors.push(line.to_string());
            }
        }
    }
    for h in &hosts {
        if let Some(pid) = h.pid {
            lab.signal(pid, libc::SIGTERM);
        }
    }
    report
}

/// The report, for people.
pub fn print(r: &Report) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "invitations: {} tried, {} delivered ({}), {} not kept by their receiver, {} not announced, {} announced twice (of {} invitation events)",
        r.invitations_tried,
        r.delivered,
        r.by_path
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.missing.len(),
        r.unannounced.len(),
        r.duplicated.len(),
        r.events
    ));
    line(format!(
        "not delivered (the sender told so): {}, of which the receiver keeps anyway: {}; no reply: {}",
        r.not_delivered, r.not_delivered_kept, r.unanswered
    ));
    line(format!(
        "faults: {} kills (-9, restarted), {} black holes moved, {} loss bursts, a flood of {} forged announcements in {:.0} s ({:.0}/s)",
        r.kills,
        r.black_holes,
        r.loss_bursts,
        r.flood_packets,
        r.flood_seconds,
        r.flood_packets as f64 / r.flood_seconds.max(1.0)
    ));
    let rss: Vec<String> = r
        .rss
        .iter()
        .map(|(a, b, p)| format!("{a:.1}→{b:.1} (peak {p:.1})"))
        .collect();
    line(format!(
        "RSS MB of the daemons never killed, after warm-up → end: {}",
        rss.join(", ")
    ));
    line(format!(
        "log lines at WARN and above: {}",
        r.log_lines.len()
    ));
    for (l, c) in &r.log_lines {
        line(format!("  {c:>6} × {l}"));
    }
    s
}
