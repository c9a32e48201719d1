//! Pass two: every packet a captured host sent, matched one-to-one to its copy in each capture
//! that should have seen it.
//!
//! All captures are read together, merged in reference-clock order. A packet its own host sent
//! waits in `pending` until the merged time is a window past it; its copies, as they stream by,
//! wait in a per-capture window keyed by content hash. Then the nearest unmatched copy in time
//! is taken (so identical ARP requests repeating every second each find their own copy), or the
//! packet is lost. Memory is bounded by the traffic of a few windows, whatever the file sizes.

use std::collections::VecDeque;

use std::net::Ipv4Addr;

use crate::clock::ClockFit;
use crate::hosts::Host;
use crate::packet::{self, Class, FastMap};
use crate::read::CaptureReader;
use crate::{Input, Options, TraceError};

/// Samples kept per cell for delay percentiles.
const DELAY_SAMPLES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Arrived { delay_ns: i64 },
    Lost,
}

/// The fate of one packet on one direction.
#[derive(Clone, Copy, Debug)]
pub struct Fate {
    /// Capture (and host) index of the sender and of the receiver.
    pub from: usize,
    pub to: usize,
    /// Frame number in the sender's capture, from 0.
    pub packet: u64,
    pub class: Class,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Default)]
pub struct Cell {
    pub sent: u64,
    pub arrived: u64,
    pub lost: u64,
    /// Copies at the receiver that match nothing its sender captured (the sender's capture
    /// missed them): not a network problem, so not counted as sent.
    pub seen_only_at_receiver: u64,
    pub delays_ns: Vec<i64>,
    seen_delays: u64,
}

impl Cell {
    fn add_delay(&mut self, d: i64) {
        self.seen_delays += 1;
        if self.delays_ns.len() < DELAY_SAMPLES {
            self.delays_ns.push(d);
        } else {
            // Deterministic reservoir sampling.
            let j = (self.seen_delays.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) % self.seen_delays;
            if (j as usize) < DELAY_SAMPLES {
                self.delays_ns[j as usize] = d;
            }
        }
    }
}

/// Per (sender, receiver, class) counters, in a flat table: the hot path indexes, never hashes.
pub struct Cells {
    n: usize,
    v: Vec<Cell>,
}

impl Cells {
    fn new(n: usize) -> Cells {
        Cells {
            n,
            v: vec![Cell::default(); n * n * Class::ALL.len()],
        }
    }

    fn slot(&self, from: usize, to: usize, class: Class) -> usize {
        (from * self.n + to) * Class::ALL.len() + class as usize
    }

    pub fn get(&self, from: usize, to: usize, class: Class) -> Option<&Cell> {
        self.v.get(self.slot(from, to, class))
    }

    fn get_mut(&mut self, from: usize, to: usize, class: Class) -> &mut Cell {
        let i = self.slot(from, to, class);
        &mut self.v[i]
    }
}

pub struct MatchResult {
    pub cells: Cells,
}

/// At most this many captures: receivers of a packet are a 64-bit set.
pub const MAX_CAPTURES: usize = 64;

struct Item {
    t_ref: i64,
    idx: u64,
    hash: u64,
    class: Class,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
}

/// Items are read, decoded and clock-corrected in one thread per capture and handed over in
/// batches, so parsing runs beside matching.
const BATCH: usize = 4096;

type Batch = Result<Vec<Item>, TraceError>;

/// One capture's items, as the merge consumes them.
struct Stream {
    rx: std::sync::mpsc::Receiver<Batch>,
    batch: std::vec::IntoIter<Item>,
}

