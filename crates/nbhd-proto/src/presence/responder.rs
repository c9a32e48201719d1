//! Answering (RFC 6762 §6, §7): which of our records a query asks for, known-answer suppression
//! (including answers continued in truncated packets, §7.2), the shared-answer delay, the
//! per-record multicast rate limit, duplicate answer suppression's pending response, legacy
//! unicast replies (§6.7), and the tie-break when another host probes for our names (§8.2).

use super::*;

impl Presence {
    pub(super) fn handle_query(
        &mut self,
        now: Instant,
        iface: IfaceId,
        src: SocketAddr,
        msg: Message,
    ) {
        self.observe_query(now, iface, &msg);
        if !msg.authority.is_empty() {
            self.tie_break(now, iface, &msg);
        }
        let link = self
            .links
            .get_mut(&iface)
            .expect("checked by handle_packet");
        // RFC 6762 §7.2: known answers continued in further packets from the same querier,
        // right after the query they continue (the newest one waiting from it).
        if let Some(w) = link.tc_waits.iter_mut().rev().find(|w| w.src == src) {
            if msg.questions.is_empty() {
                // Bounded: a querier that keeps continuing adds no more past the bound (we
                // may then answer what it knew; that costs a packet, not memory).
                for r in msg.answers {
                    if w.bytes + r.wire_len() > MAX_KNOWN_ANSWER_BYTES {
                        break;
                    }
                    w.bytes += r.wire_len();
                    w.query.answers.push(r);
                }
                if msg.truncated {
                    let extra =
                        Duration::from_millis(self.rng.gen_range(TC_WAIT_MS.0..=TC_WAIT_MS.1));
                    w.until = (now + extra).min(w.started + MAX_TC_WAIT);
                } else {
                    w.until = now;
                }
                return;
            }
        }
        if msg.truncated && link.tc_waits.len() < MAX_TC_WAITS {
            let until =
                now + Duration::from_millis(self.rng.gen_range(TC_WAIT_MS.0..=TC_WAIT_MS.1));
            let link = self
                .links
                .get_mut(&iface)
                .expect("checked by handle_packet");
            let bytes = msg.answers.iter().map(Record::wire_len).sum();
            link.tc_waits.push(TcWait {
                src,
                started: now,
                until,
                query: msg,
                bytes,
            });
            return;
        }
        self.answer_query(now, iface, src, &msg, true);
    }

    /// The lexicographic tie-break of simultaneous probes (RFC 6762 §8.2).
    pub(super) fn tie_break(&mut self, now: Instant, iface: IfaceId, msg: &Message) {
        let Some(LinkState::Probing { .. }) = self.links.get(&iface).map(|l| l.state) else {
            return;
        };
        let ours_all = self.probe_message(iface, false).authority;
        for name in [self.instance_name(), self.host_name()] {
            let key = |rs: &[Record]| {
                let mut v: Vec<(u16, Vec<u8>)> = rs
                    .iter()
                    .filter(|r| r.name == name)
                    .map(|r| (r.rtype(), r.data.wire_bytes()))
                    .collect();
                v.sort();
                v
            };
            let theirs = key(&msg.authority);
            if theirs.is_empty() {
                continue;
            }
            let ours = key(&ours_all);
            if theirs > ours {
                // We lose: wait a second and probe again; the winner will then defend the name.
                self.set_state(
                    iface,
                    LinkState::Probing {
                        sent: 0,
                        at: now + PROBE_DEFER,
                    },
                );
                return;
            }
        }
    }

