//! One activity's state machine: what we send, what we hold from each sender, what we miss and
//! ask for, what we repair for others, who the members are.
//!
//! Reliability is receiver-driven, NORM-like and without Clique's limits:
//! - every sender numbers its packets (a post of up to 1 MiB is cut into consecutive packets);
//! - a receiver that sees a gap (a later packet, or a session message naming a higher number)
//!   multicasts a NACK after a short random delay ([`NACK_DELAY_MS`], a few LAN round trips, not
//!   Clique's 150-250 ms), unless another member's NACK for the same packets came first; it asks
//!   again after a backoff while they stay missing;
//! - any member holding a packet repairs it, after a short random delay ([`REPAIR_DELAY_MS`]; its
//!   sender at once), unless another's repair came first; old packets come back from the store;
//! - session messages carry each sender's high-water mark, so tail loss is caught: a few right
//!   after something changed, then one a minute, skipped while another member's session already
//!   says as much, but never silent for longer than [`KEEPALIVE`];
//! - posts are stored in per-sender order, one at a time per sender, before they count; our own
//!   are stored before they are sent.
//!
//! Every table is bounded (out-of-order packets per sender, in count and in bytes, and in bytes
//! over all senders; cached packets; members; senders), and what is refused past a bound is
//! counted. A full senders or members table makes room by forgetting the one heard from least
//! lately among the strangers: keys are free to make (and to post with), so one host inventing
//! thousands of them can crowd out other strangers, never a peer the Node knows (one presence
//! lists with its key, which a host cannot multiply past its presence budget).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;

use super::askers::Askers;
use super::signed;
use super::wire::{self, Body, Data};
use super::{
    ActivityInfo, Event, Load, MemberChange, Out, Post, PostError, Write, MAX_QUEUED_BYTES,
    MAX_QUEUED_POSTS,
};
use crate::drops::DropReason;

/// A NACK waits this long (uniformly random) after a gap is seen, so that one member's NACK can
/// stand for everyone's.
pub const NACK_DELAY_MS: (u64, u64) = (2, 10);
/// Then, while packets stay missing, it is repeated after this, doubling ...
pub const NACK_RTO_FIRST: Duration = Duration::from_millis(30);
/// ... up to this.
pub const NACK_RTO_MAX: Duration = Duration::from_millis(500);
/// A member holding a packet someone misses repairs it after a while. Its poster repairs at
/// once; the others wait this long when the poster is a member (long enough to hear its
/// burst, even on a slow machine, and stay quiet: they answer for what they did not hear) ...
pub const REPAIR_DELAY_MS: (u64, u64) = (50, 100);
/// ... and this long when it is not (it left, or was never heard: a late joiner's history).
pub const REPAIR_DELAY_ORPHAN_MS: (u64, u64) = (5, 20);
/// A packet repaired (by us or another member) this recently is not repaired again for a
/// NACK: the NACK was sent before the repair arrived. Shorter than [`NACK_RTO_FIRST`], so a NACK repeated
/// because the repair was lost is answered.
pub const REPAIR_HOLDOFF: Duration = Duration::from_millis(20);
/// After something changed, session messages go this long after it, and again ...
pub const SESSION_QUICK: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(250),
    Duration::from_secs(2),
];
/// ... then one about a minute (± 10 %), skipped while others say as much ...
pub const SESSION_IDLE: Duration = Duration::from_secs(60);
/// ... but a member is never silent longer than this (so silence means failure).
pub const KEEPALIVE: Duration = Duration::from_secs(300);
/// A member not heard for this is taken as gone.
pub const MEMBER_SILENCE: Duration = Duration::from_secs(900);
/// A member that hears a join answers with a session message after this.
pub const JOIN_ANSWER_MS: (u64, u64) = (2, 20);
/// Packets held per sender that cannot be stored yet (a gap before them).
pub const MAX_BUFFER: usize = 4096;
/// Packets kept in memory to repair; older ones come back from the store.
pub const MAX_CACHE: usize = 8192;
/// Packets repaired in answer to one NACK (the asker asks again for the rest).
pub const MAX_REPAIRS_PER_NACK: usize = 256;
/// Senders and members tracked per activity.
pub const MAX_SENDERS: usize = 4096;
/// Bytes held out of order for one sender: two of the largest posts (one being completed while
/// the next one starts arriving).
pub const MAX_SENDER_BYTES: usize = 2 * super::MAX_POST + 64 * 1024;
/// ... and for all senders of an activity together (4,096 senders of 4,096 packets each would
/// otherwise be about 20 GB).
pub const MAX_HELD_BYTES: usize = 64 << 20;
/// Packets missing from one sender beyond which the repairs arriving are a bulk transfer.
pub const BULK: u64 = 64;
/// One-fragment posts waiting for their batch's signature check (past that, checked at once).
pub const MAX_UNVERIFIED: usize = 256;
/// How long a one-fragment post waits for others to be checked with: posts come a millisecond
/// apart when they flow, and a batch of a few costs about half a check each (51 us alone).
pub const VERIFY_HOLD: Duration = Duration::from_millis(4);
/// Members whose last control counter is remembered.
pub const MAX_COUNTERS: usize = 2 * MAX_SENDERS;
/// Frames remembered (by nonce) to drop replays of data (control frames have counters).
pub const REPLAY_WINDOW: usize = 8192;
/// How far one post may move our Lamport clock (see `next_lamport`).
pub const MAX_LAMPORT_JUMP: u64 = 1 << 32;
/// Posts of one sender handed to the store and not yet confirmed.
pub const MAX_STORING: u64 = 256;

#[derive(Clone, Debug, Default)]
struct Sender {
    /// Highest packet (and post) stored, in order.
    stored: u64,
    stored_post: u64,
    /// Highest packet (and post) handed to the store: complete posts go to the store in order
    /// without waiting for the one before to be confirmed (confirmations come in order too),
    /// at most [`MAX_STORING`] at a time.
    handed: u64,
    handed_post: u64,
    /// Highest packet known to exist.
    known: u64,
    /// Received, not yet stored (a gap before them, or a post not complete).
    buffer: BTreeMap<u64, Data>,
    nack_at: Option<Instant>,
    nack_rto: Duration,
    /// Live packets seen missing (a later one came first), and when: a repair's latency is
    /// counted from there.
    gaps: BTreeMap<u64, Instant>,
    /// The bytes of the fragments in `buffer`.
    bytes: usize,
    /// When a frame of its own (not a repair of it) last came.
    last_heard: Option<Instant>,
}

