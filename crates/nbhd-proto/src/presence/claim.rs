//! Claiming our names (RFC 6762 §8, §9): probing with the simultaneous-probe tie-break lives in
//! [`super::responder`]; here are the probe and announcement schedule, conflict renaming, the
//! owner's early re-announcement, and the records we own (PTRs shared; SRV, TXT and our own
//! host name's addresses unique, each interface announcing only its own addresses, §15).
//!
//! It decides what we say about ourselves; what others say is [`super::peers`]'.

use super::*;

impl Presence {
    pub(super) fn drive_claim(&mut self, now: Instant, iface: IfaceId) {
        let Some(link) = self.links.get(&iface) else {
            return;
        };
        match link.state {
            LinkState::Probing { sent, at } if at <= now => {
                if sent < PROBE_COUNT {
                    let probe = self.probe_message(iface, sent == 0);
                    self.set_state(
                        iface,
                        LinkState::Probing {
                            sent: sent + 1,
                            at: now + PROBE_INTERVAL,
                        },
                    );
                    self.send_split(iface, Destination::Multicast, probe);
                } else {
                    self.set_state(iface, LinkState::Announcing { sent: 0, at: now });
                    self.drive_claim(now, iface);
                }
            }
            LinkState::Announcing { sent, at } if at <= now => {
                let mut msg = Message::response();
                msg.answers = self.own_records(iface);
                self.note_multicast(now, iface, &msg.answers);
                self.send_split(iface, Destination::Multicast, msg);
                if sent + 1 < ANNOUNCE_COUNT {
                    self.set_state(
                        iface,
                        LinkState::Announcing {
                            sent: sent + 1,
                            at: now + ANNOUNCE_INTERVAL,
                        },
                    );
                } else {
                    self.set_state(iface, LinkState::Ready);
                    self.events.push_back(Event::Announced {
                        iface,
                        instance: self.instance_label.clone(),
                    });
                }
            }
            _ => {}
        }
    }

    /// When our records on a link need saying again: at [`REANNOUNCE_PERCENT`] of the TTL since
    /// each was last multicast. The owner speaking once costs one packet; every observer's
    /// refresh (RFC 6762 §5.2, at 80 % and later) would cost a query and its answer. Observers
    /// still query, and still drop us, if we fall silent.
    pub(super) fn reannounce_at(&self, link: &Link) -> Option<Instant> {
        if link.state != LinkState::Ready || !self.config.reannounce {
            return None;
        }
        link.last_multicast
            .iter()
            .map(|((_, data), at)| {
                let ttl = match data {
                    RecordData::Srv { .. } | RecordData::A(_) | RecordData::Aaaa(_) => {
                        self.config.host_ttl
                    }
                    _ => self.config.other_ttl,
                };
                *at + Duration::from_secs(ttl as u64) * REANNOUNCE_PERCENT / 100
            })
            .min()
    }

    pub(super) fn drive_reannounce(&mut self, now: Instant, iface: IfaceId) {
        let Some(link) = self.links.get(&iface) else {
            return;
        };
        if self.reannounce_at(link).is_none_or(|t| t > now) {
            return;
        }
        // Everything due within a few percent more goes in the same packet.
        let batch = REANNOUNCE_PERCENT - REANNOUNCE_BATCH_PERCENT;
        let records: Vec<Record> = self
            .own_records(iface)
            .into_iter()
            .filter(|r| {
                let last = link.last_multicast.get(&(r.name.clone(), r.data.clone()));
                last.is_none_or(|at| *at + Duration::from_secs(r.ttl as u64) * batch / 100 <= now)
            })
            .collect();
        if records.is_empty() {
            return;
        }
        self.note_multicast(now, iface, &records);
        let msg = Message {
            answers: records,
            ..Message::response()
        };
        self.send_split(iface, Destination::Multicast, msg);
    }

    pub(super) fn set_state(&mut self, iface: IfaceId, state: LinkState) {
        if let Some(l) = self.links.get_mut(&iface) {
            l.state = state;
        }
    }

