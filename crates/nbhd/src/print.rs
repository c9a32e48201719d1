//! Printing for people: one printer per reply of the contract, and one line per event kind.
//! Everything goes through [`line()`], so a closed stdout (`nbhd status | head -1`) ends the
//! command quietly with status 0 instead of a panic.

use std::io::Write;

use nbhd_daemon::contract::{
    ActivitySummary, DeliveryReply, DoctorRow, Event, InvitationRow, LogRow, MembershipReply,
    MessageRow, PeerRow, PostReply, ShareReply, StatsReply, StatusReply,
};
use nbhd_daemon::DataDir;
use serde_json::Value;

/// Writes one line to stdout; false once stdout is closed. A closed stdout is the reader
/// saying it has seen enough: the process ends there, quietly and successfully.
pub fn line(s: &str) -> bool {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|_| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(_) => false,
    }
}

pub fn text(s: &str) {
    line(s.trim_end_matches('\n'));
}

pub fn json(v: &Value) {
    line(&v.to_string());
}

/// Lines of cells, each column as wide as its widest cell.
fn table(head: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let render = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    line(&render(head.to_vec()));
    for r in rows {
        line(&render(r.iter().map(String::as_str).collect()));
    }
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

pub fn peers(rows: Vec<PeerRow>) {
    if rows.is_empty() {
        line("no peers seen yet");
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|p| {
            vec![
                p.nick.clone(),
                p.instance.clone(),
                format!("{}:{}", p.addrs.join(","), p.port),
                p.status.clone(),
                format!("{}s ago", p.last_seen_ms / 1000),
                match (p.legacy, p.impostor) {
                    (true, _) => "legacy XEP-0174".into(),
                    // Trust on first use: the nick was first seen with another key.
                    (false, true) => format!("{} IMPOSTOR?", short(&p.id)),
                    (false, false) => short(&p.id),
                },
            ]
        })
        .collect();
    table(
        &["NICK", "INSTANCE", "ADDRESS", "STATUS", "SEEN", "ID"],
        &cells,
    );
}

pub fn status(s: &StatusReply, dir: &DataDir) {
    line(&format!("instance   {}", s.instance));
    line(&format!("id         {}", s.id));
    line(&format!("hostname   {}", s.hostname));
    line(&format!("announced  {}", s.announced));
    line(&format!(
        "web view   {}#<token in {}>",
        s.api,
        dir.token_file().display()
    ));
    for i in &s.interfaces {
        line(&format!("interface  {} {}", i.name, i.addrs.join(", ")));
    }
}

pub fn stats(s: StatsReply) {
    line(&serde_json::to_string_pretty(&s).unwrap_or_default());
}

pub fn invitations(rows: Vec<InvitationRow>) {
    if rows.is_empty() {
        line("no invitations received");
    }
    for r in rows {
        let relayed = r
            .relayed_by
            .map(|by| format!(", relayed by {}", short(&by)))
            .unwrap_or_default();
        line(&format!(
            "{}  from {} ({})  via {}{relayed}  id {}",
            r.activity.name,
            r.from_nick,
            short(&r.from),
            r.via,
            r.id
        ));
    }
}

pub fn messages(rows: Vec<MessageRow>) {
    if rows.is_empty() {
        line("no messages");
    }
    for r in rows {
        line(&format!(
            "{} -> {}  ({})  {}",
            r.from_nick,
            r.to_nick,
            r.via.as_deref().unwrap_or("not delivered"),
            r.text
        ));
    }
}

/// True when it was delivered.
pub fn delivery(r: &DeliveryReply) -> bool {
    let via = r.via.as_deref().unwrap_or("?");
    let ms = r.latency_ms.unwrap_or(0.0);
    match (r.delivered, r.receipt) {
        (true, true) => line(&format!("delivered via {via} in {ms} ms (receipt received)")),
        (true, false) => line(&format!(
            "handed to the peer's stream via {via} in {ms} ms (a legacy XEP-0174 client sends no receipt)"
        )),
        (false, _) => true,
    };
    r.delivered
}

pub fn doctor(rows: Vec<DoctorRow>) {
    if rows.is_empty() {
        line("no peers seen yet");
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.nick.clone(),
                r.state.clone(),
                r.path.clone(),
                r.unicast_out.clone(),
                r.unicast_in.clone(),
                r.multicast_out.clone(),
                r.multicast_in.clone(),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "STATE",
            "PATH",
            "UNICAST OUT",
            "UNICAST IN",
            "MULTICAST OUT",
            "MULTICAST IN",
        ],
        &cells,
    );
    for r in &rows {
        if !r.diagnosis.is_empty() {
            line("");
            line(&format!("{}: {}", r.nick, r.diagnosis));
        }
    }
}

