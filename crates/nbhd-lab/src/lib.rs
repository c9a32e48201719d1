//! A network-namespace lab: N hosts on one bridge, for multi-host tests and benchmarks.
//!
//! Every host is a network namespace with one `veth0` on a shared Linux bridge that lives in a
//! namespace of its own, so nothing ever touches the machine's real interfaces (the root
//! namespace). Names and the subnet carry a per-run prefix (`nbt<pid>`); a new lab sweeps the
//! leftovers of runs whose process is gone; dropping the lab kills what it started and removes
//! its namespaces, also when the test panicked. IPv6 is turned off in the lab, so every fault
//! rule is IPv4 only.
//!
//! Faults follow DESIGN.md §7: a silent one-way unicast drop on the bridge (ARP and multicast
//! still pass, as on the OLPC mesh), and random loss in a host's input chain.
//!
//! Needs root; [`skip_unless_root`] lets a test say so and pass, unless `NBHD_REQUIRE_NETNS=1`.

pub mod finch;

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "nbt";
const FAULT_TABLE: &str = "nbhd_faults";
const LOSS_TABLE: &str = "nbhd_loss";
const COUNT_TABLE: &str = "nbhd_count";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True (and a clear message on stderr) when the test cannot run here. Where the run must
/// cover them (`NBHD_REQUIRE_NETNS=1`, set by the test command as root), a skip is a failure:
/// a skipped multi-host test is not a passed one.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    if std::env::var_os("NBHD_REQUIRE_NETNS").is_some_and(|v| v == "1") {
        panic!(
            "{test}: needs root for network namespaces, and NBHD_REQUIRE_NETNS=1 forbids skipping"
        );
    }
    eprintln!("SKIP {test}: multi-host tests need root (network namespaces); CI runs them as root");
    true
}

#[derive(Clone, Debug)]
pub struct Host {
    /// Logical name: h1, h2, ...
    pub name: String,
    /// Namespace name.
    pub ns: String,
    pub ip: Ipv4Addr,
}

pub struct Lab {
    prefix: String,
    bridge_ns: String,
    pub hosts: Vec<Host>,
    children: Vec<Child>,
    etc_dirs: Vec<PathBuf>,
    pub dir: PathBuf,
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

/// SIGKILLs every process whose network namespace is `ns`.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: plain kill(2) on a pid the kernel listed in the namespace.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Removes namespaces (and their /etc/netns dirs) left by runs whose process is gone.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            kill_all_in(name);
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            let _ = fs::remove_dir_all(Path::new("/etc/netns").join(name));
        }
    }
}

impl Lab {
    /// Builds `n` hosts on one bridge.
    pub fn new(n: usize) -> io::Result<Lab> {
        sweep_stale();
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("{PREFIX}{pid}-{seq}");
        // A per-run subnet, 10.X.Y.0/24.
        let (x, y) = (100 + (pid % 100) as u8, ((pid / 100 + seq) % 250) as u8);
        let dir = std::env::temp_dir().join(&prefix);
        fs::create_dir_all(&dir)?;
        let mut lab = Lab {
            bridge_ns: format!("{prefix}-br"),
            prefix,
            hosts: Vec::new(),
            children: Vec::new(),
            etc_dirs: Vec::new(),
            dir,
        };
        // From here on, Drop cleans up whatever was made.
        let br = lab.bridge_ns.clone();
        ip(&["netns", "add", &br])?;
        lab.sysctl_ns(&br)?;
        ip(&["-n", &br, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let ns = format!("{}-h{i}", lab.prefix);
            let host_ip = Ipv4Addr::new(10, x, y, i as u8);
            ip(&["netns", "add", &ns])?;
            lab.hosts.push(Host {
                name: format!("h{i}"),
                ns: ns.clone(),
                ip: host_ip,
            });
            lab.sysctl_ns(&ns)?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let port = format!("h{i}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "veth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                "veth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "veth0", "up"])?;
            // Naive multicast senders (no IP_MULTICAST_IF) find the lab interface too.
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "veth0"])?;
        }
        Ok(lab)
    }

