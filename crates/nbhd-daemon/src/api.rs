//! The local HTTP API and web view (DESIGN.md §5): 127.0.0.1:7640 by default, the next free port
//! when that one is taken, a bearer token from the data dir's 0600 `token` file.
//!
//! A deliberately small HTTP/1.1 server for the GET routes on loopback (moving to axum is the web
//! view's work); each route is a typed [`Request`] answered through the same channel as the
//! control socket, so both always agree. Errors are `{"error": ...}` with 400, 401 or 404.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::contract::{ErrorKind, Request};
use crate::control::{self, Pending};

pub const DEFAULT_API: &str = "127.0.0.1:7640";
/// How many ports after the default we try before giving up.
const PORT_TRIES: u16 = 20;
const MAX_REQUEST: usize = 16 * 1024;

/// Binds `explicit` exactly, or the default port or one of the next ones.
pub async fn bind(explicit: Option<SocketAddr>) -> std::io::Result<TcpListener> {
    if let Some(a) = explicit {
        return TcpListener::bind(a).await;
    }
    let base: SocketAddr = DEFAULT_API.parse().expect("constant address");
    let mut last = None;
    for i in 0..PORT_TRIES {
        match TcpListener::bind(SocketAddr::new(base.ip(), base.port() + i)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
}

pub async fn serve(listener: TcpListener, token: String, requests: mpsc::Sender<Pending>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let token = token.clone();
        let requests = requests.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(10), serve_one(stream, &token, requests))
                    .await;
        });
    }
}

async fn serve_one(
    mut stream: TcpStream,
    token: &str,
    requests: mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return error(&mut stream, 400, "bad request").await;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let authorized = lines.filter_map(|l| l.split_once(':')).any(|(k, v)| {
        k.eq_ignore_ascii_case("authorization") && v.trim() == format!("Bearer {token}")
    });
    if method != "GET" {
        return error(&mut stream, 405, "only GET").await;
    }
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if path == "/" {
        return respond(
            &mut stream,
            200,
            "text/html; charset=utf-8",
            PAGE.as_bytes(),
        )
        .await;
    }
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let request = match path {
        "/api/peers" => Request::Peers,
        "/api/stats" => Request::Stats,
        "/api/status" => Request::Status,
        "/api/doctor" => Request::Doctor,
        "/api/invitations" => Request::Invitations,
        "/api/messages" => Request::Messages {
            peer: param("peer"),
        },
        _ => return error(&mut stream, 404, "no such route").await,
    };
    if !authorized {
        return error(
            &mut stream,
            401,
            "missing or wrong bearer token (see the data dir's token file)",
        )
        .await;
    }
    match control::ask(&requests, request).await {
        Ok(reply) => {
            let body = serde_json::to_vec(&reply).unwrap_or_default();
            respond(&mut stream, 200, "application/json", &body).await
        }
        Err(e) => {
            let code = match e.kind {
                ErrorKind::Usage => 400,
                ErrorKind::NotFound => 404,
            };
            error(&mut stream, code, &e.error).await
        }
    }
}

async fn error(stream: &mut TcpStream, code: u16, message: &str) -> std::io::Result<()> {
    let body = json!({ "error": message }).to_string();
    respond(stream, code, "application/json", body.as_bytes()).await
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// The Neighborhood view: open `http://127.0.0.1:7640/#TOKEN` (the token file's content).
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Neighborhood</title>
<style>body{font:15px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}.legacy{color:#888}</style></head>
<body><h1>Neighborhood</h1><p id="me"></p><table><thead><tr><th>nick</th><th>instance</th>
<th>addresses</th><th>status</th><th>seen</th></tr></thead><tbody id="peers"></tbody></table>
<script>
const token = location.hash.slice(1);
const get = p => fetch(p, {headers: {Authorization: 'Bearer ' + token}}).then(r => r.ok ? r.json() : Promise.reject(r.status));
const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
async function tick() {
  try {
    const me = await get('/api/status');
    document.getElementById('me').textContent = 'You are ' + me.instance + ' (' + me.id.slice(0, 12) + '…)';
    const peers = await get('/api/peers');
    document.getElementById('peers').innerHTML = peers.map(p =>
      `<tr class="${p.legacy ? 'legacy' : ''}"><td>${esc(p.nick)}</td><td>${esc(p.instance)}</td>` +
      `<td>${esc(p.addrs.join(', '))}</td><td>${esc(p.status)}</td><td>${Math.round(p.last_seen_ms/1000)} s ago</td></tr>`).join('');
  } catch (e) {
    document.getElementById('me').textContent = e === 401 ? 'Open this page as /#TOKEN (the token file in the data dir).' : 'The daemon is not answering.';
  }
}
tick(); setInterval(tick, 2000);
</script></body></html>
"#;
