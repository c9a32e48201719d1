//! The mDNS message as the presence engine sees it, and its codec.
//!
//! `simple-dns` does the byte work (name compression, the QU and cache-flush bits); this module
//! turns its borrowed packet into an owned [`Message`] the engine can keep in caches and timers,
//! and back. It owns the validity rules of RFC 6762 §18 (opcode, rcode, size) and nothing else:
//! what a message *means* is the engine's business.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};

use simple_dns::rdata::{self, RData};
use simple_dns::{CharacterString, Label, PacketFlag, CLASS, QCLASS, QTYPE};

/// RFC 6762 §17: an mDNS message is at most 9000 bytes, whatever the link.
pub const MAX_MESSAGE: usize = 9000;
/// Questions of one message that we handle: the work a query makes (an answer looked up per
/// question, known answers matched against each) is bounded by what we read, not by what a
/// sender packs into 9,000 bytes. Those past it are left out (a real host asks a handful; a
/// querier with more to ask than fits sends several queries, RFC 6762 §7.2), so at worst a
/// legitimate question goes unanswered until it is asked again.
pub const MAX_QUESTIONS: usize = 64;
/// Records of one message that we handle (answers first, then authority, then additionals);
/// the rest are left out, as questions are. Avahi and mDNSResponder split longer lists over
/// packets of about 1,400 bytes, which hold some 100 records at most.
pub const MAX_RECORDS: usize = 256;
/// What we put in one datagram ourselves: below the 1400-byte MTU of many meshes and tunnels,
/// so our packets are never fragmented (RFC 6762 §17 asks to avoid fragmentation).
pub const TARGET_MESSAGE: usize = 1300;

pub const TYPE_A: u16 = 1;
pub const TYPE_PTR: u16 = 12;
pub const TYPE_TXT: u16 = 16;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
pub const TYPE_ANY: u16 = 255;

/// Why a datagram was not accepted as an mDNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Larger than RFC 6762 §17 allows.
    Oversized(usize),
    /// The bytes are not a DNS message (truncated, bad label, compression loop, ...).
    Malformed(String),
    /// A valid DNS message that mDNS says to ignore (RFC 6762 §18.3, §18.11).
    Ignored(&'static str),
    /// A message we do not handle, whatever it holds: counted under `kind` (its source over
    /// its packet rate, a response from a port other than 5353).
    Refused {
        kind: &'static str,
        why: &'static str,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Oversized(n) => write!(f, "oversized message ({n} bytes > {MAX_MESSAGE})"),
            WireError::Malformed(why) => write!(f, "malformed message: {why}"),
            WireError::Ignored(why) => write!(f, "ignored message: {why}"),
            WireError::Refused { why, .. } => write!(f, "refused: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

impl WireError {
    /// A short stable label, used as a counter name.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::Oversized(_) => "oversized",
            WireError::Malformed(_) => "malformed",
            WireError::Ignored(_) => "ignored",
            WireError::Refused { kind, .. } => kind,
        }
    }
}

/// A domain name: labels kept as received, compared case-insensitively (RFC 6762 §16).
#[derive(Clone)]
pub struct Name {
    labels: Vec<String>,
    key: String,
}

impl Name {
    /// Builds a name from labels; a label may contain dots (DNS-SD instance names do).
    pub fn from_labels<I, S>(labels: I) -> Name
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let labels: Vec<String> = labels.into_iter().map(Into::into).collect();
        let key = labels
            .iter()
            .map(|l| l.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join("\0");
        Name { labels, key }
    }

    /// Parses a dotted name whose labels contain no dots: `_presence._tcp.local`.
    pub fn dotted(s: &str) -> Name {
        Name::from_labels(s.trim_end_matches('.').split('.').filter(|l| !l.is_empty()))
    }

    /// `instance` prepended as one label to `service`.
    pub fn child(label: &str, parent: &Name) -> Name {
        Name::from_labels(std::iter::once(label.to_string()).chain(parent.labels.iter().cloned()))
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The first label, e.g. the instance part of a service instance name.
    pub fn first_label(&self) -> &str {
        self.labels.first().map(String::as_str).unwrap_or("")
    }

    /// The name without its first label.
    pub fn parent(&self) -> Name {
        Name::from_labels(self.labels.iter().skip(1).cloned())
    }

    /// Uncompressed wire bytes, used where RFC 6762 compares raw rdata (§8.2).
    fn wire_bytes(&self, out: &mut Vec<u8>) {
        for l in &self.labels {
            out.push(l.len().min(63) as u8);
            out.extend_from_slice(&l.as_bytes()[..l.len().min(63)]);
        }
        out.push(0);
    }

    /// Length on the wire, uncompressed.
    pub fn wire_len(&self) -> usize {
        self.labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1
    }

    fn to_simple(&self) -> simple_dns::Name<'_> {
        let labels: Vec<Label<'_>> = self
            .labels
            .iter()
            .map(|l| Label::new_unchecked(l.as_bytes()))
            .collect();
        simple_dns::Name::new_with_labels(&labels)
    }

    fn from_simple(n: &simple_dns::Name<'_>) -> Name {
        Name::from_labels(
            n.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        )
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.key == other.key
    }
}
impl Eq for Name {}
impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state)
    }
}
impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.key.cmp(&other.key)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, l) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            // Dots inside a label are escaped as in RFC 6763 §4.3 presentation format.
            f.write_str(&l.replace('.', "\\."))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Record data of the types presence uses; everything else is kept opaque.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ptr(Name),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
    /// TXT character-strings, raw (RFC 6763 §6).
    Txt(Vec<Vec<u8>>),
    Other {
        rtype: u16,
        data: Vec<u8>,
    },
}

