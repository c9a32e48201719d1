//! Pass two: every packet a captured host sent, matched one-to-one to its copy in each capture
//! that should have seen it.
//!
//! All captures are read together, merged in reference-clock order. A packet its own host sent
//! waits in `pending` until the merged time is a window past it; its copies, as they stream by,
//! wait in a per-capture window keyed by content hash. Then the nearest unmatched copy in time
//! is taken (so identical ARP requests repeating every second each find their own copy), or the
//! packet is lost. Memory is bounded by the traffic of a few windows, whatever the file sizes.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use crate::clock::ClockFit;
use crate::hosts::Host;
use crate::packet::{self, Class};
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

pub struct MatchResult {
    pub cells: HashMap<(usize, usize, Class), Cell>,
}

struct Item {
    t_ref: i64,
    idx: u64,
    hash: u64,
    class: Class,
    src: Option<Ipv4Addr>,
    dst: Option<Ipv4Addr>,
}

struct Stream {
    reader: CaptureReader,
    clock: ClockFit,
    frames: u64,
}

impl Stream {
    fn next(&mut self) -> Result<Option<Item>, TraceError> {
        while let Some(f) = self.reader.next_frame()? {
            let idx = self.frames;
            self.frames += 1;
            if let Some(p) = packet::summarize(f.ts_ns, f.linktype, f.data) {
                return Ok(Some(Item {
                    t_ref: self.clock.to_ref(p.ts_ns),
                    idx,
                    hash: p.hash,
                    class: p.class,
                    src: p.src_ip,
                    dst: p.dst_ip,
                }));
            }
        }
        Ok(None)
    }
}

/// The usual one-way delay of a direction, learnt from unambiguous matches (EWMA of the delay
/// and of its absolute deviation).
#[derive(Default)]
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

struct Copy {
    t_ref: i64,
    sender: usize,
    class: Class,
    matched: bool,
}

struct Pending {
    t_ref: i64,
    from: usize,
    idx: u64,
    hash: u64,
    class: Class,
    to: Vec<usize>,
}

