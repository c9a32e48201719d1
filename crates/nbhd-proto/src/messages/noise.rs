//! The secure channel of a stream between two nbhd peers (DESIGN.md §4.5): a Noise XX handshake
//! under the XEP-0174 stream header, then every stanza encrypted.
//!
//! Why Noise and not STARTTLS: the handshake is three small messages that fit the push-fed XML
//! stream as stanzas, it is sans-IO (the engine stays deterministic: the ephemeral keys come from
//! the engine's seeded CSPRNG, see [`SeededResolver`]), and XX hashes the whole transcript, both
//! static keys and both roles, so nothing can be reflected through a second connection or
//! replayed into another session (the old proof signed only "your nonce, your key, my key").
//! TLS would need certificates minted for each ed25519 identity and a custom verifier to say
//! the same thing.
//!
//! The static key of each side is its ed25519 identity in X25519 form (the clamped secret
//! scalar; [`crate::identity::Identity::agree`] uses the same), so a peer proves the key its
//! presence announced without a second key pair. The handshake payload of each static-carrying
//! message names the ed25519 key itself (two ed25519 keys share one X25519 form; the holder of
//! the secret says which is theirs).
//!
//! On the wire, in the stream's default namespace's place, [`NS_NOISE`]:
//!
//! ```text
//! initiator                                        responder
//! <stream:stream ...><handshake>e</handshake>  ->
//!                                              <-  <stream:stream ...><handshake>e, ee, s, es</handshake>
//! <handshake>s, se</handshake><c>..</c><c>..</c> ->
//! ```
//!
//! Each `<c>` carries one Noise transport message (base64): at most [`MAX_PLAIN`] bytes of the
//! stanzas' serialisation, which an inner [`StreamParser`] turns back into stanzas, so a stanza
//! may span several `<c>` and several stanzas may share one. The prologue binds the initiator's
//! stream header (`from`, `to`) and the protocol's version.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, TransportState};

use super::xml::{self, Element, StreamError, StreamEvent, StreamParser};
use crate::identity::{self, Identity};

pub const NS_NOISE: &str = "urn:nbhd:noise:0";
pub const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The prologue's first bytes: a later version of the stream protocol changes them, and a
/// handshake across versions fails instead of misunderstanding.
pub const PROLOGUE_DOMAIN: &[u8] = b"nbhd stream v1\0";
/// Noise's limit on one message (spec §3), less the AEAD tag.
pub const MAX_MESSAGE: usize = 65535;
pub const TAG_LEN: usize = 16;
pub const MAX_PLAIN: usize = MAX_MESSAGE - TAG_LEN;

const C_OPEN: &[u8] = b"<c xmlns='urn:nbhd:noise:0'>";
const C_CLOSE: &[u8] = b"</c>";

/// Why a secure channel failed; the stream ends with a policy-violation error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// A handshake message that does not verify, comes out of turn, or is not base64.
    Handshake(&'static str),
    /// A transport message that does not decrypt (changed, replayed, reordered, or forged).
    Decrypt,
    /// What decrypted is not a well-formed stream of stanzas.
    Inner(StreamError),
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Handshake(why) => write!(f, "noise handshake: {why}"),
            ChannelError::Decrypt => write!(f, "noise: a message that does not decrypt"),
            ChannelError::Inner(e) => write!(f, "inside the secure channel: {e}"),
        }
    }
}

/// What a handshake message asks of the stream.
#[derive(Debug)]
pub enum Step {
    /// Send this `<handshake>` and wait for the next.
    Reply(Vec<u8>),
    /// The peer proved this ed25519 key; send `reply` (the initiator's last message) if any.
    /// Stanzas may flow from now on.
    Done {
        peer_key: [u8; 32],
        reply: Option<Vec<u8>>,
    },
}

enum State {
    Handshake(Box<HandshakeState>),
    Transport {
        noise: Box<TransportState>,
        /// The stanzas inside, however the `<c>` elements cut them.
        inner: Box<StreamParser>,
    },
    Failed,
}

/// One stream's secure channel.
pub struct SecureChannel {
    state: State,
    me: [u8; 32],
}

impl SecureChannel {
    /// We connected: the channel and our first message (`-> e`) to send after our header.
    pub fn initiator(
        me: &Identity,
        from: &str,
        to: &str,
        seed: [u8; 32],
    ) -> Result<(SecureChannel, Vec<u8>), ChannelError> {
        let mut hs = handshake(me, from, to, seed, true)?;
        let first = write(&mut hs, &[])?;
        let c = SecureChannel {
            state: State::Handshake(Box::new(hs)),
            me: me.public(),
        };
        Ok((c, first))
    }