impl Sender {
    /// The next packet we need in order.
    fn next(&self) -> u64 {
        self.handed + 1
    }

    /// Posts handed to the store, not yet confirmed.
    fn storing(&self) -> u64 {
        self.handed_post.saturating_sub(self.stored_post)
    }

    /// Takes packet `p` out of the buffer.
    fn take(&mut self, p: u64) -> Option<Data> {
        let d = self.buffer.remove(&p)?;
        self.bytes -= d.chunk.len();
        Some(d)
    }
}

#[derive(Clone, Debug)]
struct Member {
    nick: String,
    last_heard: Instant,
}

/// A store write in flight.
enum Pending {
    Own { request: u64, post: Post },
    Received(Post),
    Activity,
}

/// A post of ours waiting for its turn to be stored.
struct OwnPost {
    request: u64,
    body: Vec<u8>,
    bytes: bool,
    at_ms: u64,
}

pub(crate) struct Group {
    pub info: ActivityInfo,
    pub joined: bool,
    me: [u8; 32],
    /// Our next post and packet numbers, and our Lamport clock.
    next_post: u64,
    next_pkt: u64,
    lamport: u64,
    queue: VecDeque<OwnPost>,
    /// The bytes of the posts in `queue`.
    queued_bytes: usize,
    own_storing: bool,
    senders: BTreeMap<[u8; 32], Sender>,
    /// The bytes held in every sender's buffer.
    held_bytes: usize,
    members: BTreeMap<[u8; 32], Member>,
    pending: BTreeMap<u64, Pending>,
    repairs: BTreeMap<([u8; 32], u64), Instant>,
    /// Repairs waiting for the store to give the packets back.
    loading: BTreeSet<([u8; 32], u64)>,
    cache: BTreeMap<([u8; 32], u64), Data>,
    cache_order: VecDeque<([u8; 32], u64)>,
    /// What each member asked us to repair, and its credit for asking again.
    askers: Askers,
    /// One-fragment posts waiting for this turn's signature check, and since when.
    unverified: Vec<([u8; 32], Data)>,
    unverified_since: Option<Instant>,
    /// Our last control frame's counter.
    counter: u64,
    /// Each member's last control counter: a control frame at or below it is a replay.
    counters: std::collections::HashMap<[u8; 32], u64>,
    /// Nonces of the frames received lately, to drop replays.
    nonces: HashSet<[u8; 24]>,
    nonce_order: VecDeque<[u8; 24]>,
    /// Packets repaired lately, by us or heard, and when: see [`REPAIR_HOLDOFF`].
    recent: BTreeMap<([u8; 32], u64), Instant>,
    recent_order: VecDeque<(Instant, ([u8; 32], u64))>,
    session_at: Option<Instant>,
    /// Our answer to a newcomer's join: a session no other member's stands for.
    join_answer_at: Option<Instant>,
    quick_left: usize,
    last_sent: Instant,
    next_request: u64,
}

impl Group {
    pub fn new(info: ActivityInfo, me: [u8; 32], now: Instant) -> Group {
        Group {
            info,
            joined: false,
            me,
            next_post: 1,
            next_pkt: 1,
            lamport: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            own_storing: false,
            senders: BTreeMap::new(),
            held_bytes: 0,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            repairs: BTreeMap::new(),
            loading: BTreeSet::new(),
            cache: BTreeMap::new(),
            cache_order: VecDeque::new(),
            recent: BTreeMap::new(),
            recent_order: VecDeque::new(),
            askers: Askers::default(),
            unverified: Vec::new(),
            unverified_since: None,
            counter: 0,
            counters: std::collections::HashMap::new(),
            nonces: HashSet::new(),
            nonce_order: VecDeque::new(),
            session_at: None,
            join_answer_at: None,
            quick_left: 0,
            last_sent: now,
            next_request: 1,
        }
    }

    /// What the store holds of `sender`: its last post, that post's last packet, its Lamport.
    pub fn restore_head(&mut self, sender: [u8; 32], seq: u64, last_pkt: u64, lamport: u64) {
        self.lamport = next_lamport(self.lamport, lamport);
        if sender == self.me {
            self.next_post = self.next_post.max(seq + 1);
            self.next_pkt = self.next_pkt.max(last_pkt + 1);
        } else {
            let s = self.senders.entry(sender).or_default();
            s.stored = s.stored.max(last_pkt);
            s.stored_post = s.stored_post.max(seq);
            s.handed = s.stored;
            s.handed_post = s.stored_post;
            s.known = s.known.max(last_pkt);
            s.nack_rto = NACK_RTO_FIRST;
        }
    }

    /// Members known (heard within MEMBER_SILENCE).
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Packets held out of order, over every sender.
    pub fn held_packets(&self) -> usize {
        self.senders.values().map(|s| s.buffer.len()).sum()
    }

    /// Askers whose repairs are accounted for.
    pub fn asker_count(&self) -> usize {
        self.askers.len()
    }

    /// Bytes held out of order, over every sender.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// The key to forget to make room in `keys` (a full senders or members table): the one
    /// heard from least lately among the strangers (keys no peer of ours holds); None if
    /// every one is a peer.
    fn evictable<'a>(
        &self,
        known: &std::collections::HashSet<[u8; 32]>,
        keys: impl Iterator<Item = (&'a [u8; 32], Option<Instant>)>,
    ) -> Option<[u8; 32]> {
        keys.filter(|(k, _)| **k != self.me && !known.contains(*k))
            .min_by_key(|(_, heard)| *heard)
            .map(|(k, _)| *k)
    }

