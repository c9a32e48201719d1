//! The activity frame: everything members of one activity say to each other on its multicast
//! group, sealed with the activity's key (DESIGN.md §4.4).
//!
//! Layout, in the smoltcp manner ([`Packet`] a checked view, [`Repr`] the parsed and opened
//! form); integers big-endian:
//!
//! ```text
//!  0      4     5      6      8              24               56           80            80+n   80+n+16
//!  | NBHA | ver | kind | rsvd | activity (16) | sender key (32) | nonce (24) | sealed body | tag (16) |
//! ```
//!
//! The body is encrypted and everything is authenticated with XChaCha20-Poly1305 under the
//! activity key, the 80-byte header as associated data: a frame of another activity, of a
//! stranger, or changed in any bit does not open. XChaCha's 24-byte nonce is drawn at random
//! for each frame: many members send under one key, and repairs resend the same data, so a
//! counter could not be kept unique; 192 random bits can.
//!
//! Bodies, by kind:
//! - data: packet seq u64, post seq u64, Lamport u64, post time (Unix ms) u64, fragment u16,
//!   fragments u16, flags u8 (bit 0: the post is bytes, bit 1: a repair), the poster's
//!   signature of the whole post (64, the same in every fragment; see [`super::signed`]), nick
//!   length u8, nick, then the fragment's bytes.
//!
//! The key proves membership, not authorship: any member can seal a frame naming any sender.
//! What a data frame claims of its post counts only once the post's signature verifies.
//! - nack: entries u16, each: sender key (32), ranges u16, each range first u64, last u64.
//! - session: entries u16, each: sender key (32), highest packet seq held in order u64.
//! - join: nick length u8, nick.  leave: empty.
//!
//! Control frames (nack, session, join, leave) end with their sender's counter u64 and its
//! signature (64) of them ([`super::signed::control_bytes`]): what a member asks for, says it
//! holds, or says of its own coming and going is its own, and a captured one replayed (the
//! counter only grows) is refused however many frames have passed since.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};

pub const MAGIC: &[u8; 4] = b"NBHA";
/// 1: data frames carry the poster's signature.
pub const VERSION: u8 = 1;
pub const SIGNATURE_LEN: usize = 64;
pub const HEADER_LEN: usize = 80;
pub const TAG_LEN: usize = 16;
/// A frame stays within one unfragmented datagram on a 1400-byte-MTU mesh.
pub const MAX_FRAME: usize = 1400;
/// The body of a data frame holds this much of a post (the rest is header, fields, signature,
/// nick and tag: 80 + 37 + 64 + 41 + 1100 + 16 = 1338 bytes at most).
pub const MAX_CHUNK: usize = 1100;
pub const MAX_NICK: usize = 40;
/// Entries per nack or session frame (a session with more senders is sent as several frames).
pub const MAX_ENTRIES: usize = 28;
/// Sequence numbers and Lamport times stay below this: no member can make another's counters
/// overflow (a sender would need 2^62 packets to get there honestly).
pub const MAX_SEQ: u64 = 1 << 62;
pub const MAX_RANGES: usize = 32;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const ACTIVITY: Range<usize> = 8..24;
    pub const SENDER: Range<usize> = 24..56;
    pub const NONCE: Range<usize> = 56..80;
}

/// An activity's id: 16 random bytes, written as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActivityId(pub [u8; 16]);

impl ActivityId {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<ActivityId> {
        if s.len() != 32 || !s.is_ascii() {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ActivityId(id))
    }
}

impl fmt::Display for ActivityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ActivityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActivityId({})", self.to_hex())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Data,
    Nack,
    Session,
    Join,
    Leave,
}

impl Kind {
    pub fn to_byte(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Nack => 2,
            Kind::Session => 3,
            Kind::Join => 4,
            Kind::Leave => 5,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Data,
            2 => Kind::Nack,
            3 => Kind::Session,
            4 => Kind::Join,
            5 => Kind::Leave,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    Truncated,
    Malformed(&'static str),
    /// The tag does not verify: another key (a stranger, another activity) or a changed bit.
    BadTag,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "truncated activity frame"),
            Error::Malformed(why) => write!(f, "malformed activity frame: {why}"),
            Error::BadTag => write!(f, "activity frame does not open with the activity key"),
        }
    }
}

impl std::error::Error for Error {}

