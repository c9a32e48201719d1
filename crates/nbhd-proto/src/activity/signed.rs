//! Posts signed by their posters (DESIGN.md §4.5): the activity key proves that a frame comes
//! from a member, never which member. Without this, any member (anyone, for a public
//! activity) could post as another, and the first copy of a (sender, packet) slot would win,
//! so the victim's real post was dropped as a duplicate.
//!
//! The poster signs, with its ed25519 identity, [`POST_DOMAIN`] then every field a member shows
//! or orders by: the activity, the poster's key, the post and first packet numbers, the
//! fragments, the Lamport time, the time, whether it is bytes, the nick, and SHA-256 of the
//! body (so a post of a megabyte is hashed once, signed once, and verified once, whichever
//! member repairs it and from whatever store). The signature travels in every fragment and is
//! stored with the post; a copy, a repair or a late joiner's history counts only if it
//! verifies.
//!
//! Control frames (nack, session, join, leave) are signed the same way, each with its
//! sender's counter: [`CONTROL_DOMAIN`], the activity, the sender, the kind, the body and the
//! counter ([`control_bytes`]).

use sha2::{Digest, Sha256};

use super::wire::{Body, ControlAuth, Repr};
use super::{ActivityId, Post};
use crate::identity::{self, Identity, Signature};

pub const POST_DOMAIN: &[u8] = b"nbhd post v1\0";
pub const CONTROL_DOMAIN: &[u8] = b"nbhd control v1\0";

/// The bytes a control frame's signature covers; None for a body that cannot be sent.
pub fn control_bytes(
    activity: &ActivityId,
    sender: &[u8; 32],
    body: &Body,
    counter: u64,
) -> Option<Vec<u8>> {
    let mut m = CONTROL_DOMAIN.to_vec();
    m.extend_from_slice(&activity.0);
    m.extend_from_slice(sender);
    m.push(body.kind().to_byte());
    m.extend_from_slice(&body.emit().ok()?);
    m.extend_from_slice(&counter.to_be_bytes());
    Some(m)
}

/// A control frame of ours, signed.
pub fn sign_control(
    me: &Identity,
    activity: &ActivityId,
    body: &Body,
    counter: u64,
) -> Option<ControlAuth> {
    let bytes = control_bytes(activity, &me.public(), body, counter)?;
    Some(ControlAuth {
        counter,
        sig: me.sign(&bytes).to_bytes(),
    })
}

/// True if the frame's sender signed its body and counter.
pub fn verify_control(r: &Repr) -> bool {
    let Some(auth) = r.auth else {
        return false;
    };
    control_bytes(&r.activity, &r.sender, &r.body, auth.counter).is_some_and(|bytes| {
        identity::verify_key(&r.sender, &bytes, &Signature::from_bytes(&auth.sig))
    })
}

/// The bytes a post's signature covers.
pub fn signed_bytes(post: &Post) -> Vec<u8> {
    let mut m = Vec::with_capacity(POST_DOMAIN.len() + 16 + 32 + 8 * 5 + 2 + 1 + 41 + 32);
    m.extend_from_slice(POST_DOMAIN);
    m.extend_from_slice(&post.activity.0);
    m.extend_from_slice(&post.sender);
    m.extend_from_slice(&post.seq.to_be_bytes());
    m.extend_from_slice(&post.first_pkt.to_be_bytes());
    m.extend_from_slice(&post.frags.to_be_bytes());
    m.extend_from_slice(&post.lamport.to_be_bytes());
    m.extend_from_slice(&post.at_ms.to_be_bytes());
    m.push(u8::from(post.bytes));
    m.push(post.nick.len().min(255) as u8);
    m.extend_from_slice(post.nick.as_bytes());
    m.extend_from_slice(&Sha256::digest(&post.body));
    m
}

/// Signs `post` as `me` (its sender must be `me`).
pub fn sign(me: &Identity, post: &mut Post) {
    post.sig = me.sign(&signed_bytes(post)).to_bytes();
}

/// True if the post's sender signed exactly this post.
pub fn verify(post: &Post) -> bool {
    identity::verify_key(
        &post.sender,
        &signed_bytes(post),
        &Signature::from_bytes(&post.sig),
    )
}

/// Each post's [`verify`], the lot checked at once when there are several (ed25519 batch
/// verification: about half the cost of one check each). A batch that fails is checked post by
/// post, so one forgery costs its neighbours nothing but time.
pub fn verify_all(posts: &[Post]) -> Vec<bool> {
    use ed25519_dalek::VerifyingKey;
    if posts.len() > 1 {
        let keys: Option<Vec<VerifyingKey>> = posts
            .iter()
            .map(|p| {
                VerifyingKey::from_bytes(&p.sender)
                    .ok()
                    .filter(|k| !k.is_weak())
            })
            .collect();
        if let Some(keys) = keys {
            let bytes: Vec<Vec<u8>> = posts.iter().map(signed_bytes).collect();
            let messages: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            let sigs: Vec<Signature> = posts
                .iter()
                .map(|p| Signature::from_bytes(&p.sig))
                .collect();
            if ed25519_dalek::verify_batch(&messages, &sigs, &keys).is_ok() {
                return vec![true; posts.len()];
            }
        }
    }
    posts.iter().map(verify).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(me: &Identity) -> Post {
        let mut p = Post {
            activity: ActivityId([1; 16]),
            sender: me.public(),
            nick: "alice".into(),
            seq: 3,
            first_pkt: 7,
            frags: 1,
            lamport: 12,
            at_ms: 1_700_000_000_000,
            bytes: false,
            body: b"e4".to_vec(),
            sig: [0; 64],
        };
        sign(me, &mut p);
        p
    }

    #[test]
    fn a_batch_is_checked_as_each_post_would_be() {
        let (alice, bob) = (
            Identity::from_secret([1; 32]),
            Identity::from_secret([2; 32]),
        );
        let mut posts: Vec<Post> = (0..8).map(|_| post(&alice)).collect();
        posts[3] = post(&bob);
        assert_eq!(verify_all(&posts), vec![true; 8]);
        posts[5].body = b"changed".to_vec();
        let mut forged = post(&alice);
        sign(&bob, &mut forged);
        posts.push(forged);
        let mut want = vec![true; 9];
        want[5] = false;
        want[8] = false;
        assert_eq!(verify_all(&posts), want);
    }

    #[test]
    fn a_post_verifies_only_as_its_poster_signed_it() {
        let alice = Identity::from_secret([1; 32]);
        let bob = Identity::from_secret([2; 32]);
        let p = post(&alice);
        assert!(verify(&p));
        // Bob cannot post as alice: his signature of her post is not hers ...
        let mut as_alice = p.clone();
        sign(&bob, &mut as_alice);
        assert!(!verify(&as_alice));
        // ... and nothing of hers can be changed: each field, the body, the activity.
        let changes: Vec<fn(&mut Post)> = vec![
            |p| p.activity.0[0] ^= 1,
            |p| p.seq += 1,
            |p| p.first_pkt += 1,
            |p| p.frags += 1,
            |p| p.lamport = (1 << 62) - 1,
            |p| p.at_ms += 1,
            |p| p.bytes = true,
            |p| p.nick = "bob".into(),
            |p| p.body = b"e5".to_vec(),
            |p| p.sig[0] ^= 1,
        ];
        for change in changes {
            let mut q = p.clone();
            change(&mut q);
            assert!(!verify(&q), "{q:?}");
        }
    }
}