    /// RFC 6762 §8.1: ANY questions for each unique name, our proposed records in Authority.
    pub(super) fn probe_message(&self, iface: IfaceId, first: bool) -> Message {
        let mut msg = Message::query();
        for name in [self.instance_name(), self.host_name()] {
            msg.questions.push(Question {
                name,
                qtype: TYPE_ANY,
                unicast: first,
            });
        }
        msg.authority = self
            .own_records(iface)
            .into_iter()
            .filter(|r| self.is_unique(r))
            .collect();
        for r in &mut msg.authority {
            r.cache_flush = false;
        }
        msg
    }

    /// Another host holds one of our names: rename and claim again (RFC 6762 §9).
    pub(super) fn conflict(&mut self, now: Instant, instance_taken: bool) {
        self.stats.conflicts += 1;
        if instance_taken {
            self.instance_renames += 1;
            // RFC 6763 §9-style renaming: "nick@host (2)", "(3)", ...
            self.instance_label =
                format!("{} ({})", self.config.instance, self.instance_renames + 1);
        } else {
            self.hostname_renames += 1;
            self.hostname_label = format!("{}-{}", self.config.hostname, self.hostname_renames + 1);
        }
        self.events.push_back(Event::Renamed {
            instance: self.instance_label.clone(),
            hostname: self.hostname_label.clone(),
        });
        self.conflict_times.push_back(now);
        while self
            .conflict_times
            .front()
            .is_some_and(|t| *t + CONFLICT_WINDOW < now)
        {
            self.conflict_times.pop_front();
        }
        let delay = if self.conflict_times.len() >= CONFLICT_BURST {
            CONFLICT_BACKOFF
        } else {
            self.random_ms(0, PROBE_WAIT_MAX.as_millis() as u64)
        };
        for link in self.links.values_mut() {
            link.state = LinkState::Probing {
                sent: 0,
                at: now + delay,
            };
            link.pending = None;
        }
    }

    /// Every record we own on `iface`: PTRs (shared), SRV, TXT and addresses (unique).
    /// Our TXT pairs, with `sig=` when we have a key to sign them with.
    pub(super) fn signed_txt(&self, host: &Name) -> Vec<(String, String)> {
        let mut txt = self.config.txt.clone();
        let Some(me) = &self.config.signer else {
            return txt;
        };
        let bytes = signed::signed_bytes(&self.instance_label, host, self.config.port, &txt);
        let mut cached = self.own_sig.borrow_mut();
        let sig = match cached.as_ref() {
            Some((b, sig)) if *b == bytes => sig.clone(),
            _ => {
                let sig = signed::sign(me, &self.instance_label, host, self.config.port, &txt);
                *cached = Some((bytes, sig.clone()));
                sig
            }
        };
        txt.push((signed::SIG_KEY.into(), sig));
        txt
    }

    pub(super) fn own_records(&self, iface: IfaceId) -> Vec<Record> {
        let inst = self.instance_name();
        let host = self.host_name();
        let (ht, ot) = (self.config.host_ttl, self.config.other_ttl);
        let txt = self
            .signed_txt(&host)
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect();
        let mut out = vec![
            Record::new(
                self.services_meta.clone(),
                ot,
                RecordData::Ptr(self.service.clone()),
            ),
            Record::new(self.service.clone(), ot, RecordData::Ptr(inst.clone())),
            Record::new(
                inst.clone(),
                ht,
                RecordData::Srv {
                    priority: 0,
                    weight: 0,
                    port: self.config.port,
                    target: host.clone(),
                },
            ),
            Record::new(inst, ot, RecordData::Txt(txt)),
        ];
        // RFC 6762 §15: on each interface, only that interface's addresses.
        if let Some(link) = self.links.get(&iface) {
            for a in &link.addrs {
                out.push(Record::new(host.clone(), ht, RecordData::A(*a)));
            }
        }
        for r in &mut out {
            r.cache_flush = self.is_unique(r);
        }
        out
    }

    pub(super) fn is_unique(&self, r: &Record) -> bool {
        r.rtype() != TYPE_PTR
    }

    pub(super) fn is_own_name(&self, name: &Name) -> bool {
        *name == self.instance_name() || *name == self.host_name()
    }

    pub(super) fn all_own_addrs(&self) -> Vec<Ipv4Addr> {
        self.links
            .values()
            .flat_map(|l| l.addrs.iter().copied())
            .collect()
    }
}
