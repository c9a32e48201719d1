//! The record cache of RFC 6762 §10: what we have heard from others, when it expires, when to
//! refresh it, and the evidence that it went stale (cache-flush, goodbye, POOF, reconfirm).
//!
//! It owns records only; deciding what to query and which records make a peer is the engine's.
//! It also keeps each source address to a budget: one host (a broken laptop, a prank) cannot
//! fill the cache, and what it cannot add never evicts what others announced.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::wire::{Name, Record, RecordData};
use super::IfaceId;

/// Refresh queries at 80, 85, 90 and 95 % of the TTL (RFC 6762 §5.2).
const REFRESH_PERCENT: [u32; 4] = [80, 85, 90, 95];
/// Plus up to 2 % of the TTL of random jitter, so that one querier refreshes for everyone.
const REFRESH_JITTER_PERCENT: f64 = 2.0;
/// RFC 6762 §10.1 and §10.2: goodbyes and flushed records linger one second.
pub const FLUSH_DELAY: Duration = Duration::from_secs(1);
/// RFC 6762 §10.5: two unanswered queries over ten seconds flush a record.
pub const POOF_WINDOW: Duration = Duration::from_secs(10);
/// RFC 6762 §10.4: a reconfirmed record that is not heard again within ten seconds is flushed.
pub const RECONFIRM_WINDOW: Duration = Duration::from_secs(10);
/// Bound on what a crowded or hostile link can make us hold.
pub const MAX_ENTRIES: usize = 4096;
/// Of which this many only records of instances whose key signed them (see
/// [`super::signed`]) may take: a flood of forged announcements fills the rest, never this.
pub const RESERVED_FOR_PROVEN: usize = 1024;
/// Records one source address may have in the cache ...
pub const MAX_RECORDS_PER_SOURCE: usize = 256;
/// ... and live instances (with an SRV record) it may announce: generous for a real host (Avahi
/// publishing a few services for several users), tiny beside a flood. Leftovers of instances
/// whose SRV went (a PTR, a TXT, an address nothing points at) give way to the source's new
/// records, so a host that flooded for a while is heard again minutes after, not hours.
pub const MAX_INSTANCES_PER_SOURCE: usize = 32;

#[derive(Debug, Clone)]
pub struct Entry {
    pub iface: IfaceId,
    /// Who first brought it (a copy from another address does not move it).
    pub source: IpAddr,
    pub record: Record,
    pub received: Instant,
    pub expires: Instant,
    /// Index into [`REFRESH_PERCENT`] of the next refresh, and when it is due.
    pub refresh_step: usize,
    pub refresh_at: Option<Instant>,
    /// Unanswered queries for this record seen from others: (count, first seen).
    pub poof: Option<(u32, Instant)>,
    /// A reconfirmation started at this time (RFC 6762 §10.4).
    pub reconfirm: Option<Instant>,
}

impl Entry {
    fn schedule_refresh(&mut self, rng: &mut impl Rng) {
        self.refresh_at = REFRESH_PERCENT.get(self.refresh_step).map(|pct| {
            let jitter = rng.gen_range(0.0..REFRESH_JITTER_PERCENT);
            let frac = (*pct as f64 + jitter) / 100.0;
            self.received + Duration::from_secs_f64(self.record.ttl as f64 * frac)
        });
    }

    /// The next moment this entry needs attention.
    pub fn next_deadline(&self) -> Instant {
        let mut t = self.expires;
        if let Some(r) = self.refresh_at {
            t = t.min(r);
        }
        if let Some((n, first)) = self.poof {
            if n >= 2 {
                t = t.min(first + POOF_WINDOW);
            }
        }
        if let Some(start) = self.reconfirm {
            t = t.min(start + RECONFIRM_WINDOW);
        }
        t
    }
}

/// What happened when a record was offered to the cache.
#[derive(Debug, PartialEq, Eq)]
pub enum Insert {
    New,
    Refreshed,
    Goodbye,
    Ignored,
    Full,
    /// Its source is at its budget (records or instances).
    OverBudget,
}

/// What one source has in the cache.
#[derive(Debug, Default)]
struct Budget {
    records: usize,
    /// Its live instances: the owners of its SRV records.
    instances: HashMap<Name, usize>,
}

#[derive(Debug, Default)]
pub struct Cache {
    entries: Vec<Entry>,
    budgets: HashMap<IpAddr, Budget>,
    /// How many entries each name has: a record of a name not here is new (nothing to
    /// refresh or flush), found without walking the entries. Under a flood of forgeries,
    /// each a new name, that walk was most of the cost of refusing one.
    names: HashMap<Name, usize>,
}

/// The live instance an SRV record makes.
fn instance_of(r: &Record) -> Option<&Name> {
    match &r.data {
        RecordData::Srv { .. } => Some(&r.name),
        _ => None,
    }
}

