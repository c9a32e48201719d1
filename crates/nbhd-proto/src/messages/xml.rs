//! The XEP-0174 stream codec: bytes in, stream header / stanzas / end out, and back.
//!
//! Parsing is `rxml`'s restricted XML: no DTD (so no entity bomb can even be declared), no
//! external resources, no processing instructions, namespaces enforced; it is push-fed, so a
//! stanza may arrive in any number of TCP reads. On top of it this module owns the stream's shape
//! (a `stream:stream` root whose children are stanzas) and its limits: at most
//! [`MAX_STANZA`] bytes, [`MAX_DEPTH`] levels, [`MAX_ELEMENTS`] elements and
//! [`MAX_ATTRIBUTES`] attributes per element in a stanza. Any violation is a [`StreamError`]
//! with the RFC 6120 §4.9.3 condition to send before closing.

use std::fmt::{self, Write as _};

use rxml::{Event, Parse};

/// DESIGN.md §4.2: at most 1 MiB per stanza.
pub const MAX_STANZA: usize = 1 << 20;
/// Nesting deeper than this inside one stanza is not a message, it is an attack on the parser.
pub const MAX_DEPTH: usize = 32;
/// Elements in one stanza: a chat with XHTML-IM has a few dozen. Unbounded, a megabyte of
/// `<a/>` would be some 260,000 elements, 30 to 40 times its size in memory, from a legacy
/// peer that needs no authentication.
pub const MAX_ELEMENTS: usize = 1024;
/// Attributes on one element.
pub const MAX_ATTRIBUTES: usize = 32;
pub const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
pub const NS_CLIENT: &str = "jabber:client";

/// A parsed element: namespace, local name, attributes (namespace, name, value), children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub ns: String,
    pub name: String,
    pub attrs: Vec<(String, String, String)>,
    pub children: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub fn new(ns: &str, name: &str) -> Element {
        Element {
            ns: ns.into(),
            name: name.into(),
            ..Element::default()
        }
    }

    pub fn attr(mut self, name: &str, value: &str) -> Element {
        self.attrs.push((String::new(), name.into(), value.into()));
        self
    }

    pub fn child(mut self, c: Element) -> Element {
        self.children.push(Node::Element(c));
        self
    }

    pub fn text(mut self, t: &str) -> Element {
        self.children.push(Node::Text(t.into()));
        self
    }

    /// An unprefixed attribute's value.
    pub fn get_attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(ns, n, _)| ns.is_empty() && n == name)
            .map(|(_, _, v)| v.as_str())
    }

    /// The first child element with this namespace and name.
    pub fn get_child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find_map(|c| match c {
            Node::Element(e) if e.ns == ns && e.name == name => Some(e),
            _ => None,
        })
    }

    /// All text directly inside this element.
    pub fn text_content(&self) -> String {
        self.children
            .iter()
            .filter_map(|c| {
                if let Node::Text(t) = c {
                    Some(t.as_str())
                } else {
                    None
                }
            })
            .collect()
    }

    /// Serialises with `parent_ns` as the namespace in scope (it is declared only where it changes).
    pub fn write(&self, parent_ns: &str, out: &mut String) {
        let _ = write!(out, "<{}", self.name);
        if self.ns != parent_ns {
            let _ = write!(out, " xmlns='{}'", escape_attr(&self.ns));
        }
        for (i, (ns, n, v)) in self.attrs.iter().enumerate() {
            if ns.is_empty() {
                let _ = write!(out, " {n}='{}'", escape_attr(v));
            } else if ns == "http://www.w3.org/XML/1998/namespace" {
                let _ = write!(out, " xml:{n}='{}'", escape_attr(v));
            } else {
                // A prefix of our own for each namespaced attribute.
                let _ = write!(
                    out,
                    " xmlns:a{i}='{}' a{i}:{n}='{}'",
                    escape_attr(ns),
                    escape_attr(v)
                );
            }
        }
        // Never `<x/>`: rxml (and other push parsers) emit a self-closed element only once the
        // next byte arrives, and the last stanza before we wait for an answer would hang.
        out.push('>');
        for c in &self.children {
            match c {
                Node::Element(e) => e.write(&self.ns, out),
                Node::Text(t) => out.push_str(&escape(t)),
            }
        }
        let _ = write!(out, "</{}>", self.name);
    }

    /// The stanza as bytes on a stream whose default namespace is `jabber:client`.
    pub fn to_stanza_bytes(&self) -> Vec<u8> {
        let mut s = String::new();
        self.write(NS_CLIENT, &mut s);
        s.into_bytes()
    }
}

