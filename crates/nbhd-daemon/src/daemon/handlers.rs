//! One handler per [`Request`]: the Node's views and the store turned into the contract's
//! replies, and deliveries started, their replies waiting for the Node's verdict.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use nbhd_proto::node::{ActivityId, Command, CommandError, Outcome};

use super::Daemon;
use crate::contract::{
    post_body, ActivityStats, ChannelStats, DropCounts, ErrorReply, IfaceRow, Latency, MdnsStats,
    MembershipReply, Reply, Request, ShareReply, StatsReply, StatusReply, TableSize,
};
use crate::control::Pending;
use crate::view;

/// Bounds on `--timeout`, so a typo cannot hold a delivery (and its reply) for days.
const TIMEOUT_RANGE: (f64, f64) = (0.1, 3600.0);

impl Daemon {
    pub(super) fn on_request(&mut self, p: Pending) {
        match self.handle(p.request) {
            Handled::Now(r) => {
                let _ = p.reply.send(r);
            }
            Handled::When(id) => {
                self.waiting.insert(id, p.reply);
            }
            Handled::WhenPosted(activity, request) => {
                self.waiting_posts.insert((activity, request), p.reply);
            }
        }
    }

    fn handle(&mut self, request: Request) -> Handled {
        let now = Instant::now();
        if let Err(e) = request.validate() {
            return Handled::Now(Err(e));
        }
        let reply = match request {
            Request::Peers => Reply::Peers(
                self.node
                    .peers()
                    .map(|p| view::peer(p, now, self.node.is_impostor(p)))
                    .collect(),
            ),
            Request::Status => Reply::Status(self.status(now)),
            Request::Stats => Reply::Stats(Box::new(self.stats())),
            Request::Doctor => Reply::Doctor(
                self.node
                    .doctor(now)
                    .iter()
                    .map(|(p, d)| view::doctor(p, d))
                    .collect(),
            ),
            Request::Invitations => match self.store.invitations() {
                Ok(rows) => Reply::Invitations(rows),
                Err(e) => return Handled::Now(Err(ErrorReply::failed(e.to_string()))),
            },
            Request::Messages { peer } => match self.messages(peer.as_deref()) {
                Ok(r) => r,
                Err(e) => return Handled::Now(Err(e)),
            },
            Request::Send {
                peer,
                text,
                timeout,
            } => {
                return self.deliver(&peer, timeout, |peer, timeout| Command::Send {
                    peer,
                    text,
                    timeout,
                })
            }
            Request::Invite {
                peer,
                activity,
                timeout,
            } => {
                return self.deliver(&peer, timeout, |peer, timeout| Command::Invite {
                    peer,
                    activity,
                    timeout,
                })
            }
            Request::Share {
                name,
                private,
                kind,
            } => {
                let outcome = self.node.handle_command(
                    now,
                    Command::Share {
                        name,
                        kind,
                        private,
                    },
                );
                match outcome {
                    Ok(Outcome::Activity { info, .. }) => Reply::Share(ShareReply {
                        id: info.id.to_hex(),
                        name: info.name,
                        kind: info.kind,
                        group: format!("{}:{}", info.group, info.port),
                        private: info.private,
                    }),
                    Ok(_) => unreachable!("Share answers with its activity"),
                    Err(e) => return Handled::Now(Err(command_error(e))),
                }
            }
            Request::Activities => Reply::Activities(
                self.node
                    .activities(now)
                    .iter()
                    .map(view::activity)
                    .collect(),
            ),
            Request::Activity { activity } => {
                let found = self.node.resolve_activity(&activity).map(|info| {
                    let all = self.node.activities(now);
                    all.iter()
                        .find(|s| s.info.id == info.id)
                        .map(view::activity)
                        .unwrap_or_else(|| {
                            view::activity(&nbhd_proto::activity::Summary {
                                info,
                                joined: false,
                                members: 0,
                            })
                        })
                });
                match found {
                    Ok(a) => Reply::Activity(a),
                    Err(e) => return Handled::Now(Err(command_error(e))),
                }
            }
            Request::Join { activity } => {
                return self.membership(Command::Join { activity });
            }
            Request::Leave { activity } => {
                return self.membership(Command::Leave { activity });
            }
            Request::Post {
                activity,
                text,
                bytes,
            } => {
                let (body, bytes) = match post_body(&text, &bytes) {
                    Ok(b) => b,
                    Err(e) => return Handled::Now(Err(e)),
                };
                let cmd = Command::Post {
                    activity,
                    body,
                    bytes,
                    at_ms: view::unix_ms(),
                };
                return match self.node.handle_command(now, cmd) {
                    Ok(Outcome::Posting { activity, request }) => {
                        Handled::WhenPosted(activity, request)
                    }
                    Ok(_) => unreachable!("Post answers with its request"),
                    Err(e) => Handled::Now(Err(command_error(e))),
                };
            }
            Request::Log { activity } => {
                let info = match self.node.resolve_activity(&activity) {
                    Ok(i) => i,
                    Err(e) => return Handled::Now(Err(command_error(e))),
                };
                match self.store.log(&info.id) {
                    Ok(posts) => Reply::Log(posts.iter().map(view::log_row).collect()),
                    Err(e) => return Handled::Now(Err(ErrorReply::failed(e.to_string()))),
                }
            }
            // The control socket follows events itself; this one came by another way.
            Request::Events => {
                return Handled::Now(Err(ErrorReply::usage(
                    "events are followed on the control socket (nbhd events)",
                )))
            }
        };
        Handled::Now(Ok(reply))
    }

