//! From a captured frame to what correlation needs: addresses, a traffic class, and a content
//! hash that is the same on every host that saw the packet.
//!
//! The hash covers the IPv4 header and the first bytes of its payload, without the fields that
//! legitimately differ between the sender's copy and the receiver's: TTL, the header checksum,
//! and the TCP/UDP checksum (Linux captures outgoing packets before checksum offload fills it).
//! The IP ID is in the hash but never alone: repeated packets with equal IDs still differ in
//! content, and equal content is resolved by time in the matcher.

use std::net::Ipv4Addr;

use pcap_parser::Linktype;

/// How much of an IP payload goes into the hash: enough to tell packets apart, short enough to be
/// within any snap length.
const HASHED_PAYLOAD: usize = 96;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    ArpRequest,
    ArpReply,
    Broadcast,
    Multicast,
    UnicastUdp,
    TcpSyn,
    TcpOther,
    OtherUnicast,
}

impl Class {
    pub const ALL: [Class; 8] = [
        Class::ArpRequest,
        Class::ArpReply,
        Class::Broadcast,
        Class::Multicast,
        Class::UnicastUdp,
        Class::TcpSyn,
        Class::TcpOther,
        Class::OtherUnicast,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::ArpRequest => "arp-request",
            Class::ArpReply => "arp-reply",
            Class::Broadcast => "broadcast",
            Class::Multicast => "multicast",
            Class::UnicastUdp => "unicast-udp",
            Class::TcpSyn => "tcp-syn",
            Class::TcpOther => "tcp-other",
            Class::OtherUnicast => "other-unicast",
        }
    }

    /// Carried by the unicast path (the one that breaks in the seed).
    pub fn is_unicast(self) -> bool {
        matches!(
            self,
            Class::UnicastUdp | Class::TcpSyn | Class::TcpOther | Class::OtherUnicast
        )
    }

    /// Flooded to every host: needs no per-destination path.
    pub fn is_flooded(self) -> bool {
        matches!(
            self,
            Class::ArpRequest | Class::Broadcast | Class::Multicast
        )
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub ts_ns: i64,
    pub src_mac: Option<[u8; 6]>,
    pub dst_mac: Option<[u8; 6]>,
    /// IPv4 source, or for ARP the sender protocol address.
    pub src_ip: Option<Ipv4Addr>,
    /// IPv4 destination, or for ARP the target protocol address.
    pub dst_ip: Option<Ipv4Addr>,
    pub class: Class,
    pub hash: u64,
}

/// Decodes a frame; None for what carries nothing to correlate (unknown link types, non-IPv4,
/// frames too short to hold their headers).
pub fn summarize(ts_ns: i64, linktype: Linktype, frame: &[u8]) -> Option<Summary> {
    let (src_mac, dst_mac, ethertype, l3) = match linktype {
        Linktype::ETHERNET => {
            let mut et = be16(frame, 12)?;
            let mut off = 14;
            if et == 0x8100 || et == 0x88a8 {
                et = be16(frame, 16)?; // one VLAN tag
                off = 18;
            }
            (mac(frame, 6), mac(frame, 0), et, frame.get(off..)?)
        }
        Linktype::LINUX_SLL => {
            // packet type(2) ARPHRD(2) addr len(2) addr(8) protocol(2)
            let src = if be16(frame, 4)? == 6 {
                mac(frame, 6)
            } else {
                None
            };
            (src, None, be16(frame, 14)?, frame.get(16..)?)
        }
        Linktype::LINUX_SLL2 => {
            // protocol(2) reserved(2) ifindex(4) ARPHRD(2) packet type(1) addr len(1) addr(8)
            let src = if *frame.get(11)? == 6 {
                mac(frame, 12)
            } else {
                None
            };
            (src, None, be16(frame, 0)?, frame.get(20..)?)
        }
        Linktype::RAW | Linktype::IPV4 | Linktype(12) | Linktype(14) => {
            let v = frame.first()? >> 4;
            (None, None, if v == 4 { 0x0800 } else { 0 }, frame)
        }
        _ => return None,
    };
    match ethertype {
        0x0806 => arp(ts_ns, src_mac, dst_mac, l3),
        0x0800 => ipv4(ts_ns, src_mac, dst_mac, l3),
        _ => None,
    }
}