/// A checked view over a frame's bytes (sealed: the body is not readable without the key).
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the buffer is a frame of a known version and kind, within the size limit.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN + TAG_LEN {
            return Err(Error::Truncated);
        }
        if b.len() > MAX_FRAME {
            return Err(Error::Malformed("larger than a frame may be"));
        }
        if &b[field::MAGIC] != MAGIC {
            return Err(Error::Malformed("not an activity frame"));
        }
        if b[field::VERSION] != VERSION {
            return Err(Error::Malformed("unknown version"));
        }
        if Kind::from_byte(b[field::KIND]).is_none() {
            return Err(Error::Malformed("unknown kind"));
        }
        Ok(Packet { buffer })
    }

    pub fn kind(&self) -> Kind {
        Kind::from_byte(self.buffer.as_ref()[field::KIND]).unwrap_or(Kind::Leave)
    }

    pub fn activity(&self) -> ActivityId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.buffer.as_ref()[field::ACTIVITY]);
        ActivityId(id)
    }

    pub fn sender(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        k.copy_from_slice(&self.buffer.as_ref()[field::SENDER]);
        k
    }

    fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    fn nonce(&self) -> &[u8] {
        &self.buffer.as_ref()[field::NONCE]
    }

    fn sealed(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// The body, opened with `key`.
    pub fn open(&self, key: &[u8; 32]) -> Result<Vec<u8>, Error> {
        XChaCha20Poly1305::new(key.into())
            .decrypt(
                XNonce::from_slice(self.nonce()),
                Payload {
                    msg: self.sealed(),
                    aad: self.header(),
                },
            )
            .map_err(|_| Error::BadTag)
    }
}

/// Fragments of the largest post.
pub const MAX_FRAGS: u16 = super::MAX_POST.div_ceil(MAX_CHUNK) as u16;

/// One fragment of a post.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    /// Per-sender packet sequence: consecutive over every fragment of every post, from 1.
    pub pkt: u64,
    /// Per-sender post sequence, from 1.
    pub post: u64,
    pub lamport: u64,
    pub at_ms: u64,
    pub frag: u16,
    pub frags: u16,
    /// The post is bytes (not UTF-8 text).
    pub bytes: bool,
    /// Sent again by someone who held it (after a nack), not by its sender's first send.
    pub repair: bool,
    /// The poster's signature of the whole post.
    pub sig: [u8; SIGNATURE_LEN],
    pub nick: String,
    pub chunk: Vec<u8>,
}

/// One sender's missing packets: its key and inclusive ranges of packet seqs.
impl Data {
    /// What every member relies on, checked on the way in and out: numbers in range, and a
    /// post cut the one way every member cuts it again to repair it from its store (full
    /// chunks but the last), no larger than the largest post.
    pub fn check(&self) -> Result<(), Error> {
        if self.pkt == 0 || self.post == 0 || self.frags == 0 || self.frag >= self.frags {
            return Err(Error::Malformed("data numbering"));
        }
        if self.pkt >= MAX_SEQ || self.post >= MAX_SEQ || self.lamport >= MAX_SEQ {
            return Err(Error::Malformed("sequence number out of range"));
        }
        if self.frags > MAX_FRAGS {
            return Err(Error::Malformed("more fragments than the largest post has"));
        }
        let last = self.frag + 1 == self.frags;
        let cut = if last {
            self.chunk.len() <= MAX_CHUNK && (self.frags == 1 || !self.chunk.is_empty())
        } else {
            self.chunk.len() == MAX_CHUNK
        };
        if !cut {
            return Err(Error::Malformed(
                "a fragment not cut as every member cuts it",
            ));
        }
        Ok(())
    }
}

/// A frame's nonce (unique to it: drawn at random for every frame sent), if it is long enough
/// to have one.
pub fn nonce_of(frame: &[u8]) -> Option<[u8; 24]> {
    frame.get(field::NONCE)?.try_into().ok()
}

/// Room for a control frame's body in one frame (its trailer takes the rest).
pub const MAX_BODY: usize = MAX_FRAME - HEADER_LEN - TAG_LEN - AUTH_LEN;

