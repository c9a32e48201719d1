//! The stanzas nbhd speaks on a XEP-0174 stream: chat messages, XEP-0184 receipts and
//! invitations (XEP-0249 plus our `urn:nbhd:activity:0`), as [`Element`]s and back.
//!
//! An invitation is signed by its sender over canonical bytes, never over re-serialised XML
//! (DESIGN.md §4.2): a domain-separation prefix, then each field length-prefixed, so no two
//! different invitations share a signed message and whitespace or attribute order on the wire
//! change nothing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::xml::{Element, NS_CLIENT};
use crate::identity::{self, Identity, Signature};

pub const NS_RECEIPTS: &str = "urn:xmpp:receipts"; // XEP-0184
pub const NS_CONFERENCE: &str = "jabber:x:conference"; // XEP-0249
pub const NS_ACTIVITY: &str = "urn:nbhd:activity:0";
/// XEP-0022 message events: libpurple's Bonjour client marks its chat messages with
/// `<composing/>` and sends bodiless "is typing" notifications in this namespace.
pub const NS_EVENT: &str = "jabber:x:event";
pub const INVITATION_DOMAIN: &[u8] = b"nbhd invitation v0\0";

/// What an invitation names: an activity (its id, group, port and key, the key sealed to the
/// invitee), or just a name for what is not a shared activity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// Multicast group and port of the activity, when it has one.
    pub group: String,
    pub port: u16,
    /// Its key, sealed to the invitee (base64url; empty when the invitation carries none).
    pub key: String,
    /// Never advertised: the key travels only in invitations.
    pub private: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stanza {
    /// `<message type='chat'><body>`; `receipt_requested` is XEP-0184's `<request/>`. Legacy
    /// clients may leave out the id (libpurple never sets one): `None` then, and the receiver
    /// decides what that means.
    Chat {
        id: Option<String>,
        body: String,
        receipt_requested: bool,
    },
    /// A bodiless XEP-0022 event ("is typing", "stopped typing"): nothing to show or store.
    Typing,
    /// XEP-0184 `<received id='...'/>`.
    Receipt { of: String },
    /// An invitation, with its signature (base64url) if the sender signed it.
    Invitation {
        id: String,
        activity: Activity,
        reason: String,
        signature: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StanzaError {
    /// A stanza we do not handle (presence, iq, ...): ignored, not an error on the stream.
    Unsupported(String),
    Malformed(&'static str),
}

impl Stanza {
    /// The element to send, addressed from and to instance names (XEP-0174 stanzas carry them).
    pub fn to_element(&self, from: &str, to: &str) -> Element {
        let base = |id: &str, kind: &str| {
            Element::new(NS_CLIENT, "message")
                .attr("type", kind)
                .attr("id", id)
                .attr("from", from)
                .attr("to", to)
        };
        match self {
            Stanza::Chat {
                id,
                body,
                receipt_requested,
            } => {
                let mut m = Element::new(NS_CLIENT, "message")
                    .attr("type", "chat")
                    .attr("from", from)
                    .attr("to", to);
                if let Some(id) = id {
                    m = m.attr("id", id);
                }
                m = m.child(Element::new(NS_CLIENT, "body").text(body));
                if *receipt_requested {
                    m = m.child(Element::new(NS_RECEIPTS, "request"));
                }
                m
            }
            Stanza::Typing => Element::new(NS_CLIENT, "message")
                .attr("type", "chat")
                .attr("from", from)
                .attr("to", to)
                .child(Element::new(NS_EVENT, "x").child(Element::new(NS_EVENT, "composing"))),
            Stanza::Receipt { of } => base(&format!("r-{of}"), "normal")
                .child(Element::new(NS_RECEIPTS, "received").attr("id", of)),
            Stanza::Invitation {
                id,
                activity,
                reason,
                signature,
            } => {
                let mut a = Element::new(NS_ACTIVITY, "activity")
                    .attr("id", &activity.id)
                    .attr("name", &activity.name)
                    .attr("type", &activity.kind);
                if !activity.group.is_empty() {
                    a = a
                        .attr("group", &activity.group)
                        .attr("port", &activity.port.to_string());
                }
                if !activity.key.is_empty() {
                    a = a.attr("key", &activity.key);
                }
                if activity.private {
                    a = a.attr("private", "1");
                }
                if let Some(s) = signature {
                    a = a.attr("sig", s);
                }
                base(id, "normal")
                    .child(
                        Element::new(NS_CONFERENCE, "x")
                            .attr("jid", &format!("{}@activities.nbhd", activity.id))
                            .attr("reason", reason),
                    )
                    .child(a)
                    .child(Element::new(NS_RECEIPTS, "request"))
            }
        }
    }

    /// Reads a stanza we handle from an element.
    pub fn from_element(e: &Element) -> Result<Stanza, StanzaError> {
        if e.name != "message" || e.ns != NS_CLIENT {
            return Err(StanzaError::Unsupported(format!("{{{}}}{}", e.ns, e.name)));
        }
        let id = e.get_attr("id").unwrap_or("").to_string();
        if let Some(r) = e.get_child(NS_RECEIPTS, "received") {
            let of = r
                .get_attr("id")
                .ok_or(StanzaError::Malformed("receipt without id"))?;
            return Ok(Stanza::Receipt { of: of.to_string() });
        }
        if let Some(a) = e.get_child(NS_ACTIVITY, "activity") {
            if id.is_empty() {
                return Err(StanzaError::Malformed("invitation without id"));
            }
            let get = |k: &str| a.get_attr(k).unwrap_or("").to_string();
            let port = match a.get_attr("port") {
                Some(p) => p
                    .parse()
                    .map_err(|_| StanzaError::Malformed("activity port is not a number"))?,
                None => 0,
            };
            let reason = e
                .get_child(NS_CONFERENCE, "x")
                .and_then(|x| x.get_attr("reason"))
                .unwrap_or("")
                .to_string();
            return Ok(Stanza::Invitation {
                id,
                activity: Activity {
                    id: get("id"),
                    name: get("name"),
                    kind: get("type"),
                    group: get("group"),
                    port,
                    key: get("key"),
                    private: get("private") == "1",
                },
                reason,
                signature: a.get_attr("sig").map(str::to_string),
            });
        }
        // The plain `<body>` is the message; an XHTML-IM `<html>` beside it (libpurple sends
        // one) only restyles the same text, so it is not read.
        if let Some(b) = e.get_child(NS_CLIENT, "body") {
            return Ok(Stanza::Chat {
                id: Some(id).filter(|i| !i.is_empty()),
                body: b.text_content(),
                receipt_requested: e.get_child(NS_RECEIPTS, "request").is_some(),
            });
        }
        if e.get_child(NS_EVENT, "x").is_some() {
            return Ok(Stanza::Typing);
        }
        Err(StanzaError::Unsupported(
            "message without body, receipt or invitation".into(),
        ))
    }
}

/// The bytes an invitation's signature covers: who invites whom (public keys), the stanza id,
/// and every field of the activity, each length-prefixed.
pub fn invitation_signed_bytes(
    from_key: &[u8; 32],
    to_key: &[u8; 32],
    id: &str,
    a: &Activity,
    reason: &str,
) -> Vec<u8> {
    let mut b = INVITATION_DOMAIN.to_vec();
    let mut field = |f: &[u8]| {
        b.extend_from_slice(&(f.len() as u32).to_be_bytes());
        b.extend_from_slice(f);
    };
    field(from_key);
    field(to_key);
    field(id.as_bytes());
    field(a.id.as_bytes());
    field(a.name.as_bytes());
    field(a.kind.as_bytes());
    field(a.group.as_bytes());
    field(&a.port.to_be_bytes());
    field(reason.as_bytes());
    // Added with shared activities; an invitation without a key signs what the first release
    // signed, so both still verify each other's.
    if !a.key.is_empty() || a.private {
        field(a.key.as_bytes());
        field(&[u8::from(a.private)]);
    }
    b
}

/// Signs an invitation from `me` to the peer with key `to_key`.
pub fn sign_invitation(
    me: &Identity,
    to_key: &[u8; 32],
    id: &str,
    a: &Activity,
    reason: &str,
) -> String {
    let msg = invitation_signed_bytes(&me.public(), to_key, id, a, reason);
    URL_SAFE_NO_PAD.encode(me.sign(&msg).to_bytes())
}

/// Checks an invitation's signature by `from_key` to `to_key` (us).
pub fn verify_invitation(
    from_key: &[u8; 32],
    to_key: &[u8; 32],
    id: &str,
    a: &Activity,
    reason: &str,
    sig: &str,
) -> bool {
    let Ok(raw) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&raw) else {
        return false;
    };
    identity::verify_key(
        from_key,
        &invitation_signed_bytes(from_key, to_key, id, a, reason),
        &sig,
    )
}

#[cfg(test)]
mod tests {
    use super::super::xml::{stream_header, StreamEvent, StreamParser};
    use super::*;

    fn through_the_wire(s: &Stanza) -> Stanza {
        let mut p = StreamParser::new();
        let mut bytes = stream_header("alice@lab", "bob@lab");
        bytes.extend(s.to_element("alice@lab", "bob@lab").to_stanza_bytes());
        p.feed(&bytes).unwrap();
        let _ = p.poll_event();
        let Some(StreamEvent::Stanza(e)) = p.poll_event() else {
            panic!()
        };
        Stanza::from_element(&e).unwrap()
    }

    fn activity() -> Activity {
        Activity {
            id: "a1b2".into(),
            name: "Chess club".into(),
            kind: "chat".into(),
            group: "239.255.7.9".into(),
            port: 40123,
            key: "c2VhbGVk".into(),
            private: true,
        }
    }

    #[test]
    fn chat_receipt_and_invitation_round_trip() {
        for s in [
            Stanza::Chat {
                id: Some("m1".into()),
                body: "hi & <bye>".into(),
                receipt_requested: true,
            },
            Stanza::Chat {
                id: None,
                body: "no id, no receipt".into(),
                receipt_requested: false,
            },
            Stanza::Typing,
            Stanza::Receipt { of: "m1".into() },
            Stanza::Invitation {
                id: "i1".into(),
                activity: activity(),
                reason: "join us".into(),
                signature: Some("c2ln".into()),
            },
        ] {
            assert_eq!(through_the_wire(&s), s);
        }
    }

    /// What finch 2.14 (libpurple's Bonjour protocol) put on the wire in our lab, byte for byte:
    /// no id, a plain body beside an XHTML one, a `jabber:x:event` marker; then a bodiless
    /// XEP-0022 typing event as iChat sends them.
    #[test]
    fn libpurple_stanzas_parse_as_chat_without_id_and_typing() {
        let mut p = StreamParser::new();
        p.feed(b"<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\" from=\"frank@frankhost\" to=\"alice@vm\">").unwrap();
        p.feed(b"<message to='alice@vm' from='frank@frankhost' type='chat'><body>second &lt;b&gt;msg&lt;/b&gt; &amp; more</body><html xmlns='http://www.w3.org/1999/xhtml'><body><font>second &lt;b&gt;msg&lt;/b&gt; &amp; more</font></body></html><x xmlns='jabber:x:event'><composing/></x></message>").unwrap();
        p.feed(b"<message to='alice@vm' from='frank@frankhost' type='chat'><x xmlns='jabber:x:event'><composing/><id/></x></message>").unwrap();
        let mut got = Vec::new();
        while let Some(ev) = p.poll_event() {
            if let StreamEvent::Stanza(e) = ev {
                got.push(Stanza::from_element(&e).unwrap());
            }
        }
        assert_eq!(
            got,
            vec![
                Stanza::Chat {
                    id: None,
                    body: "second <b>msg</b> & more".into(),
                    receipt_requested: false,
                },
                Stanza::Typing,
            ]
        );
    }

    #[test]
    fn an_invitation_signature_binds_sender_recipient_id_and_every_field() {
        let alice = Identity::from_secret([1; 32]);
        let bob = Identity::from_secret([2; 32]).public();
        let a = activity();
        let sig = sign_invitation(&alice, &bob, "i1", &a, "join us");
        assert!(verify_invitation(
            &alice.public(),
            &bob,
            "i1",
            &a,
            "join us",
            &sig
        ));
        let carol = Identity::from_secret([3; 32]).public();
        assert!(
            !verify_invitation(&alice.public(), &carol, "i1", &a, "join us", &sig),
            "to someone else"
        );
        assert!(
            !verify_invitation(&carol, &bob, "i1", &a, "join us", &sig),
            "from someone else"
        );
        assert!(
            !verify_invitation(&alice.public(), &bob, "i2", &a, "join us", &sig),
            "another stanza"
        );
        let renamed = Activity {
            name: "Chess clubs".into(),
            ..a.clone()
        };
        for changed in [
            Activity {
                key: "c2VhbGVl".into(),
                ..a.clone()
            },
            Activity {
                private: false,
                ..a.clone()
            },
        ] {
            assert!(
                !verify_invitation(&alice.public(), &bob, "i1", &changed, "join us", &sig),
                "the sealed key and privacy are signed too"
            );
        }
        assert!(
            !verify_invitation(&alice.public(), &bob, "i1", &renamed, "join us", &sig),
            "changed field"
        );
        // Length prefixes: moving a character between fields changes the signed bytes.
        let shifted = Activity {
            id: "a1b".into(),
            name: "2Chess club".into(),
            ..a.clone()
        };
        assert!(!verify_invitation(
            &alice.public(),
            &bob,
            "i1",
            &shifted,
            "join us",
            &sig
        ));
        assert!(!verify_invitation(
            &alice.public(),
            &bob,
            "i1",
            &a,
            "join us",
            "not base64!"
        ));
    }

    #[test]
    fn what_we_do_not_handle_is_unsupported_not_fatal() {
        let iq = Element::new(NS_CLIENT, "iq").attr("type", "get");
        assert!(matches!(
            Stanza::from_element(&iq),
            Err(StanzaError::Unsupported(_))
        ));
        let bad_port = Stanza::Invitation {
            id: "i".into(),
            activity: activity(),
            reason: String::new(),
            signature: None,
        }
        .to_element("a", "b");
        let mut e = bad_port.clone();
        if let Some(super::super::xml::Node::Element(a)) = e.children.get_mut(1) {
            a.attrs.retain(|(_, n, _)| n != "port");
            a.attrs.push((String::new(), "port".into(), "lots".into()));
        }
        assert_eq!(
            Stanza::from_element(&e),
            Err(StanzaError::Malformed("activity port is not a number"))
        );
    }
}
