//! Path probes and observations (DESIGN.md §4.3): small signed unicast UDP probes to the port a
//! peer announces in TXT `probe`, their replies, and the observations peers exchange by courier
//! on failure or on demand, never periodically (that would cost N² and traffic on healthy links).
//!
//! A probe and its reply are [`frame`] envelopes of kind `Probe` / `ProbeReply` with an empty
//! payload; an observation is a `Observation` frame on the courier channel whose payload is
//! [`ObservationRepr`]: one flags byte (bit 0: please answer), then how many of the recipient's
//! probes reached the sender within [`OBSERVATION_WINDOW`] (u32, big-endian).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::*;
use crate::frame::{self, Kind};

/// A probe without a reply by then is lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How far back "probes you sent me" are counted in an observation.
pub const OBSERVATION_WINDOW: Duration = Duration::from_secs(60);
/// After this many lost probes in a row the peer is asked, by courier, what it saw.
pub const ASK_AFTER_LOST: u32 = 2;
/// At most one question per peer this often (each costs the peer an answer and two probes).
pub const ASK_INTERVAL: Duration = Duration::from_secs(10);
/// Asked what it saw, a peer answers after this: the asker sent its probe just before the
/// question, and on a working path the probe is there by then (a LAN round trip is well under a
/// millisecond; a mesh hop a few).
pub const ANSWER_DELAY: Duration = Duration::from_millis(20);
/// A peer's questions are answered (with probes) at most this often: a replayed or flooded
/// question cannot make us a probe cannon.
pub const ANSWER_EVERY: Duration = Duration::from_secs(1);
/// An answer is taken only this soon after our question (a replayed old one is not).
pub const ANSWER_WINDOW: Duration = Duration::from_secs(5);
const LEN: usize = 5;
const REQUEST: u8 = 1;

/// What a peer says it saw of our probes, and whether it asks the same of us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObservationRepr {
    pub request: bool,
    pub probes_heard: u32,
}

impl ObservationRepr {
    pub fn parse(b: &[u8]) -> Result<ObservationRepr, frame::Error> {
        if b.len() < LEN {
            return Err(frame::Error::Truncated);
        }
        if b.len() > LEN {
            return Err(frame::Error::Malformed("observation: trailing bytes"));
        }
        if b[0] & !REQUEST != 0 {
            return Err(frame::Error::Malformed("observation: unknown flags"));
        }
        Ok(ObservationRepr {
            request: b[0] & REQUEST != 0,
            probes_heard: u32::from_be_bytes([b[1], b[2], b[3], b[4]]),
        })
    }

    pub fn emit(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(LEN);
        b.push(if self.request { REQUEST } else { 0 });
        b.extend_from_slice(&self.probes_heard.to_be_bytes());
        b
    }
}