/// Escapes text; `\r` as a reference, since parsers turn a literal one into `\n`.
fn escape(s: &str) -> String {
    escape_with(s, false)
}

/// Escapes an attribute value; white space as references, since parsers turn literal tabs and
/// line ends in attributes into spaces (XML 1.0 §3.3.3).
fn escape_attr(s: &str) -> String {
    escape_with(s, true)
}

fn escape_with(s: &str, attr: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            '\r' => o.push_str("&#13;"),
            '\n' if attr => o.push_str("&#10;"),
            '\t' if attr => o.push_str("&#9;"),
            c => o.push(c),
        }
    }
    o
}

/// The stream header XEP-0174 peers exchange: `from`/`to` are instance names.
pub fn stream_header(from: &str, to: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}' from='{}' to='{}' version='1.0'>",
        escape_attr(from),
        escape_attr(to)
    )
    .into_bytes()
}

pub const STREAM_END: &[u8] = b"</stream:stream>";

/// A stream error to send (RFC 6120 §4.9) before closing the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// Not XML, or not namespace-well-formed.
    NotWellFormed(String),
    /// XML that restricted XML refuses: a DTD (entity declarations), a processing instruction.
    RestrictedXml(String),
    /// Over a limit: stanza size or depth.
    PolicyViolation(String),
    /// The root is not `stream:stream`.
    InvalidNamespace(String),
}

impl StreamError {
    /// The RFC 6120 defined condition element name.
    pub fn condition(&self) -> &'static str {
        match self {
            StreamError::NotWellFormed(_) => "not-well-formed",
            StreamError::RestrictedXml(_) => "restricted-xml",
            StreamError::PolicyViolation(_) => "policy-violation",
            StreamError::InvalidNamespace(_) => "invalid-namespace",
        }
    }

    /// `<stream:error>` followed by the stream's end, ready to send.
    pub fn to_bytes(&self) -> Vec<u8> {
        format!(
            "<stream:error><{} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>",
            self.condition()
        )
        .into_bytes()
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::NotWellFormed(m)
            | StreamError::RestrictedXml(m)
            | StreamError::PolicyViolation(m)
            | StreamError::InvalidNamespace(m) => write!(f, "{}: {m}", self.condition()),
        }
    }
}

impl std::error::Error for StreamError {}

/// The stanzas in `bytes` taken as a stream's content (what a courier frame, a relay's sealed
/// box or a secure channel's plaintext carries: stanzas without a header of their own).
pub fn parse_stanzas(bytes: &[u8]) -> Result<Vec<Element>, StreamError> {
    let mut p = StreamParser::new();
    p.feed(&stream_header("", ""))?;
    p.feed(bytes)?;
    Ok(std::iter::from_fn(|| p.poll_event())
        .filter_map(|ev| match ev {
            StreamEvent::Stanza(s) => Some(s),
            _ => None,
        })
        .collect())
}

/// What the stream carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The opening `stream:stream`, with its unprefixed attributes (from, to, version, ...).
    Header(Vec<(String, String)>),
    /// A whole first-level child of the stream.
    Stanza(Element),
    /// `</stream:stream>`.
    End,
}

/// Push-fed stream parser. Feed it bytes as they arrive; take events as they complete. After an
/// error it stays failed: the connection is to be closed.
pub struct StreamParser {
    parser: rxml::Parser,
    /// Elements being built: the stanza and its open descendants.
    open: Vec<Element>,
    stanza_bytes: usize,
    /// Elements begun in the stanza being read.
    stanza_elements: usize,
    in_stream: bool,
    ended: bool,
    failed: Option<StreamError>,
    events: std::collections::VecDeque<StreamEvent>,
}

