//! The report: per direction and class, sent / arrived / lost with a 95 % confidence interval,
//! delays, the clocks, and verdicts in plain language. JSON for scripts, a table for people.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::clock::ClockFit;
use crate::hosts::Host;
use crate::matcher::{Cell, Cells, MatchResult};
use crate::packet::{fmt_mac, Class};

#[derive(Clone, Debug)]
pub struct ClassStats {
    pub class: Class,
    pub sent: u64,
    pub arrived: u64,
    pub lost: u64,
    pub seen_only_at_receiver: u64,
    /// Wilson 95 % interval of the loss rate.
    pub loss_ci: (f64, f64),
    pub delay_p50_ns: Option<i64>,
    pub delay_max_ns: Option<i64>,
}

#[derive(Clone, Debug)]
pub struct Direction {
    pub from: usize,
    pub to: usize,
    pub classes: Vec<ClassStats>,
}

#[derive(Clone, Debug)]
pub struct Verdict {
    pub kind: &'static str,
    pub from: usize,
    pub to: usize,
    pub text: String,
    pub evidence: Value,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub hosts: Vec<Host>,
    pub clocks: Vec<ClockFit>,
    pub directions: Vec<Direction>,
    pub verdicts: Vec<Verdict>,
}

/// Wilson score interval at 95 % for `k` of `n`.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n, z) = (k as f64, n as f64, 1.96f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let center = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

pub fn build(hosts: &[Host], clocks: &[ClockFit], m: MatchResult) -> Report {
    let n = hosts.len();
    let mut directions = Vec::new();
    for from in 0..n {
        for to in 0..n {
            if from == to {
                continue;
            }
            let classes: Vec<ClassStats> = Class::ALL
                .iter()
                .filter_map(|&class| m.cells.get(from, to, class).map(|c| stats(class, c)))
                .filter(|s| s.sent > 0 || s.seen_only_at_receiver > 0)
                .collect();
            if !classes.is_empty() {
                directions.push(Direction { from, to, classes });
            }
        }
    }
    let verdicts = verdicts(hosts, &m.cells);
    Report {
        hosts: hosts.to_vec(),
        clocks: clocks.to_vec(),
        directions,
        verdicts,
    }
}

fn stats(class: Class, c: &Cell) -> ClassStats {
    let mut d = c.delays_ns.clone();
    d.sort_unstable();
    ClassStats {
        class,
        sent: c.sent,
        arrived: c.arrived,
        lost: c.lost,
        seen_only_at_receiver: c.seen_only_at_receiver,
        loss_ci: wilson(c.lost, c.sent),
        delay_p50_ns: d.get(d.len() / 2).copied(),
        delay_max_ns: d.last().copied(),
    }
}

#[derive(Default, Clone, Copy)]
struct Tally {
    sent: u64,
    arrived: u64,
}

fn tally(cells: &Cells, from: usize, to: usize, pick: impl Fn(Class) -> bool) -> Tally {
    let mut t = Tally::default();
    for class in Class::ALL.iter().copied().filter(|c| pick(*c)) {
        if let Some(c) = cells.get(from, to, class) {
            t.sent += c.sent;
            t.arrived += c.arrived;
        }
    }
    t
}

