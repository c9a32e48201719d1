//! Paths: what we know of each direction of each path to each peer, what state that puts the
//! peer in, which path a delivery should take, and finding out which direction is broken when
//! one is (DESIGN.md §4.3).
//!
//! A sans-IO engine of its own beside messages: the Node feeds it what it observes (a TCP
//! handshake, a delivery the courier won, multicast heard, a local send error, the probe frames
//! and observations addressed to us) and drains the probes and observations it wants sent.
//! Messages asks it how to deliver ([`Paths::plan`]) and how long to wait for a courier receipt.
//!
//! - `evidence`: per-direction evidence, the peer states, the plan, the doctor's diagnosis.
//! - [`probe`]: the probes, their replies and the observations (and the observation codec).

mod evidence;
pub mod probe;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::identity::Identity;
use evidence::{smooth, PeerPaths};

/// RFC 8305 spirit: start the courier if no receipt within max(250 ms, 3 × smoothed RTT).
pub const COURIER_AFTER_MIN: Duration = Duration::from_millis(250);
/// A courier frame without its receipt is sent again after 4 × its smoothed round trip, never
/// sooner than this (a LAN round trip is under a millisecond; timers are not that fine) ...
pub const COURIER_RTO_MIN: Duration = Duration::from_millis(10);
/// ... starting from this before any round trip was measured ...
pub const COURIER_RTO_INITIAL: Duration = Duration::from_millis(50);
/// ... doubling on each loss up to this.
pub const COURIER_RTO_MAX: Duration = Duration::from_millis(200);
/// While traffic wants a peer whose unicast is broken: probe every 10-15 s (jittered).
pub const PROBE_BUSY: (Duration, Duration) = (Duration::from_secs(10), Duration::from_secs(15));
/// Without traffic: back off from one minute to ten.
pub const PROBE_IDLE_FIRST: Duration = Duration::from_secs(60);
pub const PROBE_IDLE_MAX: Duration = Duration::from_secs(600);
/// Evidence older than this no longer decides anything.
pub const EVIDENCE_TTL: Duration = Duration::from_secs(300);
/// Good news younger than this outweighs lost probes.
pub const FRESH: Duration = Duration::from_secs(20);
/// Consecutive unanswered probes before a direction counts as broken.
pub const PROBES_TO_BREAK: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Ok,
    Broken,
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Broken => "broken",
            Health::Unknown => "unknown",
        }
    }
}

/// The states of DESIGN.md §4.3 (`nbhd doctor`'s `state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathState {
    Unknown,
    Up,
    Suspect,
    UnicastBroken,
    Unreachable,
}

impl PathState {
    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Unknown => "unknown",
            PathState::Up => "up",
            PathState::Suspect => "suspect",
            PathState::UnicastBroken => "unicast-broken",
            PathState::Unreachable => "unreachable",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Courier,
    Relay,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Tcp => "tcp",
            Via::Courier => "courier",
            Via::Relay => "relay",
        }
    }
}

/// How to start a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub first: Via,
    /// When to add the courier if no receipt came (None: the first path is the courier or
    /// the relay already).
    pub courier_after: Option<Duration>,
    /// Also write it to TCP, behind the courier, so TCP can win its place back.
    pub tcp_too: bool,
}

/// One row of `nbhd doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    pub state: PathState,
    pub path: Via,
    pub unicast_out: Health,
    pub unicast_in: Health,
    pub multicast_out: Health,
    pub multicast_in: Health,
    /// One plain-language line, empty when all is well.
    pub text: String,
}

/// What to send for the paths engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathsTransmit {
    /// A probe or probe reply, unicast UDP to a peer's probe port.
    Probe { addr: SocketAddr, bytes: Vec<u8> },
    /// An observation, on the neighborhood (courier) channel.
    Courier { bytes: Vec<u8> },
}

/// How to reach a peer's probe port and check its frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    pub key: [u8; 32],
    pub probe_addr: Option<SocketAddr>,
}

/// The paths engine: evidence per peer (keyed by peer id), decisions from it, and the probes
/// and observations that find out which direction fails.
pub struct Paths {
    me: Identity,
    peers: BTreeMap<String, PeerPaths>,
    contacts: BTreeMap<String, Contact>,
    /// Probes sent, by sequence: (peer, when).
    probes_out: BTreeMap<u64, (String, Instant)>,
    /// When each peer's probes reached us (within the observation window).
    probes_in: BTreeMap<String, VecDeque<Instant>>,
    /// When we last asked each peer for its observations.
    asked: BTreeMap<String, Instant>,
    /// When we last probed each peer.
    probed: BTreeMap<String, Instant>,
    /// When we last answered each peer's question.
    answered: BTreeMap<String, Instant>,
    /// Observations we owe, and when to send them.
    answers_due: VecDeque<(String, Instant)>,
    transmits: VecDeque<PathsTransmit>,
    rng: SmallRng,
}