    /// Room for one more sender; false if every one tracked has posted.
    fn room_for_sender(&mut self, out: &mut Out) -> bool {
        if self.senders.len() < MAX_SENDERS {
            return true;
        }
        let keys = self.senders.iter().map(|(k, s)| (k, s.last_heard));
        let Some(victim) = self.make_room(out, "senders", keys) else {
            return false;
        };
        if let Some(s) = self.senders.remove(&victim) {
            self.held_bytes -= s.bytes;
        }
        true
    }

    /// The stranger to forget from a full table of `what` (senders, members), or None when
    /// every one is a peer (the newcomer is then refused); counted either way.
    fn make_room<'a>(
        &self,
        out: &mut Out,
        what: &str,
        keys: impl Iterator<Item = (&'a [u8; 32], Option<Instant>)>,
    ) -> Option<[u8; 32]> {
        let victim = self.evictable(out.known, keys);
        let detail = match victim {
            Some(_) => format!("{MAX_SENDERS} {what}: the stranger heard least lately forgotten"),
            None => format!("more than {MAX_SENDERS} {what}, every one a peer"),
        };
        self.drop_input(out, DropReason::TableFull, detail);
        victim
    }

    /// Members heard from lately, ourselves included.
    pub fn members(&self, now: Instant) -> usize {
        let others = self
            .members
            .values()
            .filter(|m| now.saturating_duration_since(m.last_heard) < MEMBER_SILENCE)
            .count();
        others + usize::from(self.joined)
    }

    fn send(&mut self, out: &mut Out, body: Body) {
        self.send_as(out, self.me, body)
    }

    /// A frame under `sender`'s name: ours, or (a repair) the poster's, whoever resends it,
    /// since a packet is known by its poster and number.
    fn send_as(&mut self, out: &mut Out, sender: [u8; 32], body: Body) {
        let nonce: [u8; 24] = out.rng.gen();
        // Our control frames carry a counter that grows across our restarts: the wall clock
        // in microseconds, or one more than the last if the clock stood still or went back.
        let auth = if body.kind().is_control() {
            self.counter = (self.counter + 1).max(out.unix_us);
            signed::sign_control(out.me, &self.info.id, &body, self.counter)
        } else {
            None
        };
        let repr = wire::Repr {
            activity: self.info.id,
            sender,
            body,
            auth,
        };
        match repr.emit(&self.info.key, &nonce) {
            Ok(bytes) => {
                out.stats.frames_out += 1;
                out.transmits.push_back((self.info.id, bytes));
            }
            Err(e) => self.drop_input(
                out,
                DropReason::Unsendable,
                format!("cannot send our own frame: {e}"),
            ),
        }
    }

    fn write(&mut self, out: &mut Out, write: Write, pending: Pending) {
        let token = *out.next_token;
        *out.next_token += 1;
        out.writes.push_back((token, write));
        out.waiting.insert(token, self.info.id);
        self.pending.insert(token, pending);
    }

    fn drop_input(&self, out: &mut Out, reason: DropReason, detail: String) {
        *out.stats.dropped.entry(reason).or_default() += 1;
        out.events.push_back(Event::Dropped {
            activity: self.info.id,
            reason,
            detail,
        });
    }

    pub fn join(&mut self, now: Instant, out: &mut Out, announce: bool) {
        self.joined = true;
        if announce {
            let info = self.info.clone();
            self.write(
                out,
                Write::Activity { info, joined: true },
                Pending::Activity,
            );
        }
        let nick = out.nick.to_string();
        self.send(out, Body::Join { nick });
        self.last_sent = now;
        self.changed(now);
    }

    pub fn leave(&mut self, now: Instant, out: &mut Out) -> bool {
        if !self.joined {
            return false;
        }
        self.send(out, Body::Leave);
        self.joined = false;
        self.session_at = None;
        self.join_answer_at = None;
        self.repairs.clear();
        for s in self.senders.values_mut() {
            s.nack_at = None;
        }
        let info = self.info.clone();
        self.write(
            out,
            Write::Activity {
                info,
                joined: false,
            },
            Pending::Activity,
        );
        let _ = now;
        true
    }

    /// Something changed (a post stored, ours or theirs): session messages soon, a few times.
    fn changed(&mut self, now: Instant) {
        self.quick_left = SESSION_QUICK.len();
        let at = now + SESSION_QUICK[0];
        self.session_at = Some(self.session_at.map_or(at, |t| t.min(at)));
    }

    pub fn post(
        &mut self,
        now: Instant,
        out: &mut Out,
        body: Vec<u8>,
        bytes: bool,
        at_ms: u64,
    ) -> Result<u64, PostError> {
        if !self.joined {
            return Err(PostError::NotJoined);
        }
        if self.queue.len() >= MAX_QUEUED_POSTS || self.queued_bytes + body.len() > MAX_QUEUED_BYTES
        {
            return Err(PostError::Busy);
        }
        let request = self.next_request;
        self.next_request += 1;
        self.queued_bytes += body.len();
        self.queue.push_back(OwnPost {
            request,
            body,
            bytes,
            at_ms,
        });
        self.store_next_own(now, out);
        Ok(request)
    }

    /// Our posts are stored one at a time, each numbered as it goes to the store: a failed write
    /// leaves no hole in our sequence, and nothing is sent before it is stored.
    fn store_next_own(&mut self, _now: Instant, out: &mut Out) {
        if self.own_storing {
            return;
        }
        let Some(p) = self.queue.pop_front() else {
            return;
        };
        self.queued_bytes -= p.body.len();
        let frags = p.body.len().div_ceil(wire::MAX_CHUNK).max(1) as u16;
        let mut post = Post {
            activity: self.info.id,
            sender: self.me,
            nick: out.nick.to_string(),
            seq: self.next_post,
            first_pkt: self.next_pkt,
            frags,
            // Capped: a member's post at the top of the range must not stop everyone's next
            // (ties are broken by sender and seq, so the order stays one and total).
            lamport: (self.lamport + 1).min(wire::MAX_SEQ - 1),
            at_ms: p.at_ms,
            bytes: p.bytes,
            body: p.body,
            sig: [0; 64],
        };
        signed::sign(out.me, &mut post);
        self.own_storing = true;
        self.write(
            out,
            Write::Post(post.clone()),
            Pending::Own {
                request: p.request,
                post,
            },
        );
    }