    /// Starts a delivery to PEER; the reply waits for it.
    fn deliver(
        &mut self,
        peer: &str,
        timeout: f64,
        command: impl FnOnce(String, Duration) -> Command,
    ) -> Handled {
        let timeout = Duration::from_secs_f64(timeout.clamp(TIMEOUT_RANGE.0, TIMEOUT_RANGE.1));
        let started = self.node.resolve_peer(peer).and_then(|p| {
            self.node
                .handle_command(Instant::now(), command(p, timeout))
        });
        match started {
            Ok(Outcome::Delivery(id)) => Handled::When(id),
            Ok(_) => unreachable!("a delivery answers with its id"),
            Err(e) => Handled::Now(Err(command_error(e))),
        }
    }

    /// `nbhd join` / `nbhd leave`: done at once.
    fn membership(&mut self, cmd: Command) -> Handled {
        match self.node.handle_command(Instant::now(), cmd) {
            Ok(Outcome::Activity { info, joined }) => {
                Handled::Now(Ok(Reply::Membership(MembershipReply {
                    id: info.id.to_hex(),
                    name: info.name,
                    joined,
                })))
            }
            Ok(_) => unreachable!("join and leave answer with the activity"),
            Err(e) => Handled::Now(Err(command_error(e))),
        }
    }

    /// `nbhd messages [PEER]`: PEER as the Node resolves it; a peer that is gone still has its
    /// messages, found in the store by its id or the nick it had.
    fn messages(&self, peer: Option<&str>) -> Result<Reply, ErrorReply> {
        let store_error = |e: crate::error::DaemonError| ErrorReply::failed(e.to_string());
        let id = match peer {
            None => None,
            Some(q) => match self.node.resolve_peer(q) {
                Ok(id) => Some(id),
                Err(CommandError::NoSuchPeer(_)) => {
                    let mut ids = self.store.peers_named(q.trim()).map_err(store_error)?;
                    ids.dedup();
                    match ids.as_slice() {
                        [one] => Some(one.clone()),
                        [] => return Err(ErrorReply::not_found(format!("no messages with {q:?}"))),
                        many => {
                            return Err(ErrorReply::not_found(format!(
                                "{q:?} is ambiguous: {}",
                                many.join(", ")
                            )))
                        }
                    }
                }
                Err(e) => return Err(command_error(e)),
            },
        };
        self.store
            .messages(id.as_deref())
            .map(Reply::Messages)
            .map_err(store_error)
    }

    fn status(&self, now: Instant) -> StatusReply {
        let s = self.node.status();
        StatusReply {
            id: s.id,
            instance: s.instance,
            hostname: s.hostname,
            announced: s.announced,
            interfaces: self
                .ifaces
                .values()
                .map(|i| IfaceRow {
                    name: i.name.clone(),
                    addrs: i.addrs.iter().map(|a| IpAddr::V4(*a).to_string()).collect(),
                })
                .collect(),
            api: self.api_url.clone(),
            uptime_ms: now.duration_since(self.started).as_millis() as u64,
        }
    }

