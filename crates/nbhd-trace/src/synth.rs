//! Synthetic captures with known truth, for tests, fuzz seeds and `bench/trace`.
//!
//! A small pcap/pcapng writer, frame builders (Ethernet, Linux cooked v1/v2, raw IP), and a
//! scenario generator: hosts exchange unicast UDP, TCP, multicast, ARP and broadcast on a
//! modelled link with per-direction loss or black holes, clock offsets and drift, duplicated
//! and reordered records, and capture loss on the sending side; it remembers every packet's
//! true fate.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::Ipv4Addr;

use pcap_parser::Linktype;

use crate::packet::Class;

/// Capture file format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Legacy pcap, microsecond timestamps.
    PcapMicros,
    /// Legacy pcap, nanosecond timestamps.
    PcapNanos,
    /// pcapng with `if_tsresol` 9 (nanoseconds).
    PcapNgNanos,
    /// pcapng with the default microsecond resolution.
    PcapNgMicros,
}

pub struct CaptureWriter<W: Write> {
    out: W,
    format: Format,
}

impl<W: Write> CaptureWriter<W> {
    pub fn new(mut out: W, format: Format, linktype: Linktype) -> io::Result<CaptureWriter<W>> {
        match format {
            Format::PcapMicros | Format::PcapNanos => {
                let magic: u32 = if format == Format::PcapNanos {
                    0xa1b2_3c4d
                } else {
                    0xa1b2_c3d4
                };
                out.write_all(&magic.to_le_bytes())?;
                out.write_all(&2u16.to_le_bytes())?;
                out.write_all(&4u16.to_le_bytes())?;
                out.write_all(&0i32.to_le_bytes())?;
                out.write_all(&0u32.to_le_bytes())?;
                out.write_all(&65535u32.to_le_bytes())?;
                out.write_all(&(linktype.0 as u32).to_le_bytes())?;
            }
            Format::PcapNgNanos | Format::PcapNgMicros => {
                // Section header block.
                let shb_len = 28u32;
                out.write_all(&0x0a0d_0d0au32.to_le_bytes())?;
                out.write_all(&shb_len.to_le_bytes())?;
                out.write_all(&0x1a2b_3c4du32.to_le_bytes())?;
                out.write_all(&1u16.to_le_bytes())?;
                out.write_all(&0u16.to_le_bytes())?;
                out.write_all(&(-1i64).to_le_bytes())?;
                out.write_all(&shb_len.to_le_bytes())?;
                // Interface description block, with if_tsresol for nanoseconds.
                let mut opts = Vec::new();
                if format == Format::PcapNgNanos {
                    opts.extend_from_slice(&9u16.to_le_bytes());
                    opts.extend_from_slice(&1u16.to_le_bytes());
                    opts.extend_from_slice(&[9, 0, 0, 0]);
                    opts.extend_from_slice(&[0, 0, 0, 0]); // opt_endofopt
                }
                let idb_len = 20 + opts.len() as u32;
                out.write_all(&1u32.to_le_bytes())?;
                out.write_all(&idb_len.to_le_bytes())?;
                out.write_all(&(linktype.0 as u16).to_le_bytes())?;
                out.write_all(&0u16.to_le_bytes())?;
                out.write_all(&0u32.to_le_bytes())?;
                out.write_all(&opts)?;
                out.write_all(&idb_len.to_le_bytes())?;
            }
        }
        Ok(CaptureWriter { out, format })
    }

