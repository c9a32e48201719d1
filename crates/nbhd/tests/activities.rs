//! Shared activities between real daemons in network namespaces (issue 10's acceptance): logs
//! that end identical on every member under loss, a kill -9 and a late joiner behind the seed's
//! black hole; a private activity an outsider can neither see, read nor forge into.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use nbhd_daemon::contract::Request;
use nbhd_daemon::control::Client;
use nbhd_daemon::DataDir;
use nbhd_lab::{skip_unless_root, wait_for, Lab};
use serde_json::Value;

/// `nbhd share` on host `i`: its reply (`id`, `group`, ...).
fn share(lab: &Lab, i: usize, args: &[&str]) -> Value {
    let mut a = vec!["share"];
    a.extend_from_slice(args);
    let (code, v) = nbhd_json(lab, i, &a);
    assert_eq!(code, Some(0), "share on h{}: {v}", i + 1);
    v
}

/// The activities host `i` lists.
fn activities(lab: &Lab, i: usize) -> Vec<Value> {
    let (_, v) = nbhd_json(lab, i, &["activities"]);
    v.as_array().cloned().unwrap_or_default()
}

/// Host `i`'s log of activity `id` (its posts in display order); empty if it cannot say.
fn log(lab: &Lab, i: usize, id: &str) -> Vec<Value> {
    let (_, v) = nbhd_json(lab, i, &["log", id]);
    v.as_array().cloned().unwrap_or_default()
}

fn stats(lab: &Lab, i: usize) -> Value {
    nbhd_json(lab, i, &["stats"]).1
}

/// Posts `n` texts `"{tag} {k}"` to `id` from host `i`, one after the other on one control
/// connection, each as soon as the previous one is stored; `done` counts them.
fn post_all(
    lab: &Lab,
    i: usize,
    id: &str,
    tag: &str,
    n: usize,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Duration> {
    let dir = DataDir::resolve(Some(data_dir(lab, i)));
    let (id, tag) = (id.to_string(), tag.to_string());
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut c = Client::connect(&dir).expect("control socket");
        for k in 0..n {
            let r = c.call(&Request::Post {
                activity: id.clone(),
                text: Some(format!("{tag} {k}")),
                bytes: None,
            });
            assert!(r.is_ok(), "post {k} by {tag}: {r:?}");
            done.fetch_add(1, Ordering::SeqCst);
        }
        started.elapsed()
    })
}

/// Checks that `posts` holds, from each sender, seqs 1..=n exactly once and in order, and
/// that the whole log is in display order (Lamport time, then sender). Sender → count.
fn check_log(posts: &[Value]) -> BTreeMap<String, u64> {
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    let mut last: Option<(u64, Vec<u8>)> = None;
    for p in posts {
        let sender = p["sender"].as_str().expect("sender").to_string();
        let seq = p["seq"].as_u64().expect("seq");
        let expect = next.entry(sender.clone()).or_insert(0);
        assert_eq!(
            seq,
            *expect + 1,
            "{sender}'s posts out of order, with a gap or a duplicate at {p}"
        );
        *expect = seq;
        // The order is by the sender's key bytes, not by their base64.
        let key_bytes = URL_SAFE_NO_PAD
            .decode(&sender)
            .expect("a peer id is base64url");
        let key = (p["lamport"].as_u64().expect("lamport"), key_bytes);
        assert!(
            last.as_ref().is_none_or(|l| *l < key),
            "not in display order at {p}"
        );
        last = Some(key);
    }
    next
}