impl Default for StreamParser {
    fn default() -> Self {
        StreamParser::new()
    }
}

impl StreamParser {
    pub fn new() -> StreamParser {
        StreamParser {
            parser: rxml::Parser::new(),
            open: Vec::new(),
            stanza_bytes: 0,
            stanza_elements: 0,
            in_stream: false,
            ended: false,
            failed: None,
            events: Default::default(),
        }
    }

    /// Feeds bytes; all of them are consumed (rxml buffers partial tokens).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        // Until the parser wants more bytes, not until the bytes run out: an element written as
        // an empty tag (`<x/>`) ends in an event rxml hands out on the call after the `/>`.
        while !self.ended {
            match self.parser.parse(&mut bytes, false) {
                Ok(Some(ev)) => {
                    if let Err(e) = self.on_event(ev) {
                        self.failed = Some(e.clone());
                        return Err(e);
                    }
                }
                Ok(None) => break,
                Err(rxml::error::EndOrError::NeedMoreData) => break,
                Err(rxml::error::EndOrError::Error(e)) => {
                    let err = classify(&e);
                    self.failed = Some(err.clone());
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    fn on_event(&mut self, ev: Event) -> Result<(), StreamError> {
        let len = ev.metrics().len();
        if !self.open.is_empty() {
            self.stanza_bytes += len;
            if self.stanza_bytes > MAX_STANZA {
                return Err(StreamError::PolicyViolation(format!(
                    "stanza larger than {MAX_STANZA} bytes"
                )));
            }
        }
        match ev {
            Event::XmlDeclaration(..) => {}
            Event::StartElement(_, (ns, name), attrs) => {
                let ns = ns.to_string();
                let name = name.to_string();
                if !self.in_stream {
                    if ns != NS_STREAMS || name != "stream" {
                        return Err(StreamError::InvalidNamespace(format!(
                            "root is {{{ns}}}{name}, not stream:stream"
                        )));
                    }
                    self.in_stream = true;
                    let attrs = attrs
                        .iter()
                        .filter(|((ans, _), _)| ans.is_none())
                        .map(|((_, n), v)| (n.to_string(), v.to_string()))
                        .collect();
                    self.events.push_back(StreamEvent::Header(attrs));
                    return Ok(());
                }
                if self.open.len() >= MAX_DEPTH {
                    return Err(StreamError::PolicyViolation(format!(
                        "elements nested deeper than {MAX_DEPTH}"
                    )));
                }
                if self.open.is_empty() {
                    self.stanza_bytes = len;
                    self.stanza_elements = 0;
                }
                self.stanza_elements += 1;
                if self.stanza_elements > MAX_ELEMENTS {
                    return Err(StreamError::PolicyViolation(format!(
                        "more than {MAX_ELEMENTS} elements in a stanza"
                    )));
                }
                if attrs.len() > MAX_ATTRIBUTES {
                    return Err(StreamError::PolicyViolation(format!(
                        "more than {MAX_ATTRIBUTES} attributes on an element"
                    )));
                }
                let attrs = attrs
                    .iter()
                    .map(|((ans, n), v)| (ans.as_str().to_string(), n.to_string(), v.to_string()))
                    .collect();
                self.open.push(Element {
                    ns,
                    name,
                    attrs,
                    children: Vec::new(),
                });
            }
            Event::Text(_, text) => {
                if let Some(top) = self.open.last_mut() {
                    match top.children.last_mut() {
                        Some(Node::Text(t)) => t.push_str(&text),
                        _ => top.children.push(Node::Text(text.to_string())),
                    }
                }
                // Whitespace between stanzas (keep-alives) is ignored.
            }
            Event::EndElement(_) => match self.open.pop() {
                Some(done) => match self.open.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(done)),
                    None => self.events.push_back(StreamEvent::Stanza(done)),
                },
                None => {
                    self.ended = true;
                    self.events.push_back(StreamEvent::End);
                }
            },
        }
        Ok(())
    }
}

fn classify(e: &rxml::Error) -> StreamError {
    let text = e.to_string();
    match e {
        rxml::Error::RestrictedXml(_) => StreamError::RestrictedXml(text),
        _ if text.contains("too long") || text.contains("length") => {
            StreamError::PolicyViolation(text)
        }
        _ => StreamError::NotWellFormed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> (Vec<StreamEvent>, Option<StreamError>) {
        let mut p = StreamParser::new();
        let mut out = Vec::new();
        let mut err = None;
        for c in chunks {
            if let Err(e) = p.feed(c) {
                err = Some(e);
                break;
            }
            while let Some(ev) = p.poll_event() {
                out.push(ev);
            }
        }
        (out, err)
    }

    fn sample() -> Vec<u8> {
        let mut b = stream_header("alice@lab", "bob@lab");
        let msg = Element::new(NS_CLIENT, "message")
            .attr("type", "chat")
            .attr("id", "m1")
            .attr("to", "bob@lab")
            .child(Element::new(NS_CLIENT, "body").text("hi <there> & 'you'"))
            .child(Element::new("urn:xmpp:receipts", "request"));
        b.extend(msg.to_stanza_bytes());
        b.extend_from_slice(b" \n ");
        b.extend(msg.to_stanza_bytes());
        b.extend_from_slice(STREAM_END);
        b
    }

    #[test]
    fn a_stream_parses_into_header_stanzas_and_end_however_it_is_cut() {
        let bytes = sample();
        let (whole, err) = events(&[&bytes]);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(whole.len(), 4);
        let StreamEvent::Header(h) = &whole[0] else {
            panic!("{whole:?}")
        };
        assert!(h.contains(&("from".into(), "alice@lab".into())));
        let StreamEvent::Stanza(m) = &whole[1] else {
            panic!()
        };
        assert_eq!(m.name, "message");
        assert_eq!(m.get_attr("type"), Some("chat"));
        assert_eq!(
            m.get_child(NS_CLIENT, "body").unwrap().text_content(),
            "hi <there> & 'you'"
        );
        assert!(m.get_child("urn:xmpp:receipts", "request").is_some());
        assert_eq!(whole[3], StreamEvent::End);
        // Byte by byte, and in odd chunks: the same events.
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(events(&singles).0, whole);
        let sevens: Vec<&[u8]> = bytes.chunks(7).collect();
        assert_eq!(events(&sevens).0, whole);
    }

    #[test]
    fn serialised_stanzas_parse_back_to_themselves() {
        let bytes = sample();
        let (evs, _) = events(&[&bytes]);
        let StreamEvent::Stanza(m) = &evs[1] else {
            panic!()
        };
        let mut again = stream_header("a", "b");
        again.extend(m.to_stanza_bytes());
        let (evs2, err) = events(&[&again]);
        assert!(err.is_none());
        assert_eq!(evs2[1], StreamEvent::Stanza(m.clone()));
    }

    #[test]
    fn malformed_xml_is_not_well_formed() {
        let mut b = stream_header("a", "b");
        b.extend_from_slice(b"<message><body>x</message>");
        let (_, err) = events(&[&b]);
        assert_eq!(err.unwrap().condition(), "not-well-formed");
    }

    #[test]
    fn an_entity_bomb_is_refused_before_it_can_expand() {
        let bomb = b"<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'><!ENTITY lol2 '&lol;&lol;&lol;&lol;&lol;'>]><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>&lol2;";
        let (evs, err) = events(&[bomb]);
        assert!(evs.is_empty());
        assert!(
            matches!(
                err,
                Some(StreamError::RestrictedXml(_)) | Some(StreamError::NotWellFormed(_))
            ),
            "{err:?}"
        );
    }

    #[test]
    fn an_endless_stanza_is_cut_off_at_one_mebibyte() {
        let mut p = StreamParser::new();
        p.feed(&stream_header("a", "b")).unwrap();
        p.feed(b"<message><body>").unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut fed = 0usize;
        let err = loop {
            match p.feed(&chunk) {
                Ok(()) => fed += chunk.len(),
                Err(e) => break e,
            }
            assert!(fed <= MAX_STANZA + chunk.len(), "never cut off");
        };
        assert_eq!(err.condition(), "policy-violation");
        assert!(fed <= MAX_STANZA);
        assert_eq!(
            p.feed(b"</body></message>").unwrap_err().condition(),
            "policy-violation",
            "stays failed"
        );
    }

    #[test]
    fn deep_nesting_is_a_policy_violation() {
        let mut b = stream_header("a", "b");
        for _ in 0..100 {
            b.extend_from_slice(b"<x>");
        }
        let (_, err) = events(&[&b]);
        assert_eq!(err.unwrap().condition(), "policy-violation");
    }

    #[test]
    fn a_root_that_is_not_a_stream_is_refused() {
        let (_, err) = events(&[b"<html><body/></html>"]);
        assert_eq!(err.unwrap().condition(), "invalid-namespace");
    }

    #[test]
    fn the_last_stanza_in_a_read_is_emitted_without_waiting_for_more_bytes() {
        let mut p = StreamParser::new();
        let mut b = stream_header("a", "b");
        b.extend(Element::new(NS_CLIENT, "presence").to_stanza_bytes());
        p.feed(&b).unwrap();
        assert!(matches!(p.poll_event(), Some(StreamEvent::Header(_))));
        assert!(
            matches!(p.poll_event(), Some(StreamEvent::Stanza(_))),
            "no lookahead needed"
        );
    }

    #[test]
    fn stream_errors_are_ready_to_send() {
        let e = StreamError::PolicyViolation("x".into());
        assert_eq!(
            String::from_utf8(e.to_bytes()).unwrap(),
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error></stream:stream>"
        );
    }

    /// A stanza written as an empty tag is emitted with the read that ends it (it waited for
    /// the next byte: a peer's last stanza before it waits for an answer hung).
    #[test]
    fn an_empty_tag_stanza_is_emitted_without_waiting_for_more_bytes() {
        let mut p = StreamParser::new();
        let mut b = stream_header("a", "b");
        b.extend_from_slice(b"<message xmlns='jabber:client' type='chat'/>");
        p.feed(&b).unwrap();
        assert!(matches!(p.poll_event(), Some(StreamEvent::Header(_))));
        assert!(
            matches!(p.poll_event(), Some(StreamEvent::Stanza(e)) if e.name == "message"),
            "the empty-tag stanza"
        );
    }

    #[test]
    fn stanzas_of_too_many_elements_or_attributes_are_refused() {
        let stanza = |inner: &str| {
            let mut b = stream_header("a", "b");
            b.extend_from_slice(format!("<message>{inner}</message>").as_bytes());
            b
        };
        let (evs, err) = events(&[&stanza(&"<b/>".repeat(MAX_ELEMENTS - 1))]);
        assert!(err.is_none() && evs.len() == 2, "{err:?}");
        let (_, err) = events(&[&stanza(&"<b/>".repeat(MAX_ELEMENTS))]);
        assert_eq!(err.unwrap().condition(), "policy-violation");
        let attrs = |n: usize| (0..n).map(|i| format!(" a{i}='x'")).collect::<String>();
        let (evs, err) = events(&[&stanza(&format!("<b{}/>", attrs(MAX_ATTRIBUTES)))]);
        assert!(err.is_none() && evs.len() == 2, "{err:?}");
        let (_, err) = events(&[&stanza(&format!("<b{}/>", attrs(MAX_ATTRIBUTES + 1)))]);
        assert_eq!(err.unwrap().condition(), "policy-violation");
        // The count is per stanza: many stanzas of many elements are fine.
        let mut many = stream_header("a", "b");
        for _ in 0..3 {
            many.extend_from_slice(
                format!("<message>{}</message>", "<b/>".repeat(1000)).as_bytes(),
            );
        }
        let (evs, err) = events(&[&many]);
        assert!(err.is_none() && evs.len() == 4, "{err:?}");
    }
}