    pub fn write(&mut self, ts_ns: i64, frame: &[u8]) -> io::Result<()> {
        let ts_ns = ts_ns.max(0) as u64;
        match self.format {
            Format::PcapMicros | Format::PcapNanos => {
                let frac = if self.format == Format::PcapNanos {
                    ts_ns % 1_000_000_000
                } else {
                    ts_ns % 1_000_000_000 / 1000
                };
                self.out
                    .write_all(&((ts_ns / 1_000_000_000) as u32).to_le_bytes())?;
                self.out.write_all(&(frac as u32).to_le_bytes())?;
                self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
                self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
                self.out.write_all(frame)?;
            }
            Format::PcapNgNanos | Format::PcapNgMicros => {
                let ticks = if self.format == Format::PcapNgNanos {
                    ts_ns
                } else {
                    ts_ns / 1000
                };
                let pad = (4 - frame.len() % 4) % 4;
                let len = 32 + frame.len() as u32 + pad as u32;
                self.out.write_all(&6u32.to_le_bytes())?;
                self.out.write_all(&len.to_le_bytes())?;
                self.out.write_all(&0u32.to_le_bytes())?;
                self.out.write_all(&((ticks >> 32) as u32).to_le_bytes())?;
                self.out.write_all(&(ticks as u32).to_le_bytes())?;
                self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
                self.out.write_all(&(frame.len() as u32).to_le_bytes())?;
                self.out.write_all(frame)?;
                self.out.write_all(&[0u8; 3][..pad])?;
                self.out.write_all(&len.to_le_bytes())?;
            }
        }
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A host of a scenario.
#[derive(Clone, Copy, Debug)]
pub struct SynthHost {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

impl SynthHost {
    pub fn new(i: usize) -> SynthHost {
        SynthHost {
            ip: Ipv4Addr::new(10, 0, 0, i as u8 + 1),
            mac: [2, 0, 0, 0, 0, i as u8 + 1],
        }
    }
}

/// One packet on the wire: its bytes at layer 3 (or the ARP body), and how it is addressed.
#[derive(Clone, Debug)]
pub struct Wire {
    pub class: Class,
    pub src: usize,
    /// Destination host for unicast; None for flooded packets.
    pub dst: Option<usize>,
    pub dst_mac: [u8; 6],
    pub ethertype: u16,
    pub l3: Vec<u8>,
}

const MDNS_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];

fn ip_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, payload_len: usize) -> Vec<u8> {
    let total = 20 + payload_len;
    let mut h = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        (id >> 8) as u8,
        id as u8,
        0x40,
        0,
        64,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let mut sum: u32 = 0;
    for c in h.chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    h[10] = (ck >> 8) as u8;
    h[11] = ck as u8;
    h
}

/// A UDP datagram; `group` makes it multicast, neither `dst` nor `group` a broadcast.
#[allow(clippy::too_many_arguments)] // one argument per header field that varies
pub fn udp(
    hosts: &[SynthHost],
    src: usize,
    dst: Option<usize>,
    group: Option<Ipv4Addr>,
    id: u16,
    sport: u16,
    dport: u16,
    body: &[u8],
) -> Wire {
    let dst_ip = group
        .or(dst.map(|d| hosts[d].ip))
        .unwrap_or(Ipv4Addr::BROADCAST);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&(id ^ 0x5a5a).to_be_bytes()); // checksum: any value, it is not hashed
    l4.extend_from_slice(body);
    let mut l3 = ip_header(hosts[src].ip, dst_ip, 17, id, l4.len());
    l3.extend_from_slice(&l4);
    let (class, dst_mac) = match (group, dst) {
        (Some(_), _) => (Class::Multicast, MDNS_MAC),
        (None, Some(d)) => (Class::UnicastUdp, hosts[d].mac),
        (None, None) => (Class::Broadcast, [0xff; 6]),
    };
    Wire {
        class,
        src,
        dst: if group.is_some() { None } else { dst },
        dst_mac,
        ethertype: 0x0800,
        l3,
    }
}

#[allow(clippy::too_many_arguments)] // one argument per header field that varies
pub fn tcp(
    hosts: &[SynthHost],
    src: usize,
    dst: usize,
    id: u16,
    sport: u16,
    seq: u32,
    syn: bool,
    body: &[u8],
) -> Wire {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&5298u16.to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(&0u32.to_be_bytes());
    l4.push(0x50);
    l4.push(if syn { 0x02 } else { 0x18 });
    l4.extend_from_slice(&64240u16.to_be_bytes());
    l4.extend_from_slice(&[0x12, 0x34, 0, 0]); // checksum (partial, as before offload), urgent
    l4.extend_from_slice(body);
    let mut l3 = ip_header(hosts[src].ip, hosts[dst].ip, 6, id, l4.len());
    l3.extend_from_slice(&l4);
    Wire {
        class: if syn { Class::TcpSyn } else { Class::TcpOther },
        src,
        dst: Some(dst),
        dst_mac: hosts[dst].mac,
        ethertype: 0x0800,
        l3,
    }
}

pub fn arp(hosts: &[SynthHost], src: usize, target: usize, reply: bool) -> Wire {
    let mut p = vec![0, 1, 8, 0, 6, 4, 0, if reply { 2 } else { 1 }];
    p.extend_from_slice(&hosts[src].mac);
    p.extend_from_slice(&hosts[src].ip.octets());
    p.extend_from_slice(&if reply { hosts[target].mac } else { [0; 6] });
    p.extend_from_slice(&hosts[target].ip.octets());
    Wire {
        class: if reply {
            Class::ArpReply
        } else {
            Class::ArpRequest
        },
        src,
        dst: if reply { Some(target) } else { None },
        dst_mac: if reply { hosts[target].mac } else { [0xff; 6] },
        ethertype: 0x0806,
        l3: p,
    }
}