    pub fn persisted(&mut self, now: Instant, out: &mut Out, token: u64, ok: bool, why: &str) {
        match self.pending.remove(&token) {
            Some(Pending::Own { request, post }) => {
                self.own_storing = false;
                if ok {
                    self.next_post = post.seq + 1;
                    self.next_pkt = post.first_pkt + u64::from(post.frags);
                    self.lamport = self.lamport.max(post.lamport);
                    for d in fragments(&post, false) {
                        self.remember(d.clone(), self.me);
                        out.stats.data_out += 1;
                        self.send(out, Body::Data(d));
                    }
                    self.last_sent = now;
                    out.events.push_back(Event::Posted { request, post });
                    self.changed(now);
                } else {
                    out.events.push_back(Event::PostFailed {
                        activity: self.info.id,
                        request,
                        why: why.to_string(),
                    });
                }
                self.store_next_own(now, out);
            }
            Some(Pending::Received(post)) => {
                let sender = post.sender;
                let Some(s) = self.senders.get_mut(&sender) else {
                    return;
                };
                if !ok {
                    // Not stored: not counted. Its packets, and those of the posts handed
                    // after it, are asked for again.
                    s.handed = s.stored;
                    s.handed_post = s.stored_post;
                    s.nack_at.get_or_insert(now);
                    return self.drop_input(
                        out,
                        DropReason::StoreFailed,
                        format!("post {} of a member not stored ({why})", post.seq),
                    );
                }
                // Counted in order only: a post handed after one whose write failed comes
                // again (and is stored again, idempotently).
                if post.first_pkt != s.stored + 1 {
                    return;
                }
                s.stored = post.first_pkt + u64::from(post.frags) - 1;
                s.stored_post = post.seq;
                self.lamport = next_lamport(self.lamport, post.lamport);
                out.events.push_back(Event::Received(post));
                self.changed(now);
                self.advance(now, out, sender);
            }
            Some(Pending::Activity) | None => {}
        }
    }

    pub fn handle_frame(&mut self, now: Instant, out: &mut Out, bytes: &[u8]) {
        let r =
            match wire::Repr::parse(bytes, &self.info.key) {
                Ok(r) => r,
                Err(wire::Error::BadTag) => return self.drop_input(
                    out,
                    DropReason::BadTag,
                    "a frame that does not open with the activity key (forged, or a stranger's)"
                        .into(),
                ),
                Err(e) => return self.drop_input(out, DropReason::BadFrame, e.to_string()),
            };
        if r.sender == self.me {
            return; // our own, back through multicast loopback
        }
        if r.body.kind().is_control() {
            if !signed::verify_control(&r) {
                return self.drop_input(
                    out,
                    DropReason::BadSignature,
                    "a control frame not signed by the member it names".into(),
                );
            }
            let counter = r.auth.map_or(0, |a| a.counter);
            if self.counters.get(&r.sender).is_some_and(|c| *c >= counter) {
                return self.drop_input(
                    out,
                    DropReason::Replayed,
                    "a control frame older than its sender's last".into(),
                );
            }
            self.note_counter(out.known, r.sender, counter);
        }
        // Every frame is sealed under a fresh random nonce: one seen before is a replay (of a
        // capture: it needs no key). Remembered for the last REPLAY_WINDOW frames.
        if let Some(nonce) = wire::nonce_of(bytes) {
            if !self.nonces.insert(nonce) {
                return self.drop_input(out, DropReason::Replayed, "a frame seen before".into());
            }
            self.nonce_order.push_back(nonce);
            if self.nonce_order.len() > REPLAY_WINDOW {
                if let Some(old) = self.nonce_order.pop_front() {
                    self.nonces.remove(&old);
                }
            }
        }
        let nick = match &r.body {
            Body::Data(d) => Some(d.nick.clone()),
            Body::Join { nick } => Some(nick.clone()),
            _ => None,
        };
        // A repair speaks for its poster, who may be long gone: it says nothing of who is here.
        let repair = matches!(&r.body, Body::Data(d) if d.repair);
        if !repair && !self.touch(now, out, r.sender, nick, matches!(r.body, Body::Leave)) {
            return;
        }
        match r.body {
            Body::Data(d) => self.on_data(now, out, r.sender, d),
            Body::Nack(entries) => self.on_nack(now, out, r.sender, bytes.len(), entries),
            Body::Session(entries) => self.on_session(now, out, entries),
            Body::Join { .. } => {
                // Tell the newcomer what there is, and that we are here, soon: every member
                // answers (another's answer does not stand for ours), so the newcomer counts
                // every member at once, not at their idle sessions a minute later.
                let at = now
                    + Duration::from_millis(out.rng.gen_range(JOIN_ANSWER_MS.0..=JOIN_ANSWER_MS.1));
                self.join_answer_at = Some(self.join_answer_at.map_or(at, |t| t.min(at)));
            }
            Body::Leave => {}
        }
    }

