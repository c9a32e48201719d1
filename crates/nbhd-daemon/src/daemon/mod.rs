//! `nbhd up`: the event loop around the Node. It moves bytes, time and commands between the
//! Node and the world: datagrams between the UDP sockets and the Node's channels, stream bytes
//! between the Node and the stream tasks, store writes between the Node and SQLite, requests
//! from the control socket and the HTTP API to [`handlers`], and events out to followers. It
//! decides nothing about the protocol; on SIGINT/SIGTERM the Node says goodbye and ends its
//! streams, and the loop gives them a moment to be answered.

mod handlers;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use nbhd_proto::messages::streams::STREAM_END_WAIT;
use nbhd_proto::node::{
    self, Channel, Config, Destination, IfaceId, Node, SendError, StreamInput, COURIER_GROUP,
    COURIER_PORT,
};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::contract::{ErrorReply, Event, Reply};
use crate::control::{self, Pending};
use crate::datadir::DataDir;
use crate::error::DaemonError;
use crate::ifaces::{self, Iface};
use crate::store::Store;
use crate::streams::{self, NetEvent, Streams};
use crate::udp::{self, UdpChannel};
use crate::{api, view};

/// How often interfaces are listed again to notice new, gone or renumbered ones.
const IFACE_POLL: Duration = Duration::from_secs(5);
/// Log the first few dropped packets of each kind, then one in this many, so a flood of garbage
/// cannot flood the log.
const DROP_LOG_EVERY: u64 = 100;

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

/// What the driver itself counts: its buffers and its sends.
#[derive(Default)]
struct DriverStats {
    truncated_in: u64,
    send_errors: BTreeMap<Channel, u64>,
}

/// A control request waiting for its delivery to end.
type Waiting = oneshot::Sender<Result<Reply, ErrorReply>>;

struct Daemon {
    node: Node,
    mdns: UdpChannel,
    courier: UdpChannel,
    probe: UdpChannel,
    streams: Streams,
    store: Store,
    /// The interfaces we serve, by index, with their names (for `nbhd status`).
    ifaces: BTreeMap<u32, Iface>,
    wanted_ifaces: Vec<String>,
    waiting: HashMap<String, Waiting>,
    events: broadcast::Sender<Event>,
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
    let secret = store.identity_secret()?;