impl RecordData {
    pub fn rtype(&self) -> u16 {
        match self {
            RecordData::A(_) => TYPE_A,
            RecordData::Aaaa(_) => TYPE_AAAA,
            RecordData::Ptr(_) => TYPE_PTR,
            RecordData::Srv { .. } => TYPE_SRV,
            RecordData::Txt(_) => TYPE_TXT,
            RecordData::Other { rtype, .. } => *rtype,
        }
    }

    /// Raw uncompressed rdata, for the lexicographic comparison of RFC 6762 §8.2.
    pub fn wire_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            RecordData::A(a) => out.extend_from_slice(&a.octets()),
            RecordData::Aaaa(a) => out.extend_from_slice(&a.octets()),
            RecordData::Ptr(n) => n.wire_bytes(&mut out),
            RecordData::Srv {
                priority,
                weight,
                port,
                target,
            } => {
                out.extend_from_slice(&priority.to_be_bytes());
                out.extend_from_slice(&weight.to_be_bytes());
                out.extend_from_slice(&port.to_be_bytes());
                target.wire_bytes(&mut out);
            }
            RecordData::Txt(strings) => {
                for s in strings {
                    out.push(s.len().min(255) as u8);
                    out.extend_from_slice(&s[..s.len().min(255)]);
                }
                if strings.is_empty() {
                    out.push(0);
                }
            }
            RecordData::Other { data, .. } => out.extend_from_slice(data),
        }
        out
    }

    fn to_simple(&self) -> Option<RData<'_>> {
        Some(match self {
            RecordData::A(a) => RData::A(rdata::A {
                address: u32::from(*a),
            }),
            RecordData::Aaaa(a) => RData::AAAA(rdata::AAAA {
                address: u128::from(*a),
            }),
            RecordData::Ptr(n) => RData::PTR(rdata::PTR(n.to_simple())),
            RecordData::Srv {
                priority,
                weight,
                port,
                target,
            } => RData::SRV(rdata::SRV {
                priority: *priority,
                weight: *weight,
                port: *port,
                target: target.to_simple(),
            }),
            RecordData::Txt(strings) => {
                let mut txt = rdata::TXT::new();
                for s in strings {
                    txt.add_char_string(CharacterString::new(s).ok()?);
                }
                RData::TXT(txt)
            }
            RecordData::Other { .. } => return None,
        })
    }

    fn from_simple(r: &RData<'_>) -> RecordData {
        match r {
            RData::A(a) => RecordData::A(Ipv4Addr::from(a.address)),
            RData::AAAA(a) => RecordData::Aaaa(Ipv6Addr::from(a.address)),
            RData::PTR(p) => RecordData::Ptr(Name::from_simple(&p.0)),
            RData::SRV(s) => RecordData::Srv {
                priority: s.priority,
                weight: s.weight,
                port: s.port,
                target: Name::from_simple(&s.target),
            },
            RData::TXT(t) => RecordData::Txt(
                t.iter_raw()
                    .map(|(k, v)| {
                        let mut s = k.to_vec();
                        if let Some(v) = v {
                            s.push(b'=');
                            s.extend_from_slice(v);
                        }
                        s
                    })
                    .collect(),
            ),
            RData::NULL(t, d) => RecordData::Other {
                rtype: *t,
                data: d.get_data().to_vec(),
            },
            // simple-dns does not expose raw rdata of other types; their debug form is a stable
            // stand-in for equality, and such records never matter to presence.
            other => RecordData::Other {
                rtype: u16::from(other.type_code()),
                data: format!("{other:?}").into_bytes(),
            },
        }
    }

    /// Parses TXT strings as `key=value` pairs (RFC 6763 §6.4: keys case-insensitive, first wins).
    pub fn txt_pairs(strings: &[Vec<u8>]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for s in strings {
            let (k, v) = match s.iter().position(|&b| b == b'=') {
                Some(i) => (&s[..i], &s[i + 1..]),
                None => (&s[..], &[][..]),
            };
            if k.is_empty() {
                continue;
            }
            let k = String::from_utf8_lossy(k).to_ascii_lowercase();
            if out.iter().any(|(have, _)| *have == k) {
                continue;
            }
            out.push((k, String::from_utf8_lossy(v).into_owned()));
        }
        out
    }
}

