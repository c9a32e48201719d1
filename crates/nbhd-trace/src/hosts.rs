//! Pass one over each capture: who took it, and which packets can anchor the clocks.
//!
//! The capturing host is an endpoint of nearly every unicast packet in its own capture (a
//! switch sends it only its own traffic), so its address is the one that appears most often as
//! a unicast source or destination. When two addresses tie (both ends saw exactly the same
//! frames) the traffic cannot tell, and the argument order decides; the report says so.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::packet::{self, Class, FastMap};
use crate::read::CaptureReader;
use crate::{Input, TraceError};

/// At most this many anchors are kept per capture; beyond it, sub-sampling by hash halves them.
const MAX_ANCHORS: usize = 1 << 17;
/// At most this many distinct addresses are counted (a scan of a big network stays bounded).
const MAX_ADDRS: usize = 1 << 16;

/// A packet usable to compare clocks: its content hash, time, and who sent it.
#[derive(Clone, Copy, Debug)]
pub struct Anchor {
    pub hash: u64,
    pub ts_ns: i64,
    pub src: Option<Ipv4Addr>,
}

pub struct Scan {
    pub packets: u64,
    pub first_ns: i64,
    pub last_ns: i64,
    endpoint_counts: FastMap<Ipv4Addr, u64>,
    macs: FastMap<Ipv4Addr, [u8; 6]>,
    /// Anchors whose hash is divisible by 2^anchor_shift.
    pub anchors: Vec<Anchor>,
    pub anchor_shift: u32,
}

pub fn scan(path: &Path) -> Result<Scan, TraceError> {
    let mut r = CaptureReader::open(path)?;
    let mut s = Scan {
        packets: 0,
        first_ns: i64::MAX,
        last_ns: i64::MIN,
        endpoint_counts: FastMap::default(),
        macs: FastMap::default(),
        anchors: Vec::new(),
        anchor_shift: 0,
    };
    while let Some(f) = r.next_frame()? {
        s.packets += 1;
        s.first_ns = s.first_ns.min(f.ts_ns);
        s.last_ns = s.last_ns.max(f.ts_ns);
        let Some(p) = packet::summarize(f.ts_ns, f.linktype, f.data) else {
            continue;
        };
        if p.class.is_unicast() || p.class == Class::ArpReply {
            for ip in [p.src_ip, p.dst_ip].into_iter().flatten() {
                if s.endpoint_counts.len() < MAX_ADDRS || s.endpoint_counts.contains_key(&ip) {
                    *s.endpoint_counts.entry(ip).or_default() += 1;
                }
            }
        }
        if let (Some(ip), Some(mac)) = (p.src_ip, p.src_mac) {
            if s.macs.len() < MAX_ADDRS {
                s.macs.entry(ip).or_insert(mac);
            }
        }
        if p.hash & ((1u64 << s.anchor_shift) - 1) == 0 {
            s.anchors.push(Anchor {
                hash: p.hash,
                ts_ns: p.ts_ns,
                src: p.src_ip,
            });
            if s.anchors.len() > MAX_ANCHORS {
                s.anchor_shift += 1;
                let mask = (1u64 << s.anchor_shift) - 1;
                s.anchors.retain(|a| a.hash & mask == 0);
            }
        }
    }
    if s.packets == 0 {
        s.first_ns = 0;
        s.last_ns = 0;
    }
    Ok(s)
}

#[derive(Clone, Debug)]
pub struct Host {
    /// `--host` name, else the address.
    pub name: String,
    pub file: String,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
    pub packets: u64,
    /// "traffic" or "argument order (...)": how the address was decided.
    pub identified_by: String,
    /// Share of the capture's unicast packets that have this host as an endpoint.
    pub confidence: f64,
}

impl Host {
    /// How the host is named in text: its name and address.
    pub fn label(&self) -> String {
        match self.ip {
            Some(ip) if self.name != ip.to_string() => format!("{} ({ip})", self.name),
            Some(ip) => ip.to_string(),
            None => self.name.clone(),
        }
    }
}