pub fn share(r: &ShareReply) {
    line(&format!(
        "shared {} {:?} ({}{}) on {}",
        r.id,
        r.name,
        r.kind,
        if r.private { ", private" } else { "" },
        r.group
    ));
}

pub fn activities(rows: Vec<ActivitySummary>) {
    if rows.is_empty() {
        line("no activities: start one with nbhd share NAME");
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|a| {
            vec![
                a.name.clone(),
                a.kind.clone(),
                a.members.to_string(),
                match (a.joined, a.private) {
                    (true, true) => "member, private",
                    (true, false) => "member",
                    (false, true) => "invited, private",
                    (false, false) => "-",
                }
                .into(),
                a.id.clone(),
            ]
        })
        .collect();
    table(&["NAME", "TYPE", "MEMBERS", "YOU", "ID"], &cells);
}

pub fn membership(r: &MembershipReply) {
    let verb = if r.joined { "joined" } else { "left" };
    line(&format!("{verb} {:?} ({})", r.name, r.id));
}

pub fn posted(r: &PostReply) {
    line(&format!("posted #{} to {}", r.seq, r.id));
}

pub fn log(rows: &[LogRow]) {
    if rows.is_empty() {
        line("no posts yet");
    }
    for p in rows {
        if !line(&log_line(p)) {
            return;
        }
    }
}

/// One post: `nick: text`, or a bytes post's size (or a big one's, which events carry
/// without its body).
pub fn log_line(p: &LogRow) -> String {
    match (&p.text, &p.bytes) {
        (Some(t), _) => format!("{}: {t}", p.nick),
        (None, Some(_)) => format!("{}: [{} bytes]", p.nick, p.size),
        (None, None) => format!("{}: [{} bytes: see nbhd log]", p.nick, p.size),
    }
}

/// One event, for people: every kind has its line.
pub fn event(ev: &Event) -> String {
    let peer = |kind: &str, p: &PeerRow| {
        format!(
            "{kind:<13} {} ({}){}",
            p.instance,
            p.addrs.join(", "),
            if p.legacy { " [legacy]" } else { "" }
        )
    };
    match ev {
        Event::PeerUp { peer: p, .. } => peer("peer-up", p),
        Event::PeerDown { peer: p, .. } => peer("peer-down", p),
        Event::PeerChanged { peer: p, .. } => {
            format!(
                "{}: {}{}",
                peer("peer-changed", p),
                p.status,
                if p.msg.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.msg)
                }
            )
        }
        Event::Message {
            from_nick,
            text,
            via,
            ..
        } => format!("{:<13} from {from_nick}: {text} (via {via})", "message"),
        Event::Invitation { invitation: i, .. } => format!(
            "{:<13} from {}: {} (via {})",
            "invitation", i.from_nick, i.activity.name, i.via
        ),
        Event::PathChanged {
            nick,
            state,
            path,
            diagnosis,
            ..
        } => {
            let why = if diagnosis.is_empty() {
                String::new()
            } else {
                format!(": {diagnosis}")
            };
            format!(
                "{:<13} {nick} is {state}, messages go by {path}{why}",
                "path-changed"
            )
        }
        Event::Post {
            activity, entry, ..
        } => format!("{:<13} in {}: {}", "post", short(activity), log_line(entry)),
        Event::Member {
            activity,
            nick,
            change,
            ..
        } => format!("{:<13} {nick} {change} {}", "member", short(activity)),
        Event::Lagged { missed, .. } => {
            format!(
                "{:<13} {missed} events were missed (this reader was too slow)",
                "lagged"
            )
        }
    }
}