impl Stream {
    fn spawn(path: &std::path::Path, clock: ClockFit) -> Result<Stream, TraceError> {
        let mut reader = CaptureReader::open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(4);
        std::thread::spawn(move || {
            let mut frames = 0u64;
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                match reader.next_frame() {
                    Ok(Some(f)) => {
                        let idx = frames;
                        frames += 1;
                        if let Some(p) = packet::summarize(f.ts_ns, f.linktype, f.data) {
                            batch.push(Item {
                                t_ref: clock.to_ref(p.ts_ns),
                                idx,
                                hash: p.hash,
                                class: p.class,
                                src: p.src_ip,
                                dst: p.dst_ip,
                            });
                            if batch.len() == BATCH
                                && tx
                                    .send(Ok(std::mem::replace(
                                        &mut batch,
                                        Vec::with_capacity(BATCH),
                                    )))
                                    .is_err()
                            {
                                return; // the merge stopped
                            }
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Ok(batch));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        Ok(Stream {
            rx,
            batch: Vec::new().into_iter(),
        })
    }

    fn next(&mut self) -> Result<Option<Item>, TraceError> {
        loop {
            if let Some(i) = self.batch.next() {
                return Ok(Some(i));
            }
            match self.rx.recv() {
                Ok(Ok(b)) if b.is_empty() => return Ok(None),
                Ok(Ok(b)) => self.batch = b.into_iter(),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(None), // the reader finished and hung up
            }
        }
    }
}

/// The usual one-way delay of a direction, learnt from unambiguous matches (EWMA of the delay
/// and of its absolute deviation).
#[derive(Default, Clone)]
struct DelayTrack {
    expected: f64,
    deviation: f64,
    seen: u64,
}

impl DelayTrack {
    fn observe(&mut self, d: i64) {
        self.seen += 1;
        let gain = (1.0 / self.seen as f64).max(1.0 / 32.0);
        let d = d as f64;
        self.deviation += gain * ((d - self.expected).abs() - self.deviation);
        self.expected += gain * (d - self.expected);
    }

    /// How far from the usual delay a copy of repeated content may be.
    fn tolerance(&self) -> i64 {
        if self.seen < 8 {
            return 50_000_000; // nothing learnt yet: 50 ms
        }
        (6.0 * self.deviation).max(2_000_000.0) as i64
    }
}

const NO_COPY: u64 = u64::MAX;

/// A copy of another host's packet, as one capture saw it.
struct CopyRec {
    t_ref: i64,
    hash: u64,
    /// Sequence number of the previous copy with the same content, or [`NO_COPY`].
    prev: u64,
    sender: u32,
    class: Class,
    matched: bool,
}

/// The copies a capture holds, in arrival order, numbered by a sequence; `newest` points at the
/// newest copy of each content and every copy at the previous one with the same content, so
/// eviction is a pop from the front and repeated content is a short chain.
#[derive(Default)]
struct Window {
    base: u64,
    copies: VecDeque<CopyRec>,
    newest: FastMap<u64, u64>,
}

impl Window {
    fn push(&mut self, rec: CopyRec) {
        let seq = self.base + self.copies.len() as u64;
        let prev = self.newest.insert(rec.hash, seq).unwrap_or(NO_COPY);
        self.copies.push_back(CopyRec { prev, ..rec });
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut CopyRec> {
        if seq == NO_COPY || seq < self.base {
            return None;
        }
        self.copies.get_mut((seq - self.base) as usize)
    }

    /// The copy of `hash` to match a packet sent at `t` with the usual delay `expected`: the
    /// unmatched one nearest to `t + expected`, within `w` of `t`; repeated content (identical
    /// ARP requests, retransmissions) only within `tolerance` of the usual delay, since a farther
    /// copy belongs to a repeat. Returns its sequence and whether the content was unique.
    fn best(
        &self,
        hash: u64,
        t: i64,
        expected: i64,
        w: i64,
        tolerance: i64,
    ) -> Option<(u64, bool)> {
        let mut seq = *self.newest.get(&hash)?;
        let mut best: Option<(u64, i64)> = None;
        let mut count = 0;
        while seq != NO_COPY && seq >= self.base {
            let c = &self.copies[(seq - self.base) as usize];
            count += 1;
            if !c.matched && (c.t_ref - t).abs() <= w {
                let off = (c.t_ref - t - expected).abs();
                if best.is_none_or(|(_, o)| off < o) {
                    best = Some((seq, off));
                }
            }
            seq = c.prev;
        }
        let unique = count == 1;
        best.filter(|(_, off)| unique || *off <= tolerance)
            .map(|(s, _)| (s, unique))
    }

    /// Drops copies older than `limit`; calls `unmatched` for each that nothing matched.
    fn evict(&mut self, limit: i64, mut unmatched: impl FnMut(&CopyRec)) {
        while self.copies.front().is_some_and(|c| c.t_ref < limit) {
            let c = self.copies.pop_front().expect("checked");
            if self.newest.get(&c.hash) == Some(&self.base) {
                self.newest.remove(&c.hash);
            }
            self.base += 1;
            if !c.matched {
                unmatched(&c);
            }
        }
    }
}

struct Pending {
    t_ref: i64,
    from: usize,
    idx: u64,
    hash: u64,
    class: Class,
    /// Receivers, as a bit set of capture indexes.
    to: u64,
}

struct Matcher<'f> {
    w: i64,
    windows: Vec<Window>,
    cells: Cells,
    delays: Vec<DelayTrack>,
    on_fate: Option<&'f mut dyn FnMut(&Fate)>,
}

impl Matcher<'_> {
    fn settle(&mut self, p: &Pending) {
        let n = self.windows.len();
        for r in (0..n).filter(|r| p.to & (1u64 << r) != 0) {
            let track = &mut self.delays[p.from * n + r];
            let found = self.windows[r].best(
                p.hash,
                p.t_ref,
                track.expected as i64,
                self.w,
                track.tolerance(),
            );
            let cell = self.cells.get_mut(p.from, r, p.class);
            cell.sent += 1;
            let outcome = match found {
                Some((seq, unique)) => {
                    let c = self.windows[r].get_mut(seq).expect("found in this window");
                    c.matched = true;
                    let d = c.t_ref - p.t_ref;
                    if unique {
                        track.observe(d);
                    }
                    cell.arrived += 1;
                    cell.add_delay(d);
                    Outcome::Arrived { delay_ns: d }
                }
                None => {
                    cell.lost += 1;
                    Outcome::Lost
                }
            };
            if let Some(f) = self.on_fate.as_mut() {
                f(&Fate {
                    from: p.from,
                    to: r,
                    packet: p.idx,
                    class: p.class,
                    outcome,
                });
            }
        }
    }

    /// Drops copies older than `horizon`, but never one the oldest pending packet may still want.
    fn evict(&mut self, horizon: i64, oldest_pending: Option<i64>) {
        let limit = oldest_pending.map_or(horizon, |t| horizon.min(t.saturating_sub(self.w)));
        for (r, win) in self.windows.iter_mut().enumerate() {
            let cells = &mut self.cells;
            win.evict(limit, |c| {
                cells
                    .get_mut(c.sender as usize, r, c.class)
                    .seen_only_at_receiver += 1
            });
        }
    }
}

pub fn run(
    inputs: &[Input],
    hosts: &[Host],
    clocks: &[ClockFit],
    opts: &Options,
    on_fate: Option<&mut dyn FnMut(&Fate)>,
) -> Result<MatchResult, TraceError> {
    let n = inputs.len();
    if n > MAX_CAPTURES {
        return Err(TraceError {
            file: inputs[MAX_CAPTURES].path.clone(),
            offset: None,
            what: format!("at most {MAX_CAPTURES} captures can be correlated at once"),
        });
    }
    let w = opts.window_ns;
    let by_ip: FastMap<Ipv4Addr, usize> = hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.ip.map(|ip| (ip, i)))
        .collect();
    let mut streams: Vec<Stream> = inputs
        .iter()
        .zip(clocks)
        .map(|(i, c)| Stream::spawn(&i.path, c.clone()))
        .collect::<Result<_, TraceError>>()?;
    let mut heads: Vec<Option<Item>> = Vec::with_capacity(n);
    for s in &mut streams {
        heads.push(s.next()?);
    }
    let mut m = Matcher {
        w,
        windows: (0..n).map(|_| Window::default()).collect(),
        cells: Cells::new(n),
        delays: vec![DelayTrack::default(); n * n],
        on_fate,
    };
    let everyone: u64 = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut watermark = i64::MIN;

    while let Some(c) = (0..n)
        .filter(|&i| heads[i].is_some())
        .min_by_key(|&i| heads[i].as_ref().map(|h| h.t_ref))
    {
        let item = heads[c].take().expect("chosen because present");
        heads[c] = streams[c].next()?;
        watermark = watermark.max(item.t_ref);
        match item.src.and_then(|ip| by_ip.get(&ip).copied()) {
            // Sent by the host that took this capture: wait for its copies elsewhere.
            Some(s) if s == c => {
                let to = if item.class.is_flooded() {
                    everyone & !(1u64 << c)
                } else {
                    item.dst
                        .and_then(|ip| by_ip.get(&ip).copied())
                        .filter(|&r| r != c)
                        .map_or(0, |r| 1u64 << r)
                };
                if to != 0 {
                    pending.push_back(Pending {
                        t_ref: item.t_ref,
                        from: c,
                        idx: item.idx,
                        hash: item.hash,
                        class: item.class,
                        to,
                    });
                }
            }
            // Sent by another captured host: a copy to be matched.
            Some(s) => m.windows[c].push(CopyRec {
                t_ref: item.t_ref,
                hash: item.hash,
                prev: NO_COPY,
                sender: s as u32,
                class: item.class,
                matched: false,
            }),
            None => {}
        }
        while pending.front().is_some_and(|p| p.t_ref + w < watermark) {
            let p = pending.pop_front().expect("checked");
            m.settle(&p);
        }
        m.evict(
            watermark.saturating_sub(3 * w),
            pending.front().map(|p| p.t_ref),
        );
    }
    while let Some(p) = pending.pop_front() {
        m.settle(&p);
    }
    m.evict(i64::MAX, None);
    Ok(MatchResult { cells: m.cells })
}