impl Paths {
    /// A probe frame from `peer` (already parsed and verified) on our probe port, from `src`.
    pub fn handle_probe(&mut self, now: Instant, src: SocketAddr, peer: &str, f: &frame::Repr) {
        match f.kind {
            Kind::Probe => {
                self.peer(peer).unicast_in.ok(now);
                let seen = self.probes_in.entry(peer.to_string()).or_default();
                while seen
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) >= OBSERVATION_WINDOW)
                {
                    seen.pop_front();
                }
                seen.push_back(now);
                let reply = frame::Repr {
                    kind: Kind::ProbeReply,
                    sender: self.me.public(),
                    recipient: f.sender,
                    id: f.id,
                    payload: Vec::new(),
                };
                if let Ok(bytes) = reply.emit(&self.me) {
                    self.transmits
                        .push_back(PathsTransmit::Probe { addr: src, bytes });
                }
            }
            Kind::ProbeReply => {
                if let Some((p, sent)) = self.probes_out.remove(&f.id) {
                    if p == peer {
                        self.on_tcp_ok(now, peer, Some(now - sent));
                    }
                }
            }
            _ => {}
        }
    }

    /// An observation frame's payload from `peer` (courier channel).
    pub fn handle_observation(
        &mut self,
        now: Instant,
        peer: &str,
        payload: &[u8],
    ) -> Result<(), frame::Error> {
        let o = ObservationRepr::parse(payload)?;
        // Its count of our probes only means something if we probed it lately, and as an
        // answer to a question we asked just now.
        let probed = self
            .probed
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < OBSERVATION_WINDOW);
        let asked = self
            .asked
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < ANSWER_WINDOW);
        if probed && (o.request || asked) {
            let p = self.peer(peer);
            if o.probes_heard > 0 {
                p.unicast_out.ok(now);
            } else {
                p.unicast_out.broken(now);
            }
        }
        // Its frame reached us; an answer also says our question reached it.
        let p = self.peer(peer);
        p.multicast_in.ok(now);
        if !o.request {
            p.multicast_out.ok(now);
        }
        let answered_lately = self
            .answered
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < ANSWER_EVERY);
        if o.request && !answered_lately {
            self.answered.insert(peer.to_string(), now);
            // It asks: probe it now, so it learns whether ours arrive (two, so that two lost
            // ones let it conclude), and tell it what we saw once its own probe had time to come.
            self.send_probe(now, peer);
            self.send_probe(now, peer);
            self.answers_due
                .push_back((peer.to_string(), now + ANSWER_DELAY));
        }
        Ok(())
    }

    /// Finds out at once which direction fails: a probe, then the question (by courier) that
    /// makes the peer probe us and say whether our probe arrived.
    pub(super) fn investigate(&mut self, now: Instant, peer: &str) {
        let recently = self
            .asked
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < ASK_INTERVAL);
        if recently {
            return;
        }
        self.send_probe(now, peer);
        self.asked.insert(peer.to_string(), now);
        self.send_observation(now, peer, true);
    }

    pub(super) fn send_probe(&mut self, now: Instant, peer: &str) {
        let Some((key, addr)) = self
            .contacts
            .get(peer)
            .and_then(|c| c.probe_addr.map(|a| (c.key, a)))
        else {
            return;
        };
        let seq: u64 = self.rng.gen();
        let repr = frame::Repr {
            kind: Kind::Probe,
            sender: self.me.public(),
            recipient: key,
            id: seq,
            payload: Vec::new(),
        };
        if let Ok(bytes) = repr.emit(&self.me) {
            self.probes_out.insert(seq, (peer.to_string(), now));
            self.probed.insert(peer.to_string(), now);
            self.transmits
                .push_back(PathsTransmit::Probe { addr, bytes });
        }
    }

    fn send_observation(&mut self, now: Instant, peer: &str, request: bool) {
        let Some(key) = self.contacts.get(peer).map(|c| c.key) else {
            return;
        };
        let probes_heard = self.probes_in.get(peer).map_or(0, |v| {
            v.iter()
                .filter(|t| now.saturating_duration_since(**t) < OBSERVATION_WINDOW)
                .count()
        }) as u32;
        let repr = frame::Repr {
            kind: Kind::Observation,
            sender: self.me.public(),
            recipient: key,
            id: self.rng.gen(),
            payload: ObservationRepr {
                request,
                probes_heard,
            }
            .emit(),
        };
        if let Ok(bytes) = repr.emit(&self.me) {
            self.transmits.push_back(PathsTransmit::Courier { bytes });
        }
    }

    pub(super) fn drive_probes(&mut self, now: Instant) {
        let lost: Vec<u64> = self
            .probes_out
            .iter()
            .filter(|(_, (_, t))| now.saturating_duration_since(*t) >= PROBE_TIMEOUT)
            .map(|(s, _)| *s)
            .collect();
        for seq in lost {
            let Some((peer, sent)) = self.probes_out.remove(&seq) else {
                continue;
            };
            self.on_probe_lost(now, &peer, sent);
            if self.unanswered_probes(&peer) >= ASK_AFTER_LOST {
                self.investigate(now, &peer);
            }
        }
        let answers: Vec<String> = {
            let (due, keep): (VecDeque<_>, VecDeque<_>) =
                self.answers_due.drain(..).partition(|(_, at)| *at <= now);
            self.answers_due = keep;
            due.into_iter().map(|(p, _)| p).collect()
        };
        for peer in answers {
            self.send_observation(now, &peer, false);
        }
        for peer in self.due_probes(now) {
            self.send_probe(now, &peer);
        }
    }

    pub(super) fn probe_timeout(&self) -> Option<Instant> {
        let lost = self
            .probes_out
            .values()
            .map(|(_, t)| *t + PROBE_TIMEOUT)
            .min();
        let answers = self.answers_due.iter().map(|(_, t)| *t).min();
        [lost, answers].into_iter().flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_round_trips_and_is_byte_exact() {
        let o = ObservationRepr {
            request: true,
            probes_heard: 0x0102_0304,
        };
        assert_eq!(o.emit(), vec![1, 1, 2, 3, 4]);
        assert_eq!(ObservationRepr::parse(&o.emit()), Ok(o));
        let quiet = ObservationRepr {
            request: false,
            probes_heard: 0,
        };
        assert_eq!(quiet.emit(), vec![0, 0, 0, 0, 0]);
        assert_eq!(ObservationRepr::parse(&quiet.emit()), Ok(quiet));
    }

    #[test]
    fn short_long_and_unknown_observations_are_errors() {
        for cut in 0..LEN {
            assert_eq!(
                ObservationRepr::parse(&[0; 5][..cut]),
                Err(frame::Error::Truncated)
            );
        }
        assert!(ObservationRepr::parse(&[0; 6]).is_err());
        assert!(ObservationRepr::parse(&[2, 0, 0, 0, 0]).is_err());
    }
}