/// NACK entries packed into as few frames as their encoded size allows ([`MAX_BODY`], and
/// [`MAX_ENTRIES`] each): counting entries alone would make frames too big to send.
pub fn pack_nack(entries: Vec<NackEntry>) -> Vec<Vec<NackEntry>> {
    let size = |e: &NackEntry| 32 + 2 + 16 * e.1.len();
    let (mut frames, mut cur, mut used) = (Vec::new(), Vec::new(), 2);
    for e in entries {
        let n = size(&e);
        if !cur.is_empty() && (used + n > MAX_BODY || cur.len() == MAX_ENTRIES) {
            frames.push(std::mem::take(&mut cur));
            used = 2;
        }
        used += n;
        cur.push(e);
    }
    if !cur.is_empty() {
        frames.push(cur);
    }
    frames
}

pub type NackEntry = ([u8; 32], Vec<(u64, u64)>);

/// A frame's meaning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Data(Data),
    /// Packets missing: per sender, inclusive ranges of packet seqs.
    Nack(Vec<NackEntry>),
    /// Per sender, the highest packet seq this member holds in order.
    Session(Vec<([u8; 32], u64)>),
    Join {
        nick: String,
    },
    Leave,
}

/// A frame, opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repr {
    pub activity: ActivityId,
    pub sender: [u8; 32],
    pub body: Body,
    /// A control frame's counter and signature (None for data, whose posts are signed).
    pub auth: Option<ControlAuth>,
}

/// What closes a control frame: its sender's counter (growing with every control frame it
/// sends, across its restarts) and its signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlAuth {
    pub counter: u64,
    pub sig: [u8; SIGNATURE_LEN],
}

/// The trailer's length.
pub const AUTH_LEN: usize = 8 + SIGNATURE_LEN;

impl Kind {
    /// Nack, session, join, leave: signed by their sender.
    pub fn is_control(self) -> bool {
        self != Kind::Data
    }
}

/// A cursor over body bytes: every read is checked.
struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.b.len() < n {
            return Err(Error::Truncated);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn key(&mut self) -> Result<[u8; 32], Error> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn nick(&mut self) -> Result<String, Error> {
        let n = self.u8()? as usize;
        if n > MAX_NICK {
            return Err(Error::Malformed("nick too long"));
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Error::Malformed("nick is not UTF-8"))
    }
    fn end(&self) -> Result<(), Error> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed("trailing bytes"))
        }
    }
}

fn put_nick(out: &mut Vec<u8>, nick: &str) {
    let mut end = nick.len().min(MAX_NICK);
    while !nick.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&nick.as_bytes()[..end]);
}

impl Body {
    pub fn kind(&self) -> Kind {
        match self {
            Body::Data(_) => Kind::Data,
            Body::Nack(_) => Kind::Nack,
            Body::Session(_) => Kind::Session,
            Body::Join { .. } => Kind::Join,
            Body::Leave => Kind::Leave,
        }
    }

