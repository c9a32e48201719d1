//! How much each source address may make us work: a token bucket of packets per source, checked
//! before a packet is even parsed. A real host sends a few mDNS packets a second (a busy one a
//! few dozen, in bursts); a flooding one is cut to that, cheaply, so the daemon keeps its time
//! for everyone else (issue 11). A flood from forged, ever-changing addresses is not slowed
//! here (each address is new and sends little; the cache's bounds hold then); past a full
//! table of sources that each keep busy, every new address shares one more bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Packets per second one source may have handled, sustained ...
pub const RATE_PER_SOURCE: f64 = 100.0;
/// ... and in a burst.
pub const BURST_PER_SOURCE: f64 = 300.0;
/// Sources tracked at once; idle ones make room.
pub const MAX_SOURCES: usize = 1024;

#[derive(Debug, Default)]
pub struct SourceRates {
    /// Tokens left, and when they were counted.
    buckets: HashMap<IpAddr, (f64, Instant)>,
    /// The bucket shared by the sources that found the table full.
    overflow: Option<(f64, Instant)>,
    /// When the full table may be swept again (see [`SWEEP_EVERY`]).
    next_sweep: Option<Instant>,
}

/// The full table is swept at most this often: a sweep visits every source, and a flood
/// from new addresses faster than the table turns over would otherwise sweep on every packet.
/// A forged address's bucket refills in 1 / RATE_PER_SOURCE = 10 ms, so one in each 10 ms
/// frees every address of the flood that is already full again.
const SWEEP_EVERY: Duration = Duration::from_millis(10);

/// Takes a token from `bucket` after refilling it for the time since it was counted.
fn take(bucket: &mut (f64, Instant), now: Instant) -> bool {
    let (tokens, at) = bucket;
    let elapsed = now.saturating_duration_since(*at).as_secs_f64();
    *tokens = (*tokens + elapsed * RATE_PER_SOURCE).min(BURST_PER_SOURCE);
    *at = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

impl SourceRates {
    /// May a packet from `source` be handled now? Takes one of its tokens if so.
    pub fn admit(&mut self, now: Instant, source: IpAddr) -> bool {
        if !self.buckets.contains_key(&source) && self.buckets.len() >= MAX_SOURCES {
            // Sources whose bucket has refilled are as good as new: forget them. That is every
            // real host (a packet or two now and then) and every forged address of a flood
            // that changes address on each packet (one token, back in 10 ms); only sources
            // that keep their bucket below full stay, so the table is full only of busy ones.
            // A flood of more than MAX_SOURCES new addresses per SWEEP_EVERY (100,000 a
            // second) keeps the table full, and real hosts then share the overflow bucket.
            if self.next_sweep.is_none_or(|t| now >= t) {
                self.next_sweep = Some(now + SWEEP_EVERY);
                self.buckets.retain(|_, (tokens, at)| {
                    let elapsed = now.saturating_duration_since(*at).as_secs_f64();
                    *tokens + elapsed * RATE_PER_SOURCE < BURST_PER_SOURCE
                });
            }
            if self.buckets.len() >= MAX_SOURCES {
                let shared = self.overflow.get_or_insert((BURST_PER_SOURCE, now));
                return take(shared, now);
            }
        }
        let bucket = self
            .buckets
            .entry(source)
            .or_insert((BURST_PER_SOURCE, now));
        take(bucket, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_its_burst_then_its_rate_and_another_source_is_untouched() {
        let mut r = SourceRates::default();
        let (flooder, other) = ("10.0.0.66".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        let burst = (0..1000).filter(|_| r.admit(t, flooder)).count();
        assert_eq!(burst, BURST_PER_SOURCE as usize);
        assert!(r.admit(t, other));
        // One second later, a second's worth more.
        let later = t + Duration::from_secs(1);
        let more = (0..1000).filter(|_| r.admit(later, flooder)).count();
        assert_eq!(more, RATE_PER_SOURCE as usize);
    }

    #[test]
    fn idle_sources_make_room_for_new_ones() {
        let mut r = SourceRates::default();
        let t = Instant::now();
        for k in 0..MAX_SOURCES as u32 {
            assert!(r.admit(t, std::net::IpAddr::from(k.to_be_bytes())));
        }
        let later = t + Duration::from_secs(5);
        assert!(r.admit(later, "10.9.9.9".parse().unwrap()));
        assert!(r.buckets.len() < 10);
    }

    #[test]
    fn a_real_host_is_admitted_during_a_flood_from_ever_new_addresses() {
        let mut r = SourceRates::default();
        let t = Instant::now();
        let real: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(r.admit(t, real));
        // Quiet for a while, as real hosts are; then 50,000 forged packets a second, each
        // from a new address, for a second ...
        let flood = t + Duration::from_secs(5);
        for k in 0..50_000u32 {
            let at = flood + Duration::from_micros(20 * k as u64);
            r.admit(at, IpAddr::from((1 << 24 | k).to_be_bytes()));
        }
        // ... and the real host's next announcement gets through, again and again.
        let later = flood + Duration::from_secs(1);
        assert!((0..10).all(|_| r.admit(later, real)));
        assert!(r.buckets.len() <= MAX_SOURCES);
    }

    #[test]
    fn sources_past_the_table_share_one_bucket() {
        let mut r = SourceRates::default();
        let t = Instant::now();
        for k in 0..MAX_SOURCES as u32 {
            assert!(r.admit(t, std::net::IpAddr::from(k.to_be_bytes())));
        }
        // A flood from ever-new forged addresses, all while the table is busy.
        let admitted = (0..10_000u32)
            .filter(|k| r.admit(t, std::net::IpAddr::from((1 << 24 | k).to_be_bytes())))
            .count();
        assert_eq!(admitted, BURST_PER_SOURCE as usize);
        assert_eq!(r.buckets.len(), MAX_SOURCES);
    }
}
