//! `nbhd up`: the event loop. It feeds the presence and messages engines datagrams, stream bytes
//! and time, carries out what they ask, serves the control socket and the HTTP API, follows
//! interface changes, and on SIGINT/SIGTERM sends goodbyes and exits 0.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use nbhd_proto::identity::Identity;
use nbhd_proto::messages::stanza::Activity;
use nbhd_proto::messages::{self, Messages, PeerInfo};
use nbhd_proto::paths::Diagnosis;
use nbhd_proto::presence::{self, Destination, Event, IfaceId, Presence};
use serde_json::{json, Value};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::control::{self, Request};
use crate::datadir::DataDir;
use crate::delivery::{self, NetEvent, Streams};
use crate::error::DaemonError;
use crate::ifaces::{self, Iface};
use crate::mdns::{self, MdnsSocket};
use crate::store::{Store, StoredMessage};
use crate::{api, view};

/// How often interfaces are listed again to notice new, gone or renumbered ones.
const IFACE_POLL: Duration = Duration::from_secs(5);
/// Log the first few dropped packets of each kind, then one in this many, so a flood of garbage
/// cannot flood the log.
const DROP_LOG_EVERY: u64 = 100;
/// At shutdown, how long streams may take to write their last bytes (`</stream:stream>`).
const SHUTDOWN_WRITES: Duration = Duration::from_secs(1);

pub struct UpOptions {
    pub data_dir: DataDir,
    pub nick: String,
    pub ifaces: Vec<String>,
    pub api: Option<SocketAddr>,
    pub hostname: Option<String>,
    pub record_ttl: Option<u32>,
    pub status: String,
    pub msg: String,
}

/// Driver-side counters, beside the engine's.
#[derive(Default)]
struct DriverStats {
    truncated_in: u64,
    send_errors: u64,
    unknown_iface: u64,
}

/// A control request waiting for its delivery to end.
type Waiting = oneshot::Sender<Result<Value, String>>;

