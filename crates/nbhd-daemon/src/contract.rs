//! The control contract (DESIGN.md §6): one set of serde types shared by the CLI, the control
//! socket and the HTTP API. A new verb is one [`Request`] variant, one handler in
//! `daemon::handlers` and one printer in the CLI, and the compiler checks all three.
//!
//! The JSON these types make is the `--json` output scripts depend on: a reply's shape is the
//! CLI's stdout for that command, an [`Event`] is one line of `nbhd events --json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What `nbhd send` and `nbhd invite` wait for unless told otherwise.
pub const DEFAULT_TIMEOUT_S: f64 = 10.0;

fn default_timeout() -> f64 {
    DEFAULT_TIMEOUT_S
}

fn default_kind() -> String {
    "activity".into()
}

/// Posts larger than this travel in events without their body: a follower that reads slowly
/// must not make the daemon hold thousands of mebibytes.
pub const EVENT_BODY_MAX: usize = 64 * 1024;

/// A post's size limit (DESIGN.md §6: a bigger one is a usage error).
pub const MAX_POST: usize = nbhd_proto::activity::MAX_POST;

/// One request, as a line on the control socket: `{"cmd": "peers"}`, `{"cmd": "send", ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    Peers,
    Status,
    Stats,
    Doctor,
    Invitations,
    Messages {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
    },
    Send {
        peer: String,
        text: String,
        #[serde(default = "default_timeout")]
        timeout: f64,
    },
    Invite {
        peer: String,
        activity: String,
        #[serde(default = "default_timeout")]
        timeout: f64,
    },
    /// A new activity (we are its first member).
    Share {
        name: String,
        #[serde(default)]
        private: bool,
        #[serde(default = "default_kind", rename = "type")]
        kind: String,
    },
    Activities,
    /// One activity, as `activities` lists it.
    Activity {
        activity: String,
    },
    /// ACTIVITY: an activity's id, its name, or the id of an invitation to it.
    Join {
        activity: String,
    },
    Leave {
        activity: String,
    },
    /// Text, or bytes (base64), not both.
    Post {
        activity: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<String>,
    },
    Log {
        activity: String,
    },
    /// Follow events: the reply is a stream of [`Event`]s, one per line.
    Events,
}

/// A post's body from the request: (bytes, is it bytes rather than text).
pub fn post_body(
    text: &Option<String>,
    bytes: &Option<String>,
) -> Result<(Vec<u8>, bool), ErrorReply> {
    use base64::Engine as _;
    let (body, is_bytes) = match (text, bytes) {
        (Some(t), None) => (t.as_bytes().to_vec(), false),
        (None, Some(b)) => (
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| ErrorReply::usage(format!("bytes is not base64: {e}")))?,
            true,
        ),
        _ => {
            return Err(ErrorReply::usage(
                "a post is text or bytes (base64), exactly one",
            ))
        }
    };
    if body.len() > MAX_POST {
        return Err(ErrorReply::usage(format!(
            "a post is at most {MAX_POST} bytes (1 MiB); this one is {}",
            body.len()
        )));
    }
    Ok((body, is_bytes))
}

impl Request {
    /// Arguments that are wrong whatever the daemon knows (a usage error, exit 2).
    pub fn validate(&self) -> Result<(), ErrorReply> {
        let usage = |m: &str| Err(ErrorReply::usage(m));
        match self {
            Request::Send { peer, timeout, .. } | Request::Invite { peer, timeout, .. } => {
                if peer.trim().is_empty() {
                    return usage(
                        "PEER must not be empty (a nick, an instance name or a prefix of a peer id)",
                    );
                }
                if !(timeout.is_finite() && *timeout > 0.0) {
                    return usage("--timeout wants a number of seconds above zero");
                }
                Ok(())
            }
            Request::Messages { peer: Some(p) } if p.trim().is_empty() => {
                usage("PEER must not be empty; leave it out for every peer's messages")
            }
            Request::Share { name, .. } if name.trim().is_empty() => {
                usage("an activity's NAME must not be empty")
            }
            Request::Join { activity }
            | Request::Activity { activity }
            | Request::Leave { activity }
            | Request::Log { activity }
            | Request::Post { activity, .. }
                if activity.trim().is_empty() =>
            {
                usage(
                    "ACTIVITY must not be empty (an activity's id or name, or an invitation's id)",
                )
            }
            Request::Post { text, bytes, .. } => post_body(text, bytes).map(|_| ()),
            _ => Ok(()),
        }
    }
}

/// Why a request failed; `kind` decides the CLI's exit code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
    pub kind: ErrorKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// A bad argument (exit 2).
    Usage,
    /// Nothing matches, or it could not be done (exit 1).
    NotFound,
    /// The daemon failed (its store): exit 1, HTTP 500.
    Failed,
}

impl ErrorReply {
    pub fn usage(m: impl Into<String>) -> ErrorReply {
        ErrorReply {
            error: m.into(),
            kind: ErrorKind::Usage,
        }
    }

