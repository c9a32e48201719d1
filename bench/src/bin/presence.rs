//! `bench/presence`: mDNS traffic as the room fills, nbhd beside python-zeroconf and beside
//! Avahi used the way telepathy-salut used it (one resolver kept open per peer).
//!
//! For each N and each stack: N hosts in network namespaces on one bridge (nbhd-lab), all
//! started at once; mDNS packets and bytes entering the bridge during the join (the first
//! `--join` seconds) and over the next `--steady` seconds; and the time until every node lists
//! every other. One table, with ratios to Avahi. Then, with `--footprint`, one nbhd daemon with
//! 20 peers idle for `--steady` seconds: RSS, CPU seconds and wakeups (context switches).
//!
//!   cargo build --release -p nbhd -p nbhd-bench && sudo target/release/presence
//!   options: --nodes 10,20  --join 30  --steady 300  --stacks nbhd,zeroconf,avahi  --footprint
//!
//! Needs root, nftables, python3 with `zeroconf`, avahi-daemon, dbus-daemon, and Debian's
//! /usr/bin/python3 with python3-dbus and python3-gi (scripts/test-all installs them all).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nbhd_bench::nbhd_bin;
use nbhd_lab::{is_root, wait_for, Lab};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stack {
    Nbhd,
    Zeroconf,
    Avahi,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Nbhd => "nbhd",
            Stack::Zeroconf => "python-zeroconf",
            Stack::Avahi => "avahi+resolvers",
        }
    }
}

struct Row {
    stack: Stack,
    n: usize,
    join: (u64, u64),
    steady: (u64, u64),
    converged: Option<f64>,
}

fn support(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("support")
        .join(file)
        .display()
        .to_string()
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The time a node's log says it saw everyone (`all <unix time>`).
fn all_time(log: &Path) -> Option<f64> {
    read(log)
        .lines()
        .find_map(|l| l.strip_prefix("all ").and_then(|t| t.trim().parse().ok()))
}

/// Starts the stack on every host; returns the logs that will say "all" (zeroconf, avahi) or,
/// for nbhd, the data dirs to poll.
fn start(lab: &mut Lab, stack: Stack, n: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for i in 0..n {
        let ip = lab.host(i).ip.to_string();
        let nick = format!("n{}", i + 1);
        match stack {
            Stack::Nbhd => {
                let dir = lab.dir.join(format!("data-{nick}"));
                let mut c = lab.command(i, nbhd_bin().to_str().expect("utf-8 path"));
                c.env("NBHD_LOG", "warn")
                    .arg("--data-dir")
                    .arg(&dir)
                    .args(["up", "--nick", &nick]);
                let log = lab.dir.join(format!("{nick}.log"));
                lab.spawn_command(c, &log).expect("nbhd up");
                out.push(dir);
            }
            Stack::Zeroconf => {
                let log = lab.dir.join(format!("{nick}.log"));
                let inst = format!("{nick}@h{}", i + 1);
                lab.spawn(
                    i,
                    &[
                        "python3",
                        &support("zc_node.py"),
                        &inst,
                        &ip,
                        &n.to_string(),
                    ],
                    &log,
                )
                .expect("zc");
                out.push(log);
            }
            Stack::Avahi => {
                let log = lab.dir.join(format!("{nick}-client.log"));
                let ns_dir = lab.dir.join(format!("avahi-{nick}"));
                std::fs::create_dir_all(&ns_dir).expect("dir");
                let bus = ns_dir.join("bus");
                std::fs::write(
                    ns_dir.join("bus.conf"),
                    format!(
                        "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                         \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                         <busconfig><type>system</type><listen>unix:path={}</listen><auth>EXTERNAL</auth>\
                         <policy context=\"default\"><allow user=\"*\"/><allow own=\"*\"/><allow send_type=\"method_call\"/>\
                         <allow send_destination=\"*\"/><allow receive_sender=\"*\"/><allow eavesdrop=\"true\"/></policy></busconfig>\n",
                        bus.display()
                    ),
                )
                .expect("bus.conf");
                let etc = lab.etc_dir(i).expect("etc").join("avahi");
                std::fs::create_dir_all(etc.join("services")).expect("avahi dir");
                std::fs::write(
                    etc.join("avahi-daemon.conf"),
                    format!(
                        "[server]\nhost-name=avahi-{nick}\nuse-ipv4=yes\nuse-ipv6=no\nenable-dbus=yes\nallow-interfaces=veth0\n\
                         [wide-area]\nenable-wide-area=no\n[publish]\npublish-hinfo=no\npublish-workstation=no\n"
                    ),
                )
                .expect("avahi conf");
                std::fs::write(
                    etc.join("services/presence.service"),
                    format!(
                        "<?xml version=\"1.0\" standalone='no'?>\n<!DOCTYPE service-group SYSTEM \"avahi-service.dtd\">\n\
                         <service-group><name>{nick}@h{}</name><service><type>_presence._tcp</type><port>5298</port>\
                         <txt-record>txtvers=1</txt-record><txt-record>nick={nick}</txt-record>\
                         <txt-record>status=avail</txt-record><txt-record>port.p2pj=5298</txt-record></service></service-group>\n",
                        i + 1
                    ),
                )
                .expect("service");
                let script = format!(
                    "mount -t tmpfs tmpfs /run/avahi-daemon && \
                     dbus-daemon --config-file={conf} --nofork --nopidfile & \
                     sleep 0.3; export DBUS_SYSTEM_BUS_ADDRESS=unix:path={bus}; \
                     avahi-daemon --no-drop-root --no-chroot --no-rlimits -f /etc/avahi/avahi-daemon.conf & \
                     exec /usr/bin/python3 {client} {nick}@h{h} {n} > {log} 2>&1",
                    conf = ns_dir.join("bus.conf").display(),
                    bus = bus.display(),
                    client = support("avahi_client.py"),
                    h = i + 1,
                    log = log.display(),
                );
                lab.spawn(
                    i,
                    &["unshare", "-m", "sh", "-c", &script],
                    &ns_dir.join("stack.log"),
                )
                .expect("avahi");
                out.push(log);
            }
        }
    }
    out
}

/// Seconds after `t0` (unix) when every node listed every other; None if not within `limit`.
fn converged(
    lab: &Lab,
    stack: Stack,
    n: usize,
    handles: &[PathBuf],
    t0: f64,
    limit: Duration,
) -> Option<f64> {
    let mut times: Vec<Option<f64>> = vec![None; n];
    let nbhd = nbhd_bin();
    wait_for(limit, || {
        for i in 0..n {
            if times[i].is_some() {
                continue;
            }
            times[i] = match stack {
                Stack::Nbhd => {
                    let out = lab
                        .command(i, nbhd.to_str().expect("utf-8"))
                        .arg("--data-dir")
                        .arg(&handles[i])
                        .args(["peers", "--json"])
                        .output();
                    let count = out.ok().and_then(|o| serde_json_count(&o.stdout));
                    (count == Some(n - 1)).then(now_unix)
                }
                _ => all_time(&handles[i]),
            };
        }
        times.iter().all(Option::is_some)
    })?;
    times
        .iter()
        .flatten()
        .map(|t| t - t0)
        .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))))
}