struct Daemon {
    presence: Presence,
    socket: MdnsSocket,
    messages: Messages,
    courier: MdnsSocket,
    streams: Streams,
    waiting: HashMap<String, Waiting>,
    /// Last published path state per peer, for `path-changed` events.
    path_states: HashMap<String, nbhd_proto::paths::PathState>,
    /// Unicast UDP for path probes, its port announced in TXT `probe`.
    probe_sock: tokio::net::UdpSocket,
    store: Store,
    ifaces: BTreeMap<u32, Iface>,
    wanted_ifaces: Vec<String>,
    identity: Identity,
    nick: String,
    events: broadcast::Sender<Value>,
    stats: DriverStats,
    api_url: String,
    started: Instant,
}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(opts: UpOptions) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::other("starting the runtime", e))?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: UpOptions) -> Result<(), DaemonError> {
    let dir = opts.data_dir.clone();
    dir.ensure_writable()?;
    let _lock = dir.lock()?;
    let found = ifaces::select(&opts.ifaces)?;
    if opts.nick.trim().is_empty() {
        return Err(DaemonError::Usage("--nick must not be empty".into()));
    }
    let store = Store::open(&dir.store())?;
    let identity = Identity::from_secret(store.identity_secret()?);

    // XEP-0174 stream listener (`port.p2pj`): bound now so the port we advertise is ours; the
    // messaging engine serves it.
    let p2pj = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| DaemonError::other("binding the XEP-0174 listener", e))?;
    // Path probes (DESIGN.md §4.3): unicast UDP on a port of our own, announced in TXT.
    let probe_sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| DaemonError::other("binding the probe socket", e))?;
    let probe_port = probe_sock
        .local_addr()
        .map_err(|e| DaemonError::other("probe socket", e))?
        .port();
    let port = p2pj
        .local_addr()
        .map_err(|e| DaemonError::other("XEP-0174 listener", e))?
        .port();

    let socket = MdnsSocket::open()
        .map_err(|e| DaemonError::other("opening the mDNS socket on port 5353", e))?;

    let sock_path = dir.socket();
    let _ = std::fs::remove_file(&sock_path); // a stale one; the lock proves nobody serves it
    let control = UnixListener::bind(&sock_path)
        .map_err(|e| DaemonError::DataDirUnwritable(dir.path.clone(), e))?;
    let api_listener = api::bind(opts.api).await.map_err(|e| {
        DaemonError::Usage(format!(
            "cannot listen for the API on {}: {e}; choose another with --api",
            opts.api
                .map_or(api::DEFAULT_API.to_string(), |a| a.to_string())
        ))
    })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| DaemonError::other("API listener", e))?;
    let token = load_or_create_token(&dir)?;
    let api_url = format!("http://{api_addr}/");
    dir.write_file(&dir.api_file(), format!("{api_url}\n").as_bytes(), 0o644)
        .map_err(|e| DaemonError::DataDirUnwritable(dir.path.clone(), e))?;

    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let host = host.split('.').next().unwrap_or("host").to_string();
    let nick: String = opts.nick.chars().take(40).collect();
    let instance: String = format!("{nick}@{host}").chars().take(63).collect();
    let hostname = opts
        .hostname
        .clone()
        .unwrap_or_else(|| identity.hostname_label());
    let hostname = hostname.trim_end_matches(".local").to_string();
    let config = presence::Config {
        instance,
        hostname,
        port,
        txt: {
            let mut txt =
                presence::xep0174_txt(port, &nick, &opts.status, &opts.msg, &identity.peer_id());
            txt.push(("probe".into(), probe_port.to_string()));
            txt
        },
        host_ttl: opts.record_ttl.unwrap_or(presence::DEFAULT_HOST_TTL),
        other_ttl: opts.record_ttl.unwrap_or(presence::DEFAULT_OTHER_TTL),
        reannounce: true,
        seed: u64::from_le_bytes(identity.public()[..8].try_into().unwrap_or([0; 8]))
            ^ view::unix_ms(),
    };
    let started = Instant::now();
    let seed = config.seed;
    let presence = Presence::new(config, started);
    let courier = MdnsSocket::open_group(delivery::COURIER_GROUP, delivery::COURIER_PORT)
        .map_err(|e| DaemonError::other("opening the courier socket", e))?;
    let mut messages = Messages::new(
        Identity::from_secret(identity.secret()),
        presence.instance(),
        seed,
    );
    // Receivers deduplicate across restarts too (DESIGN.md §4.2).
    for (sender, id) in store.seen_ids()? {
        messages.mark_seen(&sender, &id);
    }
    let (net_tx, mut net_rx) = mpsc::unbounded_channel::<NetEvent>();
    let (events_tx, _) = broadcast::channel(1024);
    let mut d = Daemon {
        presence,
        socket,
        messages,
        courier,
        streams: Streams::new(net_tx.clone()),
        waiting: HashMap::new(),
        path_states: HashMap::new(),
        probe_sock: {
            let _ = probe_sock.set_nonblocking(true);
            tokio::net::UdpSocket::from_std(probe_sock)
                .map_err(|e| DaemonError::other("probe socket", e))?
        },
        store,
        ifaces: BTreeMap::new(),
        wanted_ifaces: opts.ifaces.clone(),
        identity,
        nick: nick.clone(),
        events: events_tx.clone(),
        stats: DriverStats::default(),
        api_url: api_url.clone(),
        started,
    };
    d.apply_ifaces(found);
    tracing::info!(
        instance = d.presence.instance(),
        id = %d.identity.peer_id(),
        hostname = %format!("{}.local", d.presence.hostname()),
        p2pj = port,
        api = %api_url,
        data_dir = %dir.path.display(),
        "nbhd is up"
    );
    if d.ifaces.is_empty() {
        tracing::warn!("no interface with an IPv4 address yet; waiting for one");
    }

    let (req_tx, mut req_rx) = mpsc::channel::<Request>(64);
    tokio::spawn(control::serve(control, req_tx.clone(), events_tx.clone()));
    tokio::spawn(api::serve(api_listener, token, req_tx));
    let _ = p2pj.set_nonblocking(true);
    let listener = tokio::net::TcpListener::from_std(p2pj)
        .map_err(|e| DaemonError::other("XEP-0174 listener", e))?;
    tokio::spawn(delivery::accept(listener, net_tx));
    let mut pbuf = vec![0u8; 2048];

    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::other("signal handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::other("signal handler", e))?;
    let mut buf = mdns::new_buffer();
    let mut cbuf = mdns::new_buffer();
    let mut iface_poll = tokio::time::interval(IFACE_POLL);
    iface_poll.tick().await;

    loop {
        d.flush();
        let timeout = [d.presence.poll_timeout(), d.messages.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(tokio::time::Instant::from_std);
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = d.socket.recv(&mut buf) => match r {
                Ok(rx) => d.on_datagram(&buf[..rx.len], rx),
                Err(e) => tracing::warn!("mDNS receive failed: {e}"),
            },
            r = d.courier.recv(&mut cbuf) => match r {
                Ok(rx) if !rx.truncated => {
                    if let Err(e) = d.messages.handle_courier(Instant::now(), &cbuf[..rx.len]) {
                        tracing::debug!(src = %rx.src, "dropped courier frame: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("courier receive failed: {e}"),
            },
            Some(ev) = net_rx.recv() => d.on_net(ev),
            r = d.probe_sock.recv_from(&mut pbuf) => if let Ok((n, src)) = r {
                if let Err(e) = d.messages.handle_probe(Instant::now(), src, &pbuf[..n]) {
                    tracing::debug!(%src, "dropped probe: {e}");
                }
            },
            _ = sleep => {
                let now = Instant::now();
                d.presence.handle_timeout(now);
                d.messages.handle_timeout(now);
            }
            Some(req) = req_rx.recv() => d.on_request_async(req),
            _ = iface_poll.tick() => match ifaces::select(&d.wanted_ifaces) {
                Ok(found) => d.apply_ifaces(found),
                Err(e) => tracing::warn!("listing interfaces: {e}"),
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down: sending goodbyes and ending streams");
    let now = Instant::now();
    d.presence.close(now);
    d.messages.close(now);
    d.flush();
    // Peers answer our `</stream:stream>` with theirs (RFC 6120 §4.4); give them a moment.
    let patience = tokio::time::sleep(SHUTDOWN_WRITES);
    tokio::pin!(patience);
    while d.messages.has_streams() {
        let wake = d
            .messages
            .poll_timeout()
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            Some(ev) = net_rx.recv() => d.on_net(ev),
            _ = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                d.messages.handle_timeout(Instant::now());
            }
            _ = &mut patience => break,
        }
        d.flush();
    }
    d.streams.finish(SHUTDOWN_WRITES).await;
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(dir.api_file());
    Ok(())
}

fn load_or_create_token(dir: &DataDir) -> Result<String, DaemonError> {
    if let Ok(t) = std::fs::read_to_string(dir.token_file()) {
        let t = t.trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let mut raw = [0u8; 24];
    getrandom::getrandom(&mut raw).map_err(|e| DaemonError::other("OS randomness", e))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    dir.write_file(&dir.token_file(), format!("{token}\n").as_bytes(), 0o600)
        .map_err(|e| DaemonError::DataDirUnwritable(dir.path.clone(), e))?;
    Ok(token)
}

impl Daemon {
    fn apply_ifaces(&mut self, found: Vec<Iface>) {
        let now = Instant::now();
        let had_ifaces = !self.ifaces.is_empty();
        let mut changed = false;
        let found: BTreeMap<u32, Iface> = found
            .into_iter()
            .filter(|i| !i.addrs.is_empty())
            .map(|i| (i.index, i))
            .collect();
        let gone: Vec<u32> = self
            .ifaces
            .keys()
            .filter(|k| !found.contains_key(k))
            .copied()
            .collect();
        for idx in gone {
            tracing::info!(iface = %self.ifaces[&idx].name, "interface gone");
            self.presence.remove_interface(IfaceId(idx));
            self.socket.leave(idx);
            self.courier.leave(idx);
            self.ifaces.remove(&idx);
            changed = true;
        }
        for (idx, i) in found {
            if self.ifaces.get(&idx) == Some(&i) {
                continue;
            }
            changed = true;
            if let Err(e) = self.socket.join(idx) {
                tracing::warn!(iface = %i.name, "cannot join the mDNS group: {e}");
                continue;
            }
            if let Err(e) = self.courier.join(idx) {
                tracing::warn!(iface = %i.name, "cannot join the courier group: {e}");
            }
            tracing::info!(iface = %i.name, addrs = ?i.addrs, "serving interface");
            self.presence
                .set_interface(now, IfaceId(idx), i.addrs.clone());
            self.ifaces.insert(idx, i);
        }
        if changed && had_ifaces {
            // A network change clears what we knew of paths (DESIGN.md §4.3).
            tracing::info!("network changed: forgetting path evidence");
            self.messages.paths.network_changed();
        }
    }

    fn on_datagram(&mut self, bytes: &[u8], rx: mdns::Received) {
        if rx.truncated {
            self.stats.truncated_in += 1;
            self.log_drop("oversized", rx.src, "datagram larger than 9216 bytes");
            return;
        }
        if !self.ifaces.contains_key(&rx.ifindex) {
            self.stats.unknown_iface += 1;
            return; // a datagram on an interface we do not serve
        }
        let now = Instant::now();
        match self
            .presence
            .handle_packet(now, IfaceId(rx.ifindex), rx.src, bytes)
        {
            Err(e) => self.log_drop(e.kind(), rx.src, &e.to_string()),
            Ok(()) => {
                // Multicast from this peer reaches us: evidence for its paths.
                if let Some(p) = self
                    .presence
                    .peers()
                    .find(|p| p.addrs.contains(&rx.src.ip()))
                {
                    let id = p.id.clone();
                    self.messages.paths.on_multicast_heard(now, &id);
                }
            }
        }
    }

    fn log_drop(&self, kind: &str, src: SocketAddr, why: &str) {
        let engine = self
            .presence
            .stats()
            .dropped
            .get(kind)
            .copied()
            .unwrap_or(0);
        let count = if kind == "oversized" {
            engine + self.stats.truncated_in
        } else {
            engine
        };
        if count <= 10 || count.is_multiple_of(DROP_LOG_EVERY) {
            tracing::warn!(%src, kind, count, "dropped mDNS packet: {why}");
        }
    }

    /// Sends what the engine queued and publishes its events.
    fn flush(&mut self) {
        while let Some(t) = self.presence.poll_transmit() {
            let r = match t.destination {
                Destination::Multicast => {
                    match self.ifaces.get(&t.iface.0).and_then(|i| i.addrs.first()) {
                        Some(via) => self.socket.send_multicast(*via, &t.payload),
                        None => continue,
                    }
                }
                Destination::Unicast(dst) => self.socket.send_unicast(dst, &t.payload),
            };
            if let Err(e) = r {
                self.stats.send_errors += 1;
                tracing::debug!("mDNS send failed: {e}");
            }
        }
        let now = Instant::now();
        while let Some(e) = self.presence.poll_event() {
            match &e {
                Event::PeerUp(p) => {
                    tracing::info!(peer = %p.instance, id = %p.id, addrs = ?p.addrs, legacy = p.legacy, "peer up")
                }
                Event::PeerDown(p) => tracing::info!(peer = %p.instance, "peer down"),
                Event::PeerChanged(p) => tracing::info!(peer = %p.instance, "peer changed"),
                Event::Renamed { instance, hostname } => {
                    tracing::warn!(%instance, %hostname, "name conflict: renamed")
                }
                Event::Announced { iface, instance } => {
                    tracing::info!(%instance, iface = iface.0, "announced");
                }
            }
            match &e {
                Event::PeerUp(p) | Event::PeerChanged(p) => self.sync_peer(p),
                Event::PeerDown(p) => self.messages.remove_peer(&p.id),
                _ => {}
            }
            if let Some(v) = view::event(&e, now) {
                let _ = self.events.send(v);
            }
        }
        let vias: Vec<Ipv4Addr> = self
            .ifaces
            .values()
            .filter_map(|i| i.addrs.first().copied())
            .collect();
        while let Some(a) = self.messages.poll_action() {
            match a {
                messages::Action::Probe { addr, bytes } => self.send_probe(addr, &bytes),
                other => self.streams.act(other, &self.courier, &vias),
            }
        }
        while let Some(e) = self.messages.poll_event() {
            self.on_message_event(e);
        }
        self.publish_path_changes();
    }

    /// `path-changed` events: a peer's path state moved (DESIGN.md §6).
    fn publish_path_changes(&mut self) {
        let now = Instant::now();
        let peers: Vec<(String, String, bool)> = self
            .presence
            .peers()
            .map(|p| (p.id.clone(), p.nick.clone(), p.legacy))
            .collect();
        for (id, nick, legacy) in peers {
            let d = self.diagnose(now, &id, &nick, legacy);
            let state = d.state;
            let before = self.path_states.get(&id).copied();
            if before == Some(state) {
                continue;
            }
            if before.is_none() && state == nbhd_proto::paths::PathState::Unknown {
                self.path_states.insert(id, state); // a new peer: nothing has changed yet
                continue;
            }
            self.path_states.insert(id.clone(), state);
            tracing::info!(peer = %nick, state = state.as_str(), path = d.path.as_str(), "path changed");
            let _ = self.events.send(json!({
                "type": "path-changed", "at": view::unix_ms(), "peer": id, "nick": nick,
                "state": state.as_str(), "path": d.path.as_str(), "diagnosis": d.text,
            }));
        }
    }

    fn send_probe(&mut self, addr: SocketAddr, bytes: &[u8]) {
        let Err(e) = self.probe_sock.try_send_to(bytes, addr) else {
            return;
        };
        tracing::debug!(%addr, "probe send failed: {e}");
        if matches!(
            e.raw_os_error(),
            Some(libc::EPERM) | Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)
        ) {
            // A local refusal is evidence too (DESIGN.md §4.3).
            if let Some(p) = self.presence.peers().find(|p| p.addrs.contains(&addr.ip())) {
                let id = p.id.clone();
                self.messages.paths.on_local_send_error(Instant::now(), &id);
            }
        }
    }

    /// Hands a peer presence found to the messages engine: nbhd peers with their key, legacy
    /// XEP-0174 peers as such (reached over plain streams only).
    fn sync_peer(&mut self, p: &presence::Peer) {
        let Some(ip) = p.addrs.first() else { return };
        let key = p
            .key
            .as_deref()
            .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
            .and_then(|k| <[u8; 32]>::try_from(k).ok());
        if key.is_none() && !p.legacy {
            return; // announces nbhd=1 but no usable key: nothing we could verify
        }
        self.messages.set_peer(PeerInfo {
            id: p.id.clone(),
            key: key.unwrap_or([0; 32]),
            instance: p.instance.clone(),
            probe_addr: p
                .txt
                .iter()
                .find(|(k, _)| k == "probe")
                .and_then(|(_, v)| v.parse::<u16>().ok())
                .map(|port| SocketAddr::new(*ip, port)),
            addr: SocketAddr::new(*ip, p.port),
            legacy: p.legacy,
        });
    }

    fn diagnose(&self, now: Instant, id: &str, nick: &str, legacy: bool) -> Diagnosis {
        if legacy {
            self.messages.paths.diagnose_legacy(now, id, nick)
        } else {
            self.messages.paths.diagnose(now, id, nick)
        }
    }

    fn nick_of(&self, id: &str) -> String {
        self.presence
            .peers()
            .find(|p| p.id == id)
            .map(|p| p.nick.clone())
            .unwrap_or_default()
    }

    fn on_message_event(&mut self, e: messages::Event) {
        let at = view::unix_ms();
        match e {
            messages::Event::Delivered {
                id,
                peer,
                via,
                latency,
                receipt,
            } => {
                tracing::info!(%id, %peer, via = via.as_str(), latency_ms = delivery::ms(latency), receipt, "delivered");
                if let Err(e) =
                    self.store
                        .set_message_via(&self.identity.peer_id(), &id, via.as_str())
                {
                    tracing::error!("storing a delivery: {e}");
                }
                if let Some(w) = self.waiting.remove(&id) {
                    let _ = w.send(Ok(json!({"id": id, "delivered": true, "via": via.as_str(), "latency_ms": delivery::ms(latency), "receipt": receipt})));
                }
            }
            messages::Event::Failed { id, peer } => {
                tracing::warn!(%id, %peer, "not delivered before the timeout");
                if let Some(w) = self.waiting.remove(&id) {
                    let _ = w.send(Ok(
                        json!({"id": id, "delivered": false, "via": null, "latency_ms": null, "receipt": false}),
                    ));
                }
            }
            messages::Event::Message {
                from,
                id,
                body,
                via,
            } => {
                if let Err(e) = self.store.add_seen(&from, &id) {
                    tracing::error!("storing a seen message id: {e}");
                }
                tracing::info!(%from, %id, via = via.as_str(), "message");
                let nick = self.nick_of(&from);
                let row = StoredMessage {
                    id: id.clone(),
                    from: from.clone(),
                    to: self.identity.peer_id(),
                    from_nick: nick.clone(),
                    to_nick: self.nick.clone(),
                    text: body.clone(),
                    via: Some(via.as_str().to_string()),
                    at_ms: at,
                };
                if let Err(e) = self.store.add_message(&row) {
                    tracing::error!("storing a message: {e}");
                }
                let _ = self.events.send(json!({"type": "message", "at": at, "from": from, "from_nick": nick, "id": id, "text": body, "via": via.as_str()}));
            }
            messages::Event::Invitation {
                from,
                id,
                activity,
                reason,
                via,
                relayed_by,
            } => {
                tracing::info!(%from, %id, activity = %activity.name, via = via.as_str(), relayed_by = ?relayed_by, "invitation");
                let nick = self.nick_of(&from);
                let row = json!({
                    "id": id, "from": from, "from_nick": nick,
                    "activity": {"id": activity.id, "name": activity.name, "type": activity.kind},
                    "reason": reason, "via": via.as_str(), "relayed_by": relayed_by, "received_at": at,
                });
                if let Err(e) = self.store.add_invitation(&from, &id, &row) {
                    tracing::error!("storing an invitation: {e}");
                }
                let mut ev = row.clone();
                ev["type"] = json!("invitation");
                ev["at"] = json!(at);
                let _ = self.events.send(ev);
            }
            messages::Event::Dropped {
                from,
                reason,
                detail,
            } => {
                let count = self
                    .messages
                    .stats()
                    .dropped
                    .get(reason)
                    .copied()
                    .unwrap_or(0);
                if count <= 10 || count.is_multiple_of(DROP_LOG_EVERY) {
                    tracing::warn!(%from, reason, count, "dropped: {detail}");
                }
            }
        }
    }

    fn on_net(&mut self, ev: NetEvent) {
        let now = Instant::now();
        match ev {
            NetEvent::Accepted {
                conn,
                remote,
                writer,
            } => {
                self.streams.add_writer(conn, writer);
                self.messages.handle_accepted(now, conn, remote);
            }
            NetEvent::Connected { conn, writer } => {
                self.streams.add_writer(conn, writer);
                self.messages.handle_connected(now, conn);
            }
            NetEvent::Data { conn, bytes } => self.messages.handle_data(now, conn, &bytes),
            NetEvent::Closed { conn, failed } => {
                self.streams.forget(conn);
                self.messages.handle_closed(now, conn, failed);
            }
        }
    }

    /// PEER as DESIGN.md §6 has it: a nick, an instance name or a prefix of a peer id.
    fn resolve_peer(&self, q: &str) -> Result<String, String> {
        let peers: Vec<&presence::Peer> = self.presence.peers().collect();
        let exact: Vec<&&presence::Peer> = peers
            .iter()
            .filter(|p| p.id == q || p.instance == q || p.nick == q)
            .collect();
        let pick = if exact.is_empty() {
            peers.iter().filter(|p| p.id.starts_with(q)).collect()
        } else {
            exact
        };
        match pick.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(format!("no peer matches {q:?} (see nbhd peers)")),
            many => Err(format!(
                "{q:?} is ambiguous: {}",
                many.iter()
                    .map(|p| format!("{} ({})", p.instance, &p.id[..p.id.len().min(12)]))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Requests whose answer waits for a delivery keep their reply channel; others answer now.
    fn on_request_async(&mut self, req: Request) {
        let now = Instant::now();
        let timeout = Duration::from_secs_f64(
            req.args
                .get("timeout")
                .and_then(Value::as_f64)
                .unwrap_or(10.0)
                .clamp(0.1, 3600.0),
        );
        let peer = req.args.get("peer").and_then(Value::as_str).unwrap_or("");
        let started = match req.cmd.as_str() {
            "send" => Some(self.resolve_peer(peer).and_then(|p| {
                let text = req.args.get("text").and_then(Value::as_str).unwrap_or("");
                let id = self
                    .messages
                    .send(now, &p, text, timeout)
                    .ok_or_else(|| format!("{peer} cannot be messaged"))?;
                let row = StoredMessage {
                    id: id.clone(),
                    from: self.identity.peer_id(),
                    to: p.clone(),
                    from_nick: self.nick.clone(),
                    to_nick: self.nick_of(&p),
                    text: text.to_string(),
                    via: None,
                    at_ms: view::unix_ms(),
                };
                if let Err(e) = self.store.add_message(&row) {
                    tracing::error!("storing a message: {e}");
                }
                Ok(id)
            })),
            "invite" => Some(self.resolve_peer(peer).and_then(|p| {
                let name = req
                    .args
                    .get("activity")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let activity = Activity {
                    id: name.clone(),
                    name,
                    kind: "activity".into(),
                    ..Activity::default()
                };
                self.messages
                    .invite(now, &p, activity, "", timeout)
                    .ok_or_else(|| format!("{peer} cannot be invited"))
            })),
            _ => None,
        };
        match started {
            Some(Ok(id)) => {
                self.waiting.insert(id, req.reply);
            }
            Some(Err(e)) => {
                let _ = req.reply.send(Err(e));
            }
            None => {
                let reply = self.on_request(&req.cmd, &req.args);
                let _ = req.reply.send(reply);
            }
        }
    }

    fn on_request(&mut self, cmd: &str, args: &Value) -> Result<Value, String> {
        let now = Instant::now();
        match cmd {
            "peers" => Ok(Value::Array(
                self.presence.peers().map(|p| view::peer(p, now)).collect(),
            )),
            "status" => Ok(json!({
                "id": self.identity.peer_id(),
                "instance": self.presence.instance(),
                "hostname": format!("{}.local", self.presence.hostname()),
                "announced": self.presence.is_announced(),
                "interfaces": self.ifaces.values().map(|i| json!({
                    "name": i.name,
                    "addrs": i.addrs.iter().map(|a| IpAddr::V4(*a).to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "api": self.api_url,
                "uptime_ms": now.duration_since(self.started).as_millis() as u64,
            })),
            "stats" => {
                let s = self.presence.stats();
                let mut dropped: BTreeMap<String, u64> =
                    s.dropped.iter().map(|(k, v)| (k.to_string(), *v)).collect();
                *dropped.entry("oversized".into()).or_default() += self.stats.truncated_in;
                Ok(json!({
                    "mdns": {
                        "packets_in": s.packets_in,
                        "bytes_in": s.bytes_in,
                        "packets_out": s.packets_out,
                        "bytes_out": s.bytes_out,
                        "queries_in": s.queries_in,
                        "responses_in": s.responses_in,
                        "own_echoes": s.own_echoes,
                        "conflicts": s.conflicts,
                        "dropped": dropped,
                        "dropped_total": dropped.values().sum::<u64>(),
                        "send_errors": self.stats.send_errors,
                        "foreign_interface": self.stats.unknown_iface,
                    },
                    "messages": {
                        "dropped": self.messages.stats().dropped,
                        "dropped_total": self.messages.stats().dropped.values().sum::<u64>(),
                    },
                    "peers": self.presence.peers().count(),
                }))
            }
            "invitations" => self.store.invitations().map(Value::Array).map_err(|e| e.to_string()),
            "messages" => {
                let peer = match args.get("peer").and_then(Value::as_str) {
                    None => None,
                    // A peer that is gone still has its messages: its id or nick as stored.
                    Some(q) => Some(self.resolve_peer(q).or_else(|e| {
                        self.store
                            .messages(None)
                            .ok()
                            .into_iter()
                            .flatten()
                            .find_map(|m| {
                                if m.from == q || m.from_nick == q {
                                    Some(m.from)
                                } else if m.to == q || m.to_nick == q {
                                    Some(m.to)
                                } else {
                                    None
                                }
                            })
                            .ok_or(e)
                    })?),
                };
                self.store
                    .messages(peer.as_deref())
                    .map(|rows| Value::Array(rows.iter().map(view::message).collect()))
                    .map_err(|e| e.to_string())
            }
            "doctor" => Ok(Value::Array(
                self.presence
                    .peers()
                    .map(|p| {
                        let d = self.diagnose(now, &p.id, &p.nick, p.legacy);
                        json!({
                            "peer": p.id, "nick": p.nick, "state": d.state.as_str(), "path": d.path.as_str(),
                            "unicast_out": d.unicast_out.as_str(), "unicast_in": d.unicast_in.as_str(),
                            "multicast_out": d.multicast_out.as_str(), "multicast_in": d.multicast_in.as_str(),
                            "diagnosis": d.text,
                        })
                    })
                    .collect(),
            )),
            other => Err(format!("unknown command {other:?}")),
        }
    }
}