fn arp(
    ts_ns: i64,
    src_mac: Option<[u8; 6]>,
    dst_mac: Option<[u8; 6]>,
    p: &[u8],
) -> Option<Summary> {
    // Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4.
    if be16(p, 0)? != 1 || be16(p, 2)? != 0x0800 || p.get(4..6)? != [6, 4] {
        return None;
    }
    let op = be16(p, 6)?;
    let body = p.get(..28)?;
    let class = match op {
        1 => Class::ArpRequest,
        2 => Class::ArpReply,
        _ => return None,
    };
    Some(Summary {
        ts_ns,
        src_mac: src_mac.or_else(|| mac(p, 8)),
        dst_mac,
        src_ip: Some(ipv4_at(p, 14)?),
        dst_ip: Some(ipv4_at(p, 24)?),
        class,
        hash: hash_parts(&[&[0xa7], body]),
    })
}

fn ipv4(
    ts_ns: i64,
    src_mac: Option<[u8; 6]>,
    dst_mac: Option<[u8; 6]>,
    p: &[u8],
) -> Option<Summary> {
    let ihl = ((*p.first()? & 0x0f) as usize) * 4;
    if p.first()? >> 4 != 4 || ihl < 20 || p.len() < ihl {
        return None;
    }
    let src = ipv4_at(p, 12)?;
    let dst = ipv4_at(p, 16)?;
    let proto = p[9];
    let l4 = &p[ihl..];
    let broadcast_mac = dst_mac == Some([0xff; 6]);
    let class = if dst.is_multicast() {
        Class::Multicast
    } else if dst.is_broadcast() || broadcast_mac {
        Class::Broadcast
    } else {
        match proto {
            6 => {
                let flags = *l4.get(13).unwrap_or(&0);
                if flags & 0x02 != 0 && flags & 0x10 == 0 {
                    Class::TcpSyn
                } else {
                    Class::TcpOther
                }
            }
            17 => Class::UnicastUdp,
            _ => Class::OtherUnicast,
        }
    };
    // Hashed without TTL, header checksum and the L4 checksum: the first 12 header bytes are
    // copied with those zeroed, the rest is hashed in place.
    let mut fixed = [0u8; 12];
    fixed.copy_from_slice(&p[..12]);
    fixed[8] = 0;
    fixed[10] = 0;
    fixed[11] = 0;
    let first_fragment = be16(p, 6)? & 0x1fff == 0;
    let payload = &l4[..l4.len().min(HASHED_PAYLOAD)];
    let cksum_at = match proto {
        6 if first_fragment => 16,
        17 if first_fragment => 6,
        _ => usize::MAX - 2,
    };
    let hash = if payload.len() >= cksum_at + 2 {
        hash_parts(&[
            &fixed,
            &p[12..ihl],
            &payload[..cksum_at],
            &payload[cksum_at + 2..],
        ])
    } else {
        hash_parts(&[&fixed, &p[12..ihl], payload])
    };
    Some(Summary {
        ts_ns,
        src_mac,
        dst_mac,
        src_ip: Some(src),
        dst_ip: Some(dst),
        class,
        hash,
    })
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn mac(b: &[u8], at: usize) -> Option<[u8; 6]> {
    b.get(at..at + 6)?.try_into().ok()
}

fn ipv4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

/// A 64-bit hash of the parts, eight bytes at a time (multiply-rotate, then the murmur3
/// finaliser): fast on the hot path, and spread well enough for hash maps keyed by it and for
/// sub-sampling anchors by `hash % 2^k`. Not for adversarial keys: an adversary only makes
/// correlation slower, never wrong (equal hashes are still told apart by time).
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    for p in parts {
        let mut chunks = p.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            h = (h ^ w).wrapping_mul(K).rotate_left(29);
        }
        let rest = chunks.remainder();
        let mut tail = [0u8; 8];
        tail[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(tail) ^ ((p.len() as u64) << 56))
            .wrapping_mul(K)
            .rotate_left(29);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A `Hasher` for keys that are already well-mixed hashes (or small integers), so maps on the
/// hot path do not pay for SipHash.
#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v;
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

pub type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