pub fn identify(inputs: &[Input], scans: &[Scan]) -> Vec<Host> {
    // Each capture's best and tied-best endpoints.
    let mut picks: Vec<(Option<Ipv4Addr>, bool, f64)> = Vec::new();
    for s in scans {
        let total: u64 = s.endpoint_counts.values().sum::<u64>() / 2;
        let mut v: Vec<(&Ipv4Addr, &u64)> = s.endpoint_counts.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let pick = v.first().map(|(ip, _)| **ip).filter(|_| total > 0);
        let tied = v.len() >= 2 && v[0].1 == v[1].1;
        let conf = v
            .first()
            .map(|(_, n)| **n as f64 / total.max(1) as f64)
            .unwrap_or(0.0);
        picks.push((pick, tied, conf.min(1.0)));
    }
    // Ties: a host's own packets that no other capture holds (they died on the way) name it.
    for (i, pick) in picks.iter_mut().enumerate() {
        if !pick.1 {
            continue;
        }
        if let Some(ip) = sole_sender(i, scans) {
            *pick = (Some(ip), false, pick.2);
        }
    }
    // Captures whose host the traffic names clearly (and no other capture claims it too).
    let clear: Vec<Option<Ipv4Addr>> = picks
        .iter()
        .enumerate()
        .map(|(i, (pick, tied, _))| {
            let claimed_twice = picks
                .iter()
                .enumerate()
                .any(|(j, q)| j != i && q.0 == *pick && !q.1);
            pick.filter(|_| !tied && !claimed_twice)
        })
        .collect();
    let mut taken: Vec<Ipv4Addr> = clear.iter().flatten().copied().collect();
    let mut out: Vec<Host> = Vec::new();
    for (i, (input, s)) in inputs.iter().zip(scans).enumerate() {
        let (pick, tied, conf) = picks[i];
        let top = s.endpoint_counts.values().max().copied().unwrap_or(0);
        let mut cands: Vec<Ipv4Addr> = s
            .endpoint_counts
            .iter()
            .filter(|(_, n)| **n == top)
            .map(|(ip, _)| *ip)
            .collect();
        cands.sort();
        let free: Vec<Ipv4Addr> = cands
            .iter()
            .filter(|c| !taken.contains(c))
            .copied()
            .collect();
        let (ip, how) = if let Some(ip) = clear[i] {
            (Some(ip), "traffic".to_string())
        } else if tied
            && cands.len() == 2
            && free.len() == 1
            && cands.iter().any(|c| clear.contains(&Some(*c)))
        {
            (
                Some(free[0]),
                "traffic (the other endpoint took another capture)".to_string(),
            )
        } else {
            // The traffic cannot tell: take the addresses that tie, in order, skipping those
            // already given to other captures.
            (
                free.first().copied().or(pick),
                "argument order (the traffic cannot tell: the capture's top endpoints tie)"
                    .to_string(),
            )
        };
        if let Some(ip) = ip {
            if !taken.contains(&ip) {
                taken.push(ip);
            }
        }
        let name = input
            .name
            .clone()
            .or_else(|| ip.map(|i| i.to_string()))
            .unwrap_or_else(|| format!("capture{}", i + 1));
        out.push(Host {
            name,
            file: input.path.display().to_string(),
            ip,
            mac: ip.and_then(|ip| s.macs.get(&ip).copied()),
            packets: s.packets,
            identified_by: how,
            confidence: conf,
        });
    }
    out
}

/// Among capture `i`'s tied top endpoints, the one that sent packets found in no other capture
/// (compared on the anchor sub-sample), if exactly one did.
fn sole_sender(i: usize, scans: &[Scan]) -> Option<Ipv4Addr> {
    if scans.len() < 2 {
        return None;
    }
    let shift = scans.iter().map(|s| s.anchor_shift).max().unwrap_or(0);
    let mask = (1u64 << shift) - 1;
    let elsewhere: std::collections::HashSet<u64> = scans
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .flat_map(|(_, s)| {
            s.anchors
                .iter()
                .filter(|a| a.hash & mask == 0)
                .map(|a| a.hash)
        })
        .collect();
    let top = scans[i]
        .endpoint_counts
        .values()
        .max()
        .copied()
        .unwrap_or(0);
    let mut score: Vec<(u64, Ipv4Addr)> = scans[i]
        .endpoint_counts
        .iter()
        .filter(|(_, n)| **n == top)
        .map(|(ip, _)| {
            let only_here = scans[i]
                .anchors
                .iter()
                .filter(|a| {
                    a.hash & mask == 0 && a.src == Some(*ip) && !elsewhere.contains(&a.hash)
                })
                .count() as u64;
            (only_here, *ip)
        })
        .collect();
    score.sort_by(|a, b| b.cmp(a));
    match score.as_slice() {
        [(a, ip), (b, _), ..] if a > b => Some(*ip),
        _ => None,
    }
}