impl Cache {
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.entries.iter_mut()
    }

    /// Offers a record heard on `iface` at `now` (RFC 6762 §10); `proven` when it belongs to
    /// an instance whose key signed it (it may take the reserved share).
    pub fn insert(
        &mut self,
        now: Instant,
        iface: IfaceId,
        source: IpAddr,
        r: &Record,
        proven: bool,
        rng: &mut impl Rng,
    ) -> Insert {
        let known = self.names.contains_key(&r.name);
        // §10.2: a cache-flush record replaces the older members of its RRset, but only those
        // older than one second, so that a burst of records of one RRset all survive.
        // Only records the same source brought: one host's cache-flush (or goodbye) never
        // flushes what another announced (a forged one would move a peer's address).
        if known && r.cache_flush && r.ttl > 0 {
            for e in self.entries.iter_mut() {
                if e.iface == iface
                    && e.source == source
                    && e.record.name == r.name
                    && e.record.rtype() == r.rtype()
                    && e.record.data != r.data
                    && e.received + FLUSH_DELAY <= now
                {
                    e.expires = e.expires.min(now + FLUSH_DELAY);
                    e.refresh_at = None;
                }
            }
        }
        let existing = known
            .then(|| {
                self.entries
                    .iter()
                    .position(|e| e.iface == iface && e.record.same_record(r))
            })
            .flatten();
        if let Some(i) = existing {
            let e = &mut self.entries[i];
            if r.ttl == 0 && e.source != source {
                return Insert::Ignored; // another host's goodbye for this one's record
            }
            if r.ttl == 0 {
                // §10.1: a goodbye; keep it one more second.
                e.expires = e.expires.min(now + FLUSH_DELAY);
                e.refresh_at = None;
                e.reconfirm = None;
                return Insert::Goodbye;
            }
            e.record = r.clone();
            e.received = now;
            e.expires = now + Duration::from_secs(r.ttl as u64);
            e.refresh_step = 0;
            e.poof = None;
            e.reconfirm = None;
            e.schedule_refresh(rng);
            return Insert::Refreshed;
        }
        if r.ttl == 0 {
            return Insert::Ignored;
        }
        let room = if proven {
            MAX_ENTRIES
        } else {
            MAX_ENTRIES - RESERVED_FOR_PROVEN
        };
        if self.entries.len() >= room {
            return Insert::Full;
        }
        if self.over_budget(source, r) && !self.evict_leftover(source, r) {
            return Insert::OverBudget;
        }
        let b = self.budgets.entry(source).or_default();
        b.records += 1;
        if let Some(i) = instance_of(r) {
            *b.instances.entry(i.clone()).or_default() += 1;
        }
        let mut e = Entry {
            iface,
            source,
            record: r.clone(),
            received: now,
            expires: now + Duration::from_secs(r.ttl as u64),
            refresh_step: 0,
            refresh_at: None,
            poof: None,
            reconfirm: None,
        };
        e.schedule_refresh(rng);
        *self.names.entry(r.name.clone()).or_default() += 1;
        self.entries.push(e);
        Insert::New
    }

    /// Would a new record from `source` take it past its budget?
    fn over_budget(&self, source: IpAddr, r: &Record) -> bool {
        let Some(b) = self.budgets.get(&source) else {
            return false;
        };
        let new_instance = instance_of(r).is_some_and(|i| !b.instances.contains_key(i));
        b.records >= MAX_RECORDS_PER_SOURCE
            || (new_instance && b.instances.len() >= MAX_INSTANCES_PER_SOURCE)
    }

    /// Makes room for `r` in its source's record budget by dropping one of the source's
    /// leftovers: a PTR, TXT or address record of no live instance of that source. Never
    /// another source's record, never a live instance's. True if room was made.
    fn evict_leftover(&mut self, source: IpAddr, r: &Record) -> bool {
        let Some(b) = self.budgets.get(&source) else {
            return false;
        };
        let new_instance = instance_of(r).is_some_and(|i| !b.instances.contains_key(i));
        if new_instance && b.instances.len() >= MAX_INSTANCES_PER_SOURCE {
            return false; // an instance over its budget waits for one to go
        }
        if b.records < MAX_RECORDS_PER_SOURCE {
            return false;
        }
        let live: Vec<(&Name, Option<&Name>)> = self
            .entries
            .iter()
            .filter(|e| e.source == source)
            .filter_map(|e| match &e.record.data {
                RecordData::Srv { target, .. } => Some((&e.record.name, Some(target))),
                _ => None,
            })
            .collect();
        let leftover = self.entries.iter().position(|e| {
            e.source == source
                && match &e.record.data {
                    RecordData::Ptr(t) => !live.iter().any(|(i, _)| *i == t),
                    RecordData::Txt(_) => !live.iter().any(|(i, _)| *i == &e.record.name),
                    RecordData::A(_) | RecordData::Aaaa(_) => {
                        !live.iter().any(|(_, t)| *t == Some(&e.record.name))
                    }
                    _ => false,
                }
        });
        match leftover {
            Some(i) => {
                self.entries.swap_remove(i);
                self.recount();
                true
            }
            None => false,
        }
    }

    /// The budgets counted again after entries went.
    fn recount(&mut self) {
        self.budgets.clear();
        self.names.clear();
        for e in &self.entries {
            *self.names.entry(e.record.name.clone()).or_default() += 1;
            let b = self.budgets.entry(e.source).or_default();
            b.records += 1;
            if let Some(i) = instance_of(&e.record) {
                *b.instances.entry(i.clone()).or_default() += 1;
            }
        }
    }

    /// Moves a refreshed entry to its next refresh step.
    pub fn advance_refresh(e: &mut Entry, rng: &mut impl Rng) {
        e.refresh_step += 1;
        e.schedule_refresh(rng);
    }

    /// Removes expired entries and those POOF or a failed reconfirmation condemned; true if any.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| {
            let poofed = matches!(e.poof, Some((n, first)) if n >= 2 && now >= first + POOF_WINDOW);
            let unconfirmed = matches!(e.reconfirm, Some(start) if now >= start + RECONFIRM_WINDOW);
            e.expires > now && !poofed && !unconfirmed
        });
        let gone = self.entries.len() != before;
        if gone {
            self.recount();
        }
        gone
    }

    pub fn remove_iface(&mut self, iface: IfaceId) {
        self.entries.retain(|e| e.iface != iface);
        self.recount();
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(Entry::next_deadline).min()
    }
}