    /// We accepted: `from` and `to` are the initiator's stream header's.
    pub fn responder(
        me: &Identity,
        from: &str,
        to: &str,
        seed: [u8; 32],
    ) -> Result<SecureChannel, ChannelError> {
        let hs = handshake(me, from, to, seed, false)?;
        Ok(SecureChannel {
            state: State::Handshake(Box::new(hs)),
            me: me.public(),
        })
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Transport { .. })
    }

    /// A `<handshake>` from the peer.
    pub fn on_handshake(&mut self, e: &Element) -> Result<Step, ChannelError> {
        let State::Handshake(hs) = &mut self.state else {
            self.state = State::Failed;
            return Err(ChannelError::Handshake(
                "a handshake message after the handshake",
            ));
        };
        let result = advance(hs, &self.me, e);
        match result {
            Ok((step, true)) => {
                let State::Handshake(hs) = std::mem::replace(&mut self.state, State::Failed) else {
                    unreachable!("matched above");
                };
                let noise = hs
                    .into_transport_mode()
                    .map_err(|_| ChannelError::Handshake("cannot finish"))?;
                let mut inner = StreamParser::new();
                inner
                    .feed(&xml::stream_header("", ""))
                    .map_err(ChannelError::Inner)?;
                let _header = inner.poll_event();
                self.state = State::Transport {
                    noise: Box::new(noise),
                    inner: Box::new(inner),
                };
                Ok(step)
            }
            Ok((step, false)) => Ok(step),
            Err(e) => {
                self.state = State::Failed;
                Err(e)
            }
        }
    }

    /// Encrypts stanza bytes into `<c>` elements, ready to send; None before the handshake ends.
    pub fn seal(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        let State::Transport { noise, .. } = &mut self.state else {
            return None;
        };
        let mut out = Vec::with_capacity(plain.len() * 4 / 3 + 64);
        let mut buf = vec![0u8; MAX_MESSAGE];
        for chunk in plain.chunks(MAX_PLAIN) {
            // A chunk of at most MAX_PLAIN bytes always fits: write_message cannot fail here.
            let n = noise.write_message(chunk, &mut buf).ok()?;
            out.extend_from_slice(C_OPEN);
            out.extend_from_slice(STANDARD.encode(&buf[..n]).as_bytes());
            out.extend_from_slice(C_CLOSE);
        }
        Some(out)
    }

    /// A `<c>` from the peer: the stanzas (and the end) it completes.
    pub fn open(&mut self, e: &Element) -> Result<Vec<StreamEvent>, ChannelError> {
        let State::Transport { noise, inner } = &mut self.state else {
            self.state = State::Failed;
            return Err(ChannelError::Handshake(
                "encrypted data before the handshake ended",
            ));
        };
        let Ok(sealed) = STANDARD.decode(e.text_content().trim()) else {
            self.state = State::Failed;
            return Err(ChannelError::Decrypt);
        };
        if sealed.len() > MAX_MESSAGE {
            self.state = State::Failed;
            return Err(ChannelError::Decrypt);
        }
        let mut plain = vec![0u8; sealed.len()];
        let n = match noise.read_message(&sealed, &mut plain) {
            Ok(n) => n,
            Err(_) => {
                self.state = State::Failed;
                return Err(ChannelError::Decrypt);
            }
        };
        if let Err(e) = inner.feed(&plain[..n]) {
            self.state = State::Failed;
            return Err(ChannelError::Inner(e));
        }
        let mut events = Vec::new();
        while let Some(ev) = inner.poll_event() {
            events.push(ev);
        }
        Ok(events)
    }
}

/// One handshake message read, and our answer written: the step, and whether the handshake is
/// over.
fn advance(
    hs: &mut HandshakeState,
    me: &[u8; 32],
    e: &Element,
) -> Result<(Step, bool), ChannelError> {
    if hs.is_my_turn() {
        return Err(ChannelError::Handshake("a message out of turn"));
    }
    let msg = STANDARD
        .decode(e.text_content().trim())
        .map_err(|_| ChannelError::Handshake("not base64"))?;
    if msg.len() > MAX_MESSAGE {
        return Err(ChannelError::Handshake("too long"));
    }
    let mut payload = vec![0u8; msg.len()];
    let n = hs
        .read_message(&msg, &mut payload)
        .map_err(|_| ChannelError::Handshake("a message that does not verify"))?;
    let payload = &payload[..n];
    // The static key came with this message (XX: the responder's in the second, the
    // initiator's in the third): the payload must name the ed25519 key it is the form of.
    let peer_key = match hs.get_remote_static() {
        Some(rs) => {
            let key = <[u8; 32]>::try_from(payload)
                .map_err(|_| ChannelError::Handshake("no identity in the payload"))?;
            if identity::montgomery(&key).as_ref().map(|m| &m[..]) != Some(rs) {
                return Err(ChannelError::Handshake(
                    "the identity named is not the static key proven",
                ));
            }
            Some(key)
        }
        None if payload.is_empty() => None,
        None => return Err(ChannelError::Handshake("a payload before any key")),
    };
    let reply = if hs.is_handshake_finished() {
        None
    } else {
        Some(write(hs, me)?)
    };
    match (peer_key, hs.is_handshake_finished()) {
        (Some(peer_key), true) => Ok((Step::Done { peer_key, reply }, true)),
        (None, false) => Ok((Step::Reply(reply.unwrap_or_default()), false)),
        // XX: the key arrives in the message that the last message answers (initiator) or in
        // the last (responder); anything else is not XX.
        _ => Err(ChannelError::Handshake("not the XX pattern")),
    }
}