    // XEP-0174 stream listener (`port.p2pj`): bound now so the port we advertise is ours.
    let p2pj = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| DaemonError::other("binding the XEP-0174 listener", e))?;
    let p2pj_port = p2pj
        .local_addr()
        .map_err(|e| DaemonError::other("XEP-0174 listener", e))?
        .port();
    let probe =
        UdpChannel::unicast().map_err(|e| DaemonError::other("binding the probe socket", e))?;
    let probe_port = probe
        .local_port()
        .map_err(|e| DaemonError::other("probe socket", e))?;
    let mdns = UdpChannel::mdns()
        .map_err(|e| DaemonError::other("opening the mDNS socket on port 5353", e))?;
    let courier = UdpChannel::group(COURIER_GROUP, COURIER_PORT)
        .map_err(|e| DaemonError::other("opening the courier socket", e))?;

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
    let mut seed_bytes = [0u8; 8];
    getrandom::getrandom(&mut seed_bytes).map_err(|e| DaemonError::other("OS randomness", e))?;
    let started = Instant::now();
    let node = Node::new(
        Config {
            secret,
            nick: opts.nick.clone(),
            host,
            hostname: opts.hostname.clone(),
            status: opts.status.clone(),
            msg: opts.msg.clone(),
            p2pj_port,
            probe_port,
            record_ttl: opts.record_ttl,
            seed: u64::from_le_bytes(seed_bytes),
        },
        // Receivers deduplicate across restarts too (DESIGN.md §4.2).
        store.restored(view::unix_ms())?,
        started,
    );
    let (net_tx, mut net_rx) = mpsc::unbounded_channel::<NetEvent>();
    let (events_tx, _) = broadcast::channel(1024);
    let mut d = Daemon {
        node,
        mdns,
        courier,
        probe,
        streams: Streams::new(net_tx.clone()),
        store,
        ifaces: BTreeMap::new(),
        wanted_ifaces: opts.ifaces.clone(),
        waiting: HashMap::new(),
        events: events_tx.clone(),
        stats: DriverStats::default(),
        api_url: api_url.clone(),
        started,
    };
    d.apply_ifaces(found);
    let status = d.node.status();
    tracing::info!(
        instance = %status.instance,
        id = %status.id,
        hostname = %status.hostname,
        p2pj = p2pj_port,
        probe = probe_port,
        api = %api_url,
        data_dir = %dir.path.display(),
        "nbhd is up"
    );
    if d.ifaces.is_empty() {
        tracing::warn!("no interface with an IPv4 address yet; waiting for one");
    }

    let (req_tx, mut req_rx) = mpsc::channel::<Pending>(64);
    tokio::spawn(control::serve(control, req_tx.clone(), events_tx.clone()));
    tokio::spawn(api::serve(api_listener, token, req_tx));
    let _ = p2pj.set_nonblocking(true);
    let listener = tokio::net::TcpListener::from_std(p2pj)
        .map_err(|e| DaemonError::other("XEP-0174 listener", e))?;
    tokio::spawn(streams::accept(listener, net_tx));

    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::other("signal handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::other("signal handler", e))?;
    let mut mbuf = udp::new_buffer();
    let mut cbuf = udp::new_buffer();
    let mut pbuf = udp::new_buffer();
    let mut iface_poll = tokio::time::interval(IFACE_POLL);
    iface_poll.tick().await;

    loop {
        d.flush();
        let wake = d.node.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = d.mdns.recv(&mut mbuf) => d.on_datagram(Channel::Mdns, &mbuf[..], r),
            r = d.courier.recv(&mut cbuf) => d.on_datagram(Channel::Courier, &cbuf[..], r),
            r = d.probe.recv(&mut pbuf) => d.on_datagram(Channel::Probe, &pbuf[..], r),
            Some(ev) = net_rx.recv() => d.on_net(ev),
            _ = sleep_until(wake) => d.node.handle_timeout(Instant::now()),
            Some(p) = req_rx.recv() => d.on_request(p),
            _ = iface_poll.tick() => match ifaces::select(&d.wanted_ifaces) {
                Ok(found) => d.apply_ifaces(found),
                Err(e) => tracing::warn!("listing interfaces: {e}"),
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("shutting down: sending goodbyes and ending streams");
    d.node.close(Instant::now());
    d.flush();
    // Peers answer our `</stream:stream>` with theirs (RFC 6120 §4.4); the Node closes each
    // stream then, or after STREAM_END_WAIT. A little more than that, and we go regardless.
    let patience = tokio::time::sleep(STREAM_END_WAIT + Duration::from_millis(500));
    tokio::pin!(patience);
    while d.node.has_streams() {
        let wake = d.node.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            Some(ev) = net_rx.recv() => d.on_net(ev),
            _ = sleep_until(wake) => d.node.handle_timeout(Instant::now()),
            _ = &mut patience => break,
        }
        d.flush();
    }
    d.streams.finish(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(dir.api_file());
    Ok(())
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
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
    /// Joins the channels' groups on new interfaces, leaves them on gone ones, and tells the
    /// Node what it serves now.
    fn apply_ifaces(&mut self, found: Vec<Iface>) {
        let found: BTreeMap<u32, Iface> = found
            .into_iter()
            .filter(|i| !i.addrs.is_empty())
            .map(|i| (i.index, i))
            .collect();
        for (idx, i) in &self.ifaces {
            if !found.contains_key(idx) {
                tracing::info!(iface = %i.name, "interface gone");
                self.mdns.leave(*idx);
                self.courier.leave(*idx);
            }
        }
        let mut served = BTreeMap::new();
        for (idx, i) in found {
            if self.ifaces.get(&idx) != Some(&i) {
                if let Err(e) = self.mdns.join(idx) {
                    tracing::warn!(iface = %i.name, "cannot join the mDNS group: {e}");
                    continue;
                }
                if let Err(e) = self.courier.join(idx) {
                    tracing::warn!(iface = %i.name, "cannot join the courier group: {e}");
                }
                tracing::info!(iface = %i.name, addrs = ?i.addrs, "serving interface");
            }
            served.insert(idx, i);
        }
        self.ifaces = served;
        let list = self
            .ifaces
            .values()
            .map(|i| (IfaceId(i.index), i.addrs.clone()))
            .collect();
        self.node.handle_interfaces(Instant::now(), list);
    }

    fn on_datagram(&mut self, channel: Channel, buf: &[u8], r: std::io::Result<udp::Received>) {
        let rx = match r {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(channel = channel.as_str(), "receive failed: {e}");
                return;
            }
        };
        if rx.truncated {
            // Larger than any datagram the protocols allow: the buffer is ours, so is the count.
            self.stats.truncated_in += 1;
            let n = self.stats.truncated_in;
            if n <= 10 || n.is_multiple_of(DROP_LOG_EVERY) {
                tracing::warn!(src = %rx.src, channel = channel.as_str(), count = n, "dropped a datagram larger than 9216 bytes");
            }
            return;
        }
        self.node.handle_datagram(
            Instant::now(),
            channel,
            IfaceId(rx.ifindex),
            rx.src,
            &buf[..rx.len],
        );
    }

    fn on_net(&mut self, ev: NetEvent) {
        let now = Instant::now();
        let input = match ev {
            NetEvent::Accepted {
                conn,
                remote,
                writer,
            } => {
                self.streams.add_writer(conn, writer);
                StreamInput::Accepted { conn, remote }
            }
            NetEvent::Connected { conn, writer } => {
                self.streams.add_writer(conn, writer);
                StreamInput::Connected { conn }
            }
            NetEvent::Data { conn, bytes } => StreamInput::Data { conn, bytes },
            NetEvent::Closed { conn, failed } => {
                self.streams.forget(conn);
                StreamInput::Closed { conn, failed }
            }
        };
        self.node.handle_stream(now, input);
    }

    /// Carries out everything the Node asked for, until it asks for nothing more.
    fn flush(&mut self) {
        loop {
            let mut busy = false;
            while let Some(t) = self.node.poll_transmit() {
                busy = true;
                self.send(t);
            }
            while let Some(a) = self.node.poll_stream() {
                busy = true;
                self.streams.act(a);
            }
            while let Some(w) = self.node.poll_store() {
                busy = true;
                let now = Instant::now();
                match self
                    .store
                    .apply(&self.node.id(), &w.record, view::unix_ms())
                {
                    Ok(()) => self.node.handle_persisted(now, w.token),
                    Err(e) => {
                        tracing::error!("store write failed: {e}");
                        self.node
                            .handle_persist_failed(now, w.token, &e.to_string());
                    }
                }
            }
            while let Some(e) = self.node.poll_event() {
                busy = true;
                self.on_event(e);
            }
            if !busy {
                break;
            }
        }
    }

    fn send(&mut self, t: node::Transmit) {
        let socket = match t.channel {
            Channel::Mdns => &self.mdns,
            Channel::Courier => &self.courier,
            Channel::Probe => &self.probe,
        };
        let results: Vec<(SocketAddr, std::io::Result<()>)> = match t.destination {
            Destination::Multicast => {
                // Out of the interface it is for, or (the courier) out of every one.
                let vias: Vec<Ipv4Addr> = match t.iface {
                    Some(i) => self
                        .ifaces
                        .get(&i.0)
                        .and_then(|i| i.addrs.first().copied())
                        .into_iter()
                        .collect(),
                    None => self
                        .ifaces
                        .values()
                        .filter_map(|i| i.addrs.first().copied())
                        .collect(),
                };
                vias.into_iter()
                    .map(|via| {
                        (
                            SocketAddr::from((via, 0)),
                            socket.send_multicast(via, &t.payload),
                        )
                    })
                    .collect()
            }
            Destination::Unicast(dst) => vec![(dst, socket.send_unicast(dst, &t.payload))],
        };
        for (dst, r) in results {
            let Err(e) = r else { continue };
            *self.stats.send_errors.entry(t.channel).or_default() += 1;
            tracing::debug!(channel = t.channel.as_str(), %dst, "send failed: {e}");
            let kind = match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => {
                    SendError::Refused
                }
                _ => SendError::Other,
            };
            self.node
                .handle_send_error(Instant::now(), t.channel, dst, kind);
        }
    }

    fn on_event(&mut self, e: node::Event) {
        match &e {
            node::Event::PeerUp(p) => {
                tracing::info!(peer = %p.instance, id = %p.id, addrs = ?p.addrs, legacy = p.legacy, "peer up")
            }
            node::Event::PeerDown(p) => tracing::info!(peer = %p.instance, "peer down"),
            node::Event::PeerChanged(p) => tracing::info!(peer = %p.instance, "peer changed"),
            node::Event::Renamed { instance, hostname } => {
                tracing::warn!(%instance, %hostname, "name conflict: renamed")
            }
            node::Event::Announced { iface, instance } => {
                tracing::info!(%instance, iface = iface.0, "announced")
            }
            node::Event::Message { from, id, via, .. } => {
                tracing::info!(%from, %id, via = via.as_str(), "message")
            }
            node::Event::Invitation {
                from,
                id,
                activity,
                via,
                relayed_by,
                ..
            } => {
                tracing::info!(%from, %id, activity = %activity.name, via = via.as_str(), relayed_by = ?relayed_by, "invitation")
            }
            node::Event::PathChanged {
                nick, diagnosis, ..
            } => {
                tracing::info!(peer = %nick, state = diagnosis.state.as_str(), path = diagnosis.path.as_str(), "path changed")
            }
            node::Event::Delivered {
                id,
                peer,
                via,
                latency,
                receipt,
            } => {
                tracing::info!(%id, %peer, via = via.as_str(), latency_ms = view::ms(*latency), receipt, "delivered");
                self.answer(id, Some((via.as_str(), *latency)), *receipt);
            }
            node::Event::Failed { id, peer } => {
                tracing::warn!(%id, %peer, "not delivered before the timeout");
                self.answer(id, None, false);
            }
            node::Event::Dropped {
                source,
                from,
                reason,
                detail,
                count,
            } => {
                if *count <= 10 || count.is_multiple_of(DROP_LOG_EVERY) {
                    tracing::warn!(source, %from, %reason, count, "dropped: {detail}");
                }
            }
        }
        if let Some(ev) = view::event(&e, Instant::now()) {
            let _ = self.events.send(ev);
        }
    }

    /// The `nbhd send` / `nbhd invite` waiting for delivery `id` gets its answer.
    fn answer(&mut self, id: &str, delivered: Option<(&str, Duration)>, receipt: bool) {
        let Some(w) = self.waiting.remove(id) else {
            return;
        };
        let _ = w.send(Ok(Reply::Delivery(crate::contract::DeliveryReply {
            id: id.to_string(),
            delivered: delivered.is_some(),
            via: delivered.map(|(v, _)| v.to_string()),
            latency_ms: delivered.map(|(_, l)| view::ms(l)),
            receipt,
        })));
    }
}