/// The frame as captured on a link of type `lt`. `outgoing` matters to Linux cooked captures.
pub fn frame(hosts: &[SynthHost], w: &Wire, lt: Linktype, outgoing: bool) -> Vec<u8> {
    let src_mac = hosts[w.src].mac;
    let mut f = Vec::with_capacity(w.l3.len() + 20);
    match lt {
        Linktype::LINUX_SLL => {
            let ptype: u16 = if outgoing {
                4
            } else if w.dst.is_none() {
                2
            } else {
                0
            };
            f.extend_from_slice(&ptype.to_be_bytes());
            f.extend_from_slice(&1u16.to_be_bytes());
            f.extend_from_slice(&6u16.to_be_bytes());
            f.extend_from_slice(&src_mac);
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&w.ethertype.to_be_bytes());
        }
        Linktype::LINUX_SLL2 => {
            f.extend_from_slice(&w.ethertype.to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&2u32.to_be_bytes());
            f.extend_from_slice(&1u16.to_be_bytes());
            f.push(if outgoing { 4 } else { 0 });
            f.push(6);
            f.extend_from_slice(&src_mac);
            f.extend_from_slice(&[0, 0]);
        }
        Linktype::RAW => {
            if w.ethertype != 0x0800 {
                return Vec::new(); // raw IP carries no ARP
            }
        }
        _ => {
            f.extend_from_slice(&w.dst_mac);
            f.extend_from_slice(&src_mac);
            f.extend_from_slice(&w.ethertype.to_be_bytes());
        }
    }
    f.extend_from_slice(&w.l3);
    f
}

/// Link behaviour from one host to another.
#[derive(Clone, Copy, Debug, Default)]
pub struct Link {
    /// Probability that a packet is lost.
    pub loss: f64,
    /// Unicast silently dropped, flooded traffic passes (the seed's failure).
    pub unicast_black_hole: bool,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub hosts: usize,
    pub packets: usize,
    /// Mean packets per second on the whole link.
    pub rate_pps: f64,
    pub start_ns: i64,
    /// Per host: clock offset (ns) and drift (ppm) against true time.
    pub offset_ns: Vec<i64>,
    pub drift_ppm: Vec<f64>,
    /// One-way delay range, ns.
    pub delay_ns: (i64, i64),
    pub links: HashMap<(usize, usize), Link>,
    /// Probability that a received record is captured twice.
    pub duplicate: f64,
    /// Probability that a record is swapped with the next in the file.
    pub reorder: f64,
    /// Probability that the sender's own capture misses a packet it sent.
    pub sender_capture_loss: f64,
    pub seed: u64,
}

impl Scenario {
    pub fn healthy(hosts: usize, packets: usize, seed: u64) -> Scenario {
        Scenario {
            hosts,
            packets,
            rate_pps: 2000.0,
            start_ns: 1_750_000_000_000_000_000,
            offset_ns: vec![0; hosts],
            drift_ppm: vec![0.0; hosts],
            delay_ns: (100_000, 2_000_000),
            links: HashMap::new(),
            duplicate: 0.0,
            reorder: 0.0,
            sender_capture_loss: 0.0,
            seed,
        }
    }
}