pub fn run(
    inputs: &[Input],
    hosts: &[Host],
    clocks: &[ClockFit],
    opts: &Options,
    mut on_fate: Option<&mut dyn FnMut(&Fate)>,
) -> Result<MatchResult, TraceError> {
    let n = inputs.len();
    let w = opts.window_ns;
    let by_ip: HashMap<Ipv4Addr, usize> = hosts
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.ip.map(|ip| (ip, i)))
        .collect();
    let mut streams: Vec<Stream> = inputs
        .iter()
        .zip(clocks)
        .map(|(i, c)| {
            Ok(Stream {
                reader: CaptureReader::open(&i.path)?,
                clock: c.clone(),
                frames: 0,
            })
        })
        .collect::<Result<_, TraceError>>()?;
    let mut heads: Vec<Option<Item>> = Vec::with_capacity(n);
    for s in &mut streams {
        heads.push(s.next()?);
    }
    let mut windows: Vec<HashMap<u64, Vec<Copy>>> = (0..n).map(|_| HashMap::new()).collect();
    let mut order: Vec<VecDeque<(i64, u64)>> = (0..n).map(|_| VecDeque::new()).collect();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut cells: HashMap<(usize, usize, Class), Cell> = HashMap::new();
    let mut watermark = i64::MIN;

    let mut delays: HashMap<(usize, usize), DelayTrack> = HashMap::new();
    let mut settle = |p: Pending,
                      windows: &mut Vec<HashMap<u64, Vec<Copy>>>,
                      cells: &mut HashMap<(usize, usize, Class), Cell>,
                      on_fate: &mut Option<&mut dyn FnMut(&Fate)>| {
        for &r in &p.to {
            let cell = cells.entry((p.from, r, p.class)).or_default();
            cell.sent += 1;
            let track = delays.entry((p.from, r)).or_default();
            let expected = track.expected as i64;
            let best = windows[r].get_mut(&p.hash).and_then(|copies| {
                // Repeated content (identical ARP requests, retransmissions): only a copy at
                // about the usual delay is this packet's; a farther one belongs to a repeat.
                let unambiguous = copies.len() == 1;
                let tolerance = if unambiguous { w } else { track.tolerance() };
                copies
                    .iter_mut()
                    .filter(|c| !c.matched && (c.t_ref - p.t_ref).abs() <= w)
                    .filter(|c| (c.t_ref - p.t_ref - expected).abs() <= tolerance)
                    .min_by_key(|c| (c.t_ref - p.t_ref - expected).abs())
                    .map(|c| (c, unambiguous))
            });
            let outcome = match best {
                Some((c, unambiguous)) => {
                    c.matched = true;
                    let d = c.t_ref - p.t_ref;
                    if unambiguous {
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
            if let Some(f) = on_fate.as_mut() {
                f(&Fate {
                    from: p.from,
                    to: r,
                    packet: p.idx,
                    class: p.class,
                    outcome,
                });
            }
        }
    };

    while let Some(c) = (0..n)
        .filter(|&i| heads[i].is_some())
        .min_by_key(|&i| heads[i].as_ref().map(|h| h.t_ref))
    {
        let item = heads[c].take().expect("chosen because present");
        heads[c] = streams[c].next()?;
        watermark = watermark.max(item.t_ref);
        let sender = item.src.and_then(|ip| by_ip.get(&ip).copied());
        match sender {
            Some(s) if s == c => {
                let to: Vec<usize> = if item.class.is_flooded() {
                    (0..n).filter(|&r| r != c).collect()
                } else {
                    item.dst
                        .and_then(|ip| by_ip.get(&ip).copied())
                        .filter(|&r| r != c)
                        .into_iter()
                        .collect()
                };
                if !to.is_empty() {
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
            Some(s) => {
                windows[c].entry(item.hash).or_default().push(Copy {
                    t_ref: item.t_ref,
                    sender: s,
                    class: item.class,
                    matched: false,
                });
                order[c].push_back((item.t_ref, item.hash));
            }
            None => {}
        }
        while pending.front().is_some_and(|p| p.t_ref + w < watermark) {
            let p = pending.pop_front().expect("checked");
            settle(p, &mut windows, &mut cells, &mut on_fate);
        }
        evict(
            &mut windows,
            &mut order,
            &mut cells,
            watermark.saturating_sub(3 * w),
            pending.front().map(|p| p.t_ref),
            w,
        );
    }
    while let Some(p) = pending.pop_front() {
        settle(p, &mut windows, &mut cells, &mut on_fate);
    }
    evict(&mut windows, &mut order, &mut cells, i64::MAX, None, w);
    Ok(MatchResult { cells })
}

/// Drops copies older than `horizon`, but never one the oldest pending packet may still want
/// (within a window of it), counting the ones nothing matched.
fn evict(
    windows: &mut [HashMap<u64, Vec<Copy>>],
    order: &mut [VecDeque<(i64, u64)>],
    cells: &mut HashMap<(usize, usize, Class), Cell>,
    horizon: i64,
    oldest_pending: Option<i64>,
    w: i64,
) {
    let limit = oldest_pending.map_or(horizon, |t| horizon.min(t.saturating_sub(w)));
    for (r, q) in order.iter_mut().enumerate() {
        while q.front().is_some_and(|(t, _)| *t < limit) {
            let (t, h) = q.pop_front().expect("checked");
            let Some(copies) = windows[r].get_mut(&h) else {
                continue;
            };
            if let Some(pos) = copies.iter().position(|c| c.t_ref == t) {
                let c = copies.swap_remove(pos);
                if !c.matched {
                    cells
                        .entry((c.sender, r, c.class))
                        .or_default()
                        .seen_only_at_receiver += 1;
                }
            }
            if copies.is_empty() {
                windows[r].remove(&h);
            }
        }
    }
}
