//! `nbhd`: the command line. Argument parsing and printing only; the work lives in
//! `nbhd-daemon` and `nbhd-proto` (DESIGN.md §3). The contract of DESIGN.md §6 (commands,
//! `--json` shapes, exit codes) is stable: scripts depend on it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nbhd_daemon::control::Client;
use nbhd_daemon::{DaemonError, DataDir, UpOptions};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "nbhd",
    version,
    about = "Neighborhood: find the people on your Wi-Fi, mesh or LAN and work with them, no server needed",
    long_about = "Neighborhood: serverless presence for people on the same Wi-Fi, mesh or LAN.\n\n\
        Start the daemon with `nbhd up --nick NAME`; in another terminal, `nbhd peers` lists who is \
        around and `nbhd events` follows arrivals and departures. Presence is mDNS/DNS-SD \
        (`_presence._tcp`, XEP-0174), so Avahi, Bonjour and python-zeroconf peers show up too.",
    after_help = "Exit codes: 0 success, 1 not found, 2 usage, 3 no daemon running, \
        4 a daemon already runs on this data dir, 5 the data dir cannot be written."
)]
struct Cli {
    /// Where the daemon keeps its store, socket and token [default: $NBHD_DATA_DIR, else the XDG data dir]
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print one JSON document (or one JSON object per line for streams) on stdout, and nothing else
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground; SIGINT/SIGTERM send goodbyes and exit 0
    Up {
        /// The name others see
        #[arg(long)]
        nick: String,
        /// Serve only this interface (repeat for several) [default: every interface with IPv4]
        #[arg(long = "iface", value_name = "IF")]
        ifaces: Vec<String>,
        /// Address of the local web view and HTTP API [default: 127.0.0.1:7640, or the next free port]
        #[arg(long, value_name = "ADDR")]
        api: Option<SocketAddr>,
        /// Our mDNS host name [default: nbhd-<first 8 hex of our key>.local]
        #[arg(long, value_name = "H")]
        hostname: Option<String>,
        /// TTL of every record we announce, in seconds [default: 120 for SRV/address records, 4500 for the others]
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=86400))]
        record_ttl: Option<u32>,
        /// Availability shown to others: avail, away or dnd
        #[arg(long, default_value = "avail", value_parser = ["avail", "away", "dnd"])]
        status: String,
        /// A status message shown to others
        #[arg(long, default_value = "")]
        msg: String,
    },
    /// List the peers seen now (never ourselves)
    Peers,
    /// Follow events (peer-up, peer-down, peer-changed, message, invitation) until interrupted
    Events,
    /// Send a 1:1 message; exits 0 once its receipt arrives, 1 if none came in time
    #[command(
        long_about = "Send a 1:1 message. It goes over TCP when that works, by the courier \
        (multicast) when it does not; the first receipt wins. Exits 0 once the receipt arrives, \
        1 if none came within --timeout. PEER is a nick, an instance name or a prefix of a peer id.\n\n\
        A legacy XEP-0174 client (Pidgin, Salut) sends no receipts: for one, exit 0 means its \
        open stream took the message, and `--json` says `\"receipt\": false`."
    )]
    Send {
        /// A nick, an instance name or a prefix of a peer id
        peer: String,
        /// The message
        text: String,
        /// Give up (on every path) after this many seconds
        #[arg(long, value_name = "S", default_value_t = 10.0)]
        timeout: f64,
    },
    /// Invite a peer to an activity; exits 0 once its receipt arrives
    Invite {
        /// A nick, an instance name or a prefix of a peer id
        peer: String,
        /// The activity's name (carried as it is until shared activities exist)
        activity: String,
        /// Give up (on every path) after this many seconds
        #[arg(long, value_name = "S", default_value_t = 10.0)]
        timeout: f64,
    },
    /// Invitations received, each once
    Invitations,
    /// 1:1 messages sent and received, oldest first (kept in the store: nothing is lost while
    /// nobody watches `nbhd events`)
    Messages {
        /// Only those from or to this peer: a nick, an instance name or a prefix of a peer id
        peer: Option<String>,
    },
    /// Path health, one row per peer: which direction of which path is broken
    Doctor,
    /// Show this daemon's identity, names and interfaces
    Status,
    /// Show counters: mDNS packets in and out, and what was dropped and why
    Stats,
    /// Correlate captures taken on several hosts and say where packets die
    #[command(
        long_about = "Correlate pcap/pcapng captures taken at the same time on several hosts \
        (tcpdump -w, tshark -w, Wireshark) and say where packets die.\n\n\
        Each capture's host is recognised from its traffic, clocks are aligned from packets seen on \
        both sides, and every packet a host sent is matched to its copy in the other captures. The \
        report gives, per direction and traffic class, sent / arrived / lost with a 95 % interval, \
        and verdicts such as a unicast black hole (unicast dies while multicast and ARP pass).\n\n\
        Example: nbhd trace --host alice=a.pcap --host bob=b.pcapng"
    )]
    Trace {
        /// Capture files (pcap or pcapng; Ethernet, Linux cooked v1/v2 or raw IP)
        #[arg(value_name = "CAPTURE")]
        captures: Vec<PathBuf>,
        /// Name the host that took FILE (the file is added if not listed)
        #[arg(long = "host", value_name = "NAME=FILE")]
        hosts: Vec<String>,
        /// How far apart in time (after clock alignment) a packet and its copy may be
        #[arg(long, value_name = "MS", default_value_t = 1000)]
        window_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = DataDir::resolve(cli.data_dir.clone());
    match run(cli, dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nbhd: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run(cli: Cli, dir: DataDir) -> Result<(), DaemonError> {
    let json = cli.json;
    match cli.command {
        Command::Up {
            nick,
            ifaces,
            api,
            hostname,
            record_ttl,
            status,
            msg,
        } => {
            init_logging();
            nbhd_daemon::run(UpOptions {
                data_dir: dir,
                nick,
                ifaces,
                api,
                hostname,
                record_ttl,
                status,
                msg,
            })
        }
        Command::Peers => query(&dir, "peers", json, print_peers),
        Command::Events => Client::connect(&dir)?.follow(|ev| {
            let line = if json {
                ev.to_string()
            } else {
                human_event(&ev)
            };
            let mut out = std::io::stdout().lock();
            // A closed stdout (`nbhd events | head`) ends the stream quietly.
            writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
        }),
        Command::Status => query(&dir, "status", json, |s| print_status(s, &dir)),
        Command::Trace {
            captures,
            hosts,
            window_ms,
        } => trace(captures, hosts, window_ms, json),
        Command::Send {
            peer,
            text,
            timeout,
        } => deliver(
            &dir,
            json!({"cmd": "send", "peer": peer, "text": text, "timeout": timeout}),
            json,
        ),
        Command::Invite {
            peer,
            activity,
            timeout,
        } => deliver(
            &dir,
            json!({"cmd": "invite", "peer": peer, "activity": activity, "timeout": timeout}),
            json,
        ),
        Command::Invitations => query(&dir, "invitations", json, print_invitations),
        Command::Messages { peer } => {
            let v = Client::connect(&dir)?.call(json!({"cmd": "messages", "peer": peer}))?;
            if json {
                print_json(&v);
            } else {
                print_messages(&v);
            }
            Ok(())
        }
        Command::Doctor => query(&dir, "doctor", json, print_doctor),
        Command::Stats => query(&dir, "stats", json, |s| {
            println!("{}", serde_json::to_string_pretty(s).unwrap_or_default())
        }),
    }
}

/// One request to the daemon; its answer as JSON, or for people through `human`.
fn query(
    dir: &DataDir,
    cmd: &str,
    json: bool,
    human: impl FnOnce(&Value),
) -> Result<(), DaemonError> {
    let v = Client::connect(dir)?.call(json!({ "cmd": cmd }))?;
    if json {
        print_json(&v);
    } else {
        human(&v);
    }
    Ok(())
}

fn print_status(s: &Value, dir: &DataDir) {
    println!("instance   {}", s["instance"].as_str().unwrap_or(""));
    println!("id         {}", s["id"].as_str().unwrap_or(""));
    println!("hostname   {}", s["hostname"].as_str().unwrap_or(""));
    println!("announced  {}", s["announced"]);
    println!(
        "web view   {}#<token in {}>",
        s["api"].as_str().unwrap_or(""),
        dir.token_file().display()
    );
    for i in s["interfaces"].as_array().into_iter().flatten() {
        println!(
            "interface  {} {}",
            i["name"].as_str().unwrap_or(""),
            i["addrs"]
        );
    }
}

fn print_invitations(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no invitations received");
    }
    for r in rows {
        println!(
            "{}  from {} ({})  via {}",
            r["activity"]["name"].as_str().unwrap_or("?"),
            r["from_nick"].as_str().unwrap_or("?"),
            r["from"]
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(12)
                .collect::<String>(),
            r["via"].as_str().unwrap_or("?")
        );
    }
}

fn print_messages(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no messages");
    }
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("?").to_string();
        println!(
            "{} -> {}  ({})  {}",
            s("from_nick"),
            s("to_nick"),
            r["via"].as_str().unwrap_or("not delivered"),
            s("text")
        );
    }
}

