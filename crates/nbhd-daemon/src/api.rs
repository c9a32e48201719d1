//! The local HTTP API and web view (DESIGN.md §5): 127.0.0.1:7640 by default, the next free port
//! when that one is taken, a bearer token from the data dir's 0600 `token` file.
//!
//! A deliberately small HTTP/1.1 server on loopback (moving to axum is the web view's work):
//! each route is a typed [`Request`] answered through the same channel as the control socket,
//! so both always agree; a POST's JSON body carries the request's arguments under the control
//! socket's names. Errors are `{"error": ...}` with 400, 401, 404, 408, 413 or 421.
//!
//! Every other user of the machine, and every web page a browser shows, can reach a loopback
//! port (threat model, the local user). So the head decides before anything else is done:
//! its `Host` must name this API's own address (a page whose name was rebound to 127.0.0.1,
//! DNS rebinding, sends its own name: 421), and every route but the static page needs the
//! token, compared in constant time, before a byte of body is read (a stranger cannot make us
//! hold 6 MiB). At most [`MAX_CONNECTIONS`] are served at once; the next are closed as they
//! are accepted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

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
/// Connections served at once: a person's browser and scripts use a handful; each one past
/// this is closed as it is accepted, so a local flood costs a descriptor for an instant.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections closed at the cap are logged: the first, then one in this many.
const REFUSED_LOG_EVERY: u64 = 1000;
/// After a refusal with the body unread, what the client still sends is read and thrown away
/// for this long (not kept: a fixed buffer), so that closing with unread bytes does not reset
/// the connection and destroy the answer before the client reads it (nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);

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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let token: Arc<str> = token.into();
    let mut refused = 0u64;
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused % REFUSED_LOG_EVERY == 1 {
                tracing::warn!(
                    %from,
                    refused,
                    "API connection closed: {MAX_CONNECTIONS} already open"
                );
            }
            drop(stream);
            continue;
        };
        let token = token.clone();
        let requests = requests.clone();
        tokio::spawn(async move {
            let _ = serve_one(stream, &token, requests).await;
            drop(slot);
        });
    }
}

/// A request's head as read off the connection.
struct Head {
    method: String,
    path: String,
    query: String,
    host: Option<String>,
    authorization: Option<String>,
    length: usize,
    /// What was read past the head: the body's first bytes.
    rest: Vec<u8>,
}

/// A request as routed: its head's target and its body.
struct HttpRequest {
    method: String,
    path: String,
    query: String,
    body: Vec<u8>,
}

/// Why a request could not be read: the status to answer with, and why.
type Refusal = (u16, &'static str);

/// Reads a request's head, and no more than the chunk that ends it.
async fn read_head(stream: &mut TcpStream) -> Result<Head, Refusal> {
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
    let (mut host, mut authorization, mut length) = (None, None, 0usize);
    for (k, v) in lines.filter_map(|l| l.split_once(':')) {
        let v = v.trim();
        if k.eq_ignore_ascii_case("host") {
            // Two names for one request: which one is meant? (RFC 9112 §3.2)
            if host.replace(v.to_string()).is_some() {
                return Err((400, "more than one Host header"));
            }
        } else if k.eq_ignore_ascii_case("authorization") {
            authorization.get_or_insert_with(|| v.to_string());
        } else if k.eq_ignore_ascii_case("content-length") {
            length = v.parse().map_err(|_| (400, "bad Content-Length"))?;
        }
    }
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        host,
        authorization,
        length,
        rest: buf[head_end..].to_vec(),
    })
}

/// Reads the rest of a body of `length` bytes whose first bytes are `body`.
async fn read_body(
    stream: &mut TcpStream,
    mut body: Vec<u8>,
    length: usize,
) -> Result<Vec<u8>, Refusal> {
    let mut chunk = [0u8; 8192];
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err((400, "request body shorter than its Content-Length")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(length);
    Ok(body)
}

/// True when `host` (a `Host` header) names the address the client reached: that IP literal
/// (in brackets for IPv6) or `localhost`, with that port (or none for port 80, RFC 9110
/// §7.2). A name that merely resolves to us is refused: that is how DNS rebinding lets a
/// page from elsewhere reach a loopback service as if it were its own origin.
fn host_is_ours(host: &str, local: SocketAddr) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !port.contains(']') => (name, Some(port)),
        _ => (host, None),
    };
    let port_ok = match port {
        Some(p) => p.parse::<u16>() == Ok(local.port()),
        None => local.port() == 80,
    };
    if !port_ok {
        return false;
    }
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let named: Option<IpAddr> = match name.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').and_then(|a| a.parse().ok()),
        None => name.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    };
    // A dual-stack listener sees an IPv4 client at its IPv4-mapped address.
    let reached = match local.ip() {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
        a => a,
    };
    named == Some(reached)
}

