//! `bench/flood`: a hostile or broken host on the link, and the daemons beside it.
//!
//! Five hosts in network namespaces (nbhd-lab): three daemons (the victims), a flooder, and a
//! fifth host whose daemon starts while the flood runs. For each flood in turn (forged mDNS
//! announcements from port 5353, each a new `_presence._tcp` instance; courier frames; TCP
//! connections to a victim's XEP-0174 port opened and left idle), the same measures beside the
//! same without the flood:
//! - the flood's rate (what the flooder sent);
//! - the control socket's answer time on a victim (`nbhd status` asked every 100 ms: p50, p99,
//!   max);
//! - the victims' RSS over time;
//! - how long after it starts a new daemon is listed by all three victims.
//!
//! Goals (issue 11): answer time p99 under 100 ms; the new daemon listed within 2× its time
//! without the flood; RSS under 30 MB.
//!
//!   cargo build --release -p nbhd -p nbhd-bench && sudo target/release/flood [--seconds S]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nbhd_bench::nbhd_bin;
use nbhd_daemon::contract::Request;
use nbhd_daemon::control::Client;
use nbhd_daemon::DataDir;
use nbhd_lab::{is_root, wait_for, Lab};

const VICTIMS: usize = 3;
const FLOODER: usize = 3;
const NEWCOMER: usize = 4;

