//! The messages driver: TCP streams, the courier's neighborhood channel, and the replies owed to
//! `nbhd send` / `nbhd invite` callers, around the `nbhd-proto` messages engine.
//!
//! Every TCP connection lives in tasks of its own (a reader, a writer) that talk to the event
//! loop through one channel, so nothing ever blocks the loop: a connect that hangs is the
//! engine's timeout to decide, not the kernel's two minutes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nbhd_proto::messages::engine::CONNECT_TIMEOUT;
use nbhd_proto::messages::{Action, ConnId, Messages};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::mdns::MdnsSocket;

/// The neighborhood channel: a group and port of our own, not mDNS's (DESIGN.md §4.3).
pub const COURIER_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 110, 98);
pub const COURIER_PORT: u16 = 7641;
/// How long sent data may stay unacknowledged before the kernel fails the stream.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// What connection tasks report to the event loop.
pub enum NetEvent {
    Accepted {
        conn: ConnId,
        remote: SocketAddr,
        writer: Writer,
    },
    Connected {
        conn: ConnId,
        writer: Writer,
    },
    Data {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Closed {
        conn: ConnId,
        failed: bool,
    },
}

/// Where a stream's bytes go, and the task that writes them (awaited at shutdown, so a
/// stream's last words, `</stream:stream>` among them, reach the peer).
pub struct Writer {
    bytes: mpsc::UnboundedSender<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Streams {
    writers: HashMap<ConnId, mpsc::UnboundedSender<Vec<u8>>>,
    tasks: HashMap<ConnId, tokio::task::JoinHandle<()>>,
    events: mpsc::UnboundedSender<NetEvent>,
}

impl Streams {
    pub fn new(events: mpsc::UnboundedSender<NetEvent>) -> Streams {
        Streams {
            writers: HashMap::new(),
            tasks: HashMap::new(),
            events,
        }
    }

    /// Carries out what the engine asked; courier frames go out on every interface.
    pub fn act(&mut self, a: Action, courier: &MdnsSocket, vias: &[Ipv4Addr]) {
        match a {
            Action::Connect { conn, addr } => {
                let events = self.events.clone();
                tokio::spawn(connect(conn, addr, events));
            }
            Action::Send { conn, bytes } => {
                if let Some(w) = self.writers.get(&conn) {
                    let _ = w.send(bytes);
                }
            }
            Action::Close { conn } => {
                // Dropping the writer ends the writer task, which shuts the stream down.
                self.writers.remove(&conn);
            }
            // Probes go out through the event loop, which owns the probe socket.
            Action::Probe { .. } => {}
            Action::Courier { bytes } => {
                for via in vias {
                    if let Err(e) = courier.send_multicast(*via, &bytes) {
                        tracing::debug!("courier send failed: {e}");
                    }
                }
            }
        }
    }

    pub fn add_writer(&mut self, conn: ConnId, w: Writer) {
        self.writers.insert(conn, w.bytes);
        self.tasks.insert(conn, w.task);
    }

    pub fn forget(&mut self, conn: ConnId) {
        self.writers.remove(&conn);
        self.tasks.remove(&conn);
    }

    /// Shutting down: lets every writer finish what it was given (within `limit`).
    pub async fn finish(mut self, limit: Duration) {
        self.writers.clear();
        let all = join_all(self.tasks.drain().map(|(_, t)| t).collect());
        let _ = tokio::time::timeout(limit, all).await;
    }
}

async fn connect(conn: ConnId, addr: SocketAddr, events: mpsc::UnboundedSender<NetEvent>) {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let writer = run_stream(conn, stream, events.clone());
            let _ = events.send(NetEvent::Connected { conn, writer });
        }
        _ => {
            let _ = events.send(NetEvent::Closed { conn, failed: true });
        }
    }
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Spawns the reader and writer of a stream; returns where to send bytes.
fn run_stream(conn: ConnId, stream: TcpStream, events: mpsc::UnboundedSender<NetEvent>) -> Writer {
    let _ = stream.set_nodelay(true);
    // Data unacknowledged this long fails the stream (instead of ~15 minutes of retransmits).
    let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let failed = loop {
            match rd.read(&mut buf).await {
                Ok(0) => break false,
                Ok(n) => {
                    if events
                        .send(NetEvent::Data {
                            conn,
                            bytes: buf[..n].to_vec(),
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                Err(_) => break true,
            }
        };
        let _ = events.send(NetEvent::Closed { conn, failed });
    });
    Writer { bytes: tx, task }
}

/// Accepts XEP-0174 streams; accepted connections are numbered from [`Messages::ACCEPTED_BASE`].
pub async fn accept(listener: TcpListener, events: mpsc::UnboundedSender<NetEvent>) {
    let mut next = Messages::ACCEPTED_BASE;
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let conn = next;
        next += 1;
        let writer = run_stream(conn, stream, events.clone());
        if events
            .send(NetEvent::Accepted {
                conn,
                remote,
                writer,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Milliseconds for JSON, to the hundredth: a delivery on a LAN takes well under one.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

pub fn now() -> Instant {
    Instant::now()
}
