//! Asking (RFC 6762 §5, §7.3, §10): the browse with its doubling interval, one resolve for
//! whatever a new peer lacks, the shared and jittered refresh of records in use (one peer's
//! records together), reconfirmation, and what other hosts' queries tell us: duplicate question
//! suppression and POOF. Never a continuous per-peer query (DESIGN.md §4.1).

use std::collections::HashSet;

use super::*;

impl Presence {
    /// What a query from someone else tells us about our own plans and our cache.
    pub(super) fn observe_query(&mut self, now: Instant, iface: IfaceId, msg: &Message) {
        for q in &msg.questions {
            // RFC 6762 §10.5 (POOF): two or more queries for a record within ten seconds, and
            // no answer within ten seconds, condemn it. A query just after the record was heard
            // does not count: its owner holds the answer back (the 1 s rate limit of §6).
            for e in self.cache.entries_mut() {
                if e.iface == iface
                    && q.matches(&e.record)
                    && e.received + RATE_LIMIT <= now
                    && !msg.answers.iter().any(|k| k.same_record(&e.record))
                {
                    e.poof = Some(match e.poof {
                        Some((n, first)) if now < first + cache::POOF_WINDOW => (n + 1, first),
                        _ => (1, now),
                    });
                }
            }
            if q.unicast {
                continue;
            }
            // RFC 6762 §7.3: duplicate question suppression. Someone asked what we were about to
            // ask, and their known answers hold nothing we would not list ourselves, so every
            // answer we want will answer them too, and reach us. Our own records count as known:
            // we never need an answer about ourselves. (Requiring the reverse, ours within
            // theirs, never suppresses anything among peers that all know each other, since no
            // host lists its own record: bench/presence showed every node browsing alone.)
            let ours_known = self.known_answers(now, iface, &q.name, q.qtype);
            let own = self.own_records(iface);
            let covered = msg.answers.iter().filter(|a| q.matches(a)).all(|a| {
                ours_known.iter().any(|k| k.same_record(a)) || own.iter().any(|o| o.same_record(a))
            });
            let mut postponed = Vec::new();
            self.queries.retain(|p| {
                let same = p.iface == iface && p.name == q.name && p.qtype == q.qtype;
                if !same || !covered || p.at <= now {
                    return true;
                }
                if p.kind == QueryKind::Browse {
                    postponed.push(p.clone());
                }
                false
            });
            for p in postponed {
                self.reschedule_browse(now, p);
            }
        }
    }

    pub(super) fn plan_query(
        &mut self,
        iface: IfaceId,
        name: Name,
        qtype: u16,
        at: Instant,
        kind: QueryKind,
    ) {
        if self
            .queries
            .iter()
            .any(|q| q.iface == iface && q.name == name && q.qtype == qtype)
        {
            return;
        }
        self.queries.push(PlannedQuery {
            iface,
            name,
            qtype,
            at,
            kind,
        });
    }

    pub(super) fn reschedule_browse(&mut self, now: Instant, mut q: PlannedQuery) {
        if let Some(link) = self.links.get_mut(&q.iface) {
            q.at = now + link.browse_interval;
            // RFC 6762 §5.2: intervals at least double, up to an hour.
            link.browse_interval = (link.browse_interval * 2).min(BROWSE_MAX_INTERVAL);
            self.queries.push(q);
        }
    }

    /// Cached answers to a question that still have more than half their TTL (RFC 6762 §7.1).
    pub(super) fn known_answers(
        &self,
        now: Instant,
        iface: IfaceId,
        name: &Name,
        qtype: u16,
    ) -> Vec<Record> {
        if qtype != TYPE_PTR {
            return Vec::new(); // refreshes and resolves want the answer even if we hold it
        }
        self.cache
            .entries()
            .iter()
            .filter(|e| e.iface == iface && e.record.name == *name && e.record.rtype() == qtype)
            .filter_map(|e| {
                let left = e.expires.saturating_duration_since(now).as_secs() as u32;
                (left > e.record.ttl / 2).then(|| Record {
                    ttl: left,
                    cache_flush: false,
                    ..e.record.clone()
                })
            })
            .collect()
    }

    /// One query message asking `batch`, with our known answers to each (RFC 6762 §7.1).
    fn send_questions(&mut self, now: Instant, iface: IfaceId, batch: &[PlannedQuery]) {
        let mut msg = Message::query();
        for q in batch {
            msg.questions.push(Question {
                name: q.name.clone(),
                qtype: q.qtype,
                unicast: false,
            });
            for k in self.known_answers(now, iface, &q.name, q.qtype) {
                if !msg.answers.iter().any(|a| a.same_record(&k)) {
                    msg.answers.push(k);
                }
            }
        }
        self.send_split(iface, Destination::Multicast, msg);
    }

