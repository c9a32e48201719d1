//! `nbhd up`: the event loop around the Node. It moves bytes, time and commands between the
//! Node and the world: datagrams between the UDP sockets and the Node's channels, stream bytes
//! between the Node and the stream tasks, store writes between the Node and SQLite, requests
//! from the control socket and the HTTP API to `handlers`, and events out to followers. It
//! decides nothing about the protocol; on SIGINT/SIGTERM the Node says goodbye and ends its
//! streams, and the loop gives them a moment to be answered.

mod handlers;

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nbhd_proto::activity::ChannelChange;
use nbhd_proto::messages::streams::STREAM_END_WAIT;
use nbhd_proto::node::{
    self, ActivityId, Channel, Config, Destination, IfaceId, Node, SendError, StreamInput,
    COURIER_GROUP, COURIER_PORT,
};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::contract::{ErrorReply, Event, Reply};
use crate::control::{self, Pending};
use crate::datadir::{self, DataDir};
use crate::error::DaemonError;
use crate::ifaces::{self, Iface};
use crate::store::Store;
use crate::streams::{self, NetEvent, Streams};
use crate::udp::{self, UdpChannel};
use crate::{api, view};

/// How often interfaces are listed again to notice new, gone or renumbered ones.
const IFACE_POLL: Duration = Duration::from_secs(5);
/// Log the first few dropped packets of each kind, then one in this many, so a flood of garbage
/// cannot flood the log (a flood of 100,000 packets a second: a line every tenth of a second
/// at most; the counters in `nbhd stats` have every one).
const DROP_LOG_EVERY: u64 = 10_000;

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
    /// Datagrams larger than any the protocols allow, per channel (the buffer is ours, so is
    /// the count); the activities' reader tasks count theirs in `activity_oversized`.
    oversized: BTreeMap<Channel, u64>,
    activity_oversized: Arc<std::sync::atomic::AtomicU64>,
    send_errors: BTreeMap<Channel, u64>,
}

/// A control request waiting for its delivery (or its post's store write) to end.
type Waiting = oneshot::Sender<Result<Reply, ErrorReply>>;

/// A datagram an activity's socket task received.
struct ActivityDatagram {
    id: ActivityId,
    ifindex: u32,
    src: SocketAddr,
    bytes: Vec<u8>,
}

/// An activity's own socket, bound to its group's port and joined to its group, read by a task
/// of its own (so a busy activity cannot starve the loop's other inputs).
struct ActivitySocket {
    socket: Arc<UdpChannel>,
    reader: tokio::task::JoinHandle<()>,
}