fn trace(
    captures: Vec<PathBuf>,
    hosts: Vec<String>,
    window_ms: u64,
    json: bool,
) -> Result<(), DaemonError> {
    let mut inputs: Vec<nbhd_trace::Input> = captures
        .into_iter()
        .map(|path| nbhd_trace::Input { path, name: None })
        .collect();
    for h in hosts {
        let (name, file) = h
            .split_once('=')
            .ok_or_else(|| DaemonError::Usage(format!("--host wants NAME=FILE, not {h:?}")))?;
        let file = PathBuf::from(file);
        match inputs.iter_mut().find(|i| i.path == file) {
            Some(i) => i.name = Some(name.to_string()),
            None => inputs.push(nbhd_trace::Input {
                path: file,
                name: Some(name.to_string()),
            }),
        }
    }
    if inputs.is_empty() {
        return Err(DaemonError::Usage(
            "give at least one capture file (see nbhd trace --help)".into(),
        ));
    }
    let opts = nbhd_trace::Options {
        window_ns: window_ms as i64 * 1_000_000,
    };
    let report =
        nbhd_trace::analyze(&inputs, &opts, None).map_err(|e| DaemonError::Usage(e.to_string()))?;
    if json {
        print_json(&report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

/// `send` and `invite`: wait for the receipt; exit 1 when none came.
fn deliver(dir: &DataDir, req: Value, json: bool) -> Result<(), DaemonError> {
    let v = Client::connect(dir)?.call(req)?;
    let delivered = v["delivered"].as_bool() == Some(true);
    if json {
        print_json(&v);
    } else if delivered && v["receipt"].as_bool() == Some(true) {
        println!(
            "delivered via {} in {} ms (receipt received)",
            v["via"].as_str().unwrap_or("?"),
            v["latency_ms"]
        );
    } else if delivered {
        println!(
            "handed to the peer's stream via {} in {} ms (a legacy XEP-0174 client sends no receipt)",
            v["via"].as_str().unwrap_or("?"),
            v["latency_ms"]
        );
    }
    if delivered {
        Ok(())
    } else {
        Err(DaemonError::NotFound(
            "not delivered: no receipt before the timeout (see nbhd doctor)".into(),
        ))
    }
}

fn print_doctor(v: &Value) {
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no peers seen yet");
        return;
    }
    println!(
        "{:<16} {:<15} {:<8} {:<11} {:<11} {:<13} {:<13}",
        "PEER", "STATE", "PATH", "UNICAST OUT", "UNICAST IN", "MULTICAST OUT", "MULTICAST IN"
    );
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("?").to_string();
        println!(
            "{:<16} {:<15} {:<8} {:<11} {:<11} {:<13} {:<13}",
            s("nick"),
            s("state"),
            s("path"),
            s("unicast_out"),
            s("unicast_in"),
            s("multicast_out"),
            s("multicast_in")
        );
    }
    for r in &rows {
        if let Some(d) = r["diagnosis"].as_str().filter(|d| !d.is_empty()) {
            println!("\n{}: {d}", r["nick"].as_str().unwrap_or("?"));
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NBHD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print_json(v: &Value) {
    println!("{v}");
}

fn print_peers(peers: &Value) {
    let rows = peers.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("no peers seen yet");
        return;
    }
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|p| {
            let addrs: Vec<String> = p["addrs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            let id = p["id"].as_str().unwrap_or("");
            [
                p["nick"].as_str().unwrap_or("").to_string(),
                p["instance"].as_str().unwrap_or("").to_string(),
                format!("{}:{}", addrs.join(","), p["port"]),
                p["status"].as_str().unwrap_or("").to_string(),
                format!("{}s ago", p["last_seen_ms"].as_u64().unwrap_or(0) / 1000),
                if p["legacy"].as_bool() == Some(true) {
                    "legacy XEP-0174".into()
                } else {
                    id.chars().take(12).collect()
                },
            ]
        })
        .collect();
    let head = ["NICK", "INSTANCE", "ADDRESS", "STATUS", "SEEN", "ID"];
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
                .max(head[i].len())
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(head.to_vec()));
    for r in &table {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn human_event(ev: &Value) -> String {
    let kind = ev["type"].as_str().unwrap_or("?");
    let from = ev["from_nick"].as_str().unwrap_or("?");
    match kind {
        "message" => {
            return format!(
                "{kind:<13} from {from}: {}",
                ev["text"].as_str().unwrap_or("")
            )
        }
        "invitation" => {
            return format!(
                "{kind:<13} from {from}: {} (via {})",
                ev["activity"]["name"].as_str().unwrap_or("?"),
                ev["via"].as_str().unwrap_or("?")
            )
        }
        _ => {}
    }
    let p = &ev["peer"];
    let addrs: Vec<&str> = p["addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    format!(
        "{:<13} {} ({}){}",
        ev["type"].as_str().unwrap_or("?"),
        p["instance"].as_str().unwrap_or("?"),
        addrs.join(", "),
        if p["legacy"].as_bool() == Some(true) {
            " [legacy]"
        } else {
            ""
        }
    )
}