/// `flood mdns|courier SRC SECONDS` and `flood tcp SRC TARGET:PORT SECONDS`, run inside the
/// flooder's namespace: as fast as it can; prints how many it sent.
fn flood(args: &[String]) {
    let kind = args[0].as_str();
    let src: Ipv4Addr = args[1].parse().expect("SRC");
    let end = Instant::now() + Duration::from_secs_f64(args.last().unwrap().parse().unwrap());
    let mut sent = 0u64;
    match kind {
        "mdns" | "courier" => {
            let (group, port) = if kind == "mdns" {
                (Ipv4Addr::new(224, 0, 0, 251), 5353)
            } else {
                (Ipv4Addr::new(239, 255, 110, 98), 7641)
            };
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .expect("socket");
            s.set_reuse_address(true).ok();
            s.set_reuse_port(true).ok();
            // Responses must come from port 5353 to count as mDNS (RFC 6762 §11).
            s.bind(&SocketAddr::from((src, port)).into()).expect("bind");
            s.set_multicast_if_v4(&src).expect("multicast if");
            s.set_multicast_ttl_v4(255).ok();
            let s: UdpSocket = s.into();
            let mut rng = 0x9e3779b97f4a7c15u64;
            while Instant::now() < end {
                for _ in 0..64 {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let bytes = if kind == "mdns" {
                        announcement(sent, src)
                    } else {
                        courier_frame(rng)
                    };
                    if s.send_to(&bytes, (group, port)).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        "tcp" => {
            let target: SocketAddr = args[2].parse().expect("TARGET:PORT");
            let mut open: Vec<TcpStream> = Vec::new();
            while Instant::now() < end {
                // Keep up to 1,000 idle connections, replacing those the victim closes.
                open.retain(|c| {
                    let mut b = [0u8; 1];
                    c.set_nonblocking(true).ok();
                    !matches!(c.peek(&mut b), Ok(0))
                });
                if open.len() < 1000 {
                    if let Ok(c) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                        open.push(c);
                        sent += 1;
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        other => panic!("unknown flood {other}"),
    }
    println!("{sent}");
    let _ = std::io::stdout().flush();
}

/// A forged response announcing a new instance `fake{k}@prank` (PTR, SRV, TXT, A), by hand.
fn announcement(k: u64, ip: Ipv4Addr) -> Vec<u8> {
    let mut m = vec![0, 0, 0x84, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    let name = |m: &mut Vec<u8>, labels: &[&str]| {
        for l in labels {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
    };
    let inst = format!("fake{k}@prank");
    let host = format!("fake{k}");
    let rr = |m: &mut Vec<u8>, rtype: u16, ttl: u32, data: &[u8]| {
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&ttl.to_be_bytes());
        m.extend_from_slice(&(data.len() as u16).to_be_bytes());
        m.extend_from_slice(data);
    };
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

/// A courier-channel datagram with a plausible header and noise for the rest.
fn courier_frame(seed: u64) -> Vec<u8> {
    let mut f = b"NBHF".to_vec();
    let mut x = seed;
    for _ in 0..200 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.push(x as u8);
    }
    f
}

struct Bench {
    lab: Lab,
    bin: PathBuf,
    dirs: Vec<PathBuf>,
    pids: Vec<u32>,
}

impl Bench {
    fn start(&mut self, i: usize, dir: PathBuf) -> u32 {
        let mut c = self.lab.command(i, self.bin.to_str().expect("utf-8"));
        c.env("NBHD_LOG", "warn").arg("--data-dir").arg(&dir).args([
            "up",
            "--nick",
            &format!("h{}", i + 1),
        ]);
        let log = self.lab.dir.join(format!(
            "nbhd-{}.log",
            dir.file_name().unwrap().to_string_lossy()
        ));
        let pid = self.lab.spawn_command(c, &log).expect("nbhd up");
        let dd = DataDir::resolve(Some(dir.clone()));
        wait_for(Duration::from_secs(30), || {
            Client::connect(&dd)
                .and_then(|mut c| c.call(&Request::Status))
                .is_ok()
        })
        .expect("daemon up");
        self.dirs[i] = dir;
        pid
    }

    fn client(&self, i: usize) -> Option<Client> {
        Client::connect(&DataDir::resolve(Some(self.dirs[i].clone()))).ok()
    }

    /// Does victim `i` list a peer with this nick?
    fn lists(&self, i: usize, nick: &str) -> bool {
        self.client(i)
            .and_then(|mut c| c.call(&Request::Peers).ok())
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|a| a.iter().any(|p| p["nick"] == nick))
    }

    /// A daemon on the newcomer's host, started fresh: how long until every victim lists it.
    /// It is stopped (with its goodbye) afterwards.
    fn newcomer(&mut self, round: &str) -> Option<Duration> {
        let dir = self.lab.dir.join(format!("newcomer-{round}"));
        let started = Instant::now();
        let pid = self.start(NEWCOMER, dir);
        let nick = format!("h{}", NEWCOMER + 1);
        let listed = wait_for(Duration::from_secs(60), || {
            (0..VICTIMS).all(|i| self.lists(i, &nick))
        })
        .map(|_| started.elapsed());
        self.lab.signal(pid, libc::SIGTERM);
        self.lab.wait_exit(pid, Duration::from_secs(10));
        wait_for(Duration::from_secs(10), || {
            (0..VICTIMS).all(|i| !self.lists(i, &nick))
        });
        listed
    }
}

/// A process's resident memory, in kB.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// While `busy` holds: the `status` answer time of the daemon on `dir` every 100 ms (ms), and
/// the RSS of `pids` every second (MB).
fn watch(dir: DataDir, pids: Vec<u32>, busy: &AtomicBool) -> (Vec<f64>, Vec<Vec<f64>>) {
    let answers = Mutex::new(Vec::new());
    let rss = Mutex::new(vec![Vec::new(); pids.len()]);
    std::thread::scope(|s| {
        s.spawn(|| {
            while busy.load(Ordering::SeqCst) {
                let t = Instant::now();
                let ok = Client::connect(&dir).and_then(|mut c| c.call(&Request::Status));
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                answers
                    .lock()
                    .unwrap()
                    .push(if ok.is_ok() { ms } else { f64::INFINITY });
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
        });
        s.spawn(|| {
            while busy.load(Ordering::SeqCst) {
                for (i, pid) in pids.iter().enumerate() {
                    rss.lock().unwrap()[i].push(rss_kb(*pid) as f64 / 1024.0);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    });
    (answers.into_inner().unwrap(), rss.into_inner().unwrap())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("flood") {
        return flood(&args[1..]);
    }
    let mut seconds = 60.0f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).expect("--seconds S"),
            "-h" | "--help" => {
                println!("usage: flood [--seconds S]   (needs root)");
                return;
            }
            o => panic!("unknown argument {o}"),
        }
    }
    if !is_root() {
        eprintln!("bench/flood needs root (network namespaces)");
        std::process::exit(2);
    }
    let lab = Lab::new(5).expect("lab");
    let mut b = Bench {
        dirs: (0..5)
            .map(|i| lab.dir.join(format!("data-h{}", i + 1)))
            .collect(),
        lab,
        bin: nbhd_bin(),
        pids: Vec::new(),
    };
    for i in 0..VICTIMS {
        let dir = b.dirs[i].clone();
        let pid = b.start(i, dir);
        b.pids.push(pid);
    }
    wait_for(Duration::from_secs(30), || {
        (0..VICTIMS).all(|i| {
            (0..VICTIMS)
                .filter(|j| *j != i)
                .all(|j| b.lists(i, &format!("h{}", j + 1)))
        })
    })
    .expect("the victims see each other");
    let me = std::env::current_exe().expect("own path");
    let me = me.to_str().expect("utf-8").to_string();
    let flooder_ip = b.lab.host(FLOODER).ip.to_string();
    let victim0 = b.lab.host(0).ip;
    // The victim's XEP-0174 port, as the others see it.
    let p2pj = b
        .client(1)
        .and_then(|mut c| c.call(&Request::Peers).ok())
        .and_then(|v| v.as_array().cloned())
        .and_then(|a| {
            a.iter()
                .find(|p| p["nick"] == "h1")
                .and_then(|p| p["port"].as_u64())
        })
        .expect("h1's port") as u16;

    println!(
        "# bench/flood: 3 daemons, a flooder, a newcomer started during the flood; {seconds} s per flood; nbhd at {}",
        b.bin.display()
    );
    println!(
        "{:<16} {:>12} | {:>9} {:>9} {:>9} | {:>16} | {:>14} {:>14}",
        "flood",
        "rate",
        "answer p50",
        "p99",
        "max",
        "victims' RSS MB",
        "newcomer listed",
        "(no flood)"
    );
    let mut goals = Vec::new();
    for kind in ["mdns", "courier", "tcp"] {
        let quiet = b.newcomer(&format!("{kind}-quiet"));
        let busy = AtomicBool::new(true);
        let log = b.lab.dir.join(format!("flood-{kind}.txt"));
        let mut cmd: Vec<String> =
            vec![me.clone(), "flood".into(), kind.into(), flooder_ip.clone()];
        if kind == "tcp" {
            cmd.push(SocketAddr::from((victim0, p2pj)).to_string());
        }
        cmd.push(format!("{seconds}"));
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let flood_pid = b.lab.spawn(FLOODER, &refs, &log).expect("flooder");
        let started = Instant::now();
        let newcomer_at = Duration::from_secs_f64((seconds / 4.0).min(15.0));
        let (dir0, pids) = (DataDir::resolve(Some(b.dirs[0].clone())), b.pids.clone());
        let mut flooded = None;
        let (answers, rss) = std::thread::scope(|s| {
            let busy = &busy;
            let watcher = s.spawn(move || watch(dir0, pids, busy));
            std::thread::sleep(newcomer_at);
            flooded = b.newcomer(&format!("{kind}-flood"));
            let left = Duration::from_secs_f64(seconds).saturating_sub(started.elapsed());
            std::thread::sleep(left);
            busy.store(false, Ordering::SeqCst);
            watcher.join().unwrap()
        });
        b.lab.wait_exit(flood_pid, Duration::from_secs(30));
        let sent: f64 = std::fs::read_to_string(&log)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0.0);
        let rate = sent / seconds;
        let unit = if kind == "tcp" { "conn/s" } else { "pkt/s" };
        let max_rss = rss.iter().flatten().cloned().fold(0.0, f64::max);
        let rss_range: Vec<String> = rss
            .iter()
            .map(|v| {
                format!(
                    "{:.1}-{:.1}",
                    v.iter().cloned().fold(f64::INFINITY, f64::min),
                    v.iter().cloned().fold(0.0, f64::max)
                )
            })
            .collect();
        let fmt =
            |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        println!(
            "{:<16} {:>7.0} {unit:<6}| {:>7.2}ms {:>7.2}ms {:>7.2}ms | {:>16} | {:>14} {:>14}",
            kind,
            rate,
            pct(&answers, 0.5),
            pct(&answers, 0.99),
            pct(&answers, 1.0),
            rss_range.join(" "),
            fmt(flooded),
            fmt(quiet)
        );
        let listed_ok = match (flooded, quiet) {
            (Some(f), Some(q)) => f <= q * 2,
            _ => false,
        };
        goals.push((kind, pct(&answers, 0.99) < 100.0, listed_ok, max_rss < 30.0));
        // What the victims counted.
        if let Some(mut c) = b.client(0) {
            if let Ok(s) = c.call(&Request::Stats) {
                println!(
                    "{:<16} h1 dropped: mdns {} | courier {} | messages {} | tables {}",
                    "",
                    s["mdns"]["dropped"],
                    s["courier"]["dropped"],
                    s["messages"]["dropped"],
                    s["tables"]
                );
            }
        }
    }
    for (kind, answer, listed, rss) in goals {
        let m = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "goals, {kind}: answer p99 < 100 ms {}; newcomer listed within 2x its time without the flood {}; RSS < 30 MB {}",
            m(answer),
            m(listed),
            m(rss)
        );
    }
}
