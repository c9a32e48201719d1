//! The Node's streams as tokio tasks: every TCP connection lives in tasks of its own (a reader,
//! a writer) that talk to the event loop through one channel, so nothing ever blocks the loop: a
//! connect that hangs is the Node's timeout to decide, not the kernel's two minutes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use nbhd_proto::messages::streams::{CONNECT_TIMEOUT, TCP_USER_TIMEOUT};
use nbhd_proto::node::{ConnId, Node, StreamAction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

/// The pause after a failed accept (see [`accept`]).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    task: JoinHandle<()>,
    reader: AbortHandle,
}

pub struct Streams {
    writers: HashMap<ConnId, mpsc::UnboundedSender<Vec<u8>>>,
    readers: HashMap<ConnId, AbortHandle>,
    tasks: HashMap<ConnId, JoinHandle<()>>,
    /// Streams the Node closed, finishing their last bytes (see `CLOSE_LINGER`).
    closing: Vec<JoinHandle<()>>,
    events: mpsc::UnboundedSender<NetEvent>,
}

/// How long a closed stream's writer gets to hand its last bytes to the kernel before the
/// socket is dropped whatever the peer does.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

impl Streams {
    pub fn new(events: mpsc::UnboundedSender<NetEvent>) -> Streams {
        Streams {
            writers: HashMap::new(),
            readers: HashMap::new(),
            closing: Vec::new(),
            tasks: HashMap::new(),
            events,
        }
    }

    /// Carries out what the Node asked.
    pub fn act(&mut self, a: StreamAction) {
        match a {
            StreamAction::Connect { conn, addr } => {
                tokio::spawn(connect(conn, addr, self.events.clone()));
            }
            StreamAction::Send { conn, bytes } => {
                if let Some(w) = self.writers.get(&conn) {
                    let _ = w.send(bytes);
                }
            }
            StreamAction::Close { conn } => {
                // Dropping the writer ends the writer task, which shuts the stream down; then
                // the reader goes too, or a peer that never closes its side (one refused for
                // flooding, one that never opened its stream) would keep the socket open for
                // as long as it likes. The Node has forgotten the stream; nothing more is read.
                self.writers.remove(&conn);
                let reader = self.readers.remove(&conn);
                let writer = self.tasks.remove(&conn);
                self.closing.retain(|t| !t.is_finished());
                self.closing.push(tokio::spawn(async move {
                    if let Some(w) = writer {
                        let stop = w.abort_handle();
                        if tokio::time::timeout(CLOSE_LINGER, w).await.is_err() {
                            stop.abort(); // a peer that reads nothing keeps nothing open
                        }
                    }
                    if let Some(r) = reader {
                        r.abort();
                    }
                }));
            }
        }
    }

    pub fn add_writer(&mut self, conn: ConnId, w: Writer) {
        self.writers.insert(conn, w.bytes);
        self.readers.insert(conn, w.reader);
        self.tasks.insert(conn, w.task);
    }

    pub fn forget(&mut self, conn: ConnId) {
        self.writers.remove(&conn);
        self.readers.remove(&conn);
        self.tasks.remove(&conn);
    }

    /// Shutting down: lets every writer finish what it was given (within `limit`).
    pub async fn finish(mut self, limit: Duration) {
        self.writers.clear();
        let mut tasks: Vec<_> = self.tasks.drain().map(|(_, t)| t).collect();
        tasks.append(&mut self.closing);
        let _ = tokio::time::timeout(limit, async {
            for t in tasks {
                let _ = t.await;
            }
        })
        .await;
    }
}

async fn connect(conn: ConnId, addr: SocketAddr, events: mpsc::UnboundedSender<NetEvent>) {
    // The Node counts the connect failed at CONNECT_TIMEOUT; the task ends then too.
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
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let failed = loop {
            match rd.read(&mut buf).await {
                Ok(0) => break false,
                Ok(n) => {
                    let bytes = buf[..n].to_vec();
                    if events.send(NetEvent::Data { conn, bytes }).is_err() {
                        return;
                    }
                }
                Err(_) => break true,
            }
        };
        let _ = events.send(NetEvent::Closed { conn, failed });
    });
    Writer {
        bytes: tx,
        task,
        reader: reader.abort_handle(),
    }
}

/// Accepts XEP-0174 streams; accepted connections are numbered from [`Node::ACCEPTED_BASE`].
pub async fn accept(listener: TcpListener, events: mpsc::UnboundedSender<NetEvent>) {
    let mut next = Node::ACCEPTED_BASE;
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors (EMFILE) and the like: retrying at once would spin on
                // the same error; a moment later streams closed since have freed some.
                tracing::warn!("accepting a stream: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
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
