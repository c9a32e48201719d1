//! `nbhd`: the command line. Argument parsing and printing only; the work lives in
//! `nbhd-daemon` and `nbhd-proto` (DESIGN.md §3). The contract of DESIGN.md §6 (commands,
//! `--json` shapes, exit codes) is stable: scripts depend on it.

mod print;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nbhd_daemon::contract::{DeliveryReply, Request, DEFAULT_TIMEOUT_S};
use nbhd_daemon::control::Client;
use nbhd_daemon::{DaemonError, DataDir, UpOptions};
use serde::de::DeserializeOwned;

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
        #[arg(long, value_name = "S", default_value_t = DEFAULT_TIMEOUT_S)]
        timeout: f64,
    },
    /// Invite a peer to an activity; exits 0 once its receipt arrives
    Invite {
        /// A nick, an instance name or a prefix of a peer id
        peer: String,
        /// The activity's name (carried as it is until shared activities exist)
        activity: String,
        /// Give up (on every path) after this many seconds
        #[arg(long, value_name = "S", default_value_t = DEFAULT_TIMEOUT_S)]
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
        Command::Peers => query(&dir, Request::Peers, json, print::peers),
        Command::Status => query(&dir, Request::Status, json, |s| print::status(&s, &dir)),
        Command::Stats => query(&dir, Request::Stats, json, print::stats),
        Command::Doctor => query(&dir, Request::Doctor, json, print::doctor),
        Command::Invitations => query(&dir, Request::Invitations, json, print::invitations),
        Command::Messages { peer } => {
            query(&dir, Request::Messages { peer }, json, print::messages)
        }
        Command::Send {
            peer,
            text,
            timeout,
        } => deliver(
            &dir,
            Request::Send {
                peer,
                text,
                timeout,
            },
            json,
        ),
        Command::Invite {
            peer,
            activity,
            timeout,
        } => deliver(
            &dir,
            Request::Invite {
                peer,
                activity,
                timeout,
            },
            json,
        ),
        Command::Events => Client::connect(&dir)?.follow(|ev| {
            let line = if json {
                serde_json::to_string(&ev).unwrap_or_default()
            } else {
                print::event(&ev)
            };
            // A closed stdout (`nbhd events | head`) ends the stream quietly.
            print::line(&line)
        }),
        Command::Trace {
            captures,
            hosts,
            window_ms,
        } => trace(captures, hosts, window_ms, json),
    }
}

/// One request to the daemon; its reply as JSON, or for people through `human` (which gets it
/// as the contract's type: a printer the compiler checks against the reply's shape).
fn query<T: DeserializeOwned>(
    dir: &DataDir,
    request: Request,
    json: bool,
    human: impl FnOnce(T),
) -> Result<(), DaemonError> {
    request
        .validate()
        .map_err(|e| DaemonError::Usage(e.error))?;
    let v = Client::connect(dir)?.call(&request)?;
    if json {
        print::json(&v);
    } else {
        let typed = serde_json::from_value(v)
            .map_err(|e| DaemonError::other("the daemon's reply does not match this nbhd", e))?;
        human(typed);
    }
    Ok(())
}

/// `send` and `invite`: wait for the receipt; exit 1 when none came (with `--json` too).
fn deliver(dir: &DataDir, request: Request, json: bool) -> Result<(), DaemonError> {
    request
        .validate()
        .map_err(|e| DaemonError::Usage(e.error))?;
    let v = Client::connect(dir)?.call(&request)?;
    let reply: DeliveryReply = serde_json::from_value(v.clone())
        .map_err(|e| DaemonError::other("the daemon's reply does not match this nbhd", e))?;
    if json {
        print::json(&v);
    } else {
        print::delivery(&reply);
    }
    if reply.delivered {
        Ok(())
    } else {
        Err(DaemonError::NotFound(
            "not delivered: no receipt before the timeout (see nbhd doctor)".into(),
        ))
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
        print::json(&report.to_json());
    } else {
        print::text(&report.to_text());
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NBHD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours for a terminal, plain text for a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