    fn stats(&self) -> StatsReply {
        use nbhd_proto::node::Channel;
        let s = self.node.stats();
        let mut mdns_dropped: std::collections::BTreeMap<String, u64> = s
            .mdns
            .dropped
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let oversized = |c: Channel| self.stats.oversized.get(&c).copied().unwrap_or(0);
        if oversized(Channel::Mdns) > 0 {
            *mdns_dropped.entry("oversized".into()).or_default() += oversized(Channel::Mdns);
        }
        let channel = |c: Channel| {
            let mut dropped: std::collections::BTreeMap<String, u64> = s
                .dropped
                .iter()
                .filter(|((ch, _), _)| *ch == c)
                .map(|((_, r), n)| (r.as_str().to_string(), *n))
                .collect();
            if oversized(c) > 0 {
                dropped.insert("oversized".into(), oversized(c));
            }
            ChannelStats {
                packets_in: s.datagrams_in.get(&c).copied().unwrap_or(0),
                send_errors: self.stats.send_errors.get(&c).copied().unwrap_or(0),
                drops: DropCounts::new(dropped),
            }
        };
        let foreign = s
            .dropped
            .iter()
            .filter(|((c, r), _)| {
                *c == Channel::Mdns && *r == nbhd_proto::drops::DropReason::ForeignInterface
            })
            .map(|(_, n)| *n)
            .sum();
        StatsReply {
            mdns: MdnsStats {
                packets_in: s.mdns.packets_in,
                bytes_in: s.mdns.bytes_in,
                packets_out: s.mdns.packets_out,
                bytes_out: s.mdns.bytes_out,
                queries_in: s.mdns.queries_in,
                responses_in: s.mdns.responses_in,
                own_echoes: s.mdns.own_echoes,
                conflicts: s.mdns.conflicts,
                dropped_total: mdns_dropped.values().sum(),
                dropped: mdns_dropped,
                send_errors: self
                    .stats
                    .send_errors
                    .get(&Channel::Mdns)
                    .copied()
                    .unwrap_or(0),
                foreign_interface: foreign,
            },
            messages: DropCounts::new(
                s.messages
                    .dropped
                    .iter()
                    .map(|(r, n)| (r.as_str().to_string(), *n))
                    .collect(),
            ),
            courier: channel(Channel::Courier),
            probe: channel(Channel::Probe),
            activity: {
                let is_activity = |c: &Channel| matches!(c, Channel::Activity(_));
                let mut dropped: std::collections::BTreeMap<String, u64> = s
                    .activity
                    .dropped
                    .iter()
                    .map(|(r, n)| (r.as_str().to_string(), *n))
                    .collect();
                for ((c, r), n) in &s.dropped {
                    if is_activity(c) {
                        *dropped.entry(r.as_str().to_string()).or_default() += n;
                    }
                }
                let big = self
                    .stats
                    .activity_oversized
                    .load(std::sync::atomic::Ordering::Relaxed);
                if big > 0 {
                    dropped.insert("oversized".into(), big);
                }
                let a = &s.activity;
                ActivityStats {
                    packets_in: s
                        .datagrams_in
                        .iter()
                        .filter(|(c, _)| is_activity(c))
                        .map(|(_, n)| n)
                        .sum(),
                    frames_in: a.frames_in,
                    frames_out: a.frames_out,
                    data_out: a.data_out,
                    repairs_out: a.repairs_out,
                    nacks_out: a.nacks_out,
                    sessions_out: a.sessions_out,
                    duplicates: a.duplicates,
                    repaired: a.repaired,
                    repair_latency_ms: Latency::of(
                        a.repair_latency.iter().map(|d| view::ms(*d)).collect(),
                    ),
                    send_errors: self
                        .stats
                        .send_errors
                        .iter()
                        .filter(|(c, _)| is_activity(c))
                        .map(|(_, n)| n)
                        .sum(),
                    drops: DropCounts::new(dropped),
                }
            },
            peers: self.node.peers().count(),
            tables: self
                .node
                .tables()
                .into_iter()
                .map(|(name, len, max)| (name.to_string(), TableSize { len, max }))
                .collect(),
        }
    }
}

// Lives for one call and is moved once: boxing the large reply would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Handled {
    Now(Result<Reply, ErrorReply>),
    /// The reply waits for this delivery's end.
    When(String),
    /// The reply waits for this post's store write.
    WhenPosted(ActivityId, u64),
}

fn command_error(e: CommandError) -> ErrorReply {
    match e {
        CommandError::EmptyPeer | CommandError::Usage(_) => ErrorReply::usage(e.to_string()),
        _ => ErrorReply::not_found(e.to_string()),
    }
}