    fn sysctl_ns(&self, ns: &str) -> io::Result<()> {
        run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
        ]))?;
        run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]))?;
        Ok(())
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Runs `f` on a thread of ours moved into host `i`'s network namespace (sockets it opens
    /// are that host's): for traffic a test makes itself, without a helper program.
    pub fn thread_in<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<io::Result<T>> {
        let path = Path::new("/run/netns").join(&self.hosts[i].ns);
        std::thread::spawn(move || {
            let ns = fs::File::open(&path)?;
            // SAFETY: setns(2) on this thread only, with a descriptor we hold open; the thread
            // stays in that namespace until it ends.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
    }

    /// A command to run inside host `i` (not started).
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns, program]);
        c
    }

    /// Runs a command inside host `i` to completion.
    pub fn exec(&self, i: usize, args: &[&str]) -> io::Result<Output> {
        let mut c = self.command(i, args[0]);
        c.args(&args[1..]);
        c.output()
    }

    /// Starts a long-running process inside host `i`, stdout and stderr to `log`. It gets its own
    /// process group (killed with the lab) and SIGKILL if the test thread dies.
    pub fn spawn(&mut self, i: usize, args: &[&str], log: &Path) -> io::Result<u32> {
        let mut c = self.command(i, args[0]);
        c.args(&args[1..]);
        self.spawn_command(c, log)
    }

    pub fn spawn_command(&mut self, c: Command, log: &Path) -> io::Result<u32> {
        let out = fs::File::create(log)?;
        self.spawn_logging(c, out)
    }

    /// As [`Lab::spawn_command`], appending to `log` (a daemon restarted keeps one log).
    pub fn spawn_command_appending(&mut self, c: Command, log: &Path) -> io::Result<u32> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        self.spawn_logging(c, out)
    }

    fn spawn_logging(&mut self, mut c: Command, out: fs::File) -> io::Result<u32> {
        c.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = c.spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Pids of the processes started with [`Lab::spawn`], in order.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Sends `sig` to a process started with [`Lab::spawn`].
    pub fn signal(&self, pid: u32, sig: i32) {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }

    /// Waits for a spawned process to exit; its exit code, or None on timeout.
    pub fn wait_exit(&mut self, pid: u32, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.children.iter_mut().find(|c| c.id() == pid)?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st.code().unwrap_or(128));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Silently drops every IPv4 packet from host `a` to host `b` on the bridge: ARP and
    /// multicast still pass, TCP SYNs and unicast UDP vanish (the seed's failure).
    pub fn drop_unicast(&self, a: usize, b: usize) -> io::Result<()> {
        let script = format!(
            "add table bridge {FAULT_TABLE}\n\
             add chain bridge {FAULT_TABLE} lab_forward {{ type filter hook forward priority 0; policy accept; }}\n\
             add rule bridge {FAULT_TABLE} lab_forward ip saddr {} ip daddr {} drop\n",
            self.hosts[a].ip, self.hosts[b].ip
        );
        self.nft(&self.bridge_ns, &script)
    }

    /// Silently drops UDP datagrams to `port` from host `a` on their way out of the bridge
    /// towards host `b` (multicast included: the bridge floods, this port alone is cut).
    pub fn drop_udp_towards(&self, a: usize, b: usize, port: u16) -> io::Result<()> {
        let script = format!(
            "add table bridge {FAULT_TABLE}\n\
             add chain bridge {FAULT_TABLE} lab_forward {{ type filter hook forward priority 0; policy accept; }}\n\
             add rule bridge {FAULT_TABLE} lab_forward ip saddr {} oifname \"h{}\" udp dport {port} drop\n",
            self.hosts[a].ip,
            b + 1
        );
        self.nft(&self.bridge_ns, &script)
    }

    /// Drops `percent` % of the packets host `i` receives on its lab interface.
    pub fn loss(&self, i: usize, percent: u8) -> io::Result<()> {
        // nft's `numgen random mod 100` is 0..=99, so `< 100` is out of its range: plain drop.
        let matcher = if percent >= 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {percent} ")
        };
        let script = format!(
            "add table inet {LOSS_TABLE}\n\
             add chain inet {LOSS_TABLE} lab_input {{ type filter hook input priority 0; policy accept; }}\n\
             add rule inet {LOSS_TABLE} lab_input iifname \"veth0\" {matcher}drop\n"
        );
        self.nft(&self.hosts[i].ns, &script)
    }

    /// Starts counting the mDNS packets (UDP port 5353) that hosts send into the bridge: each
    /// datagram once, as it enters (bridge prerouting), however many ports it is flooded to.
    pub fn count_mdns(&self) -> io::Result<()> {
        self.count_udp(5353)
    }

    /// (packets, bytes) counted since [`Lab::count_mdns`]; bytes are whole Ethernet frames.
    pub fn mdns_counter(&self) -> io::Result<(u64, u64)> {
        self.udp_counter(5353)
    }

    /// Starts counting UDP datagrams to `port` entering the bridge.
    pub fn count_udp(&self, port: u16) -> io::Result<()> {
        let script = format!(
            "add table bridge {COUNT_TABLE}\n\
             add counter bridge {COUNT_TABLE} udp{port}\n\
             add chain bridge {COUNT_TABLE} lab_prerouting {{ type filter hook prerouting priority 0; policy accept; }}\n\
             add rule bridge {COUNT_TABLE} lab_prerouting udp dport {port} counter name \"udp{port}\"\n"
        );
        self.nft(&self.bridge_ns, &script)
    }

    /// (packets, bytes) counted since [`Lab::count_udp`] for `port`.
    pub fn udp_counter(&self, port: u16) -> io::Result<(u64, u64)> {
        let name = format!("udp{port}");
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            &self.bridge_ns,
            "nft",
            "list",
            "counter",
            "bridge",
            COUNT_TABLE,
            &name,
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |key: &str| -> Option<u64> {
            let mut words = text.split_whitespace();
            while let Some(w) = words.next() {
                if w == key {
                    return words.next().and_then(|v| v.parse().ok());
                }
            }
            None
        };
        match (field("packets"), field("bytes")) {
            (Some(p), Some(b)) => Ok((p, b)),
            _ => Err(io::Error::other(format!("unexpected nft output: {text}"))),
        }
    }

    /// Removes every fault.
    pub fn clear_faults(&self) -> io::Result<()> {
        let _ = self.nft(
            &self.bridge_ns,
            &format!("delete table bridge {FAULT_TABLE}\n"),
        );
        for h in &self.hosts {
            let _ = self.nft(&h.ns, &format!("delete table inet {LOSS_TABLE}\n"));
        }
        Ok(())
    }

    fn nft(&self, ns: &str, script: &str) -> io::Result<()> {
        use std::io::Write;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(script.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "nft in {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// `/etc/netns/<ns>`: files there replace `/etc/...` for processes started in host `i`
    /// (`ip netns exec` bind-mounts them). Removed with the lab.
    pub fn etc_dir(&mut self, i: usize) -> io::Result<PathBuf> {
        let d = Path::new("/etc/netns").join(&self.hosts[i].ns);
        fs::create_dir_all(&d)?;
        if !self.etc_dirs.contains(&d) {
            self.etc_dirs.push(d.clone());
        }
        Ok(d)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill(2) on the process group we created with setsid.
            unsafe {
                libc::kill(-(c.id() as i32), libc::SIGKILL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever still runs in a host (a daemon that detached from its process group, as
        // tmux servers do) dies with the host: `ip netns del` alone would leave it running.
        for h in &self.hosts {
            kill_all_in(&h.ns);
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).output();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.bridge_ns])
            .output();
        for d in &self.etc_dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; how long it took, or None.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}