#[test]
fn netns_four_members_under_20pct_loss_end_with_identical_logs_through_a_kill9_and_a_late_joiner_behind_the_seed_black_hole(
) {
    if skip_unless_root("netns_four_members_under_20pct_loss_end_with_identical_logs_through_a_kill9_and_a_late_joiner_behind_the_seed_black_hole") {
        return;
    }
    const POSTS: usize = 1000;
    let mut lab = Lab::new(5).expect("lab");
    let nicks = ["alice", "bob", "carol", "dave", "erin"];
    let mut pids = Vec::new();
    for (i, n) in nicks.iter().enumerate().take(4) {
        pids.push(start(&mut lab, i, n, &[]));
    }
    let a = share(&lab, 0, &["race", "--type", "chat"]);
    let id = a["id"].as_str().expect("id").to_string();
    // Public: advertised to everyone, who join it by name.
    for i in 1..4 {
        wait_for(Duration::from_secs(20), || {
            activities(&lab, i).iter().any(|x| x["id"] == id.as_str())
        })
        .unwrap_or_else(|| panic!("h{} never listed the activity", i + 1));
        let (code, v) = nbhd_json(&lab, i, &["join", "race"]);
        assert_eq!((code, v["joined"].as_bool()), (Some(0), Some(true)), "{v}");
    }
    wait_for(Duration::from_secs(20), || {
        (0..4).all(|i| {
            activities(&lab, i)
                .iter()
                .any(|x| x["id"] == id.as_str() && x["members"] == 4)
        })
    })
    .expect("every member counts 4 members");
    for i in 0..5 {
        lab.loss(i, 20).unwrap();
    }

    // Two senders, as fast as the API takes them; dave is killed half-way and comes back.
    let (done_a, done_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let ta = post_all(&lab, 0, &id, "alice", POSTS, done_a.clone());
    let tb = post_all(&lab, 1, &id, "bob", POSTS, done_b.clone());
    let total = || done_a.load(Ordering::SeqCst) + done_b.load(Ordering::SeqCst);
    wait_for(Duration::from_secs(120), || total() >= POSTS / 2).expect("posts under way");
    lab.signal(pids[3], libc::SIGKILL);
    assert!(lab.wait_exit(pids[3], Duration::from_secs(5)).is_some());
    let killed_at = total();
    wait_for(Duration::from_secs(120), || total() >= POSTS).expect("posts go on");
    pids[3] = restart(&mut lab, 3, "dave");
    let restarted_at = total();
    let (ea, eb) = (ta.join().unwrap(), tb.join().unwrap());
    eprintln!(
        "FIGURE 2 x {POSTS} posts under 20% loss on every host: alice's in {:.2} s ({:.0} posts/s), bob's in {:.2} s; dave killed after {killed_at} posts, back after {restarted_at}",
        ea.as_secs_f64(),
        POSTS as f64 / ea.as_secs_f64(),
        eb.as_secs_f64()
    );

    // Within 10 s of the last post, the four logs are one.
    let converged = wait_for(Duration::from_secs(10), || {
        let first = log(&lab, 0, &id);
        first.len() == 2 * POSTS && (1..4).all(|i| log(&lab, i, &id) == first)
    });
    let logs: Vec<Vec<Value>> = (0..4).map(|i| log(&lab, i, &id)).collect();
    let first_difference: Vec<Option<(usize, &Value, &Value)>> = logs
        .iter()
        .map(|l| {
            l.iter()
                .zip(&logs[0])
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .map(|(k, (a, b))| (k, a, b))
        })
        .collect();
    assert!(
        converged.is_some(),
        "logs not identical 10 s after the last post: lengths {:?}, first differences from alice's {first_difference:?}; dave's log:\n{}",
        logs.iter().map(Vec::len).collect::<Vec<_>>(),
        read(&lab.dir.join("nbhd-h4-dave-restarted.log"))
    );
    eprintln!(
        "FIGURE identical logs of {} posts on 4 members {} ms after the last post ({:.1} s after the first)",
        logs[0].len(),
        converged.unwrap().as_millis(),
        started.elapsed().as_secs_f64()
    );
    let per_sender = check_log(&logs[0]);
    assert_eq!(
        per_sender.values().copied().collect::<Vec<_>>(),
        vec![POSTS as u64; 2],
        "{per_sender:?}"
    );
    let texts: Vec<&str> = logs[0].iter().filter_map(|p| p["text"].as_str()).collect();
    assert!(texts.contains(&"alice 0") && texts.contains(&"bob 999"));
    for i in 0..4 {
        let s = stats(&lab, i);
        eprintln!("FIGURE h{} activity stats: {}", i + 1, s["activity"]);
    }

    // A post whose `nbhd post` exited 0 survives its sender's kill -9 right after, and the
    // restarted sender continues its numbering.
    let (code, v) = nbhd_json(&lab, 1, &["post", &id, "last words"]);
    assert_eq!(
        (code, v["seq"].as_u64()),
        (Some(0), Some(POSTS as u64 + 1)),
        "{v}"
    );
    lab.signal(pids[1], libc::SIGKILL);
    assert!(lab.wait_exit(pids[1], Duration::from_secs(5)).is_some());
    pids[1] = restart(&mut lab, 1, "bob");
    let (code, v) = nbhd_json(&lab, 1, &["post", &id, "back"]);
    assert_eq!(
        (code, v["seq"].as_u64()),
        (Some(0), Some(POSTS as u64 + 2)),
        "{v}"
    );
    let all = wait_for(Duration::from_secs(10), || {
        let first = log(&lab, 0, &id);
        first.len() == 2 * POSTS + 2 && (1..4).all(|i| log(&lab, i, &id) == first)
    });
    assert!(
        all.is_some(),
        "the sender's last post before its kill -9 reached everyone"
    );
    let logs: Vec<Vec<Value>> = (0..4).map(|i| log(&lab, i, &id)).collect();
    let texts: Vec<&str> = logs[0].iter().filter_map(|p| p["text"].as_str()).collect();
    assert!(texts.contains(&"last words") && texts.contains(&"back"));
    check_log(&logs[0]);

    // Erin comes after the posts, with the seed's black hole between her and every member:
    // the whole history reaches her by multicast alone.
    for j in 0..4 {
        lab.drop_unicast(4, j).unwrap();
        lab.drop_unicast(j, 4).unwrap();
    }
    start(&mut lab, 4, "erin", &[]);
    wait_for(Duration::from_secs(20), || {
        activities(&lab, 4).iter().any(|x| x["id"] == id.as_str())
    })
    .expect("erin lists the activity");
    let (code, v) = nbhd_json(&lab, 4, &["join", &id]);
    assert_eq!(code, Some(0), "{v}");
    let joined = Instant::now();
    let got = wait_for(Duration::from_secs(30), || log(&lab, 4, &id) == logs[0]);
    assert!(
        got.is_some(),
        "erin has {} of {} posts; her log:\n{}",
        log(&lab, 4, &id).len(),
        logs[0].len(),
        read(&lab.dir.join("nbhd-h5-erin.log"))
    );
    eprintln!(
        "FIGURE late joiner behind the black hole, 20% loss: whole history ({} posts) in {} ms; its activity stats {}",
        logs[0].len(),
        joined.elapsed().as_millis(),
        stats(&lab, 4)["activity"]
    );
}

#[test]
fn netns_a_private_activity_is_unseen_unreadable_and_unforgeable_by_an_outsider_and_the_seed_fault_changes_nothing(
) {
    if skip_unless_root("netns_a_private_activity_is_unseen_unreadable_and_unforgeable_by_an_outsider_and_the_seed_fault_changes_nothing") {
        return;
    }
    const POSTS: usize = 50;
    const MARKER: &str = "plaintext-marker-7d1e";
    let mut lab = Lab::new(3).expect("lab");
    for (i, n) in ["alice", "bob", "eve"].iter().enumerate() {
        start(&mut lab, i, n, &[]);
    }
    wait_for(Duration::from_secs(20), || {
        (0..3).all(|i| nicks(&lab, i).len() == 2)
    })
    .expect("all see all");
    // The seed: alice's unicast to bob silently dies.
    lab.drop_unicast(0, 1).unwrap();
    // Eve captures everything her interface sees.
    let cap = lab.dir.join("eve.pcap");
    let cap_s = cap.display().to_string();
    let tcpdump = lab
        .spawn(
            2,
            &[
                "tcpdump",
                "-i",
                "veth0",
                "--immediate-mode",
                "-U",
                "-n",
                "-s",
                "0",
                "-w",
                &cap_s,
            ],
            &lab.dir.join("tcpdump.log"),
        )
        .expect("tcpdump");
    wait_for(Duration::from_secs(10), || {
        read(&lab.dir.join("tcpdump.log")).contains("listening on")
    })
    .expect("tcpdump listening");

    // A public activity, which eve does see: the check below can tell.
    let open = share(&lab, 0, &["open"]);
    let secret = share(&lab, 0, &["secret", "--private", "--type", "chat"]);
    let id = secret["id"].as_str().unwrap().to_string();
    let port: u16 = secret["group"]
        .as_str()
        .and_then(|g| g.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .expect("group:port");
    wait_for(Duration::from_secs(20), || {
        activities(&lab, 2).iter().any(|x| x["id"] == open["id"])
    })
    .expect("eve lists the public activity");
    assert!(!activities(&lab, 2).iter().any(|x| x["id"] == id.as_str()));

    // Bob's invitation crosses the black hole; it carries the key, sealed to him.
    let (code, v) = nbhd_json(&lab, 0, &["invite", "bob", "secret"]);
    assert_eq!((code, v["via"].as_str()), (Some(0), Some("courier")), "{v}");
    let (_, inv) = nbhd_json(&lab, 1, &["invitations"]);
    let invitation = inv
        .as_array()
        .and_then(|a| a.iter().find(|r| r["activity"]["id"] == id.as_str()))
        .and_then(|r| r["id"].as_str())
        .expect("bob has the invitation")
        .to_string();
    let (code, v) = nbhd_json(&lab, 1, &["join", &invitation]);
    assert_eq!(
        (code, v["id"].as_str()),
        (Some(0), Some(id.as_str())),
        "{v}"
    );
    // An outsider cannot join it: it knows neither its name nor its id.
    let (code, _) = nbhd_json(&lab, 2, &["join", &id]);
    assert_eq!(code, Some(1));

    let (da, db) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let ta = post_all(&lab, 0, &id, &format!("{MARKER} alice"), POSTS, da);
    let tb = post_all(&lab, 1, &id, &format!("{MARKER} bob"), POSTS, db);
    ta.join().unwrap();
    tb.join().unwrap();
    let same = wait_for(Duration::from_secs(10), || {
        let a = log(&lab, 0, &id);
        a.len() == 2 * POSTS && log(&lab, 1, &id) == a
    });
    assert!(
        same.is_some(),
        "alice has {}, bob {} posts",
        log(&lab, 0, &id).len(),
        log(&lab, 1, &id).len()
    );
    check_log(&log(&lab, 0, &id));
    assert!(!activities(&lab, 2).iter().any(|x| x["id"] == id.as_str()));

    // The capture: every post went past eve, none readable.
    lab.signal(tcpdump, libc::SIGTERM);
    lab.wait_exit(tcpdump, Duration::from_secs(5));
    let bytes = std::fs::read(&cap).expect("capture");
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"alice"), "the capture holds readable traffic (mDNS)");
    assert!(
        !has(MARKER.as_bytes()),
        "a post's plaintext is in eve's capture"
    );

    // Eve replays and forges frames from her capture.
    let before: Vec<Value> = (0..2).map(|i| stats(&lab, i)["activity"].clone()).collect();
    let out = lab
        .exec(
            2,
            &[
                "python3",
                &support("forge_activity.py"),
                &cap_s,
                &port.to_string(),
                &lab.host(2).ip.to_string(),
                "40",
            ],
        )
        .expect("forge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attack: Value = serde_json::from_slice(&out.stdout).expect("forge json");
    eprintln!("FIGURE eve's attack from her capture: {attack}");
    assert!(attack["captured"].as_u64().unwrap() >= POSTS as u64);
    let forged = attack["forged"].as_u64().unwrap();
    assert_eq!(forged, 40);
    for (i, who) in ["alice", "bob"].iter().enumerate() {
        let me = status(&lab, i)["id"].as_str().unwrap().to_string();
        // Replays of our own frames are ignored like our multicast echo; others' are dropped
        // as replays.
        let replayed_others: u64 = attack["replayed"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| **k != me)
            .map(|(_, n)| n.as_u64().unwrap())
            .sum();
        let counted = wait_for(Duration::from_secs(5), || {
            let a = &stats(&lab, i)["activity"];
            let bad = a["dropped"]["bad-tag"].as_u64().unwrap_or(0)
                - before[i]["dropped"]["bad-tag"].as_u64().unwrap_or(0);
            let replayed = a["dropped"]["replayed"].as_u64().unwrap_or(0)
                - before[i]["dropped"]["replayed"].as_u64().unwrap_or(0);
            bad == forged && replayed == replayed_others
        });
        assert!(
            counted.is_some(),
            "{who}: before {}, after {}",
            before[i],
            stats(&lab, i)["activity"]
        );
        eprintln!(
            "FIGURE {who} after the attack: {}",
            stats(&lab, i)["activity"]
        );
    }
    // Nothing entered the log, and both still serve.
    assert_eq!(log(&lab, 0, &id).len(), 2 * POSTS);
    assert_eq!(log(&lab, 1, &id), log(&lab, 0, &id));
}
