//! A real Pidgin against nbhd: finch (libpurple's Bonjour protocol, the XEP-0174 client most
//! people have) on one lab host, `nbhd up` on another, typed at and read from the screen as a
//! person would (nbhd-lab's `Finch`). Root only, like every namespace test.

mod common;

use std::time::Duration;

use common::*;
use nbhd_lab::finch::Finch;
use nbhd_lab::{skip_unless_root, wait_for, Lab};
use serde_json::Value;

const N: usize = 20;

/// How many times `needle` occurs in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn netns_pidgin_chats_with_nbhd_both_ways_on_one_stream_and_its_status_reaches_nbhd() {
    if skip_unless_root(
        "netns_pidgin_chats_with_nbhd_both_ways_on_one_stream_and_its_status_reaches_nbhd",
    ) {
        return;
    }
    let mut lab = Lab::new(2).expect("lab");
    let finch = Finch::start(&mut lab, 1, "frank", "Frank", "Test").expect("finch");
    let alice_pid = start(&mut lab, 0, "alice", &[]);
    let alice = status(&lab, 0)["instance"].as_str().unwrap().to_string();
    let alice_nick = "alice";
    let events_log = follow_events(&mut lab, 0);
    let finch_log = finch.debug_log.clone();

    // Each lists the other: nbhd by the person's name (libpurple publishes `1st` and `last`,
    // no `nick`), finch by our nick.
    let row = wait_for_listed(&lab, 0, &finch.account, &finch_log, "finch");
    assert_eq!(row["nick"], "Frank Test", "{row}");
    assert_eq!(row["legacy"], true);
    wait_for(Duration::from_secs(20), || finch.screen().contains("alice"))
        .unwrap_or_else(|| panic!("finch does not list alice:\n{}", finch.screen()));
    assert!(
        !finch.screen().contains(&format!("{alice_nick}@")),
        "finch shows our nick, not the instance name:\n{}",
        finch.screen()
    );

    // Frank writes first: his stream, his messages (no id, XHTML beside the body, no receipt
    // asked). Each must arrive once.
    finch.open_conversation("alice").expect("conversation");
    let typed: Vec<String> = (0..N).map(|k| format!("from finch {k:02} & <b>")).collect();
    for t in &typed {
        finch.say(t);
    }
    // A legacy client is known by the instance it claims, never under an nbhd identity, and
    // every message of it is marked unverified.
    let frank_id = format!("legacy:{}", finch.account);
    let from_frank = |lab: &Lab| -> Vec<String> {
        let (_, v) = nbhd_json(lab, 0, &["messages", "frank"]);
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["from"] == frank_id.as_str() && m["verified"] == false)
            .filter_map(|m| m["text"].as_str().map(String::from))
            .collect()
    };
    wait_for(Duration::from_secs(30), || from_frank(&lab).len() >= N).unwrap_or_else(|| {
        panic!(
            "nbhd stored {:?} of frank's messages; screen:\n{}",
            from_frank(&lab),
            finch.screen()
        )
    });
    assert_eq!(
        from_frank(&lab),
        typed,
        "each of frank's messages once, in order"
    );
    // The events follower is another process: wait for its lines, then count.
    let shown = || -> Vec<Value> {
        read(&events_log)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| {
                e["type"] == "message" && e["from"] == frank_id.as_str() && e["verified"] == false
            })
            .collect()
    };
    wait_for(Duration::from_secs(10), || shown().len() >= N)
        .unwrap_or_else(|| panic!("nbhd events showed {:?}", shown()));
    for t in &typed {
        let n = shown().iter().filter(|e| e["text"] == t.as_str()).count();
        assert_eq!(n, 1, "{t:?} shown {n} times in nbhd events");
    }

    // Alice answers: on frank's stream (Pidgin keeps one per buddy and would drop the older),
    // delivered when the stream took it, and said to be without receipt.
    for k in 0..N {
        let text = format!("to finch {k:02}");
        let (code, v) = nbhd_json(&lab, 0, &["send", "frank", &text, "--timeout", "10"]);
        assert_eq!(code, Some(0), "{v}");
        assert_eq!(
            (
                v["delivered"].as_bool(),
                v["via"].as_str(),
                v["receipt"].as_bool()
            ),
            (Some(true), Some("tcp"), Some(false)),
            "{v}"
        );
    }
    let wanted: Vec<String> = (0..N).map(|k| format!("to finch {k:02}")).collect();
    wait_for(Duration::from_secs(20), || {
        let log = finch.log(&alice);
        wanted.iter().all(|w| log.contains(w.as_str()))
    })
    .unwrap_or_else(|| {
        panic!(
            "finch's conversation log:\n{}\nscreen:\n{}",
            finch.log(&alice),
            finch.screen()
        )
    });
    let log = finch.log(&alice);
    for w in &wanted {
        assert_eq!(
            count(&log, &format!("{w}\n")),
            1,
            "{w:?} in finch's log:\n{log}"
        );
    }
    assert!(
        finch.screen().contains(&format!("to finch {:02}", N - 1)),
        "{}",
        finch.screen()
    );
    // Frank's own messages are in his log once each too (he saw nothing doubled).
    for t in &typed {
        assert_eq!(
            count(&log, &format!("{t}\n")),
            1,
            "{t:?} in finch's log:\n{log}"
        );
    }
    assert_eq!(streams_to(&lab, 1), 1, "one stream between alice and frank");
    // What alice sent is kept too, with the path that carried it.
    let (_, sent) = nbhd_json(&lab, 0, &["messages", "frank"]);
    let to_frank: Vec<&Value> = sent
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["to"] == frank_id.as_str())
        .collect();
    assert_eq!(to_frank.len(), N, "{sent}");
    assert!(to_frank.iter().all(|m| m["via"] == "tcp"), "{sent}");

    // Frank closes the conversation: libpurple ends the stream; alice answers with her own end
    // and closes, sending no reset.
    let resets = tcp_out_rsts(&lab, 0);
    finch.open_conversation("alice").expect("conversation");
    finch.keys(&["M-c"]);
    wait_for(Duration::from_secs(10), || streams_to(&lab, 1) == 0)
        .unwrap_or_else(|| panic!("the stream stayed open:\n{}", finch.screen()));
    assert_eq!(tcp_out_rsts(&lab, 0), resets, "alice sent a TCP reset");
    // Alice writes again: a stream of hers this time, which finch takes.
    let (code, v) = nbhd_json(&lab, 0, &["send", "frank", "one more", "--timeout", "10"]);
    assert_eq!(code, Some(0), "{v}");
    wait_for(Duration::from_secs(10), || {
        finch.log(&alice).contains("one more")
    })
    .unwrap_or_else(|| panic!("{}", finch.screen()));

    // The doctor knows frank (TCP is his only path) and nothing was dropped on the way.
    let (_, doctor) = nbhd_json(&lab, 0, &["doctor"]);
    let frank = doctor
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["peer"] == frank_id.as_str()))
        .unwrap_or_else(|| panic!("no doctor row for frank: {doctor}"));
    assert_eq!(
        (
            frank["state"].as_str(),
            frank["path"].as_str(),
            frank["multicast_in"].as_str()
        ),
        (Some("up"), Some("tcp"), Some("unknown")),
        "{frank}"
    );
    let (_, stats) = nbhd_json(&lab, 0, &["stats"]);
    assert_eq!(stats["messages"]["dropped_total"], 0, "{stats}");

    // Away in finch reaches nbhd. libpurple publishes its Away as XEP-0174 `dnd`.
    finch.set_away().expect("away");
    wait_for(Duration::from_secs(20), || {
        peers(&lab, 0)
            .iter()
            .any(|p| p["instance"] == finch.account.as_str() && p["status"] == "dnd")
    })
    .unwrap_or_else(|| panic!("status: {:?}\n{}", peers(&lab, 0), finch.screen()));
    // nbhd leaving ends the stream as XMPP does (RFC 6120 §4.4): `</stream:stream>` first, the
    // TCP close after libpurple answered. Its log says which it saw; the goodbye it logs later
    // (avahi's "Remove service") shows it has read everything before.
    lab.signal(alice_pid, libc::SIGTERM);
    assert_eq!(lab.wait_exit(alice_pid, Duration::from_secs(10)), Some(0));
    wait_for(Duration::from_secs(10), || {
        let log = read(&finch_log);
        log.split_once("Receive: -</stream:stream>-")
            .is_some_and(|(_, after)| after.contains("Remove service"))
    })
    .unwrap_or_else(|| panic!("finch saw no stream end or goodbye:\n{}", read(&finch_log)));
    assert!(
        !read(&finch_log).contains("without stream end"),
        "{}",
        read(&finch_log)
    );
    eprintln!(
        "FIGURE finch and nbhd: {N}/{N} each way, each shown once, one stream; frank listed as {:?}, Away shown as dnd",
        row["nick"]
    );
}

/// Established TCP streams in host 0 to host `peer`.
fn streams_to(lab: &Lab, peer: usize) -> usize {
    let out = lab
        .exec(0, &["ss", "-Htn", "state", "established"])
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("{}:", lab.host(peer).ip)))
        .count()
}

/// The TCP resets host `i` has sent (`/proc/net/snmp` is per network namespace).
fn tcp_out_rsts(lab: &Lab, i: usize) -> u64 {
    let out = lab.exec(i, &["cat", "/proc/net/snmp"]).expect("snmp");
    let text = String::from_utf8_lossy(&out.stdout);
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (names, values) = (tcp[0].split_whitespace(), tcp[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == "OutRsts")
        .and_then(|(_, v)| v.parse().ok())
        .expect("Tcp OutRsts")
}
