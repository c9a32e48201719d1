//! A secret sealed to one peer: how a private activity's key travels inside an invitation, so
//! that only the invitee can read it (DESIGN.md §4.2, §4.4).
//!
//! Sealing is X25519 from the peers' ed25519 identities: a fresh ephemeral key agrees with the
//! invitee's key in Montgomery form; SHA-256 over [`SEAL_DOMAIN`], the shared secret, the
//! ephemeral public key, the invitee's key and what the seal is bound to (the activity's id and
//! the inviter's key, see [`binding`]) gives a one-time key; XChaCha20-Poly1305 seals the
//! secret. The sealed form is the ephemeral public key (32 bytes) then the sealed secret and its
//! tag (48 bytes). Bound, a sealed key lifted into another invitation (another activity's, or
//! another inviter's) does not open.

use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use curve25519_dalek::MontgomeryPoint;
use sha2::{Digest, Sha256};

use super::ActivityId;
use crate::identity::{self, Identity};

pub const SEAL_DOMAIN: &[u8] = b"nbhd seal v1\0";
pub const SEALED_LEN: usize = 32 + 32 + 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealError {
    /// Not a key we can agree with (not a curve point, or a low-order one).
    BadKey,
    /// Not sealed to us, or changed.
    Unsealable,
}

/// What an activity key's seal is bound to: the activity's id and the inviter's key.
pub fn binding(activity: &ActivityId, inviter: &[u8; 32]) -> [u8; 48] {
    let mut b = [0u8; 48];
    b[..16].copy_from_slice(&activity.0);
    b[16..].copy_from_slice(inviter);
    b
}

fn one_time_key(shared: &[u8; 32], eph: &[u8; 32], to: &[u8; 32], bind: &[u8; 48]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SEAL_DOMAIN);
    h.update(shared);
    h.update(eph);
    h.update(to);
    h.update(bind);
    h.finalize().into()
}

/// Seals `secret` to the peer whose ed25519 key is `to`, bound to `bind`; `ephemeral` must be
/// fresh randomness.
pub fn seal(
    secret: &[u8; 32],
    to: &[u8; 32],
    bind: &[u8; 48],
    ephemeral: [u8; 32],
) -> Result<Vec<u8>, SealError> {
    let their = identity::montgomery(to).ok_or(SealError::BadKey)?;
    let eph_pub = MontgomeryPoint::mul_base_clamped(ephemeral).to_bytes();
    let shared = MontgomeryPoint(their).mul_clamped(ephemeral).to_bytes();
    if shared == [0; 32] {
        return Err(SealError::BadKey);
    }
    let key = one_time_key(&shared, &eph_pub, to, bind);
    // The key is used once: a fixed nonce is safe.
    let sealed = XChaCha20Poly1305::new((&key).into())
        .encrypt(XNonce::from_slice(&[0; 24]), secret.as_slice())
        .map_err(|_| SealError::BadKey)?;
    let mut out = eph_pub.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what was sealed to `me`, bound to `bind`.
pub fn open(me: &Identity, sealed: &[u8], bind: &[u8; 48]) -> Result<[u8; 32], SealError> {
    if sealed.len() != SEALED_LEN {
        return Err(SealError::Unsealable);
    }
    let mut eph = [0u8; 32];
    eph.copy_from_slice(&sealed[..32]);
    let shared = me.agree(&eph);
    if shared == [0; 32] {
        return Err(SealError::Unsealable);
    }
    let key = one_time_key(&shared, &eph, &me.public(), bind);
    let plain = XChaCha20Poly1305::new((&key).into())
        .decrypt(XNonce::from_slice(&[0; 24]), &sealed[32..])
        .map_err(|_| SealError::Unsealable)?;
    <[u8; 32]>::try_from(plain.as_slice()).map_err(|_| SealError::Unsealable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_invitee_opens_what_was_sealed_to_it() {
        let bob = Identity::from_secret([2; 32]);
        let carol = Identity::from_secret([3; 32]);
        let secret = [0x42; 32];
        let bind = binding(&ActivityId([5; 16]), &[1; 32]);
        let sealed = seal(&secret, &bob.public(), &bind, [9; 32]).unwrap();
        assert_eq!(sealed.len(), SEALED_LEN);
        assert_eq!(open(&bob, &sealed, &bind), Ok(secret));
        assert_eq!(open(&carol, &sealed, &bind), Err(SealError::Unsealable));
        let mut changed = sealed.clone();
        changed[40] ^= 1;
        assert_eq!(open(&bob, &changed, &bind), Err(SealError::Unsealable));
        assert_eq!(open(&bob, &sealed[..40], &bind), Err(SealError::Unsealable));
        // A fresh ephemeral key: another sealed form of the same secret.
        let again = seal(&secret, &bob.public(), &bind, [10; 32]).unwrap();
        assert_ne!(again, sealed);
        assert_eq!(open(&bob, &again, &bind), Ok(secret));
    }

    /// Issue 15: the seal bound neither the activity nor the inviter, so a sealed key could be
    /// lifted into another invitation. Now it opens only where it was sealed.
    #[test]
    fn a_sealed_key_lifted_into_another_invitation_does_not_open() {
        let bob = Identity::from_secret([2; 32]);
        let (chess, go) = (ActivityId([5; 16]), ActivityId([6; 16]));
        let (alice, mallory) = ([1; 32], [9; 32]);
        let sealed = seal(
            &[0x42; 32],
            &bob.public(),
            &binding(&chess, &alice),
            [9; 32],
        )
        .unwrap();
        assert!(open(&bob, &sealed, &binding(&chess, &alice)).is_ok());
        assert!(
            open(&bob, &sealed, &binding(&go, &alice)).is_err(),
            "another activity"
        );
        assert!(
            open(&bob, &sealed, &binding(&chess, &mallory)).is_err(),
            "another inviter"
        );
    }

    #[test]
    fn a_key_that_is_no_curve_point_is_refused() {
        // y = 2 is not the y of any point on the curve.
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(identity::montgomery(&not_a_point).is_none());
        assert_eq!(
            seal(&[1; 32], &not_a_point, &[0; 48], [9; 32]),
            Err(SealError::BadKey)
        );
    }
}
