//! `nbhd-daemon`: the tokio driver around the `nbhd-proto` engines.
//!
//! It owns everything the engines must not touch: sockets, the clock, the OS's randomness, the
//! SQLite store, the data dir and its lock, the control socket the CLI talks to, and the local
//! HTTP API. Each module owns one of those; [`daemon`] wires them into one event loop.

pub mod api;
pub mod control;
pub mod daemon;
pub mod datadir;
pub mod delivery;
pub mod error;
pub mod ifaces;
pub mod mdns;
pub mod store;
pub mod view;

pub use daemon::{run, UpOptions};
pub use datadir::DataDir;
pub use error::{DaemonError, ExitCode};