/// True when `authorization` is `Bearer <token>`. Compared in constant time: a comparison that
/// stops at the first wrong byte tells a local user, by how long the refusal took, how many
/// leading bytes of a guess were right.
fn token_matches(authorization: Option<&str>, token: &str) -> bool {
    let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
        return false;
    };
    bool::from(given.trim().as_bytes().ct_eq(token.as_bytes()))
}

async fn serve_one(
    mut stream: TcpStream,
    token: &str,
    requests: mpsc::Sender<Pending>,
) -> std::io::Result<()> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let head = match tokio::time::timeout_at(deadline, read_head(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err((code, why))) => return refuse(&mut stream, code, why).await,
        Err(_) => return error(&mut stream, 408, "request not received in time").await,
    };
    let local = stream.local_addr()?;
    match head.host.as_deref() {
        None => return refuse(&mut stream, 400, "no Host header").await,
        Some(h) if !host_is_ours(h, local) => {
            return refuse(
                &mut stream,
                421,
                "this is not the API's address: open it by the address in the data dir's api file",
            )
            .await;
        }
        Some(_) => {}
    }
    if head.method == "GET" && head.path == "/" {
        return respond(
            &mut stream,
            200,
            "text/html; charset=utf-8",
            PAGE.as_bytes(),
        )
        .await;
    }
    if !token_matches(head.authorization.as_deref(), token) {
        return refuse(
            &mut stream,
            401,
            "missing or wrong bearer token (see the data dir's token file)",
        )
        .await;
    }
    if head.length > MAX_BODY {
        return refuse(
            &mut stream,
            413,
            "request body too large (a post is at most 1 MiB)",
        )
        .await;
    }
    let body =
        match tokio::time::timeout_at(deadline, read_body(&mut stream, head.rest, head.length))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err((code, why))) => return refuse(&mut stream, code, why).await,
            Err(_) => return error(&mut stream, 408, "request not received in time").await,
        };
    let req = HttpRequest {
        method: head.method,
        path: head.path,
        query: head.query,
        body,
    };
    let request = match route(&req) {
        Ok(r) => r,
        Err((code, why)) => return error(&mut stream, code, &why).await,
    };
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