    pub fn not_found(m: impl Into<String>) -> ErrorReply {
        ErrorReply {
            error: m.into(),
            kind: ErrorKind::NotFound,
        }
    }

    pub fn failed(m: impl Into<String>) -> ErrorReply {
        ErrorReply {
            error: m.into(),
            kind: ErrorKind::Failed,
        }
    }
}

/// `nbhd peers`: a peer seen now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    pub id: String,
    pub nick: String,
    pub instance: String,
    pub addrs: Vec<String>,
    pub port: u16,
    pub status: String,
    pub msg: String,
    pub legacy: bool,
    /// How long ago (ms) any of its records was heard.
    pub last_seen_ms: u64,
    /// It announces a nick first seen with another key (trust on first use).
    pub impostor: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IfaceRow {
    pub name: String,
    pub addrs: Vec<String>,
}

/// `nbhd status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub id: String,
    pub instance: String,
    pub hostname: String,
    pub announced: bool,
    pub interfaces: Vec<IfaceRow>,
    pub api: String,
    pub uptime_ms: u64,
}

/// `nbhd send` and `nbhd invite`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryReply {
    pub id: String,
    pub delivered: bool,
    /// `tcp`, `courier` or `relay`; null when not delivered.
    pub via: Option<String>,
    pub latency_ms: Option<f64>,
    /// A receipt came back (false for a legacy XEP-0174 peer, which sends none).
    pub receipt: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivityRow {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `nbhd invitations`: an invitation received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvitationRow {
    pub id: String,
    pub from: String,
    pub from_nick: String,
    pub activity: ActivityRow,
    pub reason: String,
    pub via: String,
    pub relayed_by: Option<String>,
    /// Unix milliseconds.
    pub received_at: u64,
}

/// `nbhd messages`: a 1:1 message sent or received.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageRow {
    pub id: String,
    pub from: String,
    pub to: String,
    pub from_nick: String,
    pub to_nick: String,
    pub text: String,
    /// The path that carried it; null for one we sent that was not delivered.
    pub via: Option<String>,
    /// Unix milliseconds.
    pub at: u64,
    /// The sender is an nbhd identity that proved itself (an authenticated stream, a sealed
    /// or signed frame); false for a legacy XEP-0174 client, known only by the name it claims
    /// and the address it connects from.
    pub verified: bool,
}

/// `nbhd doctor`: path health of one peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoctorRow {
    pub peer: String,
    pub nick: String,
    pub state: String,
    pub path: String,
    pub unicast_out: String,
    pub unicast_in: String,
    pub multicast_out: String,
    pub multicast_in: String,
    pub diagnosis: String,
}

/// Counters of one part of the daemon: what came in, and what was dropped and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DropCounts {
    pub dropped: BTreeMap<String, u64>,
    pub dropped_total: u64,
}

impl DropCounts {
    pub fn new(dropped: BTreeMap<String, u64>) -> DropCounts {
        DropCounts {
            dropped_total: dropped.values().sum(),
            dropped,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MdnsStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub queries_in: u64,
    pub responses_in: u64,
    pub own_echoes: u64,
    pub conflicts: u64,
    pub dropped: BTreeMap<String, u64>,
    pub dropped_total: u64,
    pub send_errors: u64,
    pub foreign_interface: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub packets_in: u64,
    pub send_errors: u64,
    #[serde(flatten)]
    pub drops: DropCounts,
}

/// Every activity's channel together: frames in and out, and what was dropped and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivityStats {
    pub packets_in: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Posts' packets sent the first time.
    pub data_out: u64,
    /// Packets sent again because a member asked.
    pub repairs_out: u64,
    pub nacks_out: u64,
    pub sessions_out: u64,
    /// Packets received that we had already.
    pub duplicates: u64,
    /// Live packets that went missing and were repaired ...
    pub repaired: u64,
    /// ... and how long after the gap was seen (the last few thousand; null before any).
    pub repair_latency_ms: Option<Latency>,
    pub send_errors: u64,
    #[serde(flatten)]
    pub drops: DropCounts,
}

/// Percentiles of a latency, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// Percentiles of `samples` (ms), or None when there are none.
    pub fn of(mut samples: Vec<f64>) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
        Some(Latency {
            count: samples.len(),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

/// A bounded table's size.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TableSize {
    pub len: usize,
    pub max: usize,
}

/// `nbhd stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    pub mdns: MdnsStats,
    /// Streams and stanzas.
    pub messages: DropCounts,
    pub courier: ChannelStats,
    pub probe: ChannelStats,
    pub activity: ActivityStats,
    pub peers: usize,
    /// Every bounded table: its entries now and its bound (what went past it is in `dropped`).
    pub tables: BTreeMap<String, TableSize>,
}

/// `nbhd share`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShareReply {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Its multicast group and port, `239.255.x.y:port`.
    pub group: String,
    pub private: bool,
}

