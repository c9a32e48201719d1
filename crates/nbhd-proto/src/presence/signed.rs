//! Presence signed by the key it announces (issue 15): an nbhd instance's TXT carries `sig=`,
//! its ed25519 signature of what makes it reachable and who it is: [`PRESENCE_DOMAIN`], the
//! instance name, its SRV target and port, and every other TXT pair (sorted). A record set
//! that verifies proves the key's holder announced it; the cache keeps a share
//! ([`super::cache::RESERVED_FOR_PROVEN`]) for such instances, so a flood of forged
//! announcements, each from a new source address, fills the rest and never keeps a real
//! newcomer out.
//!
//! It proves the key, not the address: one who makes keys by the thousand and signs with each
//! can still compete for the reserved share, but must spend a signature for every fake, and we
//! verify at most [`VERIFY_PER_SECOND`] (the rest wait unproven).

use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::wire::Name;
use crate::identity::{self, Identity, Signature};

pub const PRESENCE_DOMAIN: &[u8] = b"nbhd presence v1\0";
/// The TXT key of the signature.
pub const SIG_KEY: &str = "sig";
/// Signatures checked per second at most (bursts of as many): a flood of signed fakes cannot
/// make presence spend more than a few percent of a core on them.
pub const VERIFY_PER_SECOND: f64 = 500.0;

/// The bytes an instance's signature covers. TXT pairs other than `sig` are taken sorted by
/// key, so their order on the wire does not matter.
pub fn signed_bytes(instance: &str, target: &Name, port: u16, txt: &[(String, String)]) -> Vec<u8> {
    let mut pairs: Vec<&(String, String)> = txt.iter().filter(|(k, _)| k != SIG_KEY).collect();
    pairs.sort();
    let mut m = PRESENCE_DOMAIN.to_vec();
    let mut put = |b: &[u8]| {
        m.extend_from_slice(&(b.len() as u32).to_be_bytes());
        m.extend_from_slice(b);
    };
    put(instance.as_bytes());
    put(target.to_string().to_ascii_lowercase().as_bytes());
    put(&port.to_be_bytes());
    for (k, v) in pairs {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    m
}

/// Our signature of our own records, as TXT `sig=` carries it.
pub fn sign(
    me: &Identity,
    instance: &str,
    target: &Name,
    port: u16,
    txt: &[(String, String)],
) -> String {
    URL_SAFE_NO_PAD.encode(
        me.sign(&signed_bytes(instance, target, port, txt))
            .to_bytes(),
    )
}

/// The key that signed this instance's records, if `key=` and `sig=` are there and agree.
pub fn verify(
    instance: &str,
    target: &Name,
    port: u16,
    txt: &[(String, String)],
) -> Option<[u8; 32]> {
    let get = |k: &str| txt.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str());
    let key = URL_SAFE_NO_PAD.decode(get("key")?).ok()?;
    let key = <[u8; 32]>::try_from(key.as_slice()).ok()?;
    let sig = URL_SAFE_NO_PAD.decode(get(SIG_KEY)?).ok()?;
    let sig = Signature::from_slice(&sig).ok()?;
    identity::verify_key(&key, &signed_bytes(instance, target, port, txt), &sig).then_some(key)
}

/// How many signatures we may check now: a token bucket of [`VERIFY_PER_SECOND`].
#[derive(Debug)]
pub struct VerifyBudget {
    tokens: f64,
    at: Option<Instant>,
}

impl Default for VerifyBudget {
    fn default() -> Self {
        VerifyBudget {
            tokens: VERIFY_PER_SECOND,
            at: None,
        }
    }
}

impl VerifyBudget {
    /// Takes one check, if there is one to take.
    pub fn take(&mut self, now: Instant) -> bool {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + dt * VERIFY_PER_SECOND).min(VERIFY_PER_SECOND);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_key_signed_verifies() {
        let me = Identity::from_secret([4; 32]);
        let target = Name::dotted("nbhd-1234.local");
        let mut txt = vec![
            ("nick".to_string(), "alice".to_string()),
            ("key".to_string(), me.peer_id()),
        ];
        let sig = sign(&me, "alice@lab", &target, 5298, &txt);
        txt.push((SIG_KEY.into(), sig));
        assert_eq!(verify("alice@lab", &target, 5298, &txt), Some(me.public()));
        // Any pair in another order still verifies; any change does not.
        let mut reordered = txt.clone();
        reordered.reverse();
        assert_eq!(
            verify("alice@lab", &target, 5298, &reordered),
            Some(me.public())
        );
        assert_eq!(verify("mallory@lab", &target, 5298, &txt), None);
        assert_eq!(
            verify("alice@lab", &Name::dotted("x.local"), 5298, &txt),
            None
        );
        assert_eq!(verify("alice@lab", &target, 5299, &txt), None);
        let mut other_nick = txt.clone();
        other_nick[0].1 = "mallory".into();
        assert_eq!(verify("alice@lab", &target, 5298, &other_nick), None);
        // Another key in key= with alice's signature: not theirs.
        let mut other_key = txt.clone();
        other_key[1].1 = Identity::from_secret([5; 32]).peer_id();
        assert_eq!(verify("alice@lab", &target, 5298, &other_key), None);
    }

    #[test]
    fn the_budget_refills_with_time_and_no_further() {
        let t0 = Instant::now();
        let mut b = VerifyBudget::default();
        let n = (0..10_000).take_while(|_| b.take(t0)).count();
        assert_eq!(n, VERIFY_PER_SECOND as usize);
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + std::time::Duration::from_millis(10)),
            "5 more after 10 ms"
        );
    }
}
