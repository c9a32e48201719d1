//! `nbhd-proto`: the sans-IO heart of Neighborhood.
//!
//! Wire codecs and protocol engines, and nothing that touches a socket, a clock or the OS's
//! randomness: the daemon (`nbhd-daemon`) and the simulator drive the same engines, feeding them
//! input and time, and draining what they want sent (DESIGN.md §3).
//!
//! - [`presence`]: mDNS/DNS-SD responder and querier, XEP-0174 presence, the peer table.
//! - [`messages`]: XEP-0174 streams (the stream codec so far).
//! - [`identity`]: the ed25519 identity a peer is known by.
//! - [`frame`]: the signed UDP frame of the courier and the path probes.
//! - [`paths`]: per-peer, per-direction path evidence and delivery decisions (in progress).

pub mod frame;
pub mod identity;
pub mod messages;
pub mod paths;
pub mod presence;
