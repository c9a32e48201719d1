//! What a person asks the Node to do: deliver a message or an invitation, share, join and leave
//! activities, post. Each command answers at once with an [`Outcome`] (or a [`CommandError`]);
//! what takes time (a delivery, a post's store write) answers later with an event.

use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::Rng;

use super::*;
use crate::activity::{seal, PostError};

impl Node {
    pub(super) fn command(&mut self, now: Instant, cmd: Command) -> Result<Outcome, CommandError> {
        match cmd {
            Command::Send {
                peer,
                text,
                timeout,
            } => {
                let id = self
                    .messages
                    .send(now, &peer, &text, timeout, &mut self.paths)
                    .ok_or_else(|| CommandError::NoSuchPeer(peer.clone()))?;
                let to_nick = self.nick_of(&peer);
                self.write(
                    Owner::Node,
                    Record::Message {
                        id: id.clone(),
                        from: self.me.peer_id(),
                        to: peer,
                        from_nick: self.config.nick.clone(),
                        to_nick,
                        text,
                        via: None,
                    },
                );
                self.sent.insert(id.clone());
                Ok(Outcome::Delivery(id))
            }
            Command::Invite {
                peer,
                activity,
                timeout,
            } => {
                let Some(info) = self.messages.peer(&peer).cloned() else {
                    return Err(CommandError::NoSuchPeer(peer));
                };
                if info.legacy {
                    return Err(CommandError::Refused(format!(
                        "{} is a plain XEP-0174 client: it cannot check a signed invitation",
                        self.nick_of(&peer)
                    )));
                }
                let stanza = match self.resolve_activity(&activity) {
                    Ok(a) => self.invitation_for(&peer, info.key, &a)?,
                    // Not a shared activity: the name is all the invitation carries.
                    Err(CommandError::NoSuchActivity(_)) => Activity {
                        id: activity.clone(),
                        name: activity,
                        kind: "activity".into(),
                        ..Activity::default()
                    },
                    Err(e) => return Err(e),
                };
                self.messages
                    .invite(now, &peer, stanza, "", timeout, &mut self.paths)
                    .map(Outcome::Delivery)
                    .ok_or(CommandError::NoSuchPeer(peer))
            }
            Command::Share {
                name,
                kind,
                private,
            } => {
                let name = name.trim().to_string();
                if name.is_empty() || name.len() > 100 {
                    return Err(CommandError::Usage(
                        "an activity's NAME is 1 to 100 bytes".into(),
                    ));
                }
                let kind = if kind.trim().is_empty() {
                    "activity".to_string()
                } else {
                    kind.trim().to_string()
                };
                // It travels in our TXT record as `id,key,type,name` (DESIGN.md §4.4).
                if kind.len() > 32 || kind.contains(',') {
                    return Err(CommandError::Usage(
                        "an activity's TYPE is at most 32 bytes, without commas".into(),
                    ));
                }
                let info = self.activities.create(now, &name, &kind, private);
                self.advertise(now);
                Ok(Outcome::Activity { info, joined: true })
            }
            Command::Join { activity } => {
                let info = self.resolve_activity(&activity)?;
                self.activities.join(now, info.clone());
                self.advertise(now);
                Ok(Outcome::Activity { info, joined: true })
            }
            Command::Leave { activity } => {
                let info = self.resolve_activity(&activity)?;
                self.activities.leave(now, &info.id);
                self.advertise(now);
                Ok(Outcome::Activity {
                    info,
                    joined: false,
                })
            }
            Command::Post {
                activity,
                body,
                bytes,
                at_ms,
            } => {
                let info = self.resolve_activity(&activity)?;
                let request = self
                    .activities
                    .post(now, &info.id, body, bytes, at_ms)
                    .map_err(|e| match e {
                        PostError::TooLarge => CommandError::Usage(e.to_string()),
                        _ => CommandError::Refused(e.to_string()),
                    })?;
                Ok(Outcome::Posting {
                    activity: info.id,
                    request,
                })
            }
        }
    }

    /// The invitation's activity: everything a member needs, the key sealed to the invitee.
    /// A private activity's key never goes to a peer whose nick was first seen with another key.
    fn invitation_for(
        &mut self,
        peer: &str,
        key: [u8; 32],
        a: &ActivityInfo,
    ) -> Result<Activity, CommandError> {
        if a.private && self.impostors.contains(peer) {
            return Err(CommandError::Refused(format!(
                "{} announces a nick first seen with another key (see nbhd peers): it gets no private activity's key",
                self.nick_of(peer)
            )));
        }
        let bind = seal::binding(&a.id, &self.me.public());
        let sealed = seal::seal(&a.key, &key, &bind, self.rng.gen())
            .map_err(|_| CommandError::Refused("the peer's key cannot be sealed to".into()))?;
        Ok(Activity {
            id: a.id.to_hex(),
            name: a.name.clone(),
            kind: a.kind.clone(),
            group: a.group.to_string(),
            port: a.port,
            key: URL_SAFE_NO_PAD.encode(sealed),
            private: a.private,
        })
    }
}
