//! `nbhd-daemon`: the tokio driver around the `nbhd-proto` engines.
//!
//! It owns everything the Node must not touch: sockets, the clock, the OS's randomness, the
//! SQLite store, the data dir and its lock, the control socket the CLI talks to, and the local
//! HTTP API. Each module owns one of those; [`daemon`] moves bytes, time and commands between
//! them and the Node, and [`contract`] is the typed language the CLI, the control socket and
//! the HTTP API share.

pub mod api;
pub mod contract;
pub mod control;
pub mod daemon;
pub mod datadir;
pub mod error;
pub mod ifaces;
pub mod store;
pub mod streams;
pub mod udp;
pub mod view;

pub use daemon::{run, UpOptions};
pub use datadir::DataDir;
pub use error::{DaemonError, ExitCode};
