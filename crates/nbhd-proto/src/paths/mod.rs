//! Paths: what we know of each direction of each path to each peer, what state that puts the
//! peer in, which path a delivery should take, when to probe, and how to say it to a person
//! (DESIGN.md §4.3).
//!
//! Work in progress (issue 4): this is the evidence model and its decisions, sans-IO like every
//! engine here. The messages engine and the driver feed it what they observe (a TCP handshake,
//! a probe and its reply, multicast heard, a courier receipt, a peer's own observations, a local
//! send error) and ask it how to deliver and when to probe next.
//!
//! Evidence is kept per direction and per channel, because the failures we exist for are
//! one-way: with A→B unicast dropped, B's probes reach A but A's never reach B, and TCP fails both
//! ways since its handshake needs both. A peer's state is decided by its worse direction.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// RFC 8305 spirit: start the courier if no receipt within max(250 ms, 3 × smoothed RTT).
pub const COURIER_AFTER_MIN: Duration = Duration::from_millis(250);
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

/// The latest word on one direction of one channel.
#[derive(Clone, Copy, Debug, Default)]
struct Evidence {
    ok_at: Option<Instant>,
    broken_at: Option<Instant>,
}

impl Evidence {
    fn ok(&mut self, now: Instant) {
        self.ok_at = Some(now);
        self.broken_at = None;
    }

    fn broken(&mut self, now: Instant) {
        self.broken_at = Some(now);
    }

    fn ok_within(&self, now: Instant, d: Duration) -> bool {
        self.ok_at
            .is_some_and(|t| now.saturating_duration_since(t) < d)
            && self.broken_at.is_none()
    }

    fn health(&self, now: Instant) -> Health {
        let fresh =
            |t: Option<Instant>| t.filter(|t| now.saturating_duration_since(*t) < EVIDENCE_TTL);
        match (fresh(self.ok_at), fresh(self.broken_at)) {
            (_, Some(b)) if self.ok_at.is_none_or(|o| b >= o) => Health::Broken,
            (Some(_), _) => Health::Ok,
            _ => Health::Unknown,
        }
    }
}

/// What a peer tells us it saw of our traffic (carried over the courier on failure or demand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Our probes reached it.
    pub our_unicast_arrives: Option<bool>,
    /// Our multicast reached it.
    pub our_multicast_arrives: Option<bool>,
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

#[derive(Clone, Debug)]
struct PeerPaths {
    unicast_out: Evidence,
    unicast_in: Evidence,
    multicast_out: Evidence,
    multicast_in: Evidence,
    /// A TCP attempt failed and nothing explained it yet.
    tcp_failed_at: Option<Instant>,
    srtt: Option<Duration>,
    unanswered_probes: u32,
    /// Traffic wants this peer (a delivery is pending or recent).
    wanted_until: Option<Instant>,
    idle_backoff: Duration,
    next_probe: Option<Instant>,
    relay_only: bool,
}

impl Default for PeerPaths {
    fn default() -> Self {
        PeerPaths {
            unicast_out: Evidence::default(),
            unicast_in: Evidence::default(),
            multicast_out: Evidence::default(),
            multicast_in: Evidence::default(),
            tcp_failed_at: None,
            srtt: None,
            unanswered_probes: 0,
            wanted_until: None,
            idle_backoff: PROBE_IDLE_FIRST,
            next_probe: None,
            relay_only: false,
        }
    }
}

/// The paths engine: evidence per peer (keyed by peer id), decisions from it.
pub struct Paths {
    peers: BTreeMap<String, PeerPaths>,
    rng: SmallRng,
}

