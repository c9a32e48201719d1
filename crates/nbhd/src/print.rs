//! Printing for people: one printer per reply of the contract, and one line per event kind.
//! Everything goes through [`line()`], so a closed stdout (`nbhd status | head -1`) ends the
//! command quietly with status 0 instead of a panic, and so that no character a terminal
//! would obey reaches it: nicks, names, posts and messages are anyone's text, and an escape
//! sequence in them could retitle the window, write the clipboard (OSC 52), move the cursor
//! over other lines, or reorder what follows (bidi overrides). [`clean`] shows them escaped.
//! Machine output (`--json`) is left as serde writes it ([`json`], [`json_line`]).

use std::borrow::Cow;
use std::io::Write;

use nbhd_daemon::contract::{
    ActivitySummary, DeliveryReply, DoctorRow, Event, InvitationRow, LogRow, MembershipReply,
    MessageRow, PeerRow, PostReply, ShareReply, StatsReply, StatusReply,
};
use nbhd_daemon::DataDir;
use serde_json::Value;

/// Writes one line to stdout, [`clean`]ed; false once stdout is closed. A closed stdout is the
/// reader saying it has seen enough: the process ends there, quietly and successfully.
pub fn line(s: &str) -> bool {
    raw_line(&clean(s))
}

fn raw_line(s: &str) -> bool {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{s}").and_then(|_| out.flush()) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(_) => false,
    }
}

/// Text of several lines, each one [`clean`]ed.
pub fn text(s: &str) {
    for l in s.trim_end_matches('\n').lines() {
        if !line(l) {
            return;
        }
    }
}

pub fn json(v: &Value) {
    raw_line(&v.to_string());
}

/// One JSON document already written (`events --json`, `log --follow --json`), as it is:
/// serde escaped its strings' C0 controls, and cleaning it further would break its syntax.
pub fn json_line(s: &str) -> bool {
    raw_line(s)
}

/// True for a character a terminal acts on instead of showing: the C0 controls (newline and
/// tab too), DEL and the C1 controls (U+0080 to U+009F: U+009B alone starts a CSI sequence in
/// some terminals), the bidirectional overrides, embeddings and isolates (U+202A to U+202E,
/// U+2066 to U+2069) and marks (U+061C, U+200E, U+200F) that reorder what follows them
/// ("Trojan Source", CVE-2021-42574), and the line and paragraph separators.
fn obeyed(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
        )
}

/// `s` with each character a terminal would obey shown escaped, as Rust writes it (`\n`,
/// `\t`, `\u{1b}`, `\u{202e}`). A newline too: every printer prints one item a line, and a
/// newline in a post or a nick would start a line that looks like another post, another peer
/// or our own output. Backslashes are left alone: doubling them would disfigure ordinary text,
/// and text that spells `\n` cannot break a line either.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(obeyed) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if obeyed(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Lines of cells, each column as wide as its widest cell (once [`clean`]ed, so that an escaped
/// cell keeps its column straight).
fn table(head: &[&str], rows: &[Vec<String>]) {
    for l in table_lines(head, rows) {
        if !line(&l) {
            return;
        }
    }
}

fn table_lines(head: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<Cow<str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
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
    let mut lines = vec![render(head.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| render(r.iter().map(|c| c.as_ref()).collect())),
    );
    lines
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
    text(&serde_json::to_string_pretty(&s).unwrap_or_default());
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

/// What follows the name of a sender that did not prove who it is (a legacy XEP-0174 client).
fn unverified(verified: bool) -> &'static str {
    if verified {
        ""
    } else {
        " (unverified)"
    }
}

pub fn messages(rows: Vec<MessageRow>) {
    if rows.is_empty() {
        line("no messages");
    }
    for r in rows {
        line(&format!(
            "{}{} -> {}  ({})  {}",
            r.from_nick,
            unverified(r.verified),
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
            verified,
            ..
        } => format!(
            "{:<13} from {from_nick}{}: {text} (via {via})",
            "message",
            unverified(*verified)
        ),
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

#[cfg(test)]
mod tests {
    use super::{clean, table_lines};

    #[test]
    fn what_a_terminal_would_obey_is_shown_escaped_and_the_rest_kept() {
        for (hostile, shown) in [
            // A window title, then the clipboard (OSC 52), each ended by BEL.
            ("\x1b]0;owned\x07", "\\u{1b}]0;owned\\u{7}"),
            (
                "\x1b]52;c;Y3VybCBldmlsfHNo\x07",
                "\\u{1b}]52;c;Y3VybCBldmlsfHNo\\u{7}",
            ),
            // Clear the screen, by ESC [ and by the one-character C1 CSI.
            ("\x1b[2J", "\\u{1b}[2J"),
            ("\u{9b}2J", "\\u{9b}2J"),
            ("\u{80}\u{9f}\x7f\0", "\\u{80}\\u{9f}\\u{7f}\\u{0}"),
            // A line that would pass for another post, and one overwritten from its start.
            ("hi\nbob: I owe alice 100", "hi\\nbob: I owe alice 100"),
            ("hi\rbob", "hi\\rbob"),
            ("a\tb", "a\\tb"),
            // Right-to-left override and isolates reorder what follows them.
            ("abc\u{202e}fed", "abc\\u{202e}fed"),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}\u{2066}\u{2067}\u{2068}\u{2069}",
                "\\u{202a}\\u{202b}\\u{202c}\\u{202d}\\u{2066}\\u{2067}\\u{2068}\\u{2069}",
            ),
            (
                "\u{200e}\u{200f}\u{61c}\u{2028}\u{2029}",
                "\\u{200e}\\u{200f}\\u{61c}\\u{2028}\\u{2029}",
            ),
        ] {
            assert_eq!(clean(hostile), shown, "{hostile:?}");
            assert!(
                !clean(hostile).chars().any(|c| c.is_control()),
                "{hostile:?}"
            );
        }
        // Ordinary text, in any script, with quotes and backslashes, is printed as it is.
        for kept in ["Zoé 🎲 象棋 שלום", r#"C:\path "q" 'a' \n"#, ""] {
            assert!(matches!(clean(kept), std::borrow::Cow::Borrowed(s) if s == kept));
        }
    }

    #[test]
    fn an_escaped_cell_keeps_its_table_straight() {
        let rows = vec![
            vec!["\x1b[8mmallory\x1b[0m".to_string(), "ab12".to_string()],
            vec!["bob".to_string(), "cd34".to_string()],
        ];
        let lines = table_lines(&["NICK", "ID"], &rows);
        assert!(lines.iter().all(|l| !l.contains('\x1b')), "{lines:?}");
        assert_eq!(lines[1], "\\u{1b}[8mmallory\\u{1b}[0m  ab12");
        let id_column: Vec<Option<usize>> = ["ID", "ab12", "cd34"]
            .iter()
            .zip(&lines)
            .map(|(cell, l)| l.find(cell))
            .collect();
        assert!(id_column.iter().all(|c| *c == id_column[0]), "{lines:?}");
    }
}
