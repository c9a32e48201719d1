//! What travels through third parties between two nbhd peers, sealed from one identity to the
//! other (DESIGN.md §4.5): the courier's stanzas and receipts (multicast, so everyone on the
//! link receives them) and what a relay carries.
//!
//! The key is X25519 between the two identities (in Montgomery form, as the streams' Noise
//! static keys), hashed with [`SEALED_DOMAIN`], the sender's key, the recipient's key and what
//! the box is for: only those two can open or make it, it opens for one direction only (so it
//! cannot be reflected back to its sender), and a box made for the courier is not a relay's.
//! XChaCha20-Poly1305 with a random 24-byte nonce, carried first. What a relay forwards, or a
//! host on the link captures, is unreadable to it and cannot be changed or made up by it; a
//! receipt that came through a relay is the receiver's own.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::identity::{self, Identity};

pub const SEALED_DOMAIN: &[u8] = b"nbhd sealed v0\0";
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// What a sealed box adds to what it seals.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// What a box is for: part of its key, so one cannot stand for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A stanza, or its receipt, in a courier frame.
    Courier,
    /// A stanza, or its receipt, handed to a relay.
    Relay,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Courier => b"courier",
            Purpose::Relay => b"relay",
        }
    }
}

/// Not sealed by that sender to us for that purpose, or changed on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsealable;

fn key(shared: &[u8; 32], from: &[u8; 32], to: &[u8; 32], purpose: Purpose) -> [u8; 32] {
    Sha256::new()
        .chain_update(SEALED_DOMAIN)
        .chain_update(shared)
        .chain_update(from)
        .chain_update(to)
        .chain_update(purpose.label())
        .finalize()
        .into()
}

/// `me`'s X25519 agreement with the peer whose ed25519 key is `peer`: the same for every box
/// between the two, so a sender may keep it ([`Pairs`]) rather than agree again per box.
pub fn shared(me: &Identity, peer: &[u8; 32]) -> Result<[u8; 32], Unsealable> {
    let point = identity::montgomery(peer).ok_or(Unsealable)?;
    let s = me.agree(&point);
    // A low-order point gives an all-zero secret anyone knows.
    if s == [0; 32] {
        return Err(Unsealable);
    }
    Ok(s)
}

/// Seals `plain` from `me` to `to`; `nonce` must be fresh randomness.
pub fn seal(
    me: &Identity,
    to: &[u8; 32],
    purpose: Purpose,
    nonce: [u8; NONCE_LEN],
    plain: &[u8],
) -> Result<Vec<u8>, Unsealable> {
    seal_shared(&shared(me, to)?, &me.public(), to, purpose, nonce, plain)
}

/// [`seal`] with the agreement already made ([`shared`]).
pub fn seal_shared(
    shared: &[u8; 32],
    from: &[u8; 32],
    to: &[u8; 32],
    purpose: Purpose,
    nonce: [u8; NONCE_LEN],
    plain: &[u8],
) -> Result<Vec<u8>, Unsealable> {
    let k = key(shared, from, to, purpose);
    let sealed = XChaCha20Poly1305::new((&k).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: SEALED_DOMAIN,
            },
        )
        .map_err(|_| Unsealable)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what `from` sealed to `me` for `purpose`.
pub fn open(
    me: &Identity,
    from: &[u8; 32],
    purpose: Purpose,
    sealed: &[u8],
) -> Result<Vec<u8>, Unsealable> {
    open_shared(&shared(me, from)?, from, &me.public(), purpose, sealed)
}

/// [`open`] with the agreement already made ([`shared`]).
pub fn open_shared(
    shared: &[u8; 32],
    from: &[u8; 32],
    to: &[u8; 32],
    purpose: Purpose,
    sealed: &[u8],
) -> Result<Vec<u8>, Unsealable> {
    if sealed.len() < OVERHEAD {
        return Err(Unsealable);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let k = key(shared, from, to, purpose);
    XChaCha20Poly1305::new((&k).into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: SEALED_DOMAIN,
            },
        )
        .map_err(|_| Unsealable)
}

/// The agreements made with peers lately, so that a courier delivery and its receipt cost no
/// X25519 each (it was a quarter of a millisecond per round trip: a quarter of the courier's
/// latency). At most [`MAX_PAIRS`]; past that it starts again.
#[derive(Default)]
pub struct Pairs {
    by_key: std::collections::HashMap<[u8; 32], [u8; 32]>,
}

/// Peers whose agreement is kept.
pub const MAX_PAIRS: usize = 1024;

impl Pairs {
    /// `me`'s agreement with `peer`, made once.
    pub fn get(&mut self, me: &Identity, peer: &[u8; 32]) -> Result<[u8; 32], Unsealable> {
        if let Some(s) = self.by_key.get(peer) {
            return Ok(*s);
        }
        let s = shared(me, peer)?;
        if self.by_key.len() >= MAX_PAIRS {
            self.by_key.clear();
        }
        self.by_key.insert(*peer, s);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens_only_what_the_sender_sealed_for_that_purpose() {
        let alice = Identity::from_secret([1; 32]);
        let bob = Identity::from_secret([2; 32]);
        let carol = Identity::from_secret([3; 32]);
        let boxed = seal(&alice, &bob.public(), Purpose::Relay, [5; 24], b"hi bob").unwrap();
        assert_eq!(boxed.len(), 6 + OVERHEAD);
        assert_eq!(
            open(&bob, &alice.public(), Purpose::Relay, &boxed).unwrap(),
            b"hi bob"
        );
        // Not carol's to open, nor to pass off as her own, nor as bob's to alice (reflected),
        // nor as a courier box.
        assert_eq!(
            open(&carol, &alice.public(), Purpose::Relay, &boxed),
            Err(Unsealable)
        );
        assert_eq!(
            open(&bob, &carol.public(), Purpose::Relay, &boxed),
            Err(Unsealable)
        );
        assert_eq!(
            open(&alice, &bob.public(), Purpose::Relay, &boxed),
            Err(Unsealable)
        );
        assert_eq!(
            open(&bob, &alice.public(), Purpose::Courier, &boxed),
            Err(Unsealable)
        );
        for i in 0..boxed.len() {
            let mut changed = boxed.clone();
            changed[i] ^= 1;
            assert_eq!(
                open(&bob, &alice.public(), Purpose::Relay, &changed),
                Err(Unsealable)
            );
        }
        for n in 0..boxed.len() {
            assert_eq!(
                open(&bob, &alice.public(), Purpose::Relay, &boxed[..n]),
                Err(Unsealable)
            );
        }
    }
}
