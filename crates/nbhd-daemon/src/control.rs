//! The control socket (`nbhd.sock` in the data dir): how the CLI talks to its daemon.
//!
//! One [`Request`] per line as JSON; one reply per line, `{"ok": true, "result": <Reply>}` or
//! `{"ok": false, "error": "...", "kind": "usage"|"not-found"|"failed"}`. `events` replies `{"ok": true}`
//! and then streams one [`Event`] per line until the client hangs up. A Unix socket (not TCP) so
//! that several daemons can run in one namespace, and so that the kernel tells who is calling:
//! the socket is 0600 in a 0700 dir, and besides, a caller whose uid (`SO_PEERCRED`) is neither
//! the daemon's nor root's is refused before it is read (threat model, the local user: a mode
//! loosened by hand must not hand the daemon to everyone on the machine).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::contract::{ErrorKind, ErrorReply, Event, Reply, Request};
use crate::datadir::DataDir;
use crate::error::DaemonError;

/// A request for the event loop, with where to send its answer.
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Result<Reply, ErrorReply>>,
}

/// Asks the event loop (from a connection task of the control socket or the HTTP API).
pub async fn ask(requests: &mpsc::Sender<Pending>, request: Request) -> Result<Reply, ErrorReply> {
    request.validate()?;
    let (tx, rx) = oneshot::channel();
    let gone = || ErrorReply::not_found("the daemon is shutting down");
    requests
        .send(Pending { request, reply: tx })
        .await
        .map_err(|_| gone())?;
    rx.await.map_err(|_| gone())?
}

/// Accepts control connections; each is served in its own task, asking the event loop through
/// `requests`, and following `events` for streams.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Pending>,
    events: broadcast::Sender<Event>,
) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let owner = unsafe { libc::geteuid() };
    let mut refused = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let caller = stream.peer_cred().ok();
        if let Some(why) = refusal(owner, caller.map(|c| c.uid())) {
            refused += 1;
            // The first, then one in REFUSED_LOG_EVERY: a local loop of connections cannot
            // flood the log.
            if refused % REFUSED_LOG_EVERY == 1 {
                tracing::warn!(
                    pid = caller.and_then(|c| c.pid()).unwrap_or(0),
                    refused,
                    "control connection refused: {why}"
                );
            }
            // One line saying why (the socket is non-blocking and fresh: it fits), then closed.
            let line = format!("{}\n", failure(&ErrorReply::failed(why)));
            let _ = stream.try_write(line.as_bytes());
            continue;
        }
        let (requests, events) = (requests.clone(), events.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, requests, events).await {
                tracing::debug!("control connection ended: {e}");
            }
        });
    }
}

/// Refused control connections logged: the first, then one in this many.
const REFUSED_LOG_EVERY: u64 = 1000;

/// Why a caller may not use the control socket, if it may not: only the daemon's own uid and
/// root (who can read the data dir anyway) are served; a caller the kernel did not name, never.
fn refusal(owner: libc::uid_t, caller: Option<libc::uid_t>) -> Option<String> {
    match caller {
        Some(uid) if uid == owner || uid == 0 => None,
        Some(uid) => Some(format!(
            "this daemon serves only its owner (uid {owner}); the caller is uid {uid}"
        )),
        None => Some("the caller's credentials could not be read".into()),
    }
}

async fn serve_one(
    stream: tokio::net::UnixStream,
    requests: mpsc::Sender<Pending>,
    events: broadcast::Sender<Event>,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = TokioBufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let err = ErrorReply::usage(format!("bad request: {e}"));
                write_line(&mut wr, &failure(&err)).await?;
                continue;
            }
        };
        if request == Request::Events {
            // Subscribed before the answer: a client that reads something else next (`nbhd
            // log --follow` reads the log) misses no event after it. Only followers hold
            // events: a connection waiting for a delivery does not.
            let mut events = events.subscribe();
            write_line(&mut wr, &json!({"ok": true})).await?;
            loop {
                let ev = match events.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(n)) => Event::Lagged {
                        at: crate::view::unix_ms(),
                        missed: n,
                    },
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                };
                write_line(&mut wr, &serde_json::to_value(&ev).unwrap_or(Value::Null)).await?;
            }
        }
        let reply = match ask(&requests, request).await {
            Ok(r) => json!({"ok": true, "result": r}),
            Err(e) => failure(&e),
        };
        write_line(&mut wr, &reply).await?;
    }
    Ok(())
}

