//! Why an engine refused something that came from the network, as one enum so that counters,
//! logs, tests and `nbhd stats` name the same reasons (and the compiler checks them).

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// A stanza we cannot read (a receipt without id, an activity port that is no number, ...).
    MalformedStanza,
    /// A stanza we do not handle (presence, iq, ...).
    UnsupportedStanza,
    /// An nbhd peer's chat message without an id (legacy peers may leave it out).
    ChatWithoutId,
    /// An invitation unsigned or badly signed.
    BadSignature,
    /// A courier or relayed payload not sealed to us by the peer it names: read, changed or
    /// made up by someone else (a relay, a host on the link).
    Unsealable,
    /// A relay request or relayed stanza we will not act on (unknown or legacy peer, no
    /// forwarded stanza).
    RelayRefused,
    /// A frame or stream from a key presence has not told us of.
    UnknownSender,
    /// A stream we closed with an RFC 6120 stream error.
    StreamError,
    /// A datagram on the courier or probe channel that is not a valid signed frame.
    BadFrame,
    /// What we received could not be stored: no receipt went out, the sender will retry.
    StoreFailed,
    /// A datagram on an interface we do not serve.
    ForeignInterface,
    /// A bounded table is full (members, senders, packets held out of order).
    TableFull,
    /// An activity frame that does not open with the activity's key: forged, altered, or a
    /// stranger's.
    BadTag,
    /// An activity frame whose numbering does not fit the sender's stream.
    BadNumbering,
    /// An activity frame seen before (same nonce): a replay.
    Replayed,
    /// A frame of ours that could not be built (too large): not sent.
    Unsendable,
    /// A stream accepted and not opened in time (an idle connection): closed.
    HandshakeTimeout,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::MalformedStanza => "malformed-stanza",
            DropReason::UnsupportedStanza => "unsupported-stanza",
            DropReason::ChatWithoutId => "chat-without-id",
            DropReason::BadSignature => "bad-signature",
            DropReason::Unsealable => "unsealable",
            DropReason::RelayRefused => "relay-refused",
            DropReason::UnknownSender => "unknown-sender",
            DropReason::StreamError => "stream-error",
            DropReason::BadFrame => "bad-frame",
            DropReason::StoreFailed => "store-failed",
            DropReason::ForeignInterface => "foreign-interface",
            DropReason::TableFull => "table-full",
            DropReason::BadTag => "bad-tag",
            DropReason::BadNumbering => "bad-numbering",
            DropReason::Replayed => "replayed",
            DropReason::Unsendable => "unsendable",
            DropReason::HandshakeTimeout => "handshake-timeout",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