/// Our next handshake message, as a `<handshake>` element's bytes.
fn write(hs: &mut HandshakeState, payload: &[u8]) -> Result<Vec<u8>, ChannelError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = hs
        .write_message(payload, &mut buf)
        .map_err(|_| ChannelError::Handshake("cannot write"))?;
    Ok(Element::new(NS_NOISE, "handshake")
        .text(&STANDARD.encode(&buf[..n]))
        .to_stanza_bytes())
}

/// A handshake of ours, in the role `initiator` says, bound to the initiator's header.
fn handshake(
    me: &Identity,
    from: &str,
    to: &str,
    seed: [u8; 32],
    initiator: bool,
) -> Result<HandshakeState, ChannelError> {
    let params: NoiseParams = PATTERN
        .parse()
        .map_err(|_| ChannelError::Handshake("pattern"))?;
    let mut prologue = PROLOGUE_DOMAIN.to_vec();
    for s in [from, to] {
        prologue.extend_from_slice(&(s.len() as u32).to_be_bytes());
        prologue.extend_from_slice(s.as_bytes());
    }
    let secret = me.x25519_secret();
    let b = snow::Builder::with_resolver(params, Box::new(SeededResolver::new(seed)))
        .local_private_key(&secret)
        .and_then(|b| b.prologue(&prologue))
        .map_err(|_| ChannelError::Handshake("cannot configure"))?;
    let hs = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    };
    hs.map_err(|_| ChannelError::Handshake("cannot start"))
}

/// snow's own primitives, but randomness from the engine (a CSPRNG seeded by the driver with
/// the OS's entropy), so the engine stays deterministic under test and in the simulator.
struct SeededResolver {
    seed: [u8; 32],
    uses: AtomicU64,
}

impl SeededResolver {
    fn new(seed: [u8; 32]) -> SeededResolver {
        SeededResolver {
            seed,
            uses: AtomicU64::new(0),
        }
    }
}

struct SeededRandom(StdRng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        // Each RNG snow asks for draws from a different stream of the seed.
        let n = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut seed = self.seed;
        for (s, b) in seed.iter_mut().zip(n.to_le_bytes()) {
            *s ^= b;
        }
        Some(Box::new(SeededRandom(StdRng::from_seed(seed))))
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(bytes: &[u8]) -> Element {
        elements(bytes).remove(0)
    }

    fn elements(bytes: &[u8]) -> Vec<Element> {
        xml::parse_stanzas(bytes).expect("well-formed")
    }

    /// Runs XX between `a` (initiator) and `b`: both channels, open.
    fn pair(a: &Identity, b: &Identity) -> (SecureChannel, SecureChannel) {
        let (mut i, m1) = SecureChannel::initiator(a, "a@x", "b@y", [1; 32]).unwrap();
        let mut r = SecureChannel::responder(b, "a@x", "b@y", [2; 32]).unwrap();
        let Step::Reply(m2) = r.on_handshake(&element(&m1)).unwrap() else {
            panic!("the responder answers the first message");
        };
        let Step::Done {
            peer_key,
            reply: Some(m3),
        } = i.on_handshake(&element(&m2)).unwrap()
        else {
            panic!("the initiator ends with a third message");
        };
        assert_eq!(peer_key, b.public());
        let Step::Done {
            peer_key,
            reply: None,
        } = r.on_handshake(&element(&m3)).unwrap()
        else {
            panic!("the responder is done");
        };
        assert_eq!(peer_key, a.public());
        (i, r)
    }

    #[test]
    fn xx_proves_both_ed25519_identities_and_carries_stanzas_both_ways() {
        let (a, b) = (
            Identity::from_secret([1; 32]),
            Identity::from_secret([2; 32]),
        );
        let (mut i, mut r) = pair(&a, &b);
        assert!(i.is_open() && r.is_open());
        let stanza = b"<message type='chat' id='1'><body>hi</body></message>";
        let sealed = i.seal(stanza).unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("hi"), "in clear");
        let got: Vec<StreamEvent> = elements(&sealed)
            .iter()
            .flat_map(|e| r.open(e).unwrap())
            .collect();
        assert!(matches!(&got[..], [StreamEvent::Stanza(s)] if s.name == "message"));
        let back = r
            .seal(b"<message id='2'><body>yes</body></message>")
            .unwrap();
        let got: Vec<StreamEvent> = elements(&back)
            .iter()
            .flat_map(|e| i.open(e).unwrap())
            .collect();
        assert_eq!(got.len(), 1);
    }
}
