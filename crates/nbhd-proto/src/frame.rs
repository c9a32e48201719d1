//! The signed frame: the envelope of everything nbhd peers send each other over UDP, the
//! courier (and its receipts and the path observations) on the neighborhood multicast channel
//! and the unicast path probes alike (DESIGN.md §4.3, §4.5). Every frame names one recipient by
//! its key; a Node takes only frames addressed to it.
//!
//! Layout (all integers big-endian), in the smoltcp manner: [`Packet`] is a checked view over a
//! buffer, [`Repr`] the parsed form with `parse` and `emit`.
//!
//! ```text
//!  0      4     5     6      8                 40                72        80    82        82+n  82+n+64
//!  | NBHD | ver | kind| rsvd | sender key (32) | recipient (32)   | id (8)  | len | payload | signature |
//! ```
//!
//! The signature is ed25519 by the sender's key over [`SIGNING_DOMAIN`] followed by every byte
//! before it, so a frame cannot be replayed as another protocol's signed bytes, and no field can
//! be changed or moved.

use std::fmt;

use crate::identity::{self, Identity, Signature};

pub const MAGIC: &[u8; 4] = b"NBHD";
pub const VERSION: u8 = 0;
/// Domain separation for frame signatures (DESIGN.md §4.2: signatures cover canonical bytes with
/// a domain-separation prefix).
pub const SIGNING_DOMAIN: &[u8] = b"nbhd frame v0\0";
pub const HEADER_LEN: usize = 82;
pub const SIGNATURE_LEN: usize = 64;
/// Payloads stay within one unfragmented datagram on a 1400-byte-MTU mesh.
pub const MAX_PAYLOAD: usize = 1200;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const SENDER: Range<usize> = 8..40;
    pub const RECIPIENT: Range<usize> = 40..72;
    pub const ID: Range<usize> = 72..80;
    pub const LEN: Range<usize> = 80..82;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A stanza carried by multicast because unicast does not get through.
    Courier,
    /// The receipt of a courier frame, carried back the same way.
    CourierReceipt,
    /// A unicast path probe.
    Probe,
    /// The answer to a probe.
    ProbeReply,
    /// What a peer has seen of the paths between us, on failure or on demand.
    Observation,
}

impl Kind {
    fn to_byte(self) -> u8 {
        match self {
            Kind::Courier => 1,
            Kind::CourierReceipt => 2,
            Kind::Probe => 3,
            Kind::ProbeReply => 4,
            Kind::Observation => 5,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Courier,
            2 => Kind::CourierReceipt,
            3 => Kind::Probe,
            4 => Kind::ProbeReply,
            5 => Kind::Observation,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    Truncated,
    Malformed(&'static str),
    BadSignature,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => write!(f, "truncated frame"),
            Error::Malformed(why) => write!(f, "malformed frame: {why}"),
            Error::BadSignature => write!(f, "frame signature does not verify"),
        }
    }
}

impl std::error::Error for Error {}

/// A checked view over a frame's bytes.
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Checks that the buffer holds a whole frame of a known version and kind.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, Error> {
        let p = Packet { buffer };
        let b = p.buffer.as_ref();
        if b.len() < HEADER_LEN + SIGNATURE_LEN {
            return Err(Error::Truncated);
        }
        if &b[field::MAGIC] != MAGIC {
            return Err(Error::Malformed("not an nbhd frame"));
        }
        if b[field::VERSION] != VERSION {
            return Err(Error::Malformed("unknown version"));
        }
        if Kind::from_byte(b[field::KIND]).is_none() {
            return Err(Error::Malformed("unknown kind"));
        }
        let len = p.payload_len();
        if len > MAX_PAYLOAD {
            return Err(Error::Malformed("payload too long"));
        }
        if b.len() < HEADER_LEN + len + SIGNATURE_LEN {
            return Err(Error::Truncated);
        }
        if b.len() > HEADER_LEN + len + SIGNATURE_LEN {
            return Err(Error::Malformed("trailing bytes"));
        }
        Ok(p)
    }

    pub fn kind(&self) -> Kind {
        Kind::from_byte(self.buffer.as_ref()[field::KIND]).expect("checked in new_checked")
    }

    pub fn sender(&self) -> [u8; 32] {
        self.buffer.as_ref()[field::SENDER]
            .try_into()
            .expect("fixed range")
    }

    pub fn recipient(&self) -> [u8; 32] {
        self.buffer.as_ref()[field::RECIPIENT]
            .try_into()
            .expect("fixed range")
    }

    pub fn id(&self) -> u64 {
        u64::from_be_bytes(
            self.buffer.as_ref()[field::ID]
                .try_into()
                .expect("fixed range"),
        )
    }