    /// The last control counter of `sender`. The table is bounded: past its bound a
    /// stranger's counter goes (the smallest), never a peer's while a stranger's is left, so
    /// keys invented by the thousand cannot push a member's out and replay its captured frames.
    fn note_counter(
        &mut self,
        known: &std::collections::HashSet<[u8; 32]>,
        sender: [u8; 32],
        counter: u64,
    ) {
        self.counters.insert(sender, counter);
        if self.counters.len() > MAX_COUNTERS {
            let victim = self
                .counters
                .iter()
                .min_by_key(|(k, c)| (known.contains(*k), **c))
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                self.counters.remove(&k);
            }
        }
    }

    /// Notes that `key` spoke; false if the member table is full and it is a newcomer.
    fn touch(
        &mut self,
        now: Instant,
        out: &mut Out,
        key: [u8; 32],
        nick: Option<String>,
        leaving: bool,
    ) -> bool {
        if leaving {
            if let Some(m) = self.members.remove(&key) {
                out.events.push_back(Event::Member {
                    activity: self.info.id,
                    key,
                    nick: m.nick,
                    change: MemberChange::Left,
                });
            }
            return true;
        }
        if let Some(m) = self.members.get_mut(&key) {
            m.last_heard = now;
            if let Some(n) = nick.filter(|n| !n.is_empty()) {
                m.nick = n;
            }
            return true;
        }
        if self.members.len() >= MAX_SENDERS {
            let keys = self.members.iter().map(|(k, m)| (k, Some(m.last_heard)));
            let Some(victim) = self.make_room(out, "members", keys) else {
                return false;
            };
            if let Some(m) = self.members.remove(&victim) {
                out.events.push_back(Event::Member {
                    activity: self.info.id,
                    key: victim,
                    nick: m.nick,
                    change: MemberChange::Silent,
                });
            }
        }
        let nick = nick.unwrap_or_default();
        self.members.insert(
            key,
            Member {
                nick: nick.clone(),
                last_heard: now,
            },
        );
        out.events.push_back(Event::Member {
            activity: self.info.id,
            key,
            nick,
            change: MemberChange::Joined,
        });
        true
    }

    /// Notes that packet `key` was just repaired (by us or another member), forgetting what is
    /// older than [`REPAIR_HOLDOFF`].
    fn note_sent(&mut self, now: Instant, key: ([u8; 32], u64)) {
        while let Some((t, k)) = self.recent_order.front() {
            if *t + REPAIR_HOLDOFF > now && self.recent_order.len() < MAX_CACHE {
                break;
            }
            if self.recent.get(k) == Some(t) {
                self.recent.remove(k);
            }
            self.recent_order.pop_front();
        }
        self.recent.insert(key, now);
        self.recent_order.push_back((now, key));
    }

    /// Keeps a packet to repair it for others later.
    fn remember(&mut self, d: Data, sender: [u8; 32]) {
        let key = (sender, d.pkt);
        if self.cache.insert(key, d).is_none() {
            self.cache_order.push_back(key);
            while self.cache_order.len() > MAX_CACHE {
                if let Some(old) = self.cache_order.pop_front() {
                    self.cache.remove(&old);
                }
            }
        }
    }

    fn on_data(&mut self, now: Instant, out: &mut Out, sender: [u8; 32], d: Data) {
        // Someone sent it: our own repair of it is not needed, nor (a repair) one for a NACK
        // sent before it arrived.
        self.repairs.remove(&(sender, d.pkt));
        self.loading.remove(&(sender, d.pkt));
        if d.repair {
            self.note_sent(now, (sender, d.pkt));
        }
        // A copy of what we hold (a repair for someone else, a replay) costs no signature check.
        if self
            .senders
            .get(&sender)
            .is_some_and(|s| d.pkt <= s.handed || s.buffer.contains_key(&d.pkt))
        {
            out.stats.duplicates += 1;
            return;
        }
        // A whole post in one packet is checked before it takes its slot, so a forgery never
        // keeps the genuine post out; a longer one is checked once complete (advance_one). The
        // check waits for the end of this turn's input, with the others that came in it, and
        // is made for all of them at once (`verify_queued`).
        if d.frags == 1 {
            let queued = self
                .unverified
                .iter()
                .any(|(s, q)| *s == sender && q.pkt == d.pkt);
            if queued {
                out.stats.duplicates += 1;
            } else if self.unverified.len() < MAX_UNVERIFIED {
                self.unverified_since.get_or_insert(now);
                self.unverified.push((sender, d));
            } else if signed::verify(&assemble(self.info.id, sender, std::slice::from_ref(&d))) {
                self.take_data(now, out, sender, d);
            } else {
                self.drop_forged(out, d.post);
            }
            return;
        }
        self.take_data(now, out, sender, d);
    }

    /// A post that its sender did not sign: dropped and counted.
    fn drop_forged(&self, out: &mut Out, post: u64) {
        self.drop_input(
            out,
            DropReason::BadSignature,
            format!("post {post} not signed by its sender: dropped"),
        );
    }

    /// The one-fragment posts that came in the last [`VERIFY_HOLD`] (or filled the queue),
    /// checked together: what its sender signed is taken, the rest dropped.
    fn verify_queued(&mut self, now: Instant, out: &mut Out) {
        let due = self
            .unverified_since
            .is_some_and(|t| t + VERIFY_HOLD <= now)
            || self.unverified.len() >= MAX_UNVERIFIED;
        if self.unverified.is_empty() || !due {
            return;
        }
        self.unverified_since = None;
        let queued = std::mem::take(&mut self.unverified);
        let posts: Vec<Post> = queued
            .iter()
            .map(|(s, d)| assemble(self.info.id, *s, std::slice::from_ref(d)))
            .collect();
        let ok = signed::verify_all(&posts);
        for ((sender, d), ok) in queued.into_iter().zip(ok) {
            if ok {
                self.take_data(now, out, sender, d);
            } else {
                self.drop_forged(out, d.post);
            }
        }
    }

    /// A data packet whose post, if it is whole in it, its sender signed: held, remembered to
    /// repair, and stored with its post once the post is complete and its turn comes.
    fn take_data(&mut self, now: Instant, out: &mut Out, sender: [u8; 32], d: Data) {
        if self
            .senders
            .get(&sender)
            .is_some_and(|s| d.pkt <= s.handed || s.buffer.contains_key(&d.pkt))
        {
            out.stats.duplicates += 1;
            return;
        }
        if !self.senders.contains_key(&sender) && !self.room_for_sender(out) {
            return;
        }
        let s = self.senders.entry(sender).or_insert_with(|| Sender {
            nack_rto: NACK_RTO_FIRST,
            ..Sender::default()
        });
        if !d.repair {
            s.last_heard = Some(now);
        }
        if d.pkt <= s.handed || s.buffer.contains_key(&d.pkt) {
            // A copy (a repair for someone else, or a replay): already held.
            out.stats.duplicates += 1;
            return;
        }
        if s.buffer.len() >= MAX_BUFFER {
            return self.drop_input(
                out,
                DropReason::TableFull,
                format!("more than {MAX_BUFFER} packets held out of order"),
            );
        }
        let len = d.chunk.len();
        if s.bytes + len > MAX_SENDER_BYTES || self.held_bytes + len > MAX_HELD_BYTES {
            return self.drop_input(
                out,
                DropReason::TableFull,
                format!(
                    "over {MAX_SENDER_BYTES} bytes held for one sender or {MAX_HELD_BYTES} for all"
                ),
            );
        }
        if let Some(seen) = s.gaps.remove(&d.pkt) {
            out.stats.repair_took(now.saturating_duration_since(seen));
        }
        // A live packet past the last known one: those between went missing now (history a
        // joiner learns of from sessions is not a loss).
        let new_gap = !d.repair && d.pkt > s.known + 1;
        // More than a bulk at once is history (we were away, or just joined), not loss.
        if new_gap && d.pkt - s.known <= BULK {
            for p in s.known + 1..d.pkt {
                s.gaps.insert(p, now);
            }
            while s.gaps.len() > MAX_BUFFER {
                s.gaps.pop_first();
            }
        }
        if let Some(&oldest) = s.gaps.keys().next() {
            // Gaps filled some other way (stored before a restart) are not waited for.
            if oldest <= s.handed {
                s.gaps = s.gaps.split_off(&(s.handed + 1));
            }
        }
        if new_gap {
            // A fresh loss is asked for soon, not at the next retry of older ones (members
            // hold off repairing what they repaired just now, so those do not come twice).
            let soon =
                now + Duration::from_millis(out.rng.gen_range(NACK_DELAY_MS.0..=NACK_DELAY_MS.1));
            if s.nack_at.is_some_and(|t| t > soon) {
                s.nack_at = Some(soon);
            }
        }
        s.known = s.known.max(d.pkt);
        // Progress: NACKs for this sender start from a short wait again. While a bulk of
        // repairs is still arriving (a late joiner's history, in bursts longer than the wait),
        // asking again would only bring them twice; a few holes are asked for at once.
        s.nack_rto = NACK_RTO_FIRST;
        let missing = s.known.saturating_sub(s.handed + s.buffer.len() as u64);
        if d.repair && missing > BULK {
            if let Some(t) = s.nack_at.as_mut() {
                *t = (*t).max(now + NACK_RTO_FIRST);
            }
        }
        s.bytes += len;
        self.held_bytes += len;
        s.buffer.insert(d.pkt, d.clone());
        self.remember(d, sender);
        self.advance(now, out, sender);
        self.schedule_nack(now, out, sender);
    }

    /// Hands `sender`'s next complete posts to the store, in order.
    fn advance(&mut self, now: Instant, out: &mut Out, sender: [u8; 32]) {
        while self.advance_one(now, out, sender) {}
    }

    /// Hands `sender`'s next post to the store if its packets are all here; true if it did.
    fn advance_one(&mut self, now: Instant, out: &mut Out, sender: [u8; 32]) -> bool {
        let Some(s) = self.senders.get_mut(&sender) else {
            return false;
        };
        if s.storing() >= MAX_STORING {
            return false;
        }
        let next = s.next();
        let Some(first) = s.buffer.get(&next) else {
            return false;
        };
        let (post_seq, frags) = (first.post, first.frags);
        let consistent = first.frag == 0 && post_seq == s.handed_post + 1;
        if !consistent {
            if let Some(d) = s.take(next) {
                self.held_bytes -= d.chunk.len();
            }
            let expected = s.handed_post + 1;
            self.drop_input(
                out,
                DropReason::BadNumbering,
                format!("packet {next} is not the start of post {expected}"),
            );
            return false;
        }
        let last = next + u64::from(frags) - 1;
        let complete = (next..=last).all(|p| {
            s.buffer.get(&p).is_some_and(|d| {
                d.post == post_seq && d.frags == frags && u64::from(d.frag) == p - next
            })
        });
        if !complete {
            return false;
        }
        let parts: Vec<Data> = (next..=last).filter_map(|p| s.take(p)).collect();
        self.held_bytes -= parts.iter().map(|d| d.chunk.len()).sum::<usize>();
        let post = assemble(self.info.id, sender, &parts);
        // A post of one fragment was verified as it came (see on_data).
        if frags > 1 && !signed::verify(&post) {
            // A member's forgery in the poster's name (or a fragment of one): gone from the
            // buffer and the repair cache, so the genuine packets are asked for and taken.
            s.nack_at.get_or_insert(now);
            for p in next..=last {
                self.cache.remove(&(sender, p));
            }
            self.drop_input(
                out,
                DropReason::BadSignature,
                format!("post {post_seq} not signed by its sender: dropped"),
            );
            return false;
        }
        s.handed = last;
        s.handed_post = post_seq;
        self.write(out, Write::Post(post.clone()), Pending::Received(post));
        true
    }

    /// Packets of `sender` we know exist and do not hold, as inclusive ranges.
    fn missing(&self, sender: &[u8; 32]) -> Vec<(u64, u64)> {
        let Some(s) = self.senders.get(sender) else {
            return Vec::new();
        };
        let from = s.handed + 1;
        let mut ranges = Vec::new();
        let mut start: Option<u64> = None;
        let mut p = from;
        // Walk the gaps between held packets (not every number: a late joiner may miss
        // thousands, and the buffer holds few).
        let mut held = s.buffer.range(from..).map(|(k, _)| *k).peekable();
        while p <= s.known && ranges.len() < wire::MAX_RANGES {
            match held.peek() {
                Some(&h) if h == p => {
                    if let Some(a) = start.take() {
                        ranges.push((a, p - 1));
                    }
                    held.next();
                    p += 1;
                }
                Some(&h) => {
                    start.get_or_insert(p);
                    p = h;
                }
                None => {
                    start.get_or_insert(p);
                    p = s.known + 1;
                }
            }
        }
        if let Some(a) = start {
            if ranges.len() < wire::MAX_RANGES {
                ranges.push((a, p - 1));
            }
        }
        ranges
    }

    fn schedule_nack(&mut self, now: Instant, out: &mut Out, sender: [u8; 32]) {
        if self.missing(&sender).is_empty() {
            if let Some(s) = self.senders.get_mut(&sender) {
                s.nack_at = None;
            }
            return;
        }
        let delay = Duration::from_millis(out.rng.gen_range(NACK_DELAY_MS.0..=NACK_DELAY_MS.1));
        if let Some(s) = self.senders.get_mut(&sender) {
            s.nack_at.get_or_insert(now + delay);
        }
    }

    /// `asker`'s NACK (`len` bytes) for `entries`: repaired what we hold, once for free and
    /// again only on its credit (see [`super::askers`]).
    fn on_nack(
        &mut self,
        now: Instant,
        out: &mut Out,
        asker: [u8; 32],
        len: usize,
        entries: Vec<wire::NackEntry>,
    ) {
        self.askers.on_nack(now, asker, len);
        let mut budget = MAX_REPAIRS_PER_NACK;
        for (sender, ranges) in entries {
            // Someone asked for these already: our own NACK for them can wait for the repair.
            let mine = self.missing(&sender);
            if let Some(s) = self.senders.get_mut(&sender) {
                let overlaps = ranges
                    .iter()
                    .any(|(a, b)| mine.iter().any(|(c, d)| a <= d && c <= b));
                if overlaps {
                    let later = now + s.nack_rto;
                    if s.nack_at.is_some_and(|t| t < later) {
                        s.nack_at = Some(later);
                    }
                }
            }
            // What we hold, we repair.
            let held = if sender == self.me {
                self.next_pkt - 1
            } else {
                self.senders.get(&sender).map_or(0, |s| s.stored)
            };
            for (a, b) in ranges {
                let mut p = a;
                while p <= b.min(held) && budget > 0 {
                    // Skipped or not, each asked-for packet costs the budget: a NACK cannot
                    // make us walk more than MAX_REPAIRS_PER_NACK of them.
                    budget -= 1;
                    let sent_at = self.recent.get(&(sender, p));
                    if sent_at.is_some_and(|t| *t + REPAIR_HOLDOFF > now)
                        || !self.askers.may_repair(&asker, sender, p)
                    {
                        p += 1;
                        continue;
                    }
                    let delay = if sender == self.me {
                        Duration::ZERO
                    } else {
                        let (lo, hi) = if self.members.contains_key(&sender) {
                            REPAIR_DELAY_MS
                        } else {
                            REPAIR_DELAY_ORPHAN_MS
                        };
                        Duration::from_millis(out.rng.gen_range(lo..=hi))
                    };
                    self.repairs.entry((sender, p)).or_insert(now + delay);
                    p += 1;
                }
            }
        }
    }

    fn on_session(&mut self, now: Instant, out: &mut Out, entries: Vec<([u8; 32], u64)>) {
        let mut covers_ours = true;
        for (sender, hwm) in &entries {
            if *sender == self.me {
                continue;
            }
            if !self.senders.contains_key(sender) && !self.room_for_sender(out) {
                continue;
            }
            let s = self.senders.entry(*sender).or_insert_with(|| Sender {
                nack_rto: NACK_RTO_FIRST,
                ..Sender::default()
            });
            s.known = s.known.max(*hwm);
            self.schedule_nack(now, out, *sender);
        }
        // Does it say everything ours would? Then our idle session can wait. If not, its
        // sender is behind us (a newcomer whose join we missed, a member back from a crash,
        // one that lost our last session) and does not know it: we tell it soon, unless
        // another member's session that says as much comes first.
        for (sender, ours) in self.session_entries() {
            let theirs = entries
                .iter()
                .find(|(s, _)| *s == sender)
                .map_or(0, |(_, h)| *h);
            if theirs < ours {
                covers_ours = false;
            }
        }
        if !covers_ours {
            let at =
                now + Duration::from_millis(out.rng.gen_range(JOIN_ANSWER_MS.0..=JOIN_ANSWER_MS.1));
            self.session_at = Some(self.session_at.map_or(at, |t| t.min(at)));
        } else if self.quick_left == 0 {
            // Jittered like any idle session: members that all heard this one must not all
            // speak at once a minute from now.
            let later = idle_session_at(now, out).min(self.last_sent + KEEPALIVE);
            if self.session_at.is_some_and(|t| t < later) {
                self.session_at = Some(later);
            }
        }
    }

    /// (sender, highest packet held in order) for every sender we hold something of.
    fn session_entries(&self) -> Vec<([u8; 32], u64)> {
        let mut v = Vec::new();
        if self.next_pkt > 1 {
            v.push((self.me, self.next_pkt - 1));
        }
        for (k, s) in &self.senders {
            if s.stored > 0 {
                v.push((*k, s.stored));
            }
        }
        v
    }

    fn send_session(&mut self, now: Instant, out: &mut Out) {
        let entries = self.session_entries();
        if entries.is_empty() {
            out.stats.sessions_out += 1;
            self.send(out, Body::Session(Vec::new()));
        }
        for chunk in entries.chunks(wire::MAX_ENTRIES) {
            out.stats.sessions_out += 1;
            self.send(out, Body::Session(chunk.to_vec()));
        }
        self.last_sent = now;
    }

    fn send_nacks(&mut self, now: Instant, out: &mut Out) {
        let due: Vec<[u8; 32]> = self
            .senders
            .iter()
            .filter(|(_, s)| s.nack_at.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        let mut entries = Vec::new();
        for sender in due {
            let ranges = self.missing(&sender);
            let Some(s) = self.senders.get_mut(&sender) else {
                continue;
            };
            if ranges.is_empty() {
                s.nack_at = None;
                continue;
            }
            s.nack_at = Some(now + s.nack_rto);
            s.nack_rto = (s.nack_rto * 2).min(NACK_RTO_MAX);
            entries.push((sender, ranges));
        }
        if !entries.is_empty() {
            self.last_sent = now;
        }
        for frame in wire::pack_nack(entries) {
            out.stats.nacks_out += 1;
            self.send(out, Body::Nack(frame));
        }
    }

    fn send_repairs(&mut self, now: Instant, out: &mut Out) {
        let due: Vec<([u8; 32], u64)> = self
            .repairs
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(k, _)| *k)
            .collect();
        let mut from_store: BTreeMap<[u8; 32], Vec<u64>> = BTreeMap::new();
        for key in due {
            self.repairs.remove(&key);
            match self.cache.get(&key).cloned() {
                Some(mut d) => {
                    d.repair = true;
                    out.stats.repairs_out += 1;
                    self.note_sent(now, key);
                    self.send_as(out, key.0, Body::Data(d));
                    self.last_sent = now;
                }
                None => {
                    if self.loading.insert(key) {
                        from_store.entry(key.0).or_default().push(key.1);
                    }
                }
            }
        }
        for (sender, mut pkts) in from_store {
            pkts.sort_unstable();
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for p in pkts {
                match runs.last_mut() {
                    Some((_, b)) if *b + 1 == p => *b = p,
                    _ => runs.push((p, p)),
                }
            }
            for (first, last) in runs {
                let token = *out.next_token;
                *out.next_token += 1;
                out.loads.push_back((
                    token,
                    Load {
                        activity: self.info.id,
                        sender,
                        first,
                        last,
                    },
                ));
            }
        }
    }

    /// Posts the store gave back for a repair: their packets in the range go out (unless
    /// someone else repaired them meanwhile).
    pub fn loaded(&mut self, now: Instant, out: &mut Out, load: &Load, posts: Vec<Post>) {
        for post in posts {
            if post.sender != load.sender || post.activity != self.info.id {
                continue;
            }
            for d in fragments(&post, true) {
                let key = (load.sender, d.pkt);
                if d.pkt >= load.first && d.pkt <= load.last && self.loading.remove(&key) {
                    out.stats.repairs_out += 1;
                    self.note_sent(now, key);
                    self.remember(d.clone(), load.sender);
                    self.send_as(out, load.sender, Body::Data(d));
                    self.last_sent = now;
                }
            }
        }
        // What the store did not have is not ours to repair.
        let left: Vec<_> = self
            .loading
            .range((load.sender, load.first)..=(load.sender, load.last))
            .copied()
            .collect();
        for k in left {
            self.loading.remove(&k);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant, out: &mut Out) {
        self.verify_queued(now, out);
        if !self.joined {
            return;
        }
        self.send_repairs(now, out);
        self.send_nacks(now, out);
        let answer = self.join_answer_at.is_some_and(|t| t <= now);
        if answer || self.session_at.is_some_and(|t| t <= now) || self.last_sent + KEEPALIVE <= now
        {
            self.join_answer_at = None;
            self.send_session(now, out);
            self.session_at = Some(if self.quick_left > 0 {
                let i = SESSION_QUICK.len() - self.quick_left;
                self.quick_left -= 1;
                now + SESSION_QUICK[(i + 1).min(SESSION_QUICK.len() - 1)]
            } else {
                idle_session_at(now, out)
            });
        }
        let silent: Vec<[u8; 32]> = self
            .members
            .iter()
            .filter(|(_, m)| m.last_heard + MEMBER_SILENCE <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in silent {
            if let Some(m) = self.members.remove(&key) {
                out.events.push_back(Event::Member {
                    activity: self.info.id,
                    key,
                    nick: m.nick,
                    change: MemberChange::Silent,
                });
            }
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.joined {
            return None;
        }
        let nacks = self.senders.values().filter_map(|s| s.nack_at).min();
        let repairs = self.repairs.values().min().copied();
        let silence = self
            .members
            .values()
            .map(|m| m.last_heard + MEMBER_SILENCE)
            .min();
        [
            self.unverified_since.map(|t| t + VERIFY_HOLD),
            self.session_at,
            self.join_answer_at,
            Some(self.last_sent + KEEPALIVE),
            nacks,
            repairs,
            silence,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// When an idle session goes: [`SESSION_IDLE`] from now, ± 10 %.
fn idle_session_at(now: Instant, out: &mut Out) -> Instant {
    let jitter = out.rng.gen_range(0..=SESSION_IDLE.as_millis() as u64 / 5);
    now + SESSION_IDLE - SESSION_IDLE / 10 + Duration::from_millis(jitter)
}

/// Our Lamport clock after seeing `seen`: it follows, but a post cannot move it by more than
/// [`MAX_LAMPORT_JUMP`]. One signed post with a time near the top of the range would otherwise
/// set every member's clock there, and nobody could post again; honest clocks grow by one a
/// post, so the bound never bites them.
fn next_lamport(ours: u64, seen: u64) -> u64 {
    ours.max(seen.min(ours.saturating_add(MAX_LAMPORT_JUMP)))
}

/// The post `parts` (its fragments, in order, at least one) make up.
fn assemble(activity: super::ActivityId, sender: [u8; 32], parts: &[Data]) -> Post {
    let head = &parts[0];
    Post {
        activity,
        sender,
        nick: head.nick.clone(),
        seq: head.post,
        first_pkt: head.pkt,
        frags: head.frags,
        lamport: head.lamport,
        at_ms: head.at_ms,
        bytes: head.bytes,
        body: parts.iter().flat_map(|d| d.chunk.iter().copied()).collect(),
        sig: head.sig,
    }
}

/// A post cut into its packets (the same cut every time: repairs from the store match).
pub fn fragments(post: &Post, repair: bool) -> Vec<Data> {
    let chunks: Vec<&[u8]> = if post.body.is_empty() {
        vec![&[][..]]
    } else {
        post.body.chunks(wire::MAX_CHUNK).collect()
    };
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| Data {
            pkt: post.first_pkt + i as u64,
            post: post.seq,
            lamport: post.lamport,
            at_ms: post.at_ms,
            frag: i as u16,
            frags: post.frags,
            bytes: post.bytes,
            repair,
            sig: post.sig,
            nick: post.nick.clone(),
            chunk: chunk.to_vec(),
        })
        .collect()
}
