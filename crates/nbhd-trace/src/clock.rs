//! Clock offset and drift of each capture against the first, from packets both captured.
//!
//! For a packet seen at `t0` in the reference capture and `tc` in capture c, `tc - t0` is the
//! clock offset plus or minus the one-way delay: plus when the reference host sent it, minus when
//! host c did, nearly nothing when a third host multicast it to both. Per time bucket, the median
//! of each kind is taken and the two directions averaged (the NTP trick), or the third-party
//! median used; a weighted line through the buckets gives offset and drift. Only packets whose
//! content is unique in both captures serve, so repeated identical frames cannot mislead.

use crate::hosts::{Host, Scan};
use crate::packet::FastMap;

/// Drift needs at least this many time buckets over at least this span (30 s at tens of ppm is
/// about a millisecond, what the offset estimate itself resolves).
const MIN_DRIFT_BUCKETS: usize = 4;
const MIN_DRIFT_SPAN_NS: f64 = 30e9;

/// A capture's clock against the reference: local - reference = offset + drift × (ref - mid).
#[derive(Clone, Debug)]
pub struct ClockFit {
    pub offset_ns: f64,
    /// Dimensionless (ns per ns); ppm is this × 1e6.
    pub drift: f64,
    /// Reference time the offset is given at (the middle of the anchors).
    pub mid_ns: i64,
    pub anchors: usize,
    /// Median absolute residual of the bucket estimates, ns.
    pub residual_ns: f64,
}

impl ClockFit {
    pub fn identity() -> ClockFit {
        ClockFit {
            offset_ns: 0.0,
            drift: 0.0,
            mid_ns: 0,
            anchors: 0,
            residual_ns: 0.0,
        }
    }

    /// Converts a local timestamp of this capture to the reference clock.
    pub fn to_ref(&self, local_ns: i64) -> i64 {
        let approx = local_ns as f64 - self.offset_ns;
        let off = self.offset_ns + self.drift * (approx - self.mid_ns as f64);
        // Kept within ±2^62 ns, so differences of two converted times always fit in an i64.
        (local_ns as f64 - off)
            .round()
            .clamp(-(2f64.powi(62)), 2f64.powi(62)) as i64
    }

    /// The offset at a reference time.
    pub fn offset_at(&self, ref_ns: i64) -> f64 {
        self.offset_ns + self.drift * (ref_ns - self.mid_ns) as f64
    }
}

pub fn estimate(scans: &[Scan], hosts: &[Host]) -> Vec<ClockFit> {
    let mut out = vec![ClockFit::identity()];
    for c in 1..scans.len() {
        out.push(fit_pair(&scans[0], &scans[c], &hosts[0], &hosts[c]));
    }
    out
}

fn fit_pair(r: &Scan, c: &Scan, hr: &Host, hc: &Host) -> ClockFit {
    let shift = r.anchor_shift.max(c.anchor_shift);
    let mask = (1u64 << shift) - 1;
    let mut in_ref: FastMap<u64, (u32, i64, Option<std::net::Ipv4Addr>)> = FastMap::default();
    for a in r.anchors.iter().filter(|a| a.hash & mask == 0) {
        let e = in_ref.entry(a.hash).or_insert((0, a.ts_ns, a.src));
        e.0 += 1;
    }
    let mut in_c: FastMap<u64, (u32, i64)> = FastMap::default();
    for a in c.anchors.iter().filter(|a| a.hash & mask == 0) {
        let e = in_c.entry(a.hash).or_insert((0, a.ts_ns));
        e.0 += 1;
    }
    // (t0, diff, kind): kind 0 = sent by the reference host, 1 = by host c, 2 = by a third.
    let mut pairs: Vec<(i64, i64, u8)> = Vec::new();
    for (h, (n, t0, src)) in &in_ref {
        let Some((m, tc)) = in_c.get(h) else { continue };
        if *n != 1 || *m != 1 {
            continue;
        }
        let kind = if src.is_some() && *src == hr.ip {
            0
        } else if src.is_some() && *src == hc.ip {
            1
        } else {
            2
        };
        pairs.push((*t0, tc - t0, kind));
    }
    if pairs.is_empty() {
        return ClockFit {
            anchors: 0,
            ..ClockFit::identity()
        };
    }
    pairs.sort_unstable();
    let (start, end) = (pairs[0].0, pairs[pairs.len() - 1].0);
    let width = ((end - start) / 64).max(1_000_000_000);
    // Bucket estimates: (bucket mid time, estimate, weight).
    let mut points: Vec<(f64, f64, f64)> = Vec::new();
    let mut i = 0;
    while i < pairs.len() {
        let b0 = pairs[i].0;
        let mut j = i;
        while j < pairs.len() && pairs[j].0 < b0 + width {
            j += 1;
        }
        let bucket = &pairs[i..j];
        let med = |kind: u8| {
            let mut v: Vec<i64> = bucket.iter().filter(|p| p.2 == kind).map(|p| p.1).collect();
            if v.is_empty() {
                None
            } else {
                v.sort_unstable();
                Some(v[v.len() / 2] as f64)
            }
        };
        let est = match (med(0), med(1), med(2)) {
            (Some(a), Some(b), _) => Some((a + b) / 2.0),
            (_, _, Some(t)) => Some(t),
            (a, b, None) => a.or(b),
        };
        if let Some(e) = est {
            let t = bucket.iter().map(|p| p.0 as f64).sum::<f64>() / bucket.len() as f64;
            points.push((t, e, bucket.len() as f64));
        }
        i = j;
    }
    let mut fit = line(&points);
    // One robust pass: drop buckets far off the line, fit again.
    let mut res: Vec<f64> = points
        .iter()
        .map(|p| (p.1 - (fit.0 + fit.1 * (p.0 - fit.2))).abs())
        .collect();
    res.sort_by(|a, b| a.total_cmp(b));
    let mad = res.get(res.len() / 2).copied().unwrap_or(0.0);
    let keep: Vec<(f64, f64, f64)> = points
        .iter()
        .copied()
        .filter(|p| (p.1 - (fit.0 + fit.1 * (p.0 - fit.2))).abs() <= (3.0 * mad).max(1e6))
        .collect();
    if keep.len() >= 2 && keep.len() < points.len() {
        fit = line(&keep);
    }
    ClockFit {
        offset_ns: fit.0,
        drift: fit.1,
        mid_ns: fit.2 as i64,
        anchors: pairs.len(),
        residual_ns: mad,
    }
}

/// Weighted least squares: (value at mid, slope, mid). Drift is only fitted over a span long
/// enough to measure it; below that it is noise and taken as zero.
fn line(points: &[(f64, f64, f64)]) -> (f64, f64, f64) {
    let span = points.iter().map(|p| p.0).fold(f64::MIN, f64::max)
        - points.iter().map(|p| p.0).fold(f64::MAX, f64::min);
    let fit_drift = points.len() >= MIN_DRIFT_BUCKETS && span >= MIN_DRIFT_SPAN_NS;
    let w: f64 = points.iter().map(|p| p.2).sum();
    let mx = points.iter().map(|p| p.0 * p.2).sum::<f64>() / w;
    let my = points.iter().map(|p| p.1 * p.2).sum::<f64>() / w;
    let sxx: f64 = points.iter().map(|p| p.2 * (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = points.iter().map(|p| p.2 * (p.0 - mx) * (p.1 - my)).sum();
    let slope = if sxx > 0.0 && fit_drift {
        sxy / sxx
    } else {
        0.0
    };
    (my, slope, mx)
}
