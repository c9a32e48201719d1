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
    // Normalised copy: TTL, header checksum and the L4 checksum zeroed.
    let mut head = [0u8; 60];
    head[..ihl].copy_from_slice(&p[..ihl]);
    head[8] = 0;
    head[10] = 0;
    head[11] = 0;
    let fragment_offset = be16(p, 6)? & 0x1fff;
    let mut payload = [0u8; HASHED_PAYLOAD];
    let n = l4.len().min(HASHED_PAYLOAD);
    payload[..n].copy_from_slice(&l4[..n]);
    if fragment_offset == 0 {
        match proto {
            6 if n >= 18 => payload[16..18].fill(0),
            17 if n >= 8 => payload[6..8].fill(0),
            _ => {}
        }
    }
    Some(Summary {
        ts_ns,
        src_mac,
        dst_mac,
        src_ip: Some(src),
        dst_ip: Some(dst),
        class,
        hash: hash_parts(&[&head[..ihl], &payload[..n]]),
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

/// 64-bit FNV-1a over the parts, then a final mix: fast, and spread well enough for hash maps
/// and for sub-sampling anchors by `hash % 2^k`.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