/// What really happened: for each (sender, frame number in the sender's capture, receiver),
/// whether it arrived.
#[derive(Default, Debug)]
pub struct Truth {
    pub fates: HashMap<(usize, u64, usize), bool>,
    /// Per host: true offset (local − true time) at the middle of the run, and drift.
    pub offset_mid_ns: Vec<f64>,
    pub mid_true_ns: i64,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A captured record: local timestamp, frame, and for the sender's own copy the receivers with
/// whether each got it.
pub type Record = (i64, Vec<u8>, Option<(usize, Vec<(usize, bool)>)>);
/// Records per capture, in file order.
pub type Records = Vec<Vec<Record>>;

/// Generates the captures of a scenario as records, and the truth.
pub fn generate(s: &Scenario, lt: Linktype) -> (Records, Truth) {
    let hosts: Vec<SynthHost> = (0..s.hosts).map(SynthHost::new).collect();
    let mut rng = Rng(s.seed);
    let mut recs: Records = vec![Vec::new(); s.hosts];
    let local = |h: usize, t: i64| -> i64 {
        t + s.offset_ns[h] + ((t - s.start_ns) as f64 * s.drift_ppm[h] * 1e-6) as i64
    };
    let mut t = s.start_ns;
    let mut id: u16 = 1;
    let gap = (1e9 / s.rate_pps) as u64;
    let mut last_arp: HashMap<(usize, usize, bool), i64> = HashMap::new();
    for seq in 0..s.packets {
        t += 1 + rng.below(2 * gap) as i64;
        let src = rng.below(s.hosts as u64) as usize;
        let mut dst = rng.below(s.hosts as u64 - 1) as usize;
        if dst >= src {
            dst += 1;
        }
        id = id.wrapping_add(1);
        let body = (seq as u64).to_be_bytes();
        let w = match rng.below(100) {
            0..=34 => udp(&hosts, src, Some(dst), None, id, 40000, 41000, &body),
            k @ 35..=64 => {
                let syn = k < 45;
                let port = 50000 + (seq % 1000) as u16;
                tcp(
                    &hosts,
                    src,
                    dst,
                    id,
                    port,
                    seq as u32,
                    syn,
                    if syn { &[] } else { &body },
                )
            }
            65..=84 => udp(
                &hosts,
                src,
                None,
                Some(Ipv4Addr::new(224, 0, 0, 251)),
                id,
                5353,
                5353,
                &body,
            ),
            85..=89 => udp(&hosts, src, None, None, id, 68, 67, &body),
            // ARP repeats with identical content, as the kernel sends it: at most once a second
            // per pair; otherwise a unicast datagram.
            k if k >= 90
                && t - *last_arp.get(&(src, dst, k >= 95)).unwrap_or(&0) >= 1_000_000_000 =>
            {
                last_arp.insert((src, dst, k >= 95), t);
                arp(&hosts, src, dst, k >= 95)
            }
            _ => udp(&hosts, src, Some(dst), None, id, 40000, 41000, &body),
        };
        let receivers: Vec<usize> = match w.dst {
            Some(d) => vec![d],
            None => (0..s.hosts).filter(|&r| r != src).collect(),
        };
        let mut fates = Vec::new();
        for r in receivers {
            let link = s.links.get(&(src, r)).copied().unwrap_or_default();
            let dropped =
                (link.unicast_black_hole && w.class.is_unicast()) || rng.unit() < link.loss;
            if !dropped {
                let delay =
                    s.delay_ns.0 + rng.below((s.delay_ns.1 - s.delay_ns.0).max(1) as u64) as i64;
                let f = frame(&hosts, &w, lt, false);
                if !f.is_empty() {
                    recs[r].push((local(r, t + delay), f.clone(), None));
                    if rng.unit() < s.duplicate {
                        recs[r].push((local(r, t + delay) + 1000, f, None));
                    }
                }
            }
            fates.push((r, !dropped));
        }
        let f = frame(&hosts, &w, lt, true);
        if !f.is_empty() && rng.unit() >= s.sender_capture_loss {
            recs[src].push((local(src, t), f, Some((src, fates))));
        }
    }
    let mid = (s.start_ns + t) / 2;
    let mut truth = Truth {
        mid_true_ns: mid,
        ..Truth::default()
    };
    for h in 0..s.hosts {
        truth.offset_mid_ns.push((local(h, mid) - mid) as f64);
    }
    for r in recs.iter_mut() {
        r.sort_by_key(|x| x.0);
        let n = r.len();
        for i in 0..n.saturating_sub(1) {
            if rng.unit() < s.reorder {
                r.swap(i, i + 1);
            }
        }
    }
    for (h, r) in recs.iter().enumerate() {
        for (i, (_, _, key)) in r.iter().enumerate() {
            if let Some((src, fates)) = key {
                debug_assert_eq!(*src, h);
                for (rcv, ok) in fates {
                    truth.fates.insert((h, i as u64, *rcv), *ok);
                }
            }
        }
    }
    (recs, truth)
}

/// Writes one capture's records.
pub fn write_capture(
    path: &std::path::Path,
    records: &[Record],
    format: Format,
    lt: Linktype,
) -> io::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w = CaptureWriter::new(io::BufWriter::new(f), format, lt)?;
    for (ts, frame, _) in records {
        w.write(*ts, frame)?;
    }
    w.into_inner().flush()
}