/// Answers with an error before the request was read to its end, then throws away what the
/// client still sends for [`LINGER`] at most.
async fn refuse(stream: &mut TcpStream, code: u16, why: &str) -> std::io::Result<()> {
    error(stream, code, why).await?;
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
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
        421 => "Misdirected Request",
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
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;

    use super::{decode, host_is_ours, serve, MAX_CONNECTIONS};
    use crate::contract::Reply;
    use crate::control::Pending;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";
    /// Far less than the API's 10 s to read a request: an answer within this was not waiting
    /// for the rest of the request.
    const PROMPT: Duration = Duration::from_secs(2);

    /// The real `serve` on a loopback port, and an event loop that answers every request it is
    /// asked with an empty list; how many requests reached it.
    async fn api() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<Pending>(8);
        let asked = Arc::new(AtomicUsize::new(0));
        let counted = asked.clone();
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = p.reply.send(Ok(Reply::Peers(Vec::new())));
            }
        });
        tokio::spawn(serve(listener, TOKEN.into(), tx));
        (addr, asked)
    }

    /// Sends `request` on a new connection and reads the answer to its end, within [`PROMPT`]:
    /// the status code and the whole answer.
    async fn exchange(addr: SocketAddr, request: &str) -> (u16, String) {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PROMPT, c.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("no answer within {PROMPT:?} to {request:?}"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let code = answer
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
        (code, answer)
    }

    fn get(path: &str, host: &str, token: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n")
    }

    #[tokio::test]
    async fn a_request_without_the_token_is_refused_from_its_head_before_its_body_is_read() {
        let (addr, asked) = api().await;
        // Same length as the token, one byte off: refused however close it is.
        let wrong = format!("{}0", &TOKEN[..TOKEN.len() - 1]);
        // A body announced (5 MB, under the body limit) and never sent: an API that read it
        // before the token would still be waiting when PROMPT runs out.
        for auth in [
            format!("Authorization: Bearer {wrong}\r\n"),
            "Authorization: Basic Zm9vOmJhcg==\r\n".to_string(),
            String::new(),
        ] {
            let head = format!(
                "POST /api/send HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n"
            );
            let (code, answer) = exchange(addr, &head).await;
            assert_eq!(code, 401, "{auth:?}: {answer}");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 0);

        // The right token, and its body is read and asked for.
        let body = r#"{"peer":"bob","text":"hi"}"#;
        let post = format!(
            "POST /api/send HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (code, answer) = exchange(addr, &post).await;
        assert_eq!(code, 200, "{answer}");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_host_that_does_not_name_the_api_is_misdirected_even_with_the_token() {
        let (addr, asked) = api().await;
        let port = addr.port();
        // Names a rebound DNS name would send, a wrong port, and the static page too.
        for (path, host) in [
            ("/api/peers", format!("rebind.attacker.example:{port}")),
            ("/api/peers", "rebind.attacker.example".to_string()),
            ("/api/peers", format!("127.0.0.1:{}", port.wrapping_add(1))),
            ("/api/peers", format!("127.0.0.2:{port}")),
            ("/", format!("rebind.attacker.example:{port}")),
        ] {
            let (code, answer) = exchange(addr, &get(path, &host, TOKEN)).await;
            assert_eq!(code, 421, "{path} with Host {host}: {answer}");
        }
        let no_host = format!("GET /api/peers HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        assert_eq!(exchange(addr, &no_host).await.0, 400);
        assert_eq!(asked.load(Ordering::SeqCst), 0);

        // Its own address, by number or as localhost, is served.
        for host in [
            addr.to_string(),
            format!("localhost:{port}"),
            format!("LocalHost:{port}"),
        ] {
            let (code, answer) = exchange(addr, &get("/api/peers", &host, TOKEN)).await;
            assert_eq!(
                (code, answer.ends_with("[]")),
                (200, true),
                "{host}: {answer}"
            );
        }
        let (code, page) = exchange(addr, &get("/", &addr.to_string(), "")).await;
        assert_eq!(code, 200, "the static page needs no token: {page}");
        assert_eq!(asked.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_host_names_the_reached_address_in_its_own_syntax() {
        let v4: SocketAddr = "127.0.0.1:7640".parse().unwrap();
        let v6: SocketAddr = "[::1]:7640".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7640".parse().unwrap();
        let port80: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(host_is_ours("[::1]:7640", v6));
        assert!(!host_is_ours("::1:7640", v6));
        assert!(!host_is_ours("[::2]:7640", v6));
        assert!(host_is_ours("127.0.0.1:7640", mapped));
        assert!(host_is_ours("127.0.0.1", port80));
        assert!(host_is_ours("localhost", port80));
        assert!(!host_is_ours("127.0.0.1", v4));
        assert!(!host_is_ours("127.0.0.1:7640:7640", v4));
        assert!(!host_is_ours("", v4));
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_as_they_are_accepted() {
        let (addr, _) = api().await;
        // Connections that send nothing: each holds its place until the API's read timeout.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(PROMPT, over.read(&mut buf))
            .await
            .expect("the connection past the cap was not closed");
        assert!(
            matches!(closed, Ok(0)) || closed.is_err(),
            "the connection past the cap was answered: {closed:?}"
        );

        // One leaves, and its place is anyone's again.
        drop(idle.pop());
        let served = async {
            loop {
                let mut c = TcpStream::connect(addr).await.unwrap();
                c.write_all(get("/api/peers", &addr.to_string(), TOKEN).as_bytes())
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                let _ = c.read_to_end(&mut answer).await;
                if answer.starts_with(b"HTTP/1.1 200") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(PROMPT, served)
            .await
            .expect("a place freed was not given to a new connection");
    }

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