/// A resource record (class IN only: mDNS uses nothing else).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: Name,
    pub cache_flush: bool,
    pub ttl: u32,
    pub data: RecordData,
}

impl Record {
    pub fn new(name: Name, ttl: u32, data: RecordData) -> Record {
        Record {
            name,
            cache_flush: false,
            ttl,
            data,
        }
    }

    pub fn rtype(&self) -> u16 {
        self.data.rtype()
    }

    /// Same name, type and data (TTL and cache-flush bit aside): "the same record" of RFC 6762.
    pub fn same_record(&self, other: &Record) -> bool {
        self.name == other.name && self.data == other.data
    }

    /// Conservative size on the wire (uncompressed), to pack datagrams below [`TARGET_MESSAGE`].
    pub fn wire_len(&self) -> usize {
        self.name.wire_len() + 10 + self.data.wire_bytes().len()
    }
}

/// A question; `unicast` is the QU bit (RFC 6762 §5.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub unicast: bool,
}

impl Question {
    pub fn matches(&self, r: &Record) -> bool {
        self.name == r.name && (self.qtype == TYPE_ANY || self.qtype == r.rtype())
    }

    pub fn wire_len(&self) -> usize {
        self.name.wire_len() + 4
    }
}

/// One mDNS message, owned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub response: bool,
    /// TC: more known answers follow in further packets (RFC 6762 §7.2).
    pub truncated: bool,
    pub questions: Vec<Question>,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Message {
    pub fn query() -> Message {
        Message::default()
    }

    pub fn response() -> Message {
        Message {
            response: true,
            ..Message::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.questions.is_empty()
            && self.answers.is_empty()
            && self.authority.is_empty()
            && self.additional.is_empty()
    }

    /// Conservative size of the message on the wire.
    pub fn wire_len(&self) -> usize {
        12 + self.questions.iter().map(Question::wire_len).sum::<usize>()
            + [&self.answers, &self.authority, &self.additional]
                .iter()
                .flat_map(|s| s.iter())
                .map(Record::wire_len)
                .sum::<usize>()
    }

    /// Decodes a datagram. Never panics; any input gives a message or an error.
    pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(WireError::Oversized(bytes.len()));
        }
        let p =
            simple_dns::Packet::parse(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
        // RFC 6762 §18.3 and §18.11: other opcodes and non-zero rcodes are silently ignored.
        if p.opcode() != simple_dns::OPCODE::StandardQuery {
            return Err(WireError::Ignored("opcode is not QUERY"));
        }
        if p.rcode() != simple_dns::RCODE::NoError {
            return Err(WireError::Ignored("non-zero rcode"));
        }
        let mut room = MAX_RECORDS;
        let mut records = |rs: &[simple_dns::ResourceRecord<'_>]| -> Vec<Record> {
            let n = rs.len().min(room);
            room -= n;
            rs[..n]
                .iter()
                .filter(|r| r.class == CLASS::IN)
                .map(|r| Record {
                    name: Name::from_simple(&r.name),
                    cache_flush: r.cache_flush,
                    ttl: r.ttl,
                    data: RecordData::from_simple(&r.rdata),
                })
                .collect()
        };
        let questions = p
            .questions
            .iter()
            .take(MAX_QUESTIONS)
            .filter(|q| matches!(q.qclass, QCLASS::ANY | QCLASS::CLASS(CLASS::IN)))
            .map(|q| Question {
                name: Name::from_simple(&q.qname),
                qtype: u16::from(q.qtype),
                unicast: q.unicast_response,
            })
            .collect();
        Ok(Message {
            id: p.id(),
            response: p.has_flags(PacketFlag::RESPONSE),
            truncated: p.has_flags(PacketFlag::TRUNCATION),
            questions,
            answers: records(&p.answers),
            authority: records(&p.name_servers),
            additional: records(&p.additional_records),
        })
    }

    /// Encodes the message, with name compression. Opaque records are left out (we never send them).
    pub fn emit(&self) -> Vec<u8> {
        let mut p = if self.response {
            let mut p = simple_dns::Packet::new_reply(self.id);
            // RFC 6762 §18.4: responses set AA.
            p.set_flags(PacketFlag::AUTHORITATIVE_ANSWER);
            p
        } else {
            simple_dns::Packet::new_query(self.id)
        };
        if self.truncated {
            p.set_flags(PacketFlag::TRUNCATION);
        }
        for q in &self.questions {
            let qtype = QTYPE::try_from(q.qtype).unwrap_or(QTYPE::ANY);
            p.questions.push(simple_dns::Question::new(
                q.name.to_simple(),
                qtype,
                QCLASS::CLASS(CLASS::IN),
                q.unicast,
            ));
        }
        fn convert(rs: &[Record]) -> Vec<simple_dns::ResourceRecord<'_>> {
            rs.iter()
                .filter_map(|r| {
                    let rdata = r.data.to_simple()?;
                    Some(
                        simple_dns::ResourceRecord::new(
                            r.name.to_simple(),
                            CLASS::IN,
                            r.ttl,
                            rdata,
                        )
                        .with_cache_flush(r.cache_flush),
                    )
                })
                .collect()
        }
        p.answers = convert(&self.answers);
        p.name_servers = convert(&self.authority);
        p.additional_records = convert(&self.additional);
        // Building only fails on an over-long name or label, which our own names never are; an
        // empty datagram is then sent instead of a panic and counted as malformed by receivers.
        p.build_bytes_vec_compressed().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        let svc = Name::dotted("_presence._tcp.local");
        let inst = Name::child("alice@lab", &svc);
        let host = Name::dotted("nbhd-0a1b2c3d.local");
        let mut m = Message::response();
        m.answers.push(Record::new(
            svc.clone(),
            4500,
            RecordData::Ptr(inst.clone()),
        ));
        let mut srv = Record::new(
            inst.clone(),
            120,
            RecordData::Srv {
                priority: 0,
                weight: 0,
                port: 5298,
                target: host.clone(),
            },
        );
        srv.cache_flush = true;
        m.additional.push(srv);
        m.additional.push(Record::new(
            inst,
            4500,
            RecordData::Txt(vec![
                b"txtvers=1".to_vec(),
                b"nick=alice".to_vec(),
                b"flag".to_vec(),
            ]),
        ));
        m.additional.push(Record::new(
            host,
            120,
            RecordData::A(Ipv4Addr::new(10, 0, 0, 1)),
        ));
        m
    }

    #[test]
    fn questions_and_records_past_their_bounds_are_left_out() {
        let ask = |n: usize| {
            let mut m = Message::query();
            for k in 0..n {
                m.questions.push(Question {
                    name: Name::dotted(&format!("q{k}.local")),
                    qtype: 1,
                    unicast: false,
                });
            }
            Message::parse(&m.emit())
        };
        assert_eq!(ask(MAX_QUESTIONS).unwrap().questions.len(), MAX_QUESTIONS);
        assert_eq!(
            ask(MAX_QUESTIONS * 3).unwrap().questions.len(),
            MAX_QUESTIONS
        );
        let carry = |n: usize| {
            let mut m = Message::response();
            for k in 0..n {
                let ip = Ipv4Addr::from(0x0a00_0000 + k as u32);
                m.answers
                    .push(Record::new(Name::dotted("h.local"), 120, RecordData::A(ip)));
            }
            Message::parse(&m.emit())
        };
        assert_eq!(carry(MAX_RECORDS).unwrap().answers.len(), MAX_RECORDS);
        assert_eq!(carry(MAX_RECORDS + 100).unwrap().answers.len(), MAX_RECORDS);
    }

    #[test]
    fn response_round_trips() {
        let m = sample();
        let bytes = m.emit();
        assert!(
            bytes.len() <= m.wire_len(),
            "compression never grows a message"
        );
        let back = Message::parse(&bytes).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn query_with_qu_and_tc_round_trips() {
        let mut m = Message::query();
        m.truncated = true;
        m.questions.push(Question {
            name: Name::dotted("_presence._tcp.local"),
            qtype: TYPE_PTR,
            unicast: true,
        });
        let back = Message::parse(&m.emit()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn names_compare_case_insensitively_and_keep_dots_in_labels() {
        assert_eq!(Name::dotted("Foo.LOCAL"), Name::dotted("foo.local"));
        let n = Name::child("a.b", &Name::dotted("local"));
        assert_eq!(n.labels().len(), 2);
        assert_eq!(n.to_string(), "a\\.b.local");
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            Message::parse(&[0u8; 5]),
            Err(WireError::Malformed(_))
        ));
        assert!(matches!(
            Message::parse(&vec![0u8; 9001]),
            Err(WireError::Oversized(_))
        ));
        // A name whose compression pointer points at itself.
        let mut looped = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(Message::parse(&looped).is_err());
        // Truncated in the middle of a record.
        let bytes = sample().emit();
        for cut in 0..bytes.len() {
            let _ = Message::parse(&bytes[..cut]);
        }
        assert!(Message::parse(&bytes[..bytes.len() - 3]).is_err());
    }

    #[test]
    fn txt_pairs_follow_rfc6763() {
        let pairs = RecordData::txt_pairs(&[
            b"Nick=a".to_vec(),
            b"nick=b".to_vec(),
            b"=x".to_vec(),
            b"flag".to_vec(),
        ]);
        assert_eq!(
            pairs,
            vec![("nick".into(), "a".into()), ("flag".into(), String::new())]
        );
    }
}