/// Datagrams read from one socket in one turn of the event loop.
const SOCKET_BATCH: usize = 64;
/// What the mDNS socket may hold unread.
const MDNS_RCVBUF: usize = 2 << 20;
/// Activity datagrams handled together before the Node's output is carried out.
const ACTIVITY_BATCH: usize = 64;
/// What an activity's socket may hold unread: bursts of repairs arrive faster than any loop.
const ACTIVITY_RCVBUF: usize = 4 << 20;

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
    waiting_posts: HashMap<(ActivityId, u64), Waiting>,
    activity_sockets: HashMap<ActivityId, ActivitySocket>,
    activity_tx: mpsc::Sender<ActivityDatagram>,
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
    // Room for a burst (or a flood from one host, which presence then cuts cheaply) without
    // the kernel dropping a newcomer's announcement.
    mdns.set_recv_buffer(MDNS_RCVBUF);
    let courier = UdpChannel::group(COURIER_GROUP, COURIER_PORT)
        .map_err(|e| DaemonError::other("opening the courier socket", e))?;

    let sock_path = dir.socket();
    let _ = std::fs::remove_file(&sock_path); // a stale one; the lock proves nobody serves it
    let control = UnixListener::bind(&sock_path)
        .map_err(|e| DaemonError::DataDirUnwritable(dir.path.clone(), e))?;
    // bind(2) gives the socket 0777 less the umask. Narrowed before anything is accepted;
    // the umask is not narrowed around bind instead, because it is the whole process's. A
    // connection made in between reached it through the 0700 dir, and control::serve checks
    // every caller's uid anyway.
    std::fs::set_permissions(
        &sock_path,
        std::os::unix::fs::PermissionsExt::from_mode(datadir::FILE_MODE),
    )
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
    dir.write_file(
        &dir.api_file(),
        format!("{api_url}\n").as_bytes(),
        datadir::FILE_MODE,
    )
    .map_err(|e| DaemonError::DataDirUnwritable(dir.path.clone(), e))?;

    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into());
    let host = host.split('.').next().unwrap_or("host").to_string();
    let mut seed_bytes = [0u8; 8];
    getrandom::getrandom(&mut seed_bytes).map_err(|e| DaemonError::other("OS randomness", e))?;
    let mut entropy = [0u8; 32];
    getrandom::getrandom(&mut entropy).map_err(|e| DaemonError::other("OS randomness", e))?;
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
            entropy,
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        },
        // Receivers deduplicate across restarts too (DESIGN.md §4.2).
        store.restored(view::unix_ms())?,
        started,
    );
    let (net_tx, mut net_rx) = mpsc::unbounded_channel::<NetEvent>();
    let (activity_tx, mut activity_rx) = mpsc::channel::<ActivityDatagram>(4096);
    let (events_tx, _) = broadcast::channel(4096);
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
        waiting_posts: HashMap::new(),
        activity_sockets: HashMap::new(),
        activity_tx,
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
        // A socket that is always readable (a flood) must not keep the other tasks (control
        // connections, the API, stream readers) from running: they get a turn every turn.
        tokio::task::yield_now().await;
        // A person's requests and the timers due first, every turn, whatever floods a socket
        // or the stream listener; then any input, picked at random among those ready (so no
        // flooded one starves the others).
        while let Ok(p) = req_rx.try_recv() {
            d.on_request(p);
        }
        // What they asked goes out now, not after whatever the select below waits for.
        d.flush();
        if d.node.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            d.node.handle_timeout(Instant::now());
            d.flush();
        }
        let wake = d.node.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            Some(p) = req_rx.recv() => d.on_request(p),
            _ = sleep_until(wake) => d.node.handle_timeout(Instant::now()),
            Some(ev) = net_rx.recv() => d.on_net(ev),
            _ = iface_poll.tick() => match ifaces::select(&d.wanted_ifaces) {
                Ok(found) => d.apply_ifaces(found),
                Err(e) => tracing::warn!("listing interfaces: {e}"),
            },
            Some(dg) = activity_rx.recv() => {
                // What else has arrived too, up to a batch, before the next flush: their store
                // writes go in one commit (one fsync), and other inputs wait no longer.
                let mut next = Some(dg);
                let mut n = 0;
                while let Some(dg) = next {
                    d.node.handle_datagram(
                        Instant::now(),
                        Channel::Activity(dg.id),
                        IfaceId(dg.ifindex),
                        dg.src,
                        &dg.bytes,
                    );
                    n += 1;
                    next = if n < ACTIVITY_BATCH { activity_rx.try_recv().ok() } else { None };
                }
            }
            r = d.probe.recv(&mut pbuf) => d.on_datagrams(Channel::Probe, &mut pbuf, r),
            r = d.courier.recv(&mut cbuf) => d.on_datagrams(Channel::Courier, &mut cbuf, r),
            r = d.mdns.recv(&mut mbuf) => d.on_datagrams(Channel::Mdns, &mut mbuf, r),
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
    dir.write_file(
        &dir.token_file(),
        format!("{token}\n").as_bytes(),
        datadir::FILE_MODE,
    )
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
                for a in self.activity_sockets.values() {
                    a.socket.leave(*idx);
                }
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
                for a in self.activity_sockets.values() {
                    if let Err(e) = a.socket.join(idx) {
                        tracing::warn!(iface = %i.name, "cannot join an activity's group: {e}");
                    }
                }
                tracing::info!(iface = %i.name, addrs = ?i.addrs, "serving interface");
            }
            served.insert(idx, i);
        }
        self.ifaces = served;
        let list = self
            .ifaces
            .values()
            .map(|i| (IfaceId(i.index), i.subnets.clone()))
            .collect();
        self.node.handle_interfaces(Instant::now(), list);
    }

    /// A datagram, and those that arrived with it on the same socket, up to a batch: read
    /// without waiting, handled before the next flush (under a flood, a turn of the loop per
    /// datagram would leave the kernel dropping most of them, a newcomer's announcement too).
    fn on_datagrams(
        &mut self,
        channel: Channel,
        buf: &mut [u8; udp::RECV_BUF],
        first: std::io::Result<udp::Received>,
    ) {
        self.on_datagram(channel, &buf[..], first);
        for _ in 1..SOCKET_BATCH {
            let socket = match channel {
                Channel::Mdns => &self.mdns,
                Channel::Courier => &self.courier,
                _ => &self.probe,
            };
            let Some(r) = socket.try_recv(buf) else {
                break;
            };
            self.on_datagram(channel, &buf[..], r);
        }
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
            let n = {
                let n = self.stats.oversized.entry(channel).or_default();
                *n += 1;
                *n
            };
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
            // Channels first: an activity's first frame (its join) needs its socket.
            while let Some(c) = self.node.poll_channel() {
                busy = true;
                self.on_channel(c);
            }
            while let Some(t) = self.node.poll_transmit() {
                busy = true;
                self.send(t);
            }
            while let Some(a) = self.node.poll_stream() {
                busy = true;
                self.streams.act(a);
            }
            // Every write the Node asked for now, in one transaction (a group commit), then
            // each confirmed: nothing counts before its commit.
            let mut writes = Vec::new();
            while let Some(w) = self.node.poll_store() {
                writes.push(w);
            }
            if !writes.is_empty() {
                busy = true;
                let records: Vec<&node::Record> = writes.iter().map(|w| &w.record).collect();
                let results = self
                    .store
                    .apply_all(&self.node.id(), &records, view::unix_ms());
                let now = Instant::now();
                for (w, r) in writes.iter().zip(results) {
                    match r {
                        Ok(()) => self.node.handle_persisted(now, w.token),
                        Err(e) => {
                            tracing::error!("store write failed: {e}");
                            self.node
                                .handle_persist_failed(now, w.token, &e.to_string());
                        }
                    }
                }
            }
            while let Some((token, load)) = self.node.poll_load() {
                busy = true;
                let posts = self.store.load(&load).unwrap_or_else(|e| {
                    tracing::error!("reading posts back: {e}");
                    Vec::new()
                });
                self.node.handle_loaded(Instant::now(), token, posts);
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

    /// Opens an activity's socket (bound to its group's port, joined on every interface we
    /// serve, read by a task of its own), or closes it.
    fn on_channel(&mut self, c: ChannelChange) {
        match c {
            ChannelChange::Open { id, group, port } => {
                if self.activity_sockets.contains_key(&id) {
                    return;
                }
                let socket = match UdpChannel::group(group, port) {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        tracing::error!(activity = %id, %group, port, "cannot open the activity's socket: {e}");
                        return;
                    }
                };
                socket.set_recv_buffer(ACTIVITY_RCVBUF);
                for idx in self.ifaces.keys() {
                    if let Err(e) = socket.join(*idx) {
                        tracing::warn!(activity = %id, "cannot join the activity's group: {e}");
                    }
                }
                let (reader_socket, tx) = (socket.clone(), self.activity_tx.clone());
                let oversized = self.stats.activity_oversized.clone();
                let reader = tokio::spawn(async move {
                    let mut buf = udp::new_buffer();
                    loop {
                        let rx = match reader_socket.recv(&mut buf).await {
                            Ok(rx) => rx,
                            Err(e) => {
                                // Not a busy loop on an error that stays.
                                tracing::warn!(activity = %id, "receive failed: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                        if rx.truncated {
                            oversized.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            continue;
                        }
                        let dg = ActivityDatagram {
                            id,
                            ifindex: rx.ifindex,
                            src: rx.src,
                            bytes: buf[..rx.len].to_vec(),
                        };
                        if tx.send(dg).await.is_err() {
                            return;
                        }
                    }
                });
                tracing::info!(activity = %id, %group, port, "activity channel open");
                self.activity_sockets
                    .insert(id, ActivitySocket { socket, reader });
            }
            ChannelChange::Close { id } => {
                if let Some(a) = self.activity_sockets.remove(&id) {
                    a.reader.abort();
                    for idx in self.ifaces.keys() {
                        a.socket.leave(*idx);
                    }
                    tracing::info!(activity = %id, "activity channel closed");
                }
            }
        }
    }

    fn send(&mut self, t: node::Transmit) {
        let socket = match t.channel {
            Channel::Mdns => &self.mdns,
            Channel::Courier => &self.courier,
            Channel::Probe => &self.probe,
            Channel::Activity(id) => match self.activity_sockets.get(&id) {
                Some(a) => &*a.socket,
                None => return,
            },
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
            node::Event::Posted { request, post } => {
                tracing::debug!(activity = %post.activity, seq = post.seq, "posted");
                if let Some(w) = self.waiting_posts.remove(&(post.activity, *request)) {
                    let _ = w.send(Ok(Reply::Posted(crate::contract::PostReply {
                        id: post.activity.to_hex(),
                        seq: post.seq,
                    })));
                }
            }
            node::Event::PostFailed {
                activity,
                request,
                why,
            } => {
                tracing::error!(%activity, "a post could not be stored: {why}");
                if let Some(w) = self.waiting_posts.remove(&(*activity, *request)) {
                    let _ = w.send(Err(ErrorReply::not_found(format!(
                        "the post could not be stored ({why}): it was not sent"
                    ))));
                }
            }
            node::Event::Entry(post) => {
                tracing::debug!(activity = %post.activity, nick = %post.nick, seq = post.seq, "post received")
            }
            node::Event::Member {
                activity,
                nick,
                change,
                ..
            } => tracing::info!(%activity, %nick, ?change, "member"),
        }
        let node = &self.node;
        if let Some(ev) = view::event(&e, Instant::now(), |p| node.is_impostor(p)) {
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