fn failure(e: &ErrorReply) -> Value {
    json!({"ok": false, "error": e.error, "kind": e.kind})
}

async fn write_line(wr: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> std::io::Result<()> {
    let mut s = v.to_string();
    s.push('\n');
    wr.write_all(s.as_bytes()).await
}

/// A reply that is not `ok`, as the CLI's error: [`DaemonError::Usage`] (exit 2) or
/// [`DaemonError::NotFound`] (exit 1) or [`DaemonError::Other`].
fn refused(reply: Value) -> DaemonError {
    let e: ErrorReply = serde_json::from_value(reply.clone())
        .unwrap_or_else(|_| ErrorReply::not_found(format!("the daemon refused: {reply}")));
    match e.kind {
        ErrorKind::Usage => DaemonError::Usage(e.error),
        ErrorKind::NotFound => DaemonError::NotFound(e.error),
        ErrorKind::Failed => DaemonError::Other(e.error),
    }
}

/// The CLI's side: a blocking client.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(dir: &DataDir) -> Result<Client, DaemonError> {
        let stream = UnixStream::connect(dir.socket())
            .map_err(|_| DaemonError::NoDaemon(dir.path.clone()))?;
        let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
        let writer = stream
            .try_clone()
            .map_err(|e| DaemonError::other("control socket", e))?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn send(&mut self, req: &Request) -> Result<(), DaemonError> {
        let mut s = serde_json::to_string(req).map_err(|e| DaemonError::other("request", e))?;
        s.push('\n');
        match self.writer.write_all(s.as_bytes()) {
            Ok(()) => Ok(()),
            // A daemon that refuses this caller writes why and closes without reading: its
            // reason, still waiting to be read, says more than the broken pipe.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                match self.read() {
                    Ok(Some(reply)) => Err(refused(reply)),
                    _ => Err(DaemonError::other("control socket", e)),
                }
            }
            Err(e) => Err(DaemonError::other("control socket", e)),
        }
    }

    fn read(&mut self) -> Result<Option<Value>, DaemonError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| DaemonError::other("control socket", e))?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| DaemonError::other("control socket: bad reply", e))
    }

    /// One request, one reply: its `result` as JSON (the command's `--json` output). A refusal
    /// becomes [`DaemonError::Usage`] (exit 2) or [`DaemonError::NotFound`] (exit 1).
    pub fn call(&mut self, req: &Request) -> Result<Value, DaemonError> {
        self.send(req)?;
        let reply = self
            .read()?
            .ok_or_else(|| DaemonError::Other("the daemon closed the connection".into()))?;
        if reply.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(reply.get("result").cloned().unwrap_or(Value::Null));
        }
        Err(refused(reply))
    }

    /// Follows events, calling `each` per event until the daemon goes away or `each` says stop.
    pub fn follow(&mut self, each: impl FnMut(Event) -> bool) -> Result<(), DaemonError> {
        self.subscribe()?;
        self.each_event(each)
    }

    /// Starts following events: from here on none is missed (the daemon holds a few thousand
    /// for a reader that is busy elsewhere), so a reader may fetch a snapshot first and then
    /// read the events that came after it with [`Client::each_event`].
    pub fn subscribe(&mut self) -> Result<(), DaemonError> {
        self.send(&Request::Events)?;
        let first = self
            .read()?
            .ok_or_else(|| DaemonError::Other("the daemon closed the connection".into()))?;
        if first.get("ok").and_then(Value::as_bool) != Some(true) {
            return Err(DaemonError::Other(format!("events refused: {first}")));
        }
        Ok(())
    }

    /// The events of a [`Client::subscribe`]d connection, until the daemon goes away or `each`
    /// says stop.
    pub fn each_event(&mut self, mut each: impl FnMut(Event) -> bool) -> Result<(), DaemonError> {
        while let Some(v) = self.read()? {
            let ev: Event = serde_json::from_value(v)
                .map_err(|e| DaemonError::other("control socket: bad event", e))?;
            if !each(ev) {
                break;
            }
        }
        Ok(())
    }
}
