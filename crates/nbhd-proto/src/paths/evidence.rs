//! The evidence model: per peer, per direction, per channel, the latest word on whether it
//! works, and the decisions taken from it: the peer's state, the delivery plan, the doctor's
//! plain-language diagnosis.
//!
//! Evidence is kept per direction because the failures we exist for are one-way: with A→B
//! unicast dropped, B's probes reach A but A's never reach B, and TCP fails both ways since its
//! handshake needs both. A peer's state is decided by its worse direction.

use std::time::{Duration, Instant};

use super::*;

/// The latest word on one direction of one channel.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Evidence {
    pub(super) ok_at: Option<Instant>,
    pub(super) broken_at: Option<Instant>,
}

impl Evidence {
    pub(super) fn ok(&mut self, now: Instant) {
        self.ok_at = Some(now);
        self.broken_at = None;
    }

    pub(super) fn broken(&mut self, now: Instant) {
        self.broken_at = Some(now);
    }

    pub(super) fn ok_within(&self, now: Instant, d: Duration) -> bool {
        self.ok_at
            .is_some_and(|t| now.saturating_duration_since(t) < d)
            && self.broken_at.is_none()
    }

    pub(super) fn health(&self, now: Instant) -> Health {
        let fresh =
            |t: Option<Instant>| t.filter(|t| now.saturating_duration_since(*t) < EVIDENCE_TTL);
        match (fresh(self.ok_at), fresh(self.broken_at)) {
            (_, Some(b)) if self.ok_at.is_none_or(|o| b >= o) => Health::Broken,
            (Some(_), _) => Health::Ok,
            _ => Health::Unknown,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct PeerPaths {
    pub(super) unicast_out: Evidence,
    pub(super) unicast_in: Evidence,
    pub(super) multicast_out: Evidence,
    pub(super) multicast_in: Evidence,
    /// A TCP attempt failed (or went unacknowledged while the courier delivered) and nothing
    /// explained it yet.
    pub(super) tcp_failed_at: Option<Instant>,
    /// The courier delivered what TCP did not: from then on deliveries go by courier first,
    /// TCP racing behind, until evidence says otherwise.
    pub(super) courier_won_at: Option<Instant>,
    /// Smoothed round trip of TCP streams and probes.
    pub(super) srtt: Option<Duration>,
    /// Smoothed round trip of a courier frame and its receipt (first transmissions only).
    pub(super) courier_srtt: Option<Duration>,
    /// A courier frame or its receipt was lost lately: send two copies.
    pub(super) courier_loss_at: Option<Instant>,
    pub(super) unanswered_probes: u32,
    /// Traffic wants this peer (a delivery is pending or recent).
    pub(super) wanted_until: Option<Instant>,
    pub(super) idle_backoff: Duration,
    pub(super) next_probe: Option<Instant>,
    pub(super) relay_only: bool,
}

impl Default for PeerPaths {
    fn default() -> Self {
        PeerPaths {
            unicast_out: Evidence::default(),
            unicast_in: Evidence::default(),
            multicast_out: Evidence::default(),
            multicast_in: Evidence::default(),
            tcp_failed_at: None,
            courier_won_at: None,
            srtt: None,
            courier_srtt: None,
            courier_loss_at: None,
            unanswered_probes: 0,
            wanted_until: None,
            idle_backoff: PROBE_IDLE_FIRST,
            next_probe: None,
            relay_only: false,
        }
    }
}

/// RFC 6298 smoothing (α = 1/8).
pub(super) fn smooth(old: Option<Duration>, sample: Duration) -> Duration {
    old.map_or(sample, |s| (s * 7 + sample) / 8)
}

impl PeerPaths {
    pub(super) fn broken_state(&self, now: Instant) -> bool {
        matches!(
            self.state(now),
            PathState::UnicastBroken | PathState::Unreachable | PathState::Suspect
        )
    }

    pub(super) fn state(&self, now: Instant) -> PathState {
        let (uo, ui) = (self.unicast_out.health(now), self.unicast_in.health(now));
        let (mo, mi) = (
            self.multicast_out.health(now),
            self.multicast_in.health(now),
        );
        let unicast_broken = uo == Health::Broken || ui == Health::Broken;
        let multicast_works = mi == Health::Ok && mo != Health::Broken;
        if unicast_broken {
            if multicast_works || self.relay_only {
                PathState::UnicastBroken
            } else if mi == Health::Broken || mo == Health::Broken {
                PathState::Unreachable
            } else {
                PathState::UnicastBroken
            }
        } else if self
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

    /// The courier won lately and nothing since says TCP works again.
    pub(super) fn courier_winning(&self, now: Instant) -> bool {
        self.courier_won_at.is_some_and(|w| {
            now.saturating_duration_since(w) < EVIDENCE_TTL
                && self.unicast_out.ok_at.is_none_or(|ok| ok < w)
        })
    }

    pub(super) fn plan(&self, now: Instant) -> Plan {
        let tcp_first = Plan {
            first: Via::Tcp,
            courier_after: Some(
                self.srtt
                    .map_or(COURIER_AFTER_MIN, |s| (s * 3).max(COURIER_AFTER_MIN)),
            ),
            tcp_too: false,
        };
        let only = |first| Plan {
            first,
            courier_after: None,
            tcp_too: false,
        };
        match self.state(now) {
            // Only a relay carried to it last time, and nothing since says TCP works again.
            state if self.relay_only && state != PathState::Up => only(Via::Relay),
            // Sticky: while unicast is known broken, TCP is not even tried.
            PathState::UnicastBroken | PathState::Unreachable => only(Via::Courier),
            // The courier just did what TCP did not: it goes first, TCP races behind (and wins
            // back the first place as soon as it delivers).
            PathState::Suspect if self.courier_winning(now) => Plan {
                tcp_too: true,
                ..only(Via::Courier)
            },
            _ => tcp_first,
        }
    }

    pub(super) fn diagnose(&self, now: Instant, nick: &str) -> Diagnosis {
        let state = self.state(now);
        let path = self.plan(now).first;
        let (uo, ui) = (self.unicast_out.health(now), self.unicast_in.health(now));
        let (mo, mi) = (
            self.multicast_out.health(now),
            self.multicast_in.health(now),
        );
        let unicast = match (uo, ui) {
            (Health::Broken, Health::Ok) => Some(format!(
                "unicast from you to {nick} is dropped on the way (your probes never arrive; {nick}'s reach you), so TCP is impossible both ways"
            )),
            (Health::Ok, Health::Broken) => Some(format!(
                "unicast from {nick} to you is dropped on the way ({nick}'s replies never arrive; yours reach {nick}), so TCP is impossible both ways"
            )),
            (Health::Broken, Health::Broken) => {
                Some(format!("unicast between you and {nick} is dropped both ways"))
            }
            (Health::Broken, Health::Unknown) | (Health::Unknown, Health::Broken) => Some(format!(
                "unicast between you and {nick} is dropped in at least one direction"
            )),
            _ if state == PathState::Suspect => Some(format!(
                "a TCP connection to {nick} failed or stopped delivering; which direction is not known yet"
            )),
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

    /// A legacy XEP-0174 peer: TCP is its only path (no probes, no courier), so the handshakes
    /// and failures of its streams are all the evidence there is, and nothing is known of
    /// multicast.
    pub(super) fn diagnose_legacy(&self, now: Instant, nick: &str) -> Diagnosis {
        let (uo, ui) = (self.unicast_out.health(now), self.unicast_in.health(now));
        let failed = self
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
