//! The control socket (`nbhd.sock` in the data dir): how the CLI talks to its daemon.
//!
//! One [`Request`] per line as JSON; one reply per line, `{"ok": true, "result": <Reply>}` or
//! `{"ok": false, "error": "...", "kind": "usage"|"not-found"|"failed"}`. `events` replies `{"ok": true}`
//! and then streams one [`Event`] per line until the client hangs up. A Unix socket (not TCP) so
//! that several daemons can run in one namespace and file permissions guard it.

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
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (requests, events) = (requests.clone(), events.clone());
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, requests, events).await {
                tracing::debug!("control connection ended: {e}");
            }
        });
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
        self.writer
            .write_all(s.as_bytes())
            .map_err(|e| DaemonError::other("control socket", e))
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
        let e: ErrorReply = serde_json::from_value(reply.clone())
            .unwrap_or_else(|_| ErrorReply::not_found(format!("the daemon refused: {reply}")));
        Err(match e.kind {
            ErrorKind::Usage => DaemonError::Usage(e.error),
            ErrorKind::NotFound => DaemonError::NotFound(e.error),
            ErrorKind::Failed => DaemonError::Other(e.error),
        })
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
