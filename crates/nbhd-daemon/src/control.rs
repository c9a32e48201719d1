//! The control socket (`nbhd.sock` in the data dir): how the CLI talks to its daemon.
//!
//! One JSON request per line, `{"cmd": "..."}`; one JSON reply per line, `{"ok": true, "result":
//! ...}` or `{"ok": false, "error": "..."}`. `events` replies `{"ok": true}` and then streams one
//! event object per line until the client hangs up. A Unix socket (not TCP) so that several
//! daemons can run in one namespace and file permissions guard it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::UnixListener;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::datadir::DataDir;
use crate::error::DaemonError;

/// A request for the event loop, with where to send its answer.
pub struct Request {
    pub cmd: String,
    pub args: Value,
    pub reply: oneshot::Sender<Result<Value, String>>,
}

/// Accepts control connections; each is served in its own task, asking the event loop through
/// `requests`, and following `events` for streams.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Value>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let requests = requests.clone();
        let events = events.subscribe();
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, requests, events).await {
                tracing::debug!("control connection ended: {e}");
            }
        });
    }
}

async fn serve_one(
    stream: tokio::net::UnixStream,
    requests: mpsc::Sender<Request>,
    mut events: broadcast::Receiver<Value>,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = TokioBufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        let req: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                write_line(
                    &mut wr,
                    &json!({"ok": false, "error": format!("bad request: {e}")}),
                )
                .await?;
                continue;
            }
        };
        let cmd = req
            .get("cmd")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if cmd == "events" {
            write_line(&mut wr, &json!({"ok": true})).await?;
            loop {
                match events.recv().await {
                    Ok(ev) => write_line(&mut wr, &ev).await?,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        write_line(&mut wr, &json!({"type": "lagged", "missed": n})).await?
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        if requests
            .send(Request {
                cmd,
                args: req,
                reply: tx,
            })
            .await
            .is_err()
        {
            return Ok(()); // shutting down
        }
        let reply = match rx.await {
            Ok(Ok(v)) => json!({"ok": true, "result": v}),
            Ok(Err(e)) => json!({"ok": false, "error": e}),
            Err(_) => return Ok(()),
        };
        write_line(&mut wr, &reply).await?;
    }
    Ok(())
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

    fn send(&mut self, req: &Value) -> Result<(), DaemonError> {
        let mut s = req.to_string();
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

    /// One request, one reply; a daemon-side error becomes [`DaemonError::NotFound`] (exit 1).
    pub fn call(&mut self, req: Value) -> Result<Value, DaemonError> {
        self.send(&req)?;
        let reply = self
            .read()?
            .ok_or_else(|| DaemonError::Other("the daemon closed the connection".into()))?;
        if reply.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(reply.get("result").cloned().unwrap_or(Value::Null))
        } else {
            let e = reply
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("unknown error");
            Err(DaemonError::NotFound(e.to_string()))
        }
    }

    /// Follows events, calling `each` per event until the daemon goes away or `each` says stop.
    pub fn follow(&mut self, mut each: impl FnMut(Value) -> bool) -> Result<(), DaemonError> {
        self.send(&json!({"cmd": "events"}))?;
        let first = self
            .read()?
            .ok_or_else(|| DaemonError::Other("the daemon closed the connection".into()))?;
        if first.get("ok").and_then(Value::as_bool) != Some(true) {
            return Err(DaemonError::Other(format!("events refused: {first}")));
        }
        while let Some(ev) = self.read()? {
            if !each(ev) {
                break;
            }
        }
        Ok(())
    }
}