    pub(super) fn answer_query(
        &mut self,
        now: Instant,
        iface: IfaceId,
        src: SocketAddr,
        msg: &Message,
        delay_shared: bool,
    ) {
        let Some(link) = self.links.get(&iface) else {
            return;
        };
        if matches!(link.state, LinkState::Probing { .. }) {
            return; // not ours yet (RFC 6762 §8.1)
        }
        let own = self.own_records(iface);
        let known = |r: &Record| {
            msg.answers
                .iter()
                .any(|k| k.same_record(r) && k.ttl >= r.ttl / 2)
        };
        let mut answers: Vec<Record> = Vec::new();
        for q in &msg.questions {
            for r in own.iter().filter(|r| q.matches(r)) {
                // RFC 6762 §7.1: known-answer suppression.
                if !known(r) && !answers.iter().any(|a| a.same_record(r)) {
                    answers.push(r.clone());
                }
            }
        }
        if answers.is_empty() {
            return;
        }
        // RFC 6763 §12: the records a querier will want next travel as additionals.
        let mut additional: Vec<Record> = Vec::new();
        let add = |r: &Record, answers: &[Record], additional: &mut Vec<Record>| {
            if !known(r)
                && !answers.iter().any(|a| a.same_record(r))
                && !additional.iter().any(|a| a.same_record(r))
            {
                additional.push(r.clone());
            }
        };
        let inst = self.instance_name();
        let host = self.host_name();
        for a in answers.clone() {
            let want: Vec<&Record> = match a.rtype() {
                TYPE_PTR if a.name == self.service => own
                    .iter()
                    .filter(|r| r.name == inst || r.name == host)
                    .collect(),
                TYPE_SRV => own.iter().filter(|r| r.name == host).collect(),
                _ => Vec::new(),
            };
            for r in want {
                add(r, &answers, &mut additional);
            }
        }
        if src.port() != MDNS_PORT {
            // RFC 6762 §6.7: a legacy unicast query gets a plain DNS answer straight back.
            let mut reply = Message::response();
            reply.id = msg.id;
            reply.questions = msg.questions.clone();
            for r in answers.iter_mut().chain(additional.iter_mut()) {
                r.ttl = r.ttl.min(LEGACY_UNICAST_TTL);
                r.cache_flush = false;
            }
            reply.answers = answers;
            reply.additional = additional;
            self.send_split(iface, Destination::Unicast(src), reply);
            return;
        }
        let probe_defense = !msg.authority.is_empty();
        let shared = answers.iter().any(|r| !self.is_unique(r));
        // RFC 6762 §6: unique answers go at once, shared ones after 20-120 ms so others'
        // identical answers can suppress ours.
        let at = if shared && delay_shared && !probe_defense {
            now + self.random_ms(SHARED_DELAY_MS.0, SHARED_DELAY_MS.1)
        } else {
            now
        };
        let link = self.links.get_mut(&iface).expect("checked above");
        match &mut link.pending {
            Some(p) => {
                p.at = p.at.min(at);
                p.probe_defense |= probe_defense;
                for r in answers {
                    if !p.answers.iter().any(|a| a.same_record(&r)) {
                        p.answers.push(r);
                    }
                }
                for r in additional {
                    if !p.additional.iter().any(|a| a.same_record(&r)) {
                        p.additional.push(r);
                    }
                }
            }
            None => {
                link.pending = Some(PendingResponse {
                    at,
                    answers,
                    additional,
                    probe_defense,
                })
            }
        }
        if at <= now {
            self.flush_pending(now, iface);
        }
    }

    pub(super) fn flush_pending(&mut self, now: Instant, iface: IfaceId) {
        let Some(link) = self.links.get_mut(&iface) else {
            return;
        };
        if link.pending.as_ref().is_none_or(|p| p.at > now) {
            return;
        }
        let p = link.pending.take().expect("checked above");
        let limit = if p.probe_defense {
            PROBE_DEFENSE_RATE_LIMIT
        } else {
            RATE_LIMIT
        };
        // RFC 6762 §6: a record is multicast at most once a second (a quarter second when
        // defending a name against a probe).
        let answers: Vec<Record> = p
            .answers
            .into_iter()
            .filter(|r| {
                link.last_multicast
                    .get(&(r.name.clone(), r.data.clone()))
                    .is_none_or(|t| *t + limit <= now)
            })
            .collect();
        if answers.is_empty() {
            return;
        }
        let additional = p
            .additional
            .into_iter()
            .filter(|r| !answers.iter().any(|a| a.same_record(r)))
            .collect();
        self.note_multicast(now, iface, &answers);
        let msg = Message {
            answers,
            additional,
            ..Message::response()
        };
        self.send_split(iface, Destination::Multicast, msg);
    }

    pub(super) fn note_multicast(&mut self, now: Instant, iface: IfaceId, records: &[Record]) {
        if let Some(link) = self.links.get_mut(&iface) {
            for r in records {
                link.last_multicast
                    .insert((r.name.clone(), r.data.clone()), now);
            }
        }
    }
}
