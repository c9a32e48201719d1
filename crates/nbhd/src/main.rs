//! `nbhd`: the command line. Argument parsing and printing only; the work lives in
//! `nbhd-daemon` and `nbhd-proto` (DESIGN.md §3). The contract of DESIGN.md §6 (commands,
//! `--json` shapes, exit codes) is stable: scripts depend on it.

mod print;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nbhd_daemon::contract::{
    ActivitySummary, DeliveryReply, Event, LogRow, Request, DEFAULT_TIMEOUT_S, MAX_POST,
};
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
    /// Follow events until interrupted: peer-up, peer-down, peer-changed, message, invitation,
    /// path-changed, post, member (and lagged, when this reader fell behind)
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
        /// An activity we share or joined (its id or name): the invitation carries what the
        /// peer needs to join it, its key sealed to them. Anything else is sent as a name.
        activity: String,
        /// Give up (on every path) after this many seconds
        #[arg(long, value_name = "S", default_value_t = DEFAULT_TIMEOUT_S)]
        timeout: f64,
    },
    /// Invitations received, each once
    Invitations,
    /// Start a shared activity, with you its first member
    #[command(
        long_about = "Start a shared activity: a log of posts that every member holds in the \
        same order, carried by reliable multicast (repairs come from any member, so a member whose \
        unicast is broken still gets everything). Prints its id.\n\n\
        A public activity is advertised to everyone around (nbhd activities lists it; anyone may \
        join). A --private one is never advertised and its posts are encrypted: only those you \
        invite (nbhd invite PEER ACTIVITY) get its key.\n\n\
        Example: nbhd share chess --type game; nbhd post chess 'e4'"
    )]
    Share {
        /// Its name (1 to 100 bytes)
        name: String,
        /// Not advertised, posts encrypted; members join by invitation only
        #[arg(long)]
        private: bool,
        /// What kind of activity it is, for the applications that show it
        #[arg(long = "type", value_name = "TYPE", default_value = "activity")]
        kind: String,
    },
    /// Activities we know: shared, joined, advertised around us, or invited to
    Activities,
    /// Join an activity; its whole history arrives from the members
    Join {
        /// Its id, its name, or the id of an invitation to it (nbhd invitations)
        activity: String,
    },
    /// Leave an activity (its log stays in the store)
    Leave {
        /// Its id or name
        activity: String,
    },
    /// Post to an activity you are a member of; exits 0 once the post is stored
    #[command(
        long_about = "Post to an activity you are a member of. Exits 0 once the post is in \
        the local store: from there it reaches every member, across losses and restarts (a \
        member that misses it asks again; a new member gets it with the history). A post is at \
        most 1 MiB; a bigger one is a usage error (exit 2)."
    )]
    Post {
        /// Its id or name
        activity: String,
        /// The text to post
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Post this file's bytes instead (at most 1 MiB)
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// An activity's posts, in the one order every member shows
    Log {
        /// Its id or name, or the id of an invitation to it
        activity: String,
        /// Keep printing posts as they arrive, until interrupted
        #[arg(long, short)]
        follow: bool,
    },
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
    /// Show counters: packets in and out per channel (mDNS, courier, probes, activities), and
    /// what was dropped and why
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
            // An error may quote a peer's name: cleaned as stdout is.
            eprintln!("nbhd: {}", print::clean(&e.to_string()));
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
        Command::Share {
            name,
            private,
            kind,
        } => query(
            &dir,
            Request::Share {
                name,
                private,
                kind,
            },
            json,
            |r| print::share(&r),
        ),
        Command::Activities => query(&dir, Request::Activities, json, print::activities),
        Command::Join { activity } => query(&dir, Request::Join { activity }, json, |r| {
            print::membership(&r)
        }),
        Command::Leave { activity } => query(&dir, Request::Leave { activity }, json, |r| {
            print::membership(&r)
        }),
        Command::Post {
            activity,
            text,
            file,
        } => {
            let bytes = match file {
                Some(f) => Some(read_post_file(&f)?),
                None => None,
            };
            query(
                &dir,
                Request::Post {
                    activity,
                    text,
                    bytes,
                },
                json,
                |r| print::posted(&r),
            )
        }
        Command::Log { activity, follow } => log(&dir, activity, follow, json),
        // A closed stdout (`nbhd events | head`) ends the stream quietly.
        Command::Events => Client::connect(&dir)?.follow(|ev| {
            if json {
                print::json_line(&serde_json::to_string(&ev).unwrap_or_default())
            } else {
                print::line(&print::event(&ev))
            }
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

/// A file to post, base64 for the contract; over 1 MiB is a usage error before anything is sent.
fn read_post_file(path: &Path) -> Result<String, DaemonError> {
    use base64::Engine as _;
    let cannot =
        |e: std::io::Error| DaemonError::Usage(format!("cannot read {}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > MAX_POST as u64 {
        return Err(DaemonError::Usage(format!(
            "{} is {len} bytes; a post is at most {MAX_POST} bytes (1 MiB)",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(cannot)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// `nbhd log [--follow]`: the stored log, then (following) each post that arrives after it.
/// The events are subscribed to before the log is read, so nothing falls between the two; a
/// post in both is printed once. A follower that fell behind reads the log again.
fn log(dir: &DataDir, activity: String, follow: bool, json: bool) -> Result<(), DaemonError> {
    let request = Request::Log {
        activity: activity.clone(),
    };
    request
        .validate()
        .map_err(|e| DaemonError::Usage(e.error))?;
    if !follow {
        return query(dir, request, json, |rows: Vec<LogRow>| print::log(&rows));
    }
    let mut events = Client::connect(dir)?;
    events.subscribe()?;
    let mut calls = Client::connect(dir)?;
    let found: ActivitySummary = typed(calls.call(&Request::Activity { activity })?)?;
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    // Following: one post per line (with --json, one LogRow object per line, like
    // `nbhd events --json`).
    let mut show = |row: &LogRow| {
        if !seen.insert((row.sender.clone(), row.seq)) {
            return true;
        }
        if json {
            print::json_line(&serde_json::to_string(row).unwrap_or_default())
        } else {
            print::line(&print::log_line(row))
        }
    };
    let stored = |calls: &mut Client, show: &mut dyn FnMut(&LogRow) -> bool| {
        let rows: Vec<LogRow> = typed(calls.call(&request)?)?;
        for row in &rows {
            show(row);
        }
        Ok::<(), DaemonError>(())
    };
    stored(&mut calls, &mut show)?;
    let mut failed = None;
    events.each_event(|ev| match ev {
        Event::Post {
            activity, entry, ..
        } if activity == found.id => show(&entry),
        Event::Lagged { missed, .. } => {
            eprintln!(
                "nbhd: {missed} events missed (this reader fell behind): reading the log again"
            );
            match stored(&mut calls, &mut show) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        }
        _ => true,
    })?;
    failed.map_or(Ok(()), Err)
}

/// A reply as the contract's type.
fn typed<T: DeserializeOwned>(v: serde_json::Value) -> Result<T, DaemonError> {
    serde_json::from_value(v)
        .map_err(|e| DaemonError::other("the daemon's reply does not match this nbhd", e))
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
