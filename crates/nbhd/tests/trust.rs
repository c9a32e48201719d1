//! Issue 15's attacks by a host on the link, run as an attacker would: real daemons in network
//! namespaces (nbhd-lab), and the attacker a separate program speaking raw bytes
//! (`support/stream_attack.py`), not our own engine. Root only; they skip with a message
//! elsewhere. Names start with `netns_` so nextest runs them in one serial group.

mod common;

use std::time::Duration;

use common::*;
use nbhd_lab::{skip_unless_root, wait_for, Lab};
use serde_json::Value;

/// Alice's messages whose text carries `marker`.
fn stored_with(lab: &Lab, marker: &str) -> Vec<Value> {
    let (_, v) = nbhd_json(lab, 0, &["messages"]);
    v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m["text"].as_str().is_some_and(|t| t.contains(marker)))
        .collect()
}

/// Host `i`'s row for the peer called `nick`, once it lists it.
fn listed(lab: &Lab, i: usize, nick: &str) -> Value {
    let row = || peers(lab, i).into_iter().find(|p| p["nick"] == nick);
    wait_for(Duration::from_secs(20), || row().is_some())
        .unwrap_or_else(|| panic!("h{} does not list {nick}", i + 1));
    row().expect("listed")
}

#[test]
fn netns_a_host_with_no_key_cannot_chat_as_bob_on_alice_stream() {
    if skip_unless_root("netns_a_host_with_no_key_cannot_chat_as_bob_on_alice_stream") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    start(&mut lab, 0, "alice", &[]);
    start(&mut lab, 1, "bob", &[]);
    let bob = listed(&lab, 0, "bob");
    let alice = listed(&lab, 1, "alice");
    let port = |row: &Value| row["port"].as_u64().expect("port").to_string();
    let text = |row: &Value, k: &str| row[k].as_str().expect(k).to_string();

    let marker = "FORGED-AS-BOB";
    let log = lab.dir.join("attack.log");
    let (alice_ip, bob_ip) = (lab.host(0).ip.to_string(), lab.host(1).ip.to_string());
    let args = [
        "python3".to_string(),
        support("stream_attack.py"),
        alice_ip,
        port(&alice),
        text(&alice, "instance"),
        text(&alice, "id"),
        bob_ip,
        port(&bob),
        text(&bob, "instance"),
        text(&bob, "id"),
        marker.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn(2, &args, &log).expect("attacker");
    wait_for(Duration::from_secs(60), || read(&log).contains("done"))
        .unwrap_or_else(|| panic!("the attacker did not finish: {}", read(&log)));
    eprintln!("attacker's log:\n{}", read(&log));
    // The attacker reached alice's listener every time (or this test would prove nothing) ...
    assert!(
        read(&log).contains("in clear: alice answered: b\"<?xml"),
        "{}",
        read(&log)
    );
    // ... and nothing it sent was stored as bob's, or as anyone's.
    let forged = stored_with(&lab, marker);
    assert!(forged.is_empty(), "alice stored forged chats: {forged:?}");
    let stats = nbhd_json(&lab, 0, &["stats"]).1;
    let refused = stats["messages"]["dropped"]["stream-error"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused >= 2, "alice refused no stream: {stats}");
    eprintln!("FIGURE alice closed {refused} of the attacker's streams with a stream error");

    // Bob himself still gets through, over TCP, and alice stores it as his.
    let (code, v) = nbhd_json(&lab, 1, &["send", "alice", "really bob", "--timeout", "10"]);
    assert_eq!((code, v["via"].as_str()), (Some(0), Some("tcp")), "{v}");
    let genuine = stored_with(&lab, "really bob");
    assert_eq!(genuine.len(), 1, "{genuine:?}");
    assert_eq!(genuine[0]["from"], bob["id"], "{genuine:?}");
}

/// Issue 15, attack 7: forged announcements, each from a new source address, filled alice's
/// cache and kept a genuine newcomer unlisted for the whole flood. A raw-socket flooder on h2
/// forges every free address of the lab's /24 (and, every other datagram, an address of no
/// lab subnet) at the 14,000 datagrams a second; bob starts on h3 during the flood and
/// must be listed by alice while it runs. Timings are printed, not asserted (bench/flood runs
/// the flooder unpaced, on a release build, and measures them against the goals). Unpaced, a
/// debug build's daemon reads a fraction of what arrives, the kernel drops the rest at random,
/// bob's few announcements with them, and the test would measure luck.
#[test]
fn netns_forged_announcements_from_every_address_keep_no_newcomer_out() {
    if skip_unless_root("netns_forged_announcements_from_every_address_keep_no_newcomer_out") {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let mut lab = Lab::new(3).expect("lab");
    start(&mut lab, 0, "alice", &[]);
    let (stop, sent) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let src = lab.host(1).ip;
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        lab.thread_in(1, move || {
            nbhd_bench::soak::spoofed_mdns_flood(src, 3, true, Some(14_000.0), stop, sent)
        })
    };
    let flood_started = std::time::Instant::now();
    let stats = |lab: &Lab| nbhd_json(lab, 0, &["stats"]).1;
    let dropped = |lab: &Lab, why: &str| stats(lab)["mdns"]["dropped"][why].as_u64().unwrap_or(0);
    // The flood is doing its worst: alice's cache is full of forgeries, the off-link ones
    // are refused at the door.
    wait_for(Duration::from_secs(30), || {
        dropped(&lab, "cache-full") > 0 && dropped(&lab, "off-link") > 0
    })
    .unwrap_or_else(|| panic!("the flood did not reach alice: {}", stats(&lab)));
    start(&mut lab, 2, "bob", &[]);
    let bob_started = std::time::Instant::now();
    let mut answers = Vec::new();
    let listed = wait_for(Duration::from_secs(30), || {
        let t = std::time::Instant::now();
        let listed = peers(&lab, 0).iter().any(|p| p["nick"] == "bob");
        answers.push(t.elapsed().as_secs_f64() * 1000.0);
        listed
    });
    let rate = sent.load(Ordering::Relaxed) as f64 / flood_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = flood.join();
    let s = stats(&lab);
    eprintln!(
        "FIGURE a forged-source flood of {rate:.0} datagrams/s: bob listed by alice {:?} after he started; `nbhd peers` answered in p50 {:.0} ms, max {:.0} ms over {} calls; dropped {}",
        listed.map(|_| bob_started.elapsed()),
        percentile(&mut answers.clone(), 0.5),
        percentile(&mut answers.clone(), 1.0),
        answers.len(),
        s["mdns"]["dropped"]
    );
    assert!(listed.is_some(), "bob never listed during the flood: {s}");
}