    pub(super) fn send_due_queries(&mut self, now: Instant) {
        if !self.queries.iter().any(|q| q.at <= now) {
            return;
        }
        let (due, keep): (Vec<PlannedQuery>, Vec<PlannedQuery>) =
            self.queries.drain(..).partition(|q| q.at <= now);
        self.queries = keep;
        let mut by_iface: BTreeMap<IfaceId, Vec<PlannedQuery>> = BTreeMap::new();
        for q in due {
            by_iface.entry(q.iface).or_default().push(q);
        }
        for (iface, qs) in by_iface {
            // No more questions in one message than a receiver takes (wire::MAX_QUESTIONS).
            for batch in qs.chunks(wire::MAX_QUESTIONS) {
                self.send_questions(now, iface, batch);
            }
            for q in qs {
                match q.kind {
                    QueryKind::Browse => self.reschedule_browse(now, q),
                    QueryKind::Resolve { attempt } if attempt + 1 < RESOLVE_ATTEMPTS => {
                        let at = now + Duration::from_secs(1 << attempt);
                        self.queries.push(PlannedQuery {
                            at,
                            kind: QueryKind::Resolve {
                                attempt: attempt + 1,
                            },
                            ..q
                        });
                    }
                    QueryKind::Reconfirm { sent } if sent + 1 < RECONFIRM_QUERIES => {
                        let at = now + RECONFIRM_SPACING;
                        self.queries.push(PlannedQuery {
                            at,
                            kind: QueryKind::Reconfirm { sent: sent + 1 },
                            ..q
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// After new PTRs or SRVs: ask once for what is missing to make a peer.
    pub(super) fn plan_resolves(&mut self, now: Instant) {
        // What the cache holds, indexed once: the checks below are then linear in its size.
        let held: HashSet<(&Name, u16)> = self
            .cache
            .entries()
            .iter()
            .map(|e| (&e.record.name, e.record.rtype()))
            .collect();
        let mut wanted: Vec<(IfaceId, Name, u16)> = Vec::new();
        for e in self.cache.entries() {
            match &e.record.data {
                RecordData::Ptr(inst) if e.record.name == self.service => {
                    for t in [TYPE_SRV, TYPE_TXT] {
                        if !held.contains(&(inst, t)) {
                            wanted.push((e.iface, inst.clone(), t));
                        }
                    }
                }
                RecordData::Srv { target, .. }
                    if !held.contains(&(target, TYPE_A))
                        && !held.contains(&(target, TYPE_AAAA)) =>
                {
                    wanted.push((e.iface, target.clone(), TYPE_A));
                }
                _ => {}
            }
        }
        for (iface, name, qtype) in wanted {
            let at = now + self.random_ms(SHARED_DELAY_MS.0, SHARED_DELAY_MS.1);
            self.plan_query(iface, name, qtype, at, QueryKind::Resolve { attempt: 0 });
        }
    }

    pub(super) fn drive_cache(&mut self, now: Instant) {
        if self.cache.expire(now) {
            self.update_peers();
        }
        // One pass to index which instances point at which host name, so that the rest is
        // linear in the cache size (a crowded or hostile link makes the cache large).
        let mut srvs_by_target: HashMap<(IfaceId, &Name), Vec<&Name>> = HashMap::new();
        for e in self.cache.entries() {
            if let RecordData::Srv { target, .. } = &e.record.data {
                srvs_by_target
                    .entry((e.iface, target))
                    .or_default()
                    .push(&e.record.name);
            }
        }
        let targets: HashSet<&Name> = srvs_by_target.keys().map(|(_, t)| *t).collect();
        let in_use: Vec<bool> = self
            .cache
            .entries()
            .iter()
            .map(|e| match e.record.rtype() {
                // RFC 6762 §5.2: refresh what is in use; an address is, while an SRV points at it.
                TYPE_PTR | TYPE_SRV | TYPE_TXT => true,
                TYPE_A | TYPE_AAAA => targets.contains(&e.record.name),
                _ => false,
            })
            .collect();
        drop(targets);
        // The names whose refresh is due now, and the host names their SRVs point at: one peer's
        // SRV and address records are refreshed together, in one query, rather than each on its
        // own jitter a second or two apart.
        let mut peers_due: HashSet<(IfaceId, Name)> = HashSet::new();
        for (e, used) in self.cache.entries().iter().zip(&in_use) {
            if *used && e.refresh_at.is_some_and(|t| t <= now) {
                peers_due.insert((e.iface, e.record.name.clone()));
                if let RecordData::Srv { target, .. } = &e.record.data {
                    peers_due.insert((e.iface, target.clone()));
                }
                for srv in srvs_by_target
                    .get(&(e.iface, &e.record.name))
                    .into_iter()
                    .flatten()
                {
                    peers_due.insert((e.iface, (*srv).clone()));
                }
            }
        }
        drop(srvs_by_target);
        let mut due: Vec<(IfaceId, Name, u16)> = Vec::new();
        for (e, used) in self.cache.entries_mut().zip(in_use) {
            let Some(at) = e.refresh_at else { continue };
            let soon =
                now + Duration::from_secs(e.record.ttl as u64) * REFRESH_COALESCE_PERCENT / 100;
            let with_peer = at <= soon && peers_due.contains(&(e.iface, e.record.name.clone()));
            if at <= now || with_peer {
                if used {
                    due.push((e.iface, e.record.name.clone(), e.record.rtype()));
                }
                Cache::advance_refresh(e, &mut self.rng);
            }
        }
        for (iface, name, qtype) in due {
            self.plan_query(iface, name, qtype, now, QueryKind::Refresh);
        }
    }
}
