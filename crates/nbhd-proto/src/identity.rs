//! The ed25519 identity of a node: the peer id is the public key (DESIGN.md §4.5).
//!
//! Key material comes from outside (the daemon draws it from the OS and keeps it in the store),
//! so this module stays deterministic.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

pub use ed25519_dalek::Signature;

#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

/// Shows the public key only: a secret in a log or a panic message would be a leak.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

impl Identity {
    pub fn from_secret(secret: [u8; 32]) -> Identity {
        Identity {
            key: SigningKey::from_bytes(&secret),
        }
    }

    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The peer id, as carried in TXT `key=`: base64url of the public key, unpadded.
    pub fn peer_id(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public())
    }

    /// `nbhd-<first 8 hex of the key>`: our own mDNS host name label (DESIGN.md §4.1).
    pub fn hostname_label(&self) -> String {
        let p = self.public();
        format!("nbhd-{:02x}{:02x}{:02x}{:02x}", p[0], p[1], p[2], p[3])
    }

    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    /// This identity's secret in X25519 form (the ed25519 secret scalar's bytes, clamped by
    /// X25519 itself): the static key of our Noise handshakes, whose public half is
    /// [`montgomery`] of our public key.
    pub fn x25519_secret(&self) -> [u8; 32] {
        self.key.to_scalar_bytes()
    }

    /// X25519 agreement with a Montgomery point, using this identity's key in its X25519 form
    /// (the clamped ed25519 secret scalar; see eprint 2021/509 on using one key for both).
    pub fn agree(&self, point: &[u8; 32]) -> [u8; 32] {
        curve25519_dalek::MontgomeryPoint(*point)
            .mul_clamped(self.key.to_scalar_bytes())
            .to_bytes()
    }
}

/// A peer's ed25519 public key in its X25519 (Montgomery) form, if it is a valid key. A weak
/// key (of small order: the all-zero bytes are one) has none: an agreement with it is a value
/// anyone knows, so a handshake or a seal "proving" it would prove nothing.
pub fn montgomery(key: &[u8; 32]) -> Option<[u8; 32]> {
    VerifyingKey::from_bytes(key)
        .ok()
        .filter(|k| !k.is_weak())
        .map(|k| k.to_montgomery().to_bytes())
}

/// True if `s` is a peer id: the unpadded base64url of 32 bytes, in its one canonical form.
pub fn is_peer_id(s: &str) -> bool {
    s.len() == 43
        && URL_SAFE_NO_PAD
            .decode(s)
            .is_ok_and(|b| b.len() == 32 && URL_SAFE_NO_PAD.encode(&b) == s)
}

/// Checks `sig` over `msg` by the peer whose id is `peer_id`.
pub fn verify(peer_id: &str, msg: &[u8], sig: &Signature) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(peer_id) else {
        return false;
    };
    let Ok(arr) = <[u8; 32]>::try_from(bytes.as_slice()) else {
        return false;
    };
    verify_key(&arr, msg, sig)
}

/// Checks `sig` over `msg` by the public key `key` (strict: no malleable signatures, no weak keys).
pub fn verify_key(key: &[u8; 32], msg: &[u8], sig: &Signature) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    vk.verify_strict(msg, sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_signatures() {
        let id = Identity::from_secret([7; 32]);
        assert_eq!(id.peer_id().len(), 43);
        assert!(id.hostname_label().starts_with("nbhd-") && id.hostname_label().len() == 13);
        let sig = id.sign(b"hello");
        assert!(verify(&id.peer_id(), b"hello", &sig));
        assert!(!verify(&id.peer_id(), b"hellp", &sig));
        assert!(!verify("not base64!", b"hello", &sig));
        assert!(is_peer_id(&id.peer_id()));
        assert!(!is_peer_id("legacy:frank@box") && !is_peer_id(&id.peer_id()[1..]));
        // Small-order keys have no X25519 form we would agree with.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(montgomery(&identity_point).is_none());
        assert!(montgomery(&[0; 32]).is_none());
        assert!(montgomery(&id.public()).is_some());
    }
}