impl Paths {
    pub fn new(me: Identity, seed: u64) -> Paths {
        Paths {
            me,
            peers: BTreeMap::new(),
            contacts: BTreeMap::new(),
            probes_out: BTreeMap::new(),
            probes_in: BTreeMap::new(),
            asked: BTreeMap::new(),
            probed: BTreeMap::new(),
            answered: BTreeMap::new(),
            answers_due: VecDeque::new(),
            transmits: VecDeque::new(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn peer(&mut self, id: &str) -> &mut PeerPaths {
        self.peers.entry(id.to_string()).or_default()
    }

    /// Where a peer's probes go and the key its frames are signed with (from its presence).
    pub fn set_contact(&mut self, id: &str, contact: Contact) {
        self.contacts.insert(id.to_string(), contact);
    }

    /// A peer gone (or known again under another key): everything about it is forgotten, so
    /// that nothing is kept for peers long gone and no old key is trusted.
    pub fn forget(&mut self, id: &str) {
        self.contacts.remove(id);
        self.peers.remove(id);
        self.probes_in.remove(id);
        self.asked.remove(id);
        self.probed.remove(id);
        self.answered.remove(id);
        self.probes_out.retain(|_, (p, _)| p != id);
        self.answers_due.retain(|(p, _)| p != id);
    }

    /// The peer whose probe port is `addr`, if any.
    pub fn peer_at_probe_addr(&self, addr: SocketAddr) -> Option<&str> {
        self.contacts
            .iter()
            .find(|(_, c)| c.probe_addr == Some(addr))
            .map(|(id, _)| id.as_str())
    }

    pub fn poll_transmit(&mut self) -> Option<PathsTransmit> {
        self.transmits.pop_front()
    }

    /// A TCP handshake completed, a probe came back, or a receipt came over TCP: unicast works
    /// both ways.
    pub fn on_tcp_ok(&mut self, now: Instant, id: &str, rtt: Option<Duration>) {
        let p = self.peer(id);
        p.unicast_out.ok(now);
        p.unicast_in.ok(now);
        p.tcp_failed_at = None;
        p.unanswered_probes = 0;
        p.relay_only = false;
        if let Some(r) = rtt {
            p.srtt = Some(smooth(p.srtt, r));
        }
    }

    /// A connect timed out, or an established stream broke: one direction of unicast (we
    /// cannot tell which yet) is broken. A probe and a question to the peer find out which, at
    /// once; the probe schedule stays armed behind them.
    pub fn on_tcp_failed(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.tcp_failed_at = Some(now);
        if p.next_probe.is_none_or(|t| t > now + PROBE_BUSY.0) {
            p.next_probe = Some(now + PROBE_BUSY.0);
        }
        self.investigate(now, id);
    }

    /// The courier carried a delivery that had gone to TCP first and got no receipt that way.
    /// That is evidence: TCP is not delivering, multicast is. The next deliveries go by courier
    /// at once (TCP racing behind), and a probe and a question to the peer find out which
    /// direction of unicast fails, within a round trip and [`probe::ANSWER_DELAY`].
    pub fn on_courier_win(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.multicast_out.ok(now);
        p.multicast_in.ok(now);
        p.tcp_failed_at = Some(now);
        p.courier_won_at = Some(now);
        self.investigate(now, id);
    }

    /// Sending to the peer failed locally (EPERM, ENETUNREACH): our side of unicast is broken.
    pub fn on_local_send_error(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.unicast_out.broken(now);
        p.tcp_failed_at = Some(now);
    }

    /// Our probe, sent at `sent`, got no reply in time.
    fn on_probe_lost(&mut self, now: Instant, id: &str, sent: Instant) {
        let p = self.peer(id);
        p.unanswered_probes += 1;
        // The peer told us since that our probes reach it: then it is its replies that die.
        if p.unicast_out.broken_at.is_none() && p.unicast_out.ok_at.is_some_and(|ok| ok >= sent) {
            p.unicast_in.broken(now);
            return;
        }
        if p.unanswered_probes >= PROBES_TO_BREAK {
            // Either our probes die on the way, or its replies do. Its own probes reaching us
            // or its observation says which; until then both directions without fresh good
            // news count as broken, and TCP, which needs both, is certainly out.
            if !p.unicast_out.ok_within(now, FRESH) {
                p.unicast_out.broken(now);
            }
            if !p.unicast_in.ok_within(now, FRESH) {
                p.unicast_in.broken(now);
            }
        }
    }

    /// Unanswered probes in a row.
    fn unanswered_probes(&self, id: &str) -> u32 {
        self.peers.get(id).map_or(0, |p| p.unanswered_probes)
    }

    /// We heard the peer's multicast (its mDNS records, or a frame on the courier channel).
    pub fn on_multicast_heard(&mut self, now: Instant, id: &str) {
        self.peer(id).multicast_in.ok(now);
    }

    /// A courier frame's receipt came back: multicast works both ways. `rtt` is the round trip
    /// of a frame sent once (Karn: a retransmitted frame's receipt says nothing of the RTT).
    pub fn on_courier_receipt(&mut self, now: Instant, id: &str, rtt: Option<Duration>) {
        let p = self.peer(id);
        p.multicast_out.ok(now);
        p.multicast_in.ok(now);
        if let Some(r) = rtt {
            p.courier_srtt = Some(smooth(p.courier_srtt, r));
        }
    }

    /// A courier frame went unanswered and is sent again.
    pub fn on_courier_retransmit(&mut self, now: Instant, id: &str) {
        self.peer(id).courier_loss_at = Some(now);
    }

    /// How long to wait for a courier frame's receipt before its `attempt`-th copy (0: the
    /// first retransmission).
    pub fn courier_rto(&self, id: &str, attempt: u32) -> Duration {
        let base = self
            .peers
            .get(id)
            .and_then(|p| p.courier_srtt)
            .map_or(COURIER_RTO_INITIAL, |s| (s * 4).max(COURIER_RTO_MIN));
        (base * 2u32.saturating_pow(attempt.min(16))).min(COURIER_RTO_MAX)
    }

    /// How many copies of each courier frame to send: two once loss was seen lately (a second
    /// copy costs a frame; a lost one costs a round trip).
    pub fn courier_copies(&self, now: Instant, id: &str) -> usize {
        let lossy = self.peers.get(id).is_some_and(|p| {
            p.courier_loss_at
                .is_some_and(|t| now.saturating_duration_since(t) < EVIDENCE_TTL)
        });
        if lossy {
            2
        } else {
            1
        }
    }

    /// Neither TCP nor the courier carries to this peer; a relay did.
    pub fn on_relay_only(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.relay_only = true;
        p.multicast_out.broken(now);
    }

    /// A delivery to this peer is pending: probe on the busy schedule while it lasts.
    pub fn want(&mut self, now: Instant, id: &str, until: Instant) {
        let p = self.peer(id);
        p.wanted_until = Some(p.wanted_until.map_or(until, |u| u.max(until)));
        if p.next_probe.is_none_or(|t| t > now + PROBE_BUSY.1) && p.broken_state(now) {
            p.next_probe = Some(now + PROBE_BUSY.0);
        }
    }

    /// The network changed (addresses, interfaces): forget what we knew.
    pub fn network_changed(&mut self) {
        self.peers.clear();
        self.probes_out.clear();
        self.probes_in.clear();
        // Ask and probe again at once: what we heard before the change says nothing now.
        self.asked.clear();
        self.probed.clear();
    }

    pub fn state(&self, now: Instant, id: &str) -> PathState {
        self.peers
            .get(id)
            .map_or(PathState::Unknown, |p| p.state(now))
    }

    /// How to start a delivery. Sticky: while unicast is known broken, TCP is not even tried;
    /// after a courier win the courier goes first.
    pub fn plan(&self, now: Instant, id: &str) -> Plan {
        self.peers.get(id).cloned().unwrap_or_default().plan(now)
    }

    /// Peers whose probe is due, and the schedule moved on for each (busy 10-15 s while traffic
    /// wants the peer, else backing off from 60 s to 10 min; always re-armed).
    fn due_probes(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            if p.next_probe.is_none_or(|t| t > now) {
                continue;
            }
            due.push(id.clone());
            let busy = p.wanted_until.is_some_and(|u| u > now);
            let wait = if busy {
                let (lo, hi) = (
                    PROBE_BUSY.0.as_millis() as u64,
                    PROBE_BUSY.1.as_millis() as u64,
                );
                Duration::from_millis(self.rng.gen_range(lo..=hi))
            } else {
                let w = p.idle_backoff;
                p.idle_backoff = (p.idle_backoff * 2).min(PROBE_IDLE_MAX);
                w
            };
            if busy {
                p.idle_backoff = PROBE_IDLE_FIRST;
            }
            p.next_probe = Some(now + wait);
        }
        due
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.drive_probes(now);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let schedule = self.peers.values().filter_map(|p| p.next_probe).min();
        [schedule, self.probe_timeout()].into_iter().flatten().min()
    }

    /// `nbhd doctor`'s row for a peer, with its plain-language line.
    pub fn diagnose(&self, now: Instant, id: &str, nick: &str) -> Diagnosis {
        self.peers
            .get(id)
            .cloned()
            .unwrap_or_default()
            .diagnose(now, nick)
    }

    /// `nbhd doctor`'s row for a legacy XEP-0174 peer (TCP is its only path).
    pub fn diagnose_legacy(&self, now: Instant, id: &str, nick: &str) -> Diagnosis {
        self.peers
            .get(id)
            .cloned()
            .unwrap_or_default()
            .diagnose_legacy(now, nick)
    }
}

#[cfg(test)]
mod tests;
