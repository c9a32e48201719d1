//! Output: messages split over datagrams when they exceed the target size (responses cut between
//! records; queries carry their questions first and continue their known answers with TC set,
//! RFC 6762 §7.2), counted, and remembered so multicast loopback's copy is known as our echo.

use super::*;

impl Presence {
    /// Sends a message, split over several datagrams when it is too big: responses are cut
    /// between records; queries carry their questions first and continue their known answers in
    /// further packets with TC set on all but the last (RFC 6762 §7.2).
    pub(super) fn send_split(&mut self, iface: IfaceId, destination: Destination, msg: Message) {
        if msg.wire_len() <= TARGET_MESSAGE {
            self.push_transmit(iface, destination, &msg);
            return;
        }
        let mut parts: Vec<Message> = Vec::new();
        let mut cur = Message {
            answers: Vec::new(),
            additional: Vec::new(),
            ..msg.clone()
        };
        let head = cur.wire_len();
        let fill = |cur: &mut Message, r: Record, additional: bool, parts: &mut Vec<Message>| {
            if cur.wire_len() + r.wire_len() > TARGET_MESSAGE && cur.wire_len() > head.min(12) {
                let fresh = Message {
                    id: cur.id,
                    response: cur.response,
                    // continuation packets of a query carry no questions (RFC 6762 §7.2)
                    questions: if cur.response {
                        cur.questions.clone()
                    } else {
                        Vec::new()
                    },
                    ..Message::default()
                };
                parts.push(std::mem::replace(cur, fresh));
            }
            if additional {
                cur.additional.push(r);
            } else {
                cur.answers.push(r);
            }
        };
        for r in msg.answers {
            fill(&mut cur, r, false, &mut parts);
        }
        for r in msg.additional {
            fill(&mut cur, r, true, &mut parts);
        }
        parts.push(cur);
        let n = parts.len();
        for (i, mut p) in parts.into_iter().enumerate() {
            if !p.response && i + 1 < n {
                p.truncated = true;
            }
            self.push_transmit(iface, destination.clone(), &p);
        }
    }

    pub(super) fn push_transmit(
        &mut self,
        iface: IfaceId,
        destination: Destination,
        msg: &Message,
    ) {
        let payload = msg.emit();
        if payload.is_empty() {
            return;
        }
        self.stats.packets_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        if destination == Destination::Multicast {
            self.sent_recently
                .push_back((digest(&payload), iface, self.now));
        }
        self.transmits.push_back(Transmit {
            iface,
            destination,
            payload,
        });
    }

    pub(super) fn random_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.gen_range(lo..=hi))
    }
}