/// `nbhd activities`: an activity we know.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivitySummary {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Members heard from lately, us included when we are one.
    pub members: usize,
    pub joined: bool,
    pub private: bool,
}

/// `nbhd join` and `nbhd leave`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipReply {
    pub id: String,
    pub name: String,
    pub joined: bool,
}

/// `nbhd post`: answered once the post is stored locally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PostReply {
    /// The activity's id.
    pub id: String,
    pub seq: u64,
}

/// `nbhd log`: one post, in the one total order every member shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// The poster's peer id.
    pub sender: String,
    pub nick: String,
    pub seq: u64,
    pub lamport: u64,
    /// The text (null for a bytes post).
    pub text: Option<String>,
    /// A bytes post, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    /// The post's size in bytes. In events, a post over [`EVENT_BODY_MAX`] comes without its
    /// text or bytes (`nbhd log` has them).
    #[serde(default)]
    pub size: usize,
    /// When its sender posted it (Unix ms, its clock).
    pub at: u64,
}

/// A successful reply: its JSON is the command's `--json` output.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Peers(Vec<PeerRow>),
    Status(StatusReply),
    // Boxed: much the largest reply, and the rarest.
    Stats(Box<StatsReply>),
    Doctor(Vec<DoctorRow>),
    Invitations(Vec<InvitationRow>),
    Messages(Vec<MessageRow>),
    Delivery(DeliveryReply),
    Share(ShareReply),
    Activities(Vec<ActivitySummary>),
    Activity(ActivitySummary),
    Membership(MembershipReply),
    Posted(PostReply),
    Log(Vec<LogRow>),
}

/// One line of `nbhd events --json`: `{type, at, ...}`, `at` in Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Event {
    PeerUp {
        at: u64,
        peer: PeerRow,
    },
    PeerDown {
        at: u64,
        peer: PeerRow,
    },
    PeerChanged {
        at: u64,
        peer: PeerRow,
    },
    Message {
        at: u64,
        from: String,
        from_nick: String,
        id: String,
        text: String,
        via: String,
        /// As [`MessageRow::verified`].
        verified: bool,
    },
    Invitation {
        at: u64,
        #[serde(flatten)]
        invitation: InvitationRow,
    },
    PathChanged {
        at: u64,
        peer: String,
        nick: String,
        state: String,
        path: String,
        diagnosis: String,
    },
    /// A post in an activity (ours or a member's), as `nbhd log` shows it.
    Post {
        at: u64,
        activity: String,
        entry: LogRow,
    },
    /// A member joined, left or fell silent.
    Member {
        at: u64,
        activity: String,
        peer: String,
        nick: String,
        /// `joined`, `left` or `silent`.
        change: String,
    },
    /// The follower was too slow: this many events were skipped.
    Lagged {
        at: u64,
        missed: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_the_lines_the_cli_sends() {
        let r: Request =
            serde_json::from_value(json!({"cmd": "send", "peer": "bob", "text": "hi"})).unwrap();
        assert_eq!(
            r,
            Request::Send {
                peer: "bob".into(),
                text: "hi".into(),
                timeout: DEFAULT_TIMEOUT_S
            }
        );
        assert_eq!(
            serde_json::to_value(Request::Messages { peer: None }).unwrap(),
            json!({"cmd": "messages"})
        );
        assert!(serde_json::from_value::<Request>(json!({"cmd": "frobnicate"})).is_err());
    }

    #[test]
    fn an_empty_or_blank_peer_is_a_usage_error() {
        for peer in ["", "  "] {
            let r = Request::Send {
                peer: peer.into(),
                text: "hi".into(),
                timeout: 1.0,
            };
            assert_eq!(r.validate().unwrap_err().kind, ErrorKind::Usage);
        }
    }

    #[test]
    fn event_lines_keep_the_shapes_scripts_read() {
        let ev = Event::PathChanged {
            at: 1,
            peer: "k".into(),
            nick: "bob".into(),
            state: "up".into(),
            path: "tcp".into(),
            diagnosis: String::new(),
        };
        assert_eq!(
            serde_json::to_value(&ev).unwrap(),
            json!({"type": "path-changed", "at": 1, "peer": "k", "nick": "bob", "state": "up", "path": "tcp", "diagnosis": ""})
        );
        let inv = Event::Invitation {
            at: 5,
            invitation: InvitationRow {
                id: "i".into(),
                from: "k".into(),
                from_nick: "alice".into(),
                activity: ActivityRow {
                    id: "chess".into(),
                    name: "chess".into(),
                    kind: "activity".into(),
                },
                reason: String::new(),
                via: "courier".into(),
                relayed_by: None,
                received_at: 5,
            },
        };
        let v = serde_json::to_value(&inv).unwrap();
        assert_eq!(v["type"], "invitation");
        assert_eq!(v["activity"]["type"], "activity");
        assert_eq!(v["via"], "courier");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), inv);
    }
}
