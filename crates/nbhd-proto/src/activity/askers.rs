//! Who asked us to repair what: the NACK side of an activity's repair bounds (issue 15).
//!
//! A NACK is small and a repair is a full frame, so a member asking again and again for the
//! same packets made every holder send them again and again (a 148-byte NACK drew up to 256
//! repairs, every 20 ms: about 2,000 times its size). NACKs are signed by their asker now, so
//! each member is accounted for: the first time it asks for a packet it is repaired (that is
//! what a late joiner or a loss needs, and it costs at most the history once); asking again for
//! a packet already repaired for it is paid for with credit its NACKs earn, byte for byte. A
//! member that repeats itself therefore draws at most about as many bytes as it sends, on top
//! of the history once.
//!
//! Bounded: [`MAX_ASKERS`] askers (the one heard least lately forgotten), [`MAX_RANGES`]
//! ranges of served packets each (past it, its memory starts again: an asker that makes us
//! forget gets its history once more, never more than that per cycle).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// Askers remembered per activity.
pub const MAX_ASKERS: usize = 256;
/// Ranges of packets served remembered per asker.
pub const MAX_RANGES: usize = 4096;
/// Credit an asker may save up (a burst of re-asks after a loss).
pub const MAX_CREDIT: usize = 64 * 1024;
/// What one repair is taken to cost: a full frame.
pub const REPAIR_COST: usize = super::wire::MAX_FRAME;

#[derive(Default)]
struct Asker {
    /// Per sender, the packets repaired for this asker, as sorted disjoint inclusive ranges.
    served: BTreeMap<[u8; 32], Vec<(u64, u64)>>,
    ranges: usize,
    credit: usize,
    last: Option<Instant>,
}

impl Asker {
    fn has(&self, sender: &[u8; 32], p: u64) -> bool {
        let Some(v) = self.served.get(sender) else {
            return false;
        };
        let i = v.partition_point(|(_, b)| *b < p);
        v.get(i).is_some_and(|(a, _)| *a <= p)
    }

    fn add(&mut self, sender: [u8; 32], p: u64) {
        if self.ranges >= MAX_RANGES {
            self.served.clear();
            self.ranges = 0;
        }
        let v = self.served.entry(sender).or_default();
        let i = v.partition_point(|(_, b)| b.saturating_add(1) < p);
        match v.get_mut(i) {
            Some((a, b)) if *a <= p.saturating_add(1) => {
                *a = (*a).min(p);
                *b = (*b).max(p);
                // Joined the next range?
                if let Some(&(na, nb)) = v.get(i + 1) {
                    if na <= v[i].1.saturating_add(1) {
                        v[i].1 = v[i].1.max(nb);
                        v.remove(i + 1);
                        self.ranges -= 1;
                    }
                }
            }
            _ => {
                v.insert(i, (p, p));
                self.ranges += 1;
            }
        }
    }
}

/// Every asker of one activity.
#[derive(Default)]
pub(crate) struct Askers {
    by: HashMap<[u8; 32], Asker>,
}

impl Askers {
    /// `asker` sent a NACK of `len` bytes: credit for asking again.
    pub fn on_nack(&mut self, now: Instant, asker: [u8; 32], len: usize) {
        if !self.by.contains_key(&asker) && self.by.len() >= MAX_ASKERS {
            let oldest = self.by.iter().min_by_key(|(_, a)| a.last).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.by.remove(&k);
            }
        }
        let a = self.by.entry(asker).or_default();
        a.credit = (a.credit + len).min(MAX_CREDIT);
        a.last = Some(now);
    }

    /// May we repair `sender`'s packet `p` for `asker`? Yes the first time; again only on its
    /// credit. A yes is recorded (and paid for).
    pub fn may_repair(&mut self, asker: &[u8; 32], sender: [u8; 32], p: u64) -> bool {
        let Some(a) = self.by.get_mut(asker) else {
            return false;
        };
        if a.has(&sender, p) {
            if a.credit < REPAIR_COST {
                return false;
            }
            a.credit -= REPAIR_COST;
            return true;
        }
        a.add(sender, p);
        true
    }

    /// Askers remembered.
    pub fn len(&self) -> usize {
        self.by.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_is_repaired_once_for_free_then_only_on_credit() {
        let now = Instant::now();
        let mut s = Askers::default();
        let (x, bob) = ([1; 32], [2; 32]);
        assert!(!s.may_repair(&x, bob, 1), "not before it asked");
        s.on_nack(now, x, 200);
        assert!(
            (1..=300).all(|p| s.may_repair(&x, bob, p)),
            "the first time"
        );
        assert!(
            !s.may_repair(&x, bob, 7),
            "again: 200 bytes of credit buy no frame"
        );
        for _ in 0..7 {
            s.on_nack(now, x, 200);
        }
        assert!(s.may_repair(&x, bob, 7), "1,600 bytes of NACKs buy one");
        assert!(!s.may_repair(&x, bob, 8));
        // Served packets are kept as ranges: 300 packets, one range.
        assert_eq!(s.by[&x].ranges, 1);
        assert!(s.by[&x].has(&bob, 300) && !s.by[&x].has(&bob, 301));
    }

    #[test]
    fn ranges_merge_whatever_the_order() {
        let mut a = Asker::default();
        for p in [5, 3, 9, 4, 7, 8, 6] {
            a.add([0; 32], p);
        }
        assert_eq!(a.served[&[0; 32]], vec![(3, 9)]);
        assert_eq!(a.ranges, 1);
        a.add([0; 32], 20);
        a.add([0; 32], 1);
        assert_eq!(a.served[&[0; 32]], vec![(1, 1), (3, 9), (20, 20)]);
        assert_eq!(a.ranges, 3);
        assert!(a.has(&[0; 32], 1) && !a.has(&[0; 32], 2) && a.has(&[0; 32], 9));
    }
}