    pub fn payload_len(&self) -> usize {
        u16::from_be_bytes(
            self.buffer.as_ref()[field::LEN]
                .try_into()
                .expect("fixed range"),
        ) as usize
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len()]
    }

    fn signed_part(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + self.payload_len()]
    }

    fn signature(&self) -> &[u8] {
        let start = HEADER_LEN + self.payload_len();
        &self.buffer.as_ref()[start..start + SIGNATURE_LEN]
    }

    /// True if the sender's key signed this frame.
    pub fn verify(&self) -> bool {
        let Ok(sig) = Signature::from_slice(self.signature()) else {
            return false;
        };
        let mut msg = SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(self.signed_part());
        identity::verify_key(&self.sender(), &msg, &sig)
    }
}

/// A frame, parsed and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repr {
    pub kind: Kind,
    pub sender: [u8; 32],
    pub recipient: [u8; 32],
    pub id: u64,
    pub payload: Vec<u8>,
}

impl Repr {
    /// Parses and verifies a datagram. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Repr, Error> {
        let p = Packet::new_checked(bytes)?;
        if !p.verify() {
            return Err(Error::BadSignature);
        }
        Ok(Repr {
            kind: p.kind(),
            sender: p.sender(),
            recipient: p.recipient(),
            id: p.id(),
            payload: p.payload().to_vec(),
        })
    }

    /// The frame's bytes, signed by `by` (whose key must be `self.sender`).
    pub fn emit(&self, by: &Identity) -> Result<Vec<u8>, Error> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(Error::Malformed("payload too long"));
        }
        if by.public() != self.sender {
            return Err(Error::Malformed("signer is not the sender"));
        }
        let mut b = Vec::with_capacity(HEADER_LEN + self.payload.len() + SIGNATURE_LEN);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.push(self.kind.to_byte());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.sender);
        b.extend_from_slice(&self.recipient);
        b.extend_from_slice(&self.id.to_be_bytes());
        b.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.payload);
        let mut msg = SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&b);
        b.extend_from_slice(&by.sign(&msg).to_bytes());
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &Identity) -> Repr {
        Repr {
            kind: Kind::Courier,
            sender: id.public(),
            recipient: Identity::from_secret([9; 32]).public(),
            id: 0x0102_0304_0506_0708,
            payload: b"<message type='chat'><body>hi</body></message>".to_vec(),
        }
    }

    #[test]
    fn emit_then_parse_is_identity() {
        let me = Identity::from_secret([1; 32]);
        for kind in [
            Kind::Courier,
            Kind::CourierReceipt,
            Kind::Probe,
            Kind::ProbeReply,
            Kind::Observation,
        ] {
            for len in [0usize, 1, 100, MAX_PAYLOAD] {
                let r = Repr {
                    kind,
                    payload: vec![0xab; len],
                    ..sample(&me)
                };
                let bytes = r.emit(&me).unwrap();
                assert_eq!(bytes.len(), HEADER_LEN + len + SIGNATURE_LEN);
                assert_eq!(Repr::parse(&bytes).unwrap(), r);
            }
        }
    }

    /// The whole frame, every byte, against bytes written down once (ed25519 signatures are
    /// deterministic): magic, version, kind, reserved, sender key, recipient key, id, length,
    /// the 46-byte stanza, the signature.
    #[test]
    fn a_frame_is_byte_exact() {
        let me = Identity::from_secret([1; 32]);
        let bytes = sample(&me).emit(&me).unwrap();
        let expected = concat!(
            "4e424844", "00", "01", "0000",
            "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c",
            "fd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f618",
            "0102030405060708",
            "002e",
            "3c6d65737361676520747970653d2763686174273e3c626f64793e68693c2f626f64793e3c2f6d6573736167653e",
            "139197bd4bbd6a38d764cf2af8ab6000e2a35194a7356162a6f777e535eeafb7",
            "87f80e8de946be0a1adc2d02843e442f67bcec106738c286403f15eec84ef00e",
        );
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
        assert_eq!(bytes.len(), HEADER_LEN + 46 + SIGNATURE_LEN);
    }

    #[test]
    fn any_changed_bit_breaks_the_signature_or_the_structure() {
        let me = Identity::from_secret([1; 32]);
        let bytes = sample(&me).emit(&me).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x04;
            assert!(Repr::parse(&b).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn short_long_and_foreign_inputs_are_errors() {
        let me = Identity::from_secret([1; 32]);
        let bytes = sample(&me).emit(&me).unwrap();
        for cut in 0..bytes.len() {
            assert!(Repr::parse(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Repr::parse(&longer),
            Err(Error::Malformed("trailing bytes"))
        );
        assert!(Repr::parse(b"not a frame at all, but long enough to have a header and a signature ...............................................................................................").is_err());
        // Signed by someone else than the sender it names.
        let other = Identity::from_secret([2; 32]);
        assert!(sample(&me).emit(&other).is_err());
    }
}
