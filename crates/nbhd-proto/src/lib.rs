//! `nbhd-proto`: the sans-IO heart of Neighborhood.
//!
//! Wire codecs and protocol engines, and nothing that touches a socket, a clock or the OS's
//! randomness: the daemon (`nbhd-daemon`) and the simulator drive the same engines, feeding them
//! input and time, and draining what they want sent (DESIGN.md §3).
//!
//! - [`node`]: the engines composed once; the only thing a driver talks to.
//! - [`presence`]: mDNS/DNS-SD responder and querier, XEP-0174 presence, the peer table.
//! - [`messages`]: XEP-0174 streams, chat, receipts, invitations; delivery over TCP, the
//!   courier and a relay.
//! - [`paths`]: per-peer, per-direction path evidence, delivery plans, probes and observations.
//! - [`identity`]: the ed25519 identity a peer is known by.
//! - [`frame`]: the signed UDP frame of the courier, its receipts, probes and observations.
//! - [`drops`]: why something from the network was refused.
//! - [`vnet`]: the virtual network every engine test runs on (hosts, a shared medium, faults,
//!   a virtual clock, a seed), the core the simulator grows from.

pub mod activity;
pub mod drops;
pub mod frame;
pub mod identity;
pub mod messages;
pub mod node;
pub mod paths;
pub mod presence;
pub mod vnet;
