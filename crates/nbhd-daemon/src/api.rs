//! The local HTTP API and web view (DESIGN.md §5): 127.0.0.1:7640 by default, the next free port
//! when that one is taken, a bearer token from the data dir's 0600 `token` file.
//!
//! A deliberately small HTTP/1.1 server on loopback (moving to axum is the web view's work):
//! each route is a typed [`Request`] answered through the same channel as the control socket,
//! so both always agree; a POST's JSON body carries the request's arguments under the control
//! socket's names. Errors are `{"error": ...}` with 400, 401, 404, 408 or 413.

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
const MAX_HEAD: usize = 16 * 1024;
/// A post of 1 MiB as JSON: text may be escaped up to six bytes a byte (`\u0001`), with room
/// around it. The post's own limit is checked after (a usage error, 400).
const MAX_BODY: usize = crate::contract::MAX_POST * 6 + 64 * 1024;
/// How long a client has to send its whole request; the answer then takes what it takes (a
/// delivery waits for its receipt, up to its own timeout).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

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
            let _ = serve_one(stream, &token, requests).await;
        });
    }
}

/// A request as read off the connection.
struct HttpRequest {
    method: String,
    path: String,
    query: String,
    authorized: bool,
    body: Vec<u8>,
}

/// Why a request could not be read: the status to answer with, and why.
type Refusal = (u16, &'static str);

/// Reads one request: its head, then `Content-Length` bytes of body. A slow or stalled client
/// gets [`READ_TIMEOUT`] for all of it.
async fn read_request(stream: &mut TcpStream, token: &str) -> Result<HttpRequest, Refusal> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err((400, "request head too large"));
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err((400, "bad request")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut authorized = false;
    let mut length = 0usize;
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        if k.eq_ignore_ascii_case("authorization") {
            authorized |= v.trim() == format!("Bearer {token}");
        } else if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().map_err(|_| (400, "bad Content-Length"))?;
        }
    }
    if length > MAX_BODY {
        return Err((413, "request body too large (a post is at most 1 MiB)"));
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err((400, "request body shorter than its Content-Length")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    Ok(HttpRequest {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        authorized,
        body,
    })
}

async fn serve_one(
    mut stream: TcpStream,
    token: &str,
    requests: mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    let req = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream, token)).await {
        Ok(Ok(r)) => r,
        Ok(Err((code, why))) => return error(&mut stream, code, why).await,
        Err(_) => return error(&mut stream, 408, "request not received in time").await,
    };
    if req.method == "GET" && req.path == "/" {
        return respond(
            &mut stream,
            200,
            "text/html; charset=utf-8",
            PAGE.as_bytes(),
        )
        .await;
    }
    let request = match route(&req) {
        Ok(r) => r,
        Err((code, why)) => return error(&mut stream, code, &why).await,
    };
    if !req.authorized {
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
                ErrorKind::Failed => 500,
            };
            error(&mut stream, code, &e.error).await
        }
    }
}

/// The contract's request for a route (DESIGN.md §5). A POST's body is the request's
/// arguments as JSON, the same names as on the control socket.
fn route(req: &HttpRequest) -> Result<Request, (u16, String)> {
    let param = |name: &str| {
        req.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| decode(v, true))
    };
    // The body's fields, with `cmd` set: the same request a control-socket line makes.
    let body = |cmd: &str, extra: &[(&str, &str)]| -> Result<Request, (u16, String)> {
        let mut v: serde_json::Value = if req.body.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&req.body)
                .map_err(|e| (400, format!("the body is not JSON: {e}")))?
        };
        let Some(o) = v.as_object_mut() else {
            return Err((400, "the body must be a JSON object".into()));
        };
        o.insert("cmd".into(), json!(cmd));
        for (k, val) in extra {
            o.insert((*k).into(), json!(val));
        }
        serde_json::from_value(v).map_err(|e| (400, format!("bad request: {e}")))
    };
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let request = match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["api", "peers"]) => Request::Peers,
        ("GET", ["api", "stats"]) => Request::Stats,
        ("GET", ["api", "status"]) => Request::Status,
        ("GET", ["api", "doctor"]) => Request::Doctor,
        ("GET", ["api", "invitations"]) => Request::Invitations,
        ("GET", ["api", "messages"]) => Request::Messages {
            peer: param("peer"),
        },
        ("GET", ["api", "activities"]) => Request::Activities,
        ("GET", ["api", "activities", id]) => Request::Activity {
            activity: decode(id, false),
        },
        ("GET", ["api", "activities", id, "log"]) => Request::Log {
            activity: decode(id, false),
        },
        ("POST", ["api", "send"]) => body("send", &[])?,
        ("POST", ["api", "invite"]) => body("invite", &[])?,
        ("POST", ["api", "activities"]) => body("share", &[])?,
        ("POST", ["api", "activities", id, verb @ ("join" | "leave" | "posts")]) => {
            let cmd = if *verb == "posts" { "post" } else { verb };
            body(cmd, &[("activity", &decode(id, false))])?
        }
        _ => return Err((404, "no such route".into())),
    };
    Ok(request)
}

/// `%XX` escapes decoded (and, in a query, `+` as a space); a malformed escape stays as it is.
fn decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
        408 => "Request Timeout",
        413 => "Content Too Large",
        500 => "Internal Server Error",
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

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn escapes_in_paths_and_queries_are_decoded_and_bad_ones_kept() {
        assert_eq!(decode("alice%40lab%20(2)", false), "alice@lab (2)");
        assert_eq!(decode("a+b", true), "a b");
        assert_eq!(decode("a+b", false), "a+b");
        assert_eq!(decode("Zo%C3%A9", true), "Zoé");
        assert_eq!(decode("100%", true), "100%");
        assert_eq!(decode("%zz%4", true), "%zz%4");
    }
}