impl Paths {
    pub fn new(seed: u64) -> Paths {
        Paths {
            peers: BTreeMap::new(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn peer(&mut self, id: &str) -> &mut PeerPaths {
        self.peers.entry(id.to_string()).or_default()
    }

    /// A TCP handshake completed, or a receipt came back over TCP: unicast works both ways.
    pub fn on_tcp_ok(&mut self, now: Instant, id: &str, rtt: Option<Duration>) {
        let p = self.peer(id);
        p.unicast_out.ok(now);
        p.unicast_in.ok(now);
        p.tcp_failed_at = None;
        p.unanswered_probes = 0;
        p.relay_only = false;
        if let Some(r) = rtt {
            // RFC 6298 smoothing.
            p.srtt = Some(p.srtt.map_or(r, |s| (s * 7 + r) / 8));
        }
    }

    /// A connect timed out, or an established stream stopped acknowledging: one direction of
    /// unicast (we cannot tell which yet) is broken.
    pub fn on_tcp_failed(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.tcp_failed_at = Some(now);
        p.next_probe = Some(now); // find out which direction, at once
    }

    /// Sending to the peer failed locally (EPERM, ENETUNREACH): our side of unicast is broken.
    pub fn on_local_send_error(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.unicast_out.broken(now);
        p.tcp_failed_at = Some(now);
    }

    /// Our probe got its reply: unicast works both ways.
    pub fn on_probe_reply(&mut self, now: Instant, id: &str, rtt: Duration) {
        self.on_tcp_ok(now, id, Some(rtt));
    }

    /// Our probe got no reply in time.
    pub fn on_probe_lost(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.unanswered_probes += 1;
        if p.unanswered_probes >= PROBES_TO_BREAK {
            // Either our probes die on the way, or its replies do. Its own probes reaching us
            // (on_probe_received) or its observation (on_observation) says which; until then
            // both directions without fresh good news count as broken, and TCP, which needs
            // both, is certainly out.
            if !p.unicast_out.ok_within(now, FRESH) {
                p.unicast_out.broken(now);
            }
            if !p.unicast_in.ok_within(now, FRESH) {
                p.unicast_in.broken(now);
            }
        }
    }

    /// The peer's probe reached us: unicast from it to us works.
    pub fn on_probe_received(&mut self, now: Instant, id: &str) {
        self.peer(id).unicast_in.ok(now);
    }

    /// Unanswered probes in a row (the driver asks the peer for its observations after a few).
    pub fn unanswered_probes(&self, id: &str) -> u32 {
        self.peers.get(id).map_or(0, |p| p.unanswered_probes)
    }

    /// We heard the peer's multicast (mDNS or the neighborhood channel).
    pub fn on_multicast_heard(&mut self, now: Instant, id: &str) {
        self.peer(id).multicast_in.ok(now);
    }

    /// A courier frame's receipt came back: multicast works both ways.
    pub fn on_courier_receipt(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.multicast_out.ok(now);
        p.multicast_in.ok(now);
    }

    /// Neither TCP nor the courier carries to this peer; a relay did.
    pub fn on_relay_only(&mut self, now: Instant, id: &str) {
        let p = self.peer(id);
        p.relay_only = true;
        p.multicast_out.broken(now);
    }

    /// What the peer says it saw of our traffic.
    pub fn on_observation(&mut self, now: Instant, id: &str, o: Observation) {
        let p = self.peer(id);
        match o.our_unicast_arrives {
            Some(true) => p.unicast_out.ok(now),
            Some(false) => p.unicast_out.broken(now),
            None => {}
        }
        match o.our_multicast_arrives {
            Some(true) => p.multicast_out.ok(now),
            Some(false) => p.multicast_out.broken(now),
            None => {}
        }
    }

    /// A delivery to this peer is pending: probe on the busy schedule while it lasts.
    pub fn want(&mut self, now: Instant, id: &str, until: Instant) {
        let p = self.peer(id);
        p.wanted_until = Some(p.wanted_until.map_or(until, |u| u.max(until)));
        if p.next_probe.is_none_or(|t| t > now + PROBE_BUSY.1) && Self::broken_state(p, now) {
            p.next_probe = Some(now + PROBE_BUSY.0);
        }
    }

    /// The network changed (addresses, interfaces): forget what we knew.
    pub fn network_changed(&mut self) {
        self.peers.clear();
    }

    fn broken_state(p: &PeerPaths, now: Instant) -> bool {
        matches!(
            Self::state_of(p, now),
            PathState::UnicastBroken | PathState::Unreachable | PathState::Suspect
        )
    }

    fn state_of(p: &PeerPaths, now: Instant) -> PathState {
        let (uo, ui) = (p.unicast_out.health(now), p.unicast_in.health(now));
        let (mo, mi) = (p.multicast_out.health(now), p.multicast_in.health(now));
        let unicast_broken = uo == Health::Broken || ui == Health::Broken;
        let multicast_works = mi == Health::Ok && mo != Health::Broken;
        if unicast_broken {
            if multicast_works || p.relay_only {
                PathState::UnicastBroken
            } else if mi == Health::Broken || mo == Health::Broken {
                PathState::Unreachable
            } else {
                PathState::UnicastBroken
            }
        } else if p
            .tcp_failed_at
            .is_some_and(|t| now.saturating_duration_since(t) < EVIDENCE_TTL)
        {
            PathState::Suspect
        } else if uo == Health::Ok && ui == Health::Ok {
            PathState::Up
        } else {
            PathState::Unknown
        }
    }

    pub fn state(&self, now: Instant, id: &str) -> PathState {
        self.peers
            .get(id)
            .map_or(PathState::Unknown, |p| Self::state_of(p, now))
    }

    /// How to start a delivery: the first path, and when to add the courier if no receipt has
    /// come (None: the first path is the courier or the relay already). Sticky: while unicast is
    /// known broken, TCP is not even tried.
    pub fn plan(&self, now: Instant, id: &str) -> (Via, Option<Duration>) {
        let Some(p) = self.peers.get(id) else {
            return (Via::Tcp, Some(COURIER_AFTER_MIN));
        };
        match Self::state_of(p, now) {
            // Only a relay carried to it last time, and nothing since says TCP works again.
            state if p.relay_only && state != PathState::Up => (Via::Relay, None),
            PathState::UnicastBroken | PathState::Unreachable => (Via::Courier, None),
            _ => (
                Via::Tcp,
                Some(
                    p.srtt
                        .map_or(COURIER_AFTER_MIN, |s| (s * 3).max(COURIER_AFTER_MIN)),
                ),
            ),
        }
    }

    /// Peers whose probe is due, and the schedule moved on for each (busy 10-15 s while traffic
    /// wants the peer, else backing off from 60 s to 10 min; always re-armed).
    pub fn due_probes(&mut self, now: Instant) -> Vec<String> {
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

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.next_probe).min()
    }

    /// `nbhd doctor`'s row for a peer, with its plain-language line.
    pub fn diagnose(&self, now: Instant, id: &str, nick: &str) -> Diagnosis {
        let p = self.peers.get(id).cloned().unwrap_or_default();
        let state = Self::state_of(&p, now);
        let (path, _) = self.plan(now, id);
        let (uo, ui) = (p.unicast_out.health(now), p.unicast_in.health(now));
        let (mo, mi) = (p.multicast_out.health(now), p.multicast_in.health(now));
        let unicast = match (uo, ui) {
            (Health::Broken, Health::Ok) => Some(format!(
                "unicast from you to {nick} is dropped on the way (your probes never arrive; {nick}'s reach you), so TCP is impossible both ways"
            )),
            (Health::Ok, Health::Broken) => Some(format!(
                "unicast from {nick} to you is dropped on the way ({nick}'s replies never arrive; yours reach {nick}), so TCP is impossible both ways"
            )),
            (Health::Broken, Health::Broken) => Some(format!("unicast between you and {nick} is dropped both ways")),
            (Health::Broken, Health::Unknown) | (Health::Unknown, Health::Broken) => {
                Some(format!("unicast between you and {nick} is dropped in at least one direction"))
            }
            _ if state == PathState::Suspect => Some(format!("a TCP connection to {nick} failed; which direction is not known yet")),
            _ => None,
        };
        let multicast = match (mo, mi) {
            (Health::Ok, Health::Ok) => "multicast works both ways".to_string(),
            (Health::Broken, Health::Ok) => {
                format!("multicast from you to {nick} is dropped, from {nick} to you it works")
            }
            (Health::Ok, Health::Broken) => {
                format!("multicast from {nick} to you is dropped, from you to {nick} it works")
            }
            (_, Health::Ok) => format!("multicast from {nick} reaches you"),
            (Health::Broken, _) | (_, Health::Broken) => "multicast is dropped".to_string(),
            _ => "nothing is known of multicast".to_string(),
        };
        let text = match unicast {
            None => String::new(),
            Some(u) => format!("{u}; {multicast}; messages go by {}", path.as_str()),
        };
        Diagnosis {
            state,
            path,
            unicast_out: uo,
            unicast_in: ui,
            multicast_out: mo,
            multicast_in: mi,
            text,
        }
    }
}

impl Paths {
    /// `nbhd doctor`'s row for a legacy XEP-0174 peer: TCP is its only path (no probes, no
    /// courier), so the handshakes and failures of its streams are all the evidence there is,
    /// and nothing is known of multicast.
    pub fn diagnose_legacy(&self, now: Instant, id: &str, nick: &str) -> Diagnosis {
        let p = self.peers.get(id).cloned().unwrap_or_default();
        let (uo, ui) = (p.unicast_out.health(now), p.unicast_in.health(now));
        let failed = p
            .tcp_failed_at
            .filter(|t| now.saturating_duration_since(*t) < EVIDENCE_TTL);
        let (state, text) = match (failed, uo, ui) {
            (Some(_), _, _) => (
                PathState::Suspect,
                format!("a TCP connection to {nick} failed; {nick} is a plain XEP-0174 client (Pidgin, Salut, ...), so TCP is its only path"),
            ),
            (None, Health::Ok, Health::Ok) => (PathState::Up, String::new()),
            _ => (PathState::Unknown, String::new()),
        };
        Diagnosis {
            state,
            path: Via::Tcp,
            unicast_out: uo,
            unicast_in: ui,
            multicast_out: Health::Unknown,
            multicast_in: Health::Unknown,
            text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOB: &str = "bob-key";

    #[test]
    fn a_handshake_means_up_and_tcp_first_with_the_courier_after_250ms() {
        let t = Instant::now();
        let mut p = Paths::new(1);
        assert_eq!(p.state(t, BOB), PathState::Unknown);
        p.on_tcp_ok(t, BOB, Some(Duration::from_millis(2)));
        assert_eq!(p.state(t, BOB), PathState::Up);
        assert_eq!(p.plan(t, BOB), (Via::Tcp, Some(COURIER_AFTER_MIN)));
        // A slow path: three RTTs.
        for _ in 0..40 {
            p.on_tcp_ok(t, BOB, Some(Duration::from_millis(200)));
        }
        let (_, after) = p.plan(t, BOB);
        assert!(after.unwrap() > Duration::from_millis(550), "{after:?}");
        assert!(p.diagnose(t, BOB, "bob").text.is_empty());
    }

    #[test]
    fn the_seed_one_way_black_hole_is_named_and_delivery_goes_by_courier() {
        let t = Instant::now();
        let mut p = Paths::new(1);
        p.on_multicast_heard(t, BOB);
        p.on_tcp_failed(t, BOB);
        assert_eq!(p.state(t, BOB), PathState::Suspect);
        assert_eq!(
            p.due_probes(t),
            vec![BOB.to_string()],
            "probe at once to find out"
        );
        p.on_probe_lost(t, BOB);
        p.on_probe_lost(t, BOB);
        p.on_probe_received(t, BOB); // bob's probes reach us
        p.on_courier_receipt(t, BOB);
        assert_eq!(p.state(t, BOB), PathState::UnicastBroken);
        assert_eq!(
            p.plan(t, BOB),
            (Via::Courier, None),
            "sticky: straight to the courier"
        );
        let d = p.diagnose(t, BOB, "bob");
        assert_eq!(
            (d.unicast_out, d.unicast_in, d.multicast_out, d.multicast_in),
            (Health::Broken, Health::Ok, Health::Ok, Health::Ok)
        );
        assert_eq!(
            d.text,
            "unicast from you to bob is dropped on the way (your probes never arrive; bob's reach you), so TCP is impossible both ways; multicast works both ways; messages go by courier"
        );
    }

    #[test]
    fn the_mirror_image_from_the_other_side() {
        let t = Instant::now();
        let mut p = Paths::new(1);
        p.on_multicast_heard(t, "alice");
        p.on_observation(
            t,
            "alice",
            Observation {
                our_unicast_arrives: Some(true),
                our_multicast_arrives: Some(true),
            },
        );
        p.on_probe_lost(t, "alice");
        p.on_probe_lost(t, "alice");
        // Alice says our probes arrive; it is her replies that die.
        p.peers.get_mut("alice").unwrap().unicast_in.broken(t);
        let d = p.diagnose(t, "alice", "alice");
        assert_eq!((d.unicast_out, d.unicast_in), (Health::Ok, Health::Broken));
        assert_eq!(d.state, PathState::UnicastBroken);
        assert!(
            d.text
                .starts_with("unicast from alice to you is dropped on the way"),
            "{}",
            d.text
        );
    }

    #[test]
    fn healing_a_reply_puts_tcp_back_first() {
        let t = Instant::now();
        let mut p = Paths::new(1);
        p.on_multicast_heard(t, BOB);
        p.on_local_send_error(t, BOB);
        assert_eq!(p.plan(t, BOB).0, Via::Courier);
        p.on_probe_reply(t + Duration::from_secs(12), BOB, Duration::from_millis(1));
        assert_eq!(p.state(t + Duration::from_secs(12), BOB), PathState::Up);
        assert_eq!(p.plan(t + Duration::from_secs(12), BOB).0, Via::Tcp);
    }

    #[test]
    fn probes_every_10_to_15s_while_wanted_else_back_off_to_10_minutes_and_stay_armed() {
        let t0 = Instant::now();
        let mut p = Paths::new(7);
        p.on_multicast_heard(t0, BOB);
        p.on_local_send_error(t0, BOB);
        p.want(t0, BOB, t0 + Duration::from_secs(60));
        let mut t = t0;
        let mut gaps = Vec::new();
        let mut last = None;
        while t < t0 + Duration::from_secs(3600) {
            t = p.poll_timeout().unwrap();
            assert!(!p.due_probes(t).is_empty());
            if let Some(l) = last {
                gaps.push(t - l);
            }
            last = Some(t);
        }
        let busy: Vec<_> = gaps.iter().take_while(|g| **g <= PROBE_BUSY.1).collect();
        assert!(busy.len() >= 3, "{gaps:?}");
        assert!(busy.iter().all(|g| **g >= PROBE_BUSY.0));
        let idle: Vec<_> = gaps[busy.len()..].to_vec();
        assert_eq!(idle[0], PROBE_IDLE_FIRST);
        assert!(idle.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*idle.last().unwrap(), PROBE_IDLE_MAX, "never gives up");
    }

    #[test]
    fn a_relay_only_peer_is_planned_through_the_relay_and_a_network_change_forgets_all() {
        let t = Instant::now();
        let mut p = Paths::new(1);
        p.on_local_send_error(t, BOB);
        p.on_relay_only(t, BOB);
        assert_eq!(p.plan(t, BOB), (Via::Relay, None));
        p.network_changed();
        assert_eq!(p.state(t, BOB), PathState::Unknown);
        assert_eq!(p.plan(t, BOB).0, Via::Tcp);
    }

    #[test]
    fn old_evidence_expires() {
        let t = Instant::now();
        let mut p = Paths::new(1);
        p.on_multicast_heard(t, BOB);
        p.on_local_send_error(t, BOB);
        assert_eq!(
            p.state(t + EVIDENCE_TTL + Duration::from_secs(1), BOB),
            PathState::Unknown
        );
    }

    #[test]
    fn a_legacy_peer_is_up_after_a_stream_and_suspect_after_a_failed_connect() {
        let t = Instant::now();
        let mut p = Paths::new(1);
        let d = p.diagnose_legacy(t, "frank@box", "Frank");
        assert_eq!((d.state, d.path), (PathState::Unknown, Via::Tcp));
        p.on_tcp_ok(t, "frank@box", None);
        let d = p.diagnose_legacy(t, "frank@box", "Frank");
        assert_eq!(d.state, PathState::Up);
        assert_eq!(
            (d.unicast_out, d.unicast_in, d.multicast_out, d.multicast_in),
            (Health::Ok, Health::Ok, Health::Unknown, Health::Unknown)
        );
        let later = t + Duration::from_secs(30);
        p.on_tcp_failed(later, "frank@box");
        let d = p.diagnose_legacy(later, "frank@box", "Frank");
        assert_eq!(d.state, PathState::Suspect);
        assert!(d.text.contains("TCP is its only path"), "{}", d.text);
        p.on_tcp_ok(later + Duration::from_secs(1), "frank@box", None);
        let d = p.diagnose_legacy(later + Duration::from_secs(1), "frank@box", "Frank");
        assert_eq!(
            d.state,
            PathState::Up,
            "a stream after the failure heals it"
        );
    }
}
