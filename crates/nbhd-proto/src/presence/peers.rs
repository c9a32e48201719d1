//! Learning from responses: conflicts with our own names (RFC 6762 §9), duplicate answer
//! suppression (§7.4), the cache, and the peer table derived from it (a peer is an instance with
//! SRV, TXT and at least one address; its id is its key for nbhd peers, `legacy:` and its
//! instance name for legacy XEP-0174 peers).

use super::*;

/// A legacy peer's id: its instance name, in a namespace no nbhd identity can enter (a ':'
/// is never base64url), so an instance named like bob's key is never taken for bob.
pub fn legacy_id(instance: &str) -> String {
    format!("legacy:{instance}")
}

impl Presence {
    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        iface: IfaceId,
        source: IpAddr,
        msg: Message,
    ) {
        let records: Vec<Record> = msg.answers.into_iter().chain(msg.additional).collect();
        for r in records.iter().filter(|r| r.ttl > 0) {
            if matches!(r.rtype(), TYPE_SRV | TYPE_TXT) && r.name.parent() == self.service {
                self.heard.push(r.name.first_label().to_string());
            }
        }
        // §9: conflicts. Identical records are our own (or a faithful copy); different data under
        // one of our unique names is someone else claiming it.
        let inst = self.instance_name();
        let host = self.host_name();
        // Our own records are built only when a record names us (rarely: building them signs
        // nothing but still costs, on every datagram of a flood).
        let names_us = records.iter().any(|r| r.name == inst || r.name == host);
        let (own, own_addrs) = if names_us {
            (self.own_records(iface), self.all_own_addrs())
        } else {
            (Vec::new(), Vec::new())
        };
        for r in records.iter().filter(|_| names_us) {
            let clash = if r.name == inst {
                matches!(r.rtype(), TYPE_SRV | TYPE_TXT) && !own.iter().any(|o| o.same_record(r))
            } else if r.name == host {
                match &r.data {
                    RecordData::A(a) => !own_addrs.contains(a),
                    RecordData::Aaaa(_) => true,
                    _ => false,
                }
            } else {
                false
            };
            if clash && r.ttl > 0 {
                self.conflict(now, r.name == inst);
                break;
            }
        }
        // §7.4: duplicate answer suppression.
        if let Some(p) = self.links.get_mut(&iface).and_then(|l| l.pending.as_mut()) {
            p.answers.retain(|mine| {
                !records
                    .iter()
                    .any(|r| r.same_record(mine) && r.ttl >= mine.ttl)
            });
        }
        let proven = self.prove(now, &records);
        let mut changed = false;
        for r in &records {
            if self.is_own_name(&r.name) || !self.is_relevant(r) {
                continue;
            }
            let mine = proven.contains(&r.name)
                || matches!(&r.data, RecordData::Ptr(i) if proven.contains(i));
            match self
                .cache
                .insert(now, iface, source, r, mine, &mut self.rng)
            {
                Insert::New | Insert::Goodbye => changed = true,
                Insert::Refreshed => changed = true, // last_seen moves
                Insert::Full => *self.stats.dropped.entry("cache-full").or_default() += 1,
                Insert::OverBudget => *self.stats.dropped.entry("source-budget").or_default() += 1,
                Insert::Ignored => {}
            }
            if r.ttl > 0 {
                // An answer arrived: nothing more to resolve for it.
                self.queries.retain(|q| {
                    !(q.iface == iface
                        && q.name == r.name
                        && (q.qtype == r.rtype() || q.qtype == TYPE_ANY)
                        && q.kind != QueryKind::Browse)
                });
            }
        }
        if changed {
            self.peers_changed(now);
        }
    }

    /// The cache changed: the peer table (and what to resolve) is derived again, at once if it
    /// was not in the last [`PEERS_EVERY`], else when that much has passed. Rebuilding walks the
    /// whole cache: under a flood of forged instances, each one new, doing it for every
    /// datagram made the daemon spend about a second filling its cache (`bench/flood`).
    pub(super) fn peers_changed(&mut self, now: Instant) {
        if self.peers_built.is_some_and(|t| now < t + PEERS_EVERY) {
            self.peers_dirty = true;
            return;
        }
        self.peers_dirty = false;
        self.peers_built = Some(now);
        self.update_peers();
        self.plan_resolves(now);
    }

    /// The names in `records` that belong to an instance whose key signed it ([`signed`]):
    /// the instances and their SRV targets. Each instance's signature is checked once per
    /// change (remembered in `proven`), within the verification budget.
    fn prove(&mut self, now: Instant, records: &[Record]) -> Vec<Name> {
        let mut names = Vec::new();
        for r in records.iter().filter(|r| r.ttl > 0) {
            let RecordData::Txt(strings) = &r.data else {
                continue;
            };
            if r.name.parent() != self.service {
                continue;
            }
            let pairs = RecordData::txt_pairs(strings);
            // An unsigned TXT under the name proves nothing, and takes nothing away either
            // (anyone can send one): a peer row is signed only if its own TXT was.
            if !pairs.iter().any(|(k, _)| k == signed::SIG_KEY) {
                continue;
            }
            // Its SRV in the same response, else the one we hold (a TXT that changed is
            // announced alone).
            let srv_of = |s: &Record| match &s.data {
                RecordData::Srv { port, target, .. } if s.name == r.name && s.ttl > 0 => {
                    Some((*port, target.clone()))
                }
                _ => None,
            };
            let srv = records
                .iter()
                .find_map(srv_of)
                .or_else(|| self.cache.entries().iter().find_map(|e| srv_of(&e.record)));
            let Some((port, target)) = srv else {
                continue;
            };
            let instance = r.name.first_label();
            let sig = pairs
                .iter()
                .find(|(k, _)| k == signed::SIG_KEY)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let bytes = signed::signed_bytes(instance, &target, port, &pairs);
            let seen = self
                .proven
                .get(&r.name)
                .is_some_and(|(s, b)| *s == sig && *b == bytes);
            let ok = seen
                || if self.verify_budget.take(now) {
                    signed::verify(instance, &target, port, &pairs).is_some()
                } else {
                    *self.stats.dropped.entry("unverified").or_default() += 1;
                    false
                };
            if !ok {
                continue;
            }
            if !self.proven.contains_key(&r.name) && self.proven.len() >= MAX_PROVEN {
                // Some other instance's proof goes (a map has no order: not the oldest, but
                // one); it is checked again when that instance announces again.
                if let Some(k) = self.proven.keys().next().cloned() {
                    self.proven.remove(&k);
                }
            }
            self.proven.insert(r.name.clone(), (sig, bytes));
            names.push(r.name.clone());
            names.push(target);
        }
        names
    }

    /// Records presence keeps: service PTRs, instance SRV/TXT, and addresses.
    pub(super) fn is_relevant(&self, r: &Record) -> bool {
        match r.rtype() {
            TYPE_PTR => r.name == self.service,
            TYPE_SRV | TYPE_TXT => r.name.parent() == self.service,
            TYPE_A | TYPE_AAAA => true,
            _ => false,
        }
    }

    pub(super) fn update_peers(&mut self) {
        /// Of `all`, those `source` brought, when it brought any; else all.
        fn from_source<'a>(
            all: Option<&Vec<&'a cache::Entry>>,
            source: IpAddr,
        ) -> Vec<&'a cache::Entry> {
            let all = all.map(|v| v.as_slice()).unwrap_or_default();
            let own: Vec<&cache::Entry> =
                all.iter().copied().filter(|x| x.source == source).collect();
            if own.is_empty() {
                all.to_vec()
            } else {
                own
            }
        }
        let mut now_peers: BTreeMap<Name, Peer> = BTreeMap::new();
        let entries = self.cache.entries();
        // TXT records and addresses by owner name, indexed once: each SRV then finds its own in
        // constant time, so the table is rebuilt in time linear in the cache.
        let mut txts: HashMap<&Name, Vec<&cache::Entry>> = HashMap::new();
        let mut addresses: HashMap<&Name, Vec<&cache::Entry>> = HashMap::new();
        for e in entries {
            match e.record.rtype() {
                TYPE_TXT => txts.entry(&e.record.name).or_default().push(e),
                TYPE_A | TYPE_AAAA => addresses.entry(&e.record.name).or_default().push(e),
                _ => {}
            }
        }
        for e in entries {
            let RecordData::Srv { port, target, .. } = &e.record.data else {
                continue;
            };
            if e.record.name.parent() != self.service || now_peers.contains_key(&e.record.name) {
                continue;
            }
            // The TXT and addresses the SRV's own source brought, when it brought any: another
            // host adding a TXT or an address under the same names changes nothing (it would
            // otherwise move a peer's route to itself).
            let Some(txt) = from_source(txts.get(&e.record.name), e.source)
                .first()
                .copied()
            else {
                continue;
            };
            let mut addrs: Vec<IpAddr> = Vec::new();
            let mut last_seen = e.received.max(txt.received);
            for a in from_source(addresses.get(target), e.source) {
                let ip = match a.record.data {
                    RecordData::A(ip) => IpAddr::V4(ip),
                    RecordData::Aaaa(ip) => IpAddr::V6(ip),
                    _ => continue,
                };
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
                last_seen = last_seen.max(a.received);
            }
            if addrs.is_empty() {
                continue;
            }
            addrs.sort();
            let pairs = match &txt.record.data {
                RecordData::Txt(s) => RecordData::txt_pairs(s),
                _ => Vec::new(),
            };
            let get = |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
            let instance = e.record.name.first_label().to_string();
            let legacy = get("nbhd").as_deref() != Some("1");
            // Only a key that is one (43 base64url characters of 32 bytes) names an nbhd
            // identity: anything else must not collide with one.
            let key = if legacy {
                None
            } else {
                get("key").filter(|k| crate::identity::is_peer_id(k))
            };
            // XEP-0174 §4: `nick`, else the person's name from `1st` and `last` (libpurple
            // publishes only those), else the instance's local part.
            let full_name = [get("1st"), get("last")]
                .into_iter()
                .flatten()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let nick = get("nick")
                .filter(|n| !n.trim().is_empty())
                .or(Some(full_name).filter(|n| !n.is_empty()))
                .unwrap_or_else(|| instance.split('@').next().unwrap_or(&instance).to_string());
            // Signed only if what we show is exactly what its key signed.
            let signed = !legacy
                && key.is_some()
                && self.proven.get(&e.record.name).is_some_and(|(_, b)| {
                    *b == signed::signed_bytes(&instance, target, *port, &pairs)
                });
            now_peers.insert(
                e.record.name.clone(),
                Peer {
                    id: key.clone().unwrap_or_else(|| legacy_id(&instance)),
                    instance,
                    nick,
                    host: target.to_string(),
                    addrs,
                    port: *port,
                    status: get("status").unwrap_or_else(|| "avail".into()),
                    msg: get("msg").unwrap_or_default(),
                    legacy,
                    signed,
                    key,
                    txt: pairs,
                    last_seen,
                },
            );
        }
        for (name, old) in &self.peers {
            if !now_peers.contains_key(name) {
                self.events.push_back(Event::PeerDown(old.clone()));
            }
        }
        for (name, new) in &now_peers {
            match self.peers.get(name) {
                None => self.events.push_back(Event::PeerUp(new.clone())),
                Some(old) if !old.same_content(new) => {
                    self.events.push_back(Event::PeerChanged(new.clone()))
                }
                Some(_) => {}
            }
        }
        self.peers = now_peers;
    }
}
