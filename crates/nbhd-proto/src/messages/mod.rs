//! Messages: XEP-0174 link-local XMPP streams, stanzas, receipts and invitations.
//!
//! Work in progress (issue 4): so far the stream codec, [`xml`], which turns the bytes of a TCP
//! stream, however they are cut, into a stream header, whole stanzas and the stream's end, within
//! the limits of DESIGN.md §4.2; and [`stanza`], the chat, receipt and signed invitation stanzas. The engine (authentication, receipts, deduplication,
//! invitations) builds on it.

pub mod engine;
pub mod stanza;
pub mod xml;

pub use engine::{Action, ConnId, Event, Messages, PeerInfo};