/// Number of elements of a JSON array, without a JSON dependency: count top-level objects.
fn serde_json_count(bytes: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(bytes).ok()?.trim();
    if !s.starts_with('[') {
        return None;
    }
    let (mut depth, mut count, mut in_str, mut esc) = (0i32, 0usize, false, false);
    for ch in s.chars() {
        if in_str {
            match (esc, ch) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '{' => {
                if depth == 1 {
                    count += 1;
                }
                depth += 1;
            }
            '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
    }
    Some(count)
}

fn run_one(stack: Stack, n: usize, join: Duration, steady: Duration) -> Row {
    let mut lab = Lab::new(n).expect("lab");
    lab.count_mdns().expect("nft counter");
    let t0 = now_unix();
    let start_i = Instant::now();
    let handles = start(&mut lab, stack, n);
    let conv = converged(&lab, stack, n, &handles, t0, join);
    let rest = join.saturating_sub(start_i.elapsed());
    std::thread::sleep(rest);
    let j = lab.mdns_counter().expect("counter");
    std::thread::sleep(steady);
    let end = lab.mdns_counter().expect("counter");
    eprintln!(
        "  {} N={n}: join {j:?}, steady {:?}, converged {conv:?}",
        stack.name(),
        (end.0 - j.0, end.1 - j.1)
    );
    Row {
        stack,
        n,
        join: j,
        steady: (end.0 - j.0, end.1 - j.1),
        converged: conv,
    }
}

/// /proc figures of a process: (RSS kB, peak RSS kB, CPU seconds, context switches).
fn proc_figures(pid: u32) -> (u64, u64, f64, u64) {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = read(Path::new(&format!("/proc/{pid}/stat")));
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        / tck;
    (
        field("VmRSS:"),
        field("VmHWM:"),
        cpu,
        field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:"),
    )
}

fn footprint(idle: Duration) {
    let n = 21;
    let mut lab = Lab::new(n).expect("lab");
    let handles = start(&mut lab, Stack::Nbhd, n);
    let t0 = now_unix();
    let conv = converged(&lab, Stack::Nbhd, n, &handles, t0, Duration::from_secs(60));
    // The daemon on h1: `ip netns exec` execs into nbhd, so the spawned pid is the daemon.
    let pid = lab.pids()[0];
    let (_, _, cpu0, sw0) = proc_figures(pid);
    std::thread::sleep(idle);
    let (rss, hwm, cpu1, sw1) = proc_figures(pid);
    println!();
    println!(
        "# footprint: one nbhd daemon with {} peers, idle {} s (all converged after {:.2} s)",
        n - 1,
        idle.as_secs(),
        conv.unwrap_or(f64::NAN)
    );
    println!(
        "{:>12} {:>14} {:>16} {:>18} {:>14}",
        "RSS MB", "peak RSS MB", "CPU s (idle)", "wakeups (idle)", "wakeups/s"
    );
    println!(
        "{:>12.1} {:>14.1} {:>16.2} {:>18} {:>14.2}",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        cpu1 - cpu0,
        sw1 - sw0,
        (sw1 - sw0) as f64 / idle.as_secs_f64()
    );
    println!("# goals: RSS under 15 MB, CPU under 1 s in 5 minutes");
}

fn main() {
    let mut nodes = vec![10usize, 20];
    let mut join = 30u64;
    let mut steady = 300u64;
    let mut stacks = vec![Stack::Nbhd, Stack::Zeroconf, Stack::Avahi];
    let mut do_footprint = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| panic!("{a} wants a value"));
        match a.as_str() {
            "--nodes" => {
                nodes = val()
                    .split(',')
                    .map(|v| v.parse().expect("--nodes 10,20"))
                    .collect()
            }
            "--join" => join = val().parse().expect("--join SECONDS"),
            "--steady" => steady = val().parse().expect("--steady SECONDS"),
            "--stacks" => {
                stacks = val()
                    .split(',')
                    .map(|s| match s {
                        "nbhd" => Stack::Nbhd,
                        "zeroconf" => Stack::Zeroconf,
                        "avahi" => Stack::Avahi,
                        o => panic!("unknown stack {o}"),
                    })
                    .collect()
            }
            "--footprint" => do_footprint = true,
            "-h" | "--help" => {
                println!("usage: presence [--nodes 10,20] [--join 30] [--steady 300] [--stacks nbhd,zeroconf,avahi] [--footprint]");
                return;
            }
            o => panic!("unknown argument {o}"),
        }
    }
    if !is_root() {
        eprintln!("bench/presence needs root (network namespaces)");
        std::process::exit(2);
    }
    let (join, steady) = (Duration::from_secs(join), Duration::from_secs(steady));
    let mut rows = Vec::new();
    for &n in &nodes {
        for &s in &stacks {
            rows.push(run_one(s, n, join, steady));
        }
    }
    println!(
        "# bench/presence: mDNS packets entering the bridge; join = first {} s, steady = next {} s",
        join.as_secs(),
        steady.as_secs()
    );
    println!(
        "{:<16} {:>3} | {:>9} {:>10} | {:>11} {:>12} | {:>10} | {:>13} {:>13}",
        "stack",
        "N",
        "join pkts",
        "join bytes",
        "steady pkts",
        "steady bytes",
        "converged",
        "steady/Avahi",
        "join/Avahi"
    );
    for r in &rows {
        let avahi = rows.iter().find(|a| a.stack == Stack::Avahi && a.n == r.n);
        let ratio = |x: u64, y: Option<u64>| {
            y.filter(|y| *y > 0)
                .map_or("-".to_string(), |y| format!("{:.3}", x as f64 / y as f64))
        };
        println!(
            "{:<16} {:>3} | {:>9} {:>10} | {:>11} {:>12} | {:>10} | {:>13} {:>13}",
            r.stack.name(),
            r.n,
            r.join.0,
            r.join.1,
            r.steady.0,
            r.steady.1,
            r.converged
                .map_or("never".to_string(), |c| format!("{c:.2} s")),
            ratio(r.steady.0, avahi.map(|a| a.steady.0)),
            ratio(r.join.0, avahi.map(|a| a.join.0)),
        );
    }
    for s in &stacks {
        let per: Vec<&Row> = rows.iter().filter(|r| r.stack == *s).collect();
        if let [a, b] = per.as_slice() {
            println!(
                "# {}: steady packets ×{:.2} from N={} to N={} (linear would be ×{:.1}, quadratic ×{:.1})",
                s.name(),
                b.steady.0 as f64 / a.steady.0.max(1) as f64,
                a.n,
                b.n,
                b.n as f64 / a.n as f64,
                (b.n * (b.n - 1)) as f64 / (a.n * (a.n - 1)) as f64
            );
        }
    }
    if do_footprint {
        footprint(steady);
    }
}