fn verdicts(hosts: &[Host], cells: &Cells) -> Vec<Verdict> {
    let mut out = Vec::new();
    let n = hosts.len();
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            let (ha, hb) = (&hosts[a], &hosts[b]);
            let uni = tally(cells, a, b, Class::is_unicast);
            let flood = tally(cells, a, b, Class::is_flooded);
            let mcast = tally(cells, a, b, |c| c == Class::Multicast);
            let arp_back = tally(cells, b, a, |c| c == Class::ArpReply);
            let uni_back = tally(cells, b, a, Class::is_unicast);
            let by_class: Value = Class::ALL
                .iter()
                .filter_map(|c| {
                    cells
                        .get(a, b, *c)
                        .filter(|x| x.sent > 0)
                        .map(|x| (c.name(), x))
                })
                .map(|(name, x)| {
                    (
                        name.to_string(),
                        json!({"sent": x.sent, "arrived": x.arrived}),
                    )
                })
                .collect::<serde_json::Map<String, Value>>()
                .into();
            let evidence = json!({
                "unicast": {"sent": uni.sent, "arrived": uni.arrived},
                "flooded": {"sent": flood.sent, "arrived": flood.arrived},
                "multicast": {"sent": mcast.sent, "arrived": mcast.arrived},
                "arp_replies_back": {"sent": arp_back.sent, "arrived": arp_back.arrived},
                "unicast_back": {"sent": uni_back.sent, "arrived": uni_back.arrived},
                "by_class": by_class,
            });
            let (la, lb) = (ha.label(), hb.label());
            if uni.sent > 0 && uni.arrived == 0 {
                let what = unicast_words(cells, a, b, uni.sent);
                let mut passed: Vec<String> = Vec::new();
                if flood.arrived > 0 {
                    let word = if mcast.sent == flood.sent {
                        "multicast"
                    } else {
                        "broadcast and multicast"
                    };
                    passed.push(format!("{} of {} {word}", flood.arrived, flood.sent));
                }
                if arp_back.arrived > 0 {
                    passed.push(if arp_back.arrived == 1 {
                        "the ARP reply back".into()
                    } else {
                        format!("{} ARP replies back", arp_back.arrived)
                    });
                }
                if uni_back.arrived > 0 {
                    passed.push(format!(
                        "{} of {} unicast back",
                        uni_back.arrived, uni_back.sent
                    ));
                }
                if passed.is_empty() {
                    out.push(Verdict {
                        kind: "no-delivery",
                        from: a,
                        to: b,
                        text: format!("nothing from {la} reached {lb}: 0 of {what} arrived, and no other traffic shows the path alive"),
                        evidence,
                    });
                } else {
                    out.push(Verdict {
                        kind: "unicast-black-hole",
                        from: a,
                        to: b,
                        text: format!(
                            "unicast {la} → {lb} black hole: 0 of {what} arrived, {} did",
                            join_and(&passed)
                        ),
                        evidence,
                    });
                }
                continue;
            }
            if flood.sent >= 3 && flood.arrived == 0 && uni.arrived > 0 {
                out.push(Verdict {
                    kind: "multicast-black-hole",
                    from: a,
                    to: b,
                    text: format!(
                        "multicast {la} → {lb} black hole: 0 of {} broadcast and multicast packets arrived, while {} of {} unicast did",
                        flood.sent, uni.arrived, uni.sent
                    ),
                    evidence,
                });
                continue;
            }
            // Loss: a class whose interval excludes (nearly) zero loss.
            let lossy: Vec<String> = Class::ALL
                .iter()
                .filter_map(|c| cells.get(a, b, *c).map(|x| (*c, x)))
                .filter(|(_, x)| x.lost > 0 && (x.lost >= 3 || wilson(x.lost, x.sent).0 > 0.01))
                .map(|(c, x)| {
                    let (lo, hi) = wilson(x.lost, x.sent);
                    format!(
                        "{} of {} {} ({:.0} %, 95 % CI {:.0}–{:.0} %)",
                        x.lost,
                        x.sent,
                        c.name(),
                        100.0 * x.lost as f64 / x.sent as f64,
                        100.0 * lo,
                        100.0 * hi
                    )
                })
                .collect();
            if !lossy.is_empty() {
                out.push(Verdict {
                    kind: "loss",
                    from: a,
                    to: b,
                    text: format!("{la} → {lb} loses packets on the way: {}", lossy.join("; ")),
                    evidence,
                });
            }
        }
    }
    out
}

fn unicast_words(cells: &Cells, a: usize, b: usize, total: u64) -> String {
    let count = |c: Class| cells.get(a, b, c).map_or(0, |x| x.sent);
    let (syn, tcp, udp, other) = (
        count(Class::TcpSyn),
        count(Class::TcpOther),
        count(Class::UnicastUdp),
        count(Class::OtherUnicast),
    );
    if syn == total {
        return format!("{total} SYN{}", if total == 1 { "" } else { "s" });
    }
    let mut parts = Vec::new();
    for (k, word) in [(syn, "SYN"), (tcp, "TCP"), (udp, "UDP"), (other, "other")] {
        if k > 0 {
            parts.push(format!("{k} {word}"));
        }
    }
    format!("{total} unicast packets ({})", parts.join(", "))
}

fn join_and(parts: &[String]) -> String {
    match parts.len() {
        0 => String::new(),
        1 => parts[0].clone(),
        _ => format!(
            "{} and {}",
            parts[..parts.len() - 1].join(", "),
            parts[parts.len() - 1]
        ),
    }
}

impl Report {
    fn host_ref(&self, i: usize) -> (String, Option<String>) {
        let h = &self.hosts[i];
        let ip =
            h.ip.map(|ip| ip.to_string())
                .unwrap_or_else(|| h.name.clone());
        let name = if h.ip.map(|ip| ip.to_string()) != Some(h.name.clone()) {
            Some(h.name.clone())
        } else {
            None
        };
        (ip, name)
    }