    /// A body as it is once opened (what any holder of the key may have sealed). Never panics.
    pub fn parse(kind: Kind, plain: &[u8]) -> Result<Body, Error> {
        let mut r = Reader { b: plain };
        let body = match kind {
            Kind::Data => {
                let pkt = r.u64()?;
                let post = r.u64()?;
                let lamport = r.u64()?;
                let at_ms = r.u64()?;
                let frag = r.u16()?;
                let frags = r.u16()?;
                let flags = r.u8()?;
                if flags & !3 != 0 {
                    return Err(Error::Malformed("unknown data flags"));
                }
                let mut sig = [0u8; SIGNATURE_LEN];
                sig.copy_from_slice(r.take(SIGNATURE_LEN)?);
                let nick = r.nick()?;
                let chunk = r.b.to_vec();
                r.b = &[];
                let d = Data {
                    pkt,
                    post,
                    lamport,
                    at_ms,
                    frag,
                    frags,
                    bytes: flags & 1 != 0,
                    repair: flags & 2 != 0,
                    sig,
                    nick,
                    chunk,
                };
                d.check()?;
                Body::Data(d)
            }
            Kind::Nack => {
                let n = r.u16()? as usize;
                if n > MAX_ENTRIES {
                    return Err(Error::Malformed("too many nack entries"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let sender = r.key()?;
                    let m = r.u16()? as usize;
                    if m > MAX_RANGES {
                        return Err(Error::Malformed("too many ranges"));
                    }
                    let mut ranges = Vec::with_capacity(m);
                    for _ in 0..m {
                        let (a, b) = (r.u64()?, r.u64()?);
                        if a == 0 || a > b || b >= MAX_SEQ {
                            return Err(Error::Malformed("range"));
                        }
                        ranges.push((a, b));
                    }
                    entries.push((sender, ranges));
                }
                Body::Nack(entries)
            }
            Kind::Session => {
                let n = r.u16()? as usize;
                if n > MAX_ENTRIES {
                    return Err(Error::Malformed("too many session entries"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let (sender, hwm) = (r.key()?, r.u64()?);
                    if hwm >= MAX_SEQ {
                        return Err(Error::Malformed("sequence number out of range"));
                    }
                    entries.push((sender, hwm));
                }
                Body::Session(entries)
            }
            Kind::Join => Body::Join { nick: r.nick()? },
            Kind::Leave => Body::Leave,
        };
        r.end()?;
        Ok(body)
    }

    /// The body's bytes, before sealing.
    pub fn emit(&self) -> Result<Vec<u8>, Error> {
        let mut body = Vec::new();
        match self {
            Body::Data(d) => {
                d.check()?;
                body.extend_from_slice(&d.pkt.to_be_bytes());
                body.extend_from_slice(&d.post.to_be_bytes());
                body.extend_from_slice(&d.lamport.to_be_bytes());
                body.extend_from_slice(&d.at_ms.to_be_bytes());
                body.extend_from_slice(&d.frag.to_be_bytes());
                body.extend_from_slice(&d.frags.to_be_bytes());
                body.push(u8::from(d.bytes) | (u8::from(d.repair) << 1));
                body.extend_from_slice(&d.sig);
                put_nick(&mut body, &d.nick);
                body.extend_from_slice(&d.chunk);
            }
            Body::Nack(entries) => {
                if entries.len() > MAX_ENTRIES || entries.iter().any(|(_, r)| r.len() > MAX_RANGES)
                {
                    return Err(Error::Malformed("nack too large"));
                }
                body.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for (sender, ranges) in entries {
                    body.extend_from_slice(sender);
                    body.extend_from_slice(&(ranges.len() as u16).to_be_bytes());
                    for (a, b) in ranges {
                        body.extend_from_slice(&a.to_be_bytes());
                        body.extend_from_slice(&b.to_be_bytes());
                    }
                }
            }
            Body::Session(entries) => {
                if entries.len() > MAX_ENTRIES {
                    return Err(Error::Malformed("session too large"));
                }
                body.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for (sender, hwm) in entries {
                    body.extend_from_slice(sender);
                    body.extend_from_slice(&hwm.to_be_bytes());
                }
            }
            Body::Join { nick } => put_nick(&mut body, nick),
            Body::Leave => {}
        }
        Ok(body)
    }
}

impl Repr {
    /// Opens and parses a datagram with `key`. Never panics. A control frame's signature is
    /// carried, not checked: that is the group's (it knows whose key and counter to expect).
    pub fn parse(bytes: &[u8], key: &[u8; 32]) -> Result<Repr, Error> {
        let p = Packet::new_checked(bytes)?;
        let plain = p.open(key)?;
        let kind = p.kind();
        let (body, auth) = if kind.is_control() {
            let at = plain.len().checked_sub(AUTH_LEN).ok_or(Error::Truncated)?;
            let (body, trailer) = plain.split_at(at);
            let mut counter = [0u8; 8];
            counter.copy_from_slice(&trailer[..8]);
            let mut sig = [0u8; SIGNATURE_LEN];
            sig.copy_from_slice(&trailer[8..]);
            let auth = ControlAuth {
                counter: u64::from_be_bytes(counter),
                sig,
            };
            (body, Some(auth))
        } else {
            (&plain[..], None)
        };
        Ok(Repr {
            activity: p.activity(),
            sender: p.sender(),
            body: Body::parse(kind, body)?,
            auth,
        })
    }

    /// The frame's bytes, sealed with `key` under `nonce`.
    pub fn emit(&self, key: &[u8; 32], nonce: &[u8; 24]) -> Result<Vec<u8>, Error> {
        let mut body = self.body.emit()?;
        match (self.body.kind().is_control(), &self.auth) {
            (true, Some(a)) => {
                body.extend_from_slice(&a.counter.to_be_bytes());
                body.extend_from_slice(&a.sig);
            }
            (false, None) => {}
            (true, None) => return Err(Error::Malformed("a control frame needs its signature")),
            (false, Some(_)) => return Err(Error::Malformed("a data frame carries no trailer")),
        }
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.body.kind().to_byte());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.activity.0);
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(nonce);
        let sealed = XChaCha20Poly1305::new(key.into())
            .encrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: &body,
                    aad: &out,
                },
            )
            .map_err(|_| Error::Malformed("cannot seal"))?;
        out.extend_from_slice(&sealed);
        if out.len() > MAX_FRAME {
            return Err(Error::Malformed("larger than a frame may be"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const NONCE: [u8; 24] = [3; 24];

    const AUTH: Option<ControlAuth> = Some(ControlAuth {
        counter: 5,
        sig: [0x33; SIGNATURE_LEN],
    });

    fn data(chunk: Vec<u8>) -> Repr {
        Repr {
            activity: ActivityId([0xa1; 16]),
            auth: None,
            sender: [0x5e; 32],
            body: Body::Data(Data {
                pkt: 9,
                post: 4,
                lamport: 17,
                at_ms: 1_700_000_000_123,
                frag: 2,
                frags: 3,
                bytes: true,
                repair: false,
                sig: [0x51; SIGNATURE_LEN],
                nick: "alice".into(),
                chunk,
            }),
        }
    }

    fn all() -> Vec<Repr> {
        let r = |body| Repr {
            activity: ActivityId([0xa1; 16]),
            sender: [0x5e; 32],
            body,
            auth: AUTH,
        };
        // An empty post: one fragment, no bytes.
        let mut empty = data(vec![]);
        if let Body::Data(d) = &mut empty.body {
            (d.frag, d.frags) = (0, 1);
        }
        vec![
            empty,
            data(vec![0xab; MAX_CHUNK]),
            r(Body::Nack(vec![
                ([1; 32], vec![(1, 1), (5, 9)]),
                ([2; 32], vec![(3, 3)]),
            ])),
            r(Body::Session(vec![([1; 32], 12), ([2; 32], 0)])),
            r(Body::Join { nick: "bob".into() }),
            r(Body::Leave),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for r in all() {
            let b = r.emit(&KEY, &NONCE).unwrap();
            assert!(b.len() <= MAX_FRAME);
            assert_eq!(Repr::parse(&b, &KEY).unwrap(), r);
        }
    }

    /// The whole frame against bytes written down once: the header in the clear, the body
    /// sealed (XChaCha20-Poly1305 is deterministic for a key and nonce).
    #[test]
    fn a_frame_is_byte_exact() {
        let r = Repr {
            activity: ActivityId([0xa1; 16]),
            sender: [0x5e; 32],
            body: Body::Join { nick: "bob".into() },
            auth: AUTH,
        };
        let b = r.emit(&KEY, &NONCE).unwrap();
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        assert_eq!(
            &hex[..160],
            concat!(
                "4e424841",
                "01",
                "04",
                "0000",
                "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
                "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e",
                "030303030303030303030303030303030303030303030303",
            )
        );
        assert_eq!(b.len(), HEADER_LEN + 4 + AUTH_LEN + TAG_LEN);
        assert_eq!(&hex[160..], SEALED_JOIN_BOB, "the sealed body and tag");
    }

    /// "bob" (length-prefixed), counter 5 and signature 0x33.., sealed under KEY and NONCE, then
    /// the tag (over a version-1 header).
    const SEALED_JOIN_BOB: &str = "876424797521c6f0771043fe74e2fd7a19a9435430260526996c0f3e13171289ff3fb2f62b6f56be8fee8e423a5705110c59eeab05d8df929750eb5e1fbd32737df80650aa6636c48dff47c8b4247911a733f0ec538c7ec4301e9fb8";

    #[test]
    fn any_changed_bit_is_refused() {
        for r in all() {
            let b = r.emit(&KEY, &NONCE).unwrap();
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 0x10;
                assert!(
                    Repr::parse(&c, &KEY).is_err(),
                    "flipping byte {i} went unnoticed"
                );
            }
        }
    }

    /// A member (anyone with the key) announcing a sequence number near u64::MAX would make
    /// the others' counters overflow: refused at the door. Found by the node_input fuzzer.
    #[test]
    fn sequence_numbers_from_2_pow_62_up_are_refused() {
        let mut session = Vec::new();
        session.extend_from_slice(&1u16.to_be_bytes());
        session.extend_from_slice(&[2; 32]);
        session.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(Body::parse(Kind::Session, &session).is_err());
        let ok = Body::Session(vec![([2; 32], MAX_SEQ - 1)]);
        assert_eq!(Body::parse(Kind::Session, &ok.emit().unwrap()), Ok(ok));
        let mut nack = Vec::new();
        nack.extend_from_slice(&1u16.to_be_bytes());
        nack.extend_from_slice(&[2; 32]);
        nack.extend_from_slice(&1u16.to_be_bytes());
        nack.extend_from_slice(&1u64.to_be_bytes());
        nack.extend_from_slice(&MAX_SEQ.to_be_bytes());
        assert!(Body::parse(Kind::Nack, &nack).is_err());
        let Body::Data(mut d) = data(vec![1]).body else {
            unreachable!()
        };
        let mut bytes = Body::Data(d.clone()).emit().unwrap();
        // The body opens with pkt, post, then the Lamport time.
        bytes[16..24].copy_from_slice(&MAX_SEQ.to_be_bytes());
        assert!(Body::parse(Kind::Data, &bytes).is_err());
        d.lamport = MAX_SEQ;
        assert!(
            Body::Data(d).emit().is_err(),
            "what parse refuses, emit refuses"
        );
    }

    /// Thirty senders' NACKs do not fit one frame: they are packed by size, every frame
    /// within MAX_FRAME, nothing left out.
    #[test]
    fn nacks_are_packed_by_size_into_frames_that_can_be_sent() {
        let many: Vec<NackEntry> = (0..30u8).map(|k| ([k; 32], vec![(1, 2)])).collect();
        let wide: Vec<NackEntry> = (0..3u8)
            .map(|k| {
                (
                    [k; 32],
                    (0..MAX_RANGES as u64)
                        .map(|r| (2 * r + 1, 2 * r + 1))
                        .collect(),
                )
            })
            .collect();
        for entries in [many, wide] {
            let frames = pack_nack(entries.clone());
            assert!(frames.len() > 1);
            assert_eq!(frames.concat(), entries);
            for f in frames {
                let r = Repr {
                    activity: ActivityId([1; 16]),
                    sender: [2; 32],
                    body: Body::Nack(f),
                    auth: AUTH,
                };
                assert!(r.emit(&KEY, &NONCE).is_ok());
            }
        }
    }

    /// Repairs from a store cut the post again: only the one cut every member makes is taken
    /// (full chunks but the last), and no more fragments than the largest post has.
    #[test]
    fn fragments_not_cut_the_common_way_are_refused() {
        let Body::Data(d) = data(vec![1; 10]).body else {
            unreachable!()
        };
        let with = |frag: u16, frags: u16, len: usize| Data {
            frag,
            frags,
            chunk: vec![1; len],
            ..d.clone()
        };
        assert!(with(0, 3, MAX_CHUNK).check().is_ok());
        assert!(with(2, 3, 10).check().is_ok());
        assert!(with(0, 1, 0).check().is_ok(), "an empty post");
        assert!(
            with(0, 3, 10).check().is_err(),
            "a short chunk before the last"
        );
        assert!(with(2, 3, 0).check().is_err(), "an empty last chunk");
        assert!(with(0, MAX_FRAGS, MAX_CHUNK).check().is_ok());
        assert!(with(0, MAX_FRAGS + 1, MAX_CHUNK).check().is_err());
        let bytes = Body::Data(with(0, 3, 10)).emit();
        assert!(bytes.is_err());
    }

    #[test]
    fn another_key_short_long_and_foreign_inputs_are_errors() {
        let b = data(b"hello".to_vec()).emit(&KEY, &NONCE).unwrap();
        assert_eq!(Repr::parse(&b, &[8; 32]), Err(Error::BadTag));
        for cut in 0..b.len() {
            assert!(Repr::parse(&b[..cut], &KEY).is_err());
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(Repr::parse(&longer, &KEY).is_err());
        assert!(Repr::parse(&[0u8; 200], &KEY).is_err());
        assert!(data(vec![0; MAX_CHUNK + 1]).emit(&KEY, &NONCE).is_err());
    }

    #[test]
    fn activity_ids_are_32_hex_digits() {
        let id = ActivityId([0x0f; 16]);
        assert_eq!(id.to_hex(), "0f".repeat(16));
        assert_eq!(ActivityId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ActivityId::from_hex("zz"), None);
        assert_eq!(ActivityId::from_hex(&"é".repeat(16)), None);
    }
}