    /// `{hosts, clock, directions, verdicts}` (DESIGN.md §6).
    pub fn to_json(&self) -> Value {
        let ms = |ns: f64| (ns / 1e4).round() / 100.0;
        let hosts: Vec<Value> = self
            .hosts
            .iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "file": h.file,
                    "ip": h.ip.map(|i| i.to_string()),
                    "mac": h.mac.map(fmt_mac),
                    "packets": h.packets,
                    "identified_by": h.identified_by,
                    "confidence": (h.confidence * 1000.0).round() / 1000.0,
                })
            })
            .collect();
        let clock: Vec<Value> = self
            .clocks
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, c)| {
                json!({
                    "host": self.host_ref(i).0,
                    "reference": self.host_ref(0).0,
                    "offset_ms": ms(c.offset_ns),
                    "at_unix_s": c.mid_ns as f64 / 1e9,
                    "drift_ppm": (c.drift * 1e8).round() / 100.0,
                    "anchors": c.anchors,
                    "residual_ms": ms(c.residual_ns),
                })
            })
            .collect();
        let directions: Vec<Value> = self
            .directions
            .iter()
            .map(|d| {
                let (from, from_name) = self.host_ref(d.from);
                let (to, to_name) = self.host_ref(d.to);
                let classes: serde_json::Map<String, Value> = d
                    .classes
                    .iter()
                    .map(|c| {
                        (
                            c.class.name().to_string(),
                            json!({
                                "sent": c.sent,
                                "arrived": c.arrived,
                                "lost": c.lost,
                                "loss_ci95": [(c.loss_ci.0 * 1e4).round() / 1e4, (c.loss_ci.1 * 1e4).round() / 1e4],
                                "seen_only_at_receiver": c.seen_only_at_receiver,
                                "delay_p50_ms": c.delay_p50_ns.map(|d| ms(d as f64)),
                                "delay_max_ms": c.delay_max_ns.map(|d| ms(d as f64)),
                            }),
                        )
                    })
                    .collect();
                json!({"from": from, "from_name": from_name, "to": to, "to_name": to_name, "classes": classes})
            })
            .collect();
        let verdicts: Vec<Value> = self
            .verdicts
            .iter()
            .map(|v| {
                let (from, from_name) = self.host_ref(v.from);
                let (to, to_name) = self.host_ref(v.to);
                json!({"kind": v.kind, "from": from, "from_name": from_name, "to": to, "to_name": to_name,
                       "text": v.text, "evidence": v.evidence})
            })
            .collect();
        json!({"hosts": hosts, "clock": clock, "directions": directions, "verdicts": verdicts})
    }

    /// A report a person reads at a glance.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "hosts");
        for (i, h) in self.hosts.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {}  {:<22} {:<16} {:<18} {:>9} packets  by {}",
                i + 1,
                h.name,
                h.ip.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
                h.mac.map(fmt_mac).unwrap_or_default(),
                h.packets,
                h.identified_by
            );
        }
        if self.clocks.len() > 1 {
            let _ = writeln!(s, "\nclocks (against {})", self.hosts[0].label());
            for (i, c) in self.clocks.iter().enumerate().skip(1) {
                let _ = writeln!(
                    s,
                    "  {:<22} offset {:>+12.3} ms  drift {:>+8.2} ppm  ({} anchors)",
                    self.hosts[i].label(),
                    c.offset_ns / 1e6,
                    c.drift * 1e6,
                    c.anchors
                );
            }
        }
        let _ = writeln!(s, "\ndirections");
        let _ = writeln!(
            s,
            "  {:<36} {:<14} {:>8} {:>8} {:>7}  {:<18} {:>10}",
            "from → to", "class", "sent", "arrived", "lost", "loss (95 % CI)", "delay p50"
        );
        for d in &self.directions {
            let dir = format!(
                "{} → {}",
                self.hosts[d.from].label(),
                self.hosts[d.to].label()
            );
            for c in &d.classes {
                let loss = if c.sent > 0 {
                    format!(
                        "{:.1} % ({:.1}–{:.1})",
                        100.0 * c.lost as f64 / c.sent as f64,
                        100.0 * c.loss_ci.0,
                        100.0 * c.loss_ci.1
                    )
                } else {
                    "-".into()
                };
                let delay = c
                    .delay_p50_ns
                    .map(|d| format!("{:.3} ms", d as f64 / 1e6))
                    .unwrap_or_else(|| "-".into());
                let _ = writeln!(
                    s,
                    "  {:<36} {:<14} {:>8} {:>8} {:>7}  {:<18} {:>10}",
                    dir,
                    c.class.name(),
                    c.sent,
                    c.arrived,
                    c.lost,
                    loss,
                    delay
                );
            }
        }
        let _ = writeln!(s, "\nverdicts");
        if self.verdicts.is_empty() {
            let _ = writeln!(
                s,
                "  none: every packet a host sent reached the captures that should have seen it"
            );
        }
        for v in &self.verdicts {
            let _ = writeln!(s, "  [{}] {}", v.kind, v.text);
        }
        s
    }
}
