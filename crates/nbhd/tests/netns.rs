//! Multi-host tests: real `nbhd up` daemons in network namespaces on one bridge (nbhd-lab),
//! and real peers nobody here wrote (python-zeroconf, avahi-daemon). Root only; they skip with a
//! message elsewhere. Names start with `netns_` so nextest runs them in one serial group.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use nbhd_lab::{skip_unless_root, wait_for, Lab};
use serde_json::Value;

#[test]
fn netns_three_daemons_find_each_other_then_leave_by_goodbye_and_by_kill() {
    if skip_unless_root("netns_three_daemons_find_each_other_then_leave_by_goodbye_and_by_kill") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    let ttl = "6";
    let t0 = Instant::now();
    let names = ["alice", "bob", "carol"];
    let mut pids = Vec::new();
    let mut events_log = None;
    for (i, n) in names.iter().enumerate() {
        pids.push(start(&mut lab, i, n, &["--record-ttl", ttl]));
        if i == 0 {
            events_log = Some(follow_events(&mut lab, 0));
        }
    }
    let events_log = events_log.expect("alice follows events");
    let all_seen = wait_for(Duration::from_secs(20), || {
        (0..3).all(|i| {
            let mut want: Vec<String> = names
                .iter()
                .filter(|n| **n != names[i])
                .map(|s| s.to_string())
                .collect();
            want.sort();
            nicks(&lab, i) == want
        })
    });
    assert!(
        all_seen.is_some(),
        "peers: {:?}",
        (0..3).map(|i| nicks(&lab, i)).collect::<Vec<_>>()
    );
    eprintln!(
        "FIGURE all 3 daemons list exactly the other two {:?} after the first start",
        t0.elapsed()
    );
    // Each row carries what the contract promises, and the id is the peer's key.
    let bob_id = status(&lab, 1)["id"].as_str().unwrap().to_string();
    let rows = peers(&lab, 0);
    let bob = rows.iter().find(|p| p["nick"] == "bob").unwrap();
    assert_eq!(bob["id"], bob_id.as_str());
    assert_eq!(bob["addrs"][0], lab.host(1).ip.to_string().as_str());
    assert_eq!(bob["legacy"], false);
    for k in [
        "id",
        "nick",
        "instance",
        "addrs",
        "port",
        "status",
        "msg",
        "legacy",
        "last_seen_ms",
    ] {
        assert!(bob.get(k).is_some(), "missing {k}");
    }

    // SIGTERM: goodbyes, exit 0, gone from the others within about a second.
    lab.signal(pids[2], libc::SIGTERM);
    let sent = Instant::now();
    assert_eq!(lab.wait_exit(pids[2], Duration::from_secs(10)), Some(0));
    let gone = wait_for(Duration::from_secs(10), || {
        !nicks(&lab, 0).contains(&"carol".to_string())
            && !nicks(&lab, 1).contains(&"carol".to_string())
    });
    let gone = gone.expect("carol still listed after SIGTERM");
    eprintln!(
        "FIGURE after SIGTERM, carol left both lists {:?} after the signal",
        sent.elapsed()
    );
    assert!(gone < Duration::from_secs(4), "took {gone:?}");

    // kill -9: no goodbye; gone within the record TTL plus refresh slack.
    let pid = start(&mut lab, 2, "carol", &["--record-ttl", ttl]);
    wait_for(Duration::from_secs(20), || {
        nicks(&lab, 0).contains(&"carol".to_string())
    })
    .expect("carol back");
    lab.signal(pid, libc::SIGKILL);
    let killed = Instant::now();
    let gone = wait_for(Duration::from_secs(30), || {
        !nicks(&lab, 0).contains(&"carol".to_string())
            && !nicks(&lab, 1).contains(&"carol".to_string())
    });
    let gone = gone.expect("carol still listed after kill -9");
    eprintln!(
        "FIGURE after kill -9, carol left both lists {:?} after the kill (record TTL {ttl} s)",
        killed.elapsed()
    );
    assert!(gone <= Duration::from_secs(6 + 4));

    // `nbhd events --json` on alice saw it all, one object per line.
    let lines: Vec<Value> = read(&events_log)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let seen = |kind: &str, nick: &str| {
        lines
            .iter()
            .filter(|e| e["type"] == kind && e["peer"]["nick"] == nick)
            .count()
    };
    assert_eq!(seen("peer-up", "bob"), 1, "{lines:?}");
    assert_eq!(seen("peer-up", "carol"), 2);
    assert_eq!(seen("peer-down", "carol"), 2);
    assert!(lines.iter().all(|e| e["at"].as_u64().is_some()));

    // The HTTP API serves the same list, behind the bearer token.
    let api = read(&data_dir(&lab, 0).join("api")).trim().to_string();
    let token = read(&data_dir(&lab, 0).join("token")).trim().to_string();
    let get = |auth: &str| {
        let script = format!(
            "import urllib.request,sys\nr=urllib.request.Request('{api}api/peers',headers={{'Authorization':'{auth}'}})\n\
             try:\n print(urllib.request.urlopen(r).read().decode())\nexcept urllib.error.HTTPError as e:\n print(e.code)"
        );
        String::from_utf8_lossy(&lab.exec(0, &["python3", "-c", &script]).unwrap().stdout)
            .trim()
            .to_string()
    };
    assert_eq!(get("Bearer wrong"), "401");
    let listed: Value = serde_json::from_str(&get(&format!("Bearer {token}"))).expect("API JSON");
    assert_eq!(listed.as_array().map(|a| a.len()), Some(1));
    assert_eq!(listed[0]["nick"], "bob");
}

#[test]
fn netns_lab_faults_drop_one_direction_of_unicast_and_nothing_else() {
    if skip_unless_root("netns_lab_faults_drop_one_direction_of_unicast_and_nothing_else") {
        return;
    }
    let mut lab = Lab::new(2).expect("lab");
    let (a, b) = (lab.host(0).ip.to_string(), lab.host(1).ip.to_string());
    // Datagrams that reach `to` when `from` sends 20 to `dst` (unicast address or group).
    fn delivered(lab: &mut Lab, from: usize, to: usize, dst: &str) -> u32 {
        let to_ip = lab.host(to).ip.to_string();
        let log = lab.dir.join("udp-recv.log");
        let mut args = vec![
            "python3".to_string(),
            support("udp.py"),
            "recv".into(),
            to_ip,
            "40000".into(),
            "2".into(),
        ];
        if dst.starts_with("239.") {
            args.push(dst.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let pid = lab.spawn(to, &args, &log).unwrap();
        wait_for(Duration::from_secs(10), || read(&log).contains("ready")).expect("receiver ready");
        let src = lab.host(from).ip.to_string();
        lab.exec(
            from,
            &[
                "python3",
                &support("udp.py"),
                "send",
                &src,
                dst,
                "40000",
                "20",
            ],
        )
        .unwrap();
        lab.wait_exit(pid, Duration::from_secs(10));
        read(&log)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
    assert_eq!(
        delivered(&mut lab, 0, 1, &b),
        20,
        "healthy before any fault"
    );
    lab.drop_unicast(0, 1).unwrap();
    assert_eq!(
        delivered(&mut lab, 0, 1, &b),
        0,
        "a to b unicast is dropped"
    );
    assert_eq!(
        delivered(&mut lab, 1, 0, &a),
        20,
        "b to a unicast still flows"
    );
    assert_eq!(
        delivered(&mut lab, 0, 1, "239.255.1.1"),
        20,
        "a to b multicast still flows"
    );
    lab.clear_faults().unwrap();
    assert_eq!(delivered(&mut lab, 0, 1, &b), 20, "healed");
    lab.loss(1, 100).unwrap();
    assert_eq!(delivered(&mut lab, 0, 1, &b), 0, "100 % loss on b's input");
    lab.clear_faults().unwrap();
    lab.loss(1, 50).unwrap();
    let half = delivered(&mut lab, 0, 1, &b);
    assert!(half > 0 && half < 20, "50 % loss let {half} of 20 through");
}

#[test]
fn netns_cli_errors_are_one_line_with_the_contract_exit_codes() {
    if skip_unless_root("netns_cli_errors_are_one_line_with_the_contract_exit_codes") {
        return;
    }
    let mut lab = Lab::new(1).expect("lab");
    let dir = data_dir(&lab, 0);
    let check = |out: &Output, code: i32, needle: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "stderr: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(needle), "{err}");
        assert!(out.stdout.is_empty());
    };
    // No daemon running: exit 3.
    check(&nbhd(&lab, 0, &dir, &["peers"]), 3, "nbhd up");
    // Unknown interface: exit 2, names the interfaces there are.
    check(
        &nbhd(&lab, 0, &dir, &["up", "--nick", "x", "--iface", "nosuch0"]),
        2,
        "veth0",
    );
    // A daemon already runs on this data dir: exit 4.
    start(&mut lab, 0, "first", &[]);
    check(
        &nbhd(&lab, 0, &dir, &["up", "--nick", "second"]),
        4,
        "already runs",
    );
    // An empty or blank PEER is a usage error (exit 2), never "the only peer".
    for peer in ["", "  "] {
        check(
            &nbhd(&lab, 0, &dir, &["send", peer, "hi"]),
            2,
            "PEER must not be empty",
        );
        check(
            &nbhd(&lab, 0, &dir, &["invite", peer, "chess"]),
            2,
            "PEER must not be empty",
        );
    }
    // A peer nobody has seen: exit 1, with what to do.
    check(
        &nbhd(&lab, 0, &dir, &["send", "nobody", "hi"]),
        1,
        "nbhd peers",
    );
    // A closed stdout ends the command quietly with status 0, no panic: as `head -1` does it,
    // and with the reader gone before the first write (so the write surely fails with EPIPE).
    for reader in ["head -1", "(exec 0<&-; sleep 0.3)"] {
        let script = format!(
            "{NBHD} --data-dir {} status | {reader}; echo \"nbhd exit ${{PIPESTATUS[0]}}\"",
            dir.display()
        );
        let out = lab.exec(0, &["bash", "-c", &script]).unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            stdout.contains("nbhd exit 0"),
            "{reader}: {stdout} {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{reader}: {stderr}");
    }
    // An unwritable data dir (a read-only bind mount: root ignores file modes): exit 5.
    let ro = lab.dir.join("readonly");
    std::fs::create_dir_all(&ro).unwrap();
    let script = format!(
        "mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec {NBHD} --data-dir {ro}/d up --nick x",
        ro = ro.display()
    );
    let out = lab
        .exec(0, &["unshare", "-m", "sh", "-c", &script])
        .unwrap();
    check(&out, 5, "cannot write data dir");
}

#[test]
fn netns_bad_input_is_dropped_counted_and_the_daemon_keeps_serving() {
    if skip_unless_root("netns_bad_input_is_dropped_counted_and_the_daemon_keeps_serving") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    start(&mut lab, 0, "alice", &[]);
    start(&mut lab, 1, "bob", &[]);
    wait_for(Duration::from_secs(20), || nicks(&lab, 0) == ["bob"]).expect("alice sees bob");
    let (src, dst) = (lab.host(2).ip.to_string(), lab.host(0).ip.to_string());
    let out = lab
        .exec(2, &["python3", &support("send_garbage.py"), &src, &dst])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = || -> Value {
        let o = nbhd(&lab, 0, &data_dir(&lab, 0), &["stats", "--json"]);
        serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
    };
    // 4 kinds × (multicast + unicast) = 8 datagrams, every one dropped and counted.
    wait_for(Duration::from_secs(10), || {
        stats()["mdns"]["dropped_total"].as_u64() >= Some(8)
    })
    .unwrap_or_else(|| panic!("not all counted: {}", stats()));
    let s = stats();
    eprintln!(
        "FIGURE dropped counters after the hostile burst: {}",
        s["mdns"]["dropped"]
    );
    assert!(s["mdns"]["dropped"]["oversized"].as_u64() >= Some(2));
    assert!(s["mdns"]["dropped"]["malformed"].as_u64() >= Some(4));
    let log = read(&lab.dir.join("nbhd-h1-alice.log"));
    assert!(
        log.contains("dropped") && log.contains("reason=malformed") && log.contains("larger than"),
        "log lines say so: {log}"
    );
    // Still serving: a newcomer is found, and finds alice.
    start(&mut lab, 2, "carol", &[]);
    wait_for(Duration::from_secs(20), || {
        nicks(&lab, 0) == ["bob", "carol"] && nicks(&lab, 2) == ["alice", "bob"]
    })
    .expect("alice keeps answering after bad input");
}

#[test]
fn netns_python_zeroconf_resolves_nbhd_and_nbhd_lists_zeroconf_as_legacy() {
    if skip_unless_root("netns_python_zeroconf_resolves_nbhd_and_nbhd_lists_zeroconf_as_legacy") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    start(&mut lab, 0, "alice", &[]);
    let me = status(&lab, 0);
    // python-zeroconf publishes a legacy XEP-0174 peer on h3.
    let h3 = lab.host(2).ip.to_string();
    let pub_log = lab.dir.join("zc-publish.log");
    lab.spawn(
        2,
        &["python3", &support("zc_publish.py"), "pyzc@h3", &h3],
        &pub_log,
    )
    .unwrap();
    // python-zeroconf on h2 browses and resolves.
    let h2 = lab.host(1).ip.to_string();
    let out = lab
        .exec(1, &["python3", &support("zc_browse.py"), "12", &h2])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "zc_browse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    eprintln!("FIGURE python-zeroconf resolved: {}", text.trim());
    let alice = found
        .iter()
        .find(|v| v["name"].as_str().is_some_and(|n| n.starts_with("alice@")))
        .unwrap_or_else(|| panic!("python-zeroconf did not resolve alice: {text}"));
    assert_eq!(alice["txt"]["nbhd"], "1");
    assert_eq!(alice["txt"]["txtvers"], "1");
    assert_eq!(alice["txt"]["nick"], "alice");
    assert_eq!(alice["txt"]["key"], me["id"]);
    assert_eq!(
        alice["txt"]["port.p2pj"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        alice["port"].as_u64().unwrap()
    );
    assert_eq!(alice["addresses"][0], lab.host(0).ip.to_string().as_str());
    assert_eq!(
        alice["server"],
        me["hostname"]
            .as_str()
            .map(|h| format!("{h}."))
            .unwrap()
            .as_str()
    );
    // nbhd lists the python-zeroconf instance as legacy.
    let row = wait_for_listed(&lab, 0, "pyzc@h3", &pub_log, "zeroconf");
    assert_eq!(row["legacy"], true);
    assert_eq!(row["id"], "legacy:pyzc@h3");
    assert_eq!(row["status"], "away");
    assert_eq!(row["addrs"][0], h3.as_str());
}

#[test]
fn netns_nbhd_lists_an_avahi_static_service_as_legacy() {
    if skip_unless_root("netns_nbhd_lists_an_avahi_static_service_as_legacy") {
        return;
    }
    let mut lab = Lab::new(2).expect("lab");
    let etc = lab.etc_dir(1).unwrap().join("avahi");
    std::fs::create_dir_all(etc.join("services")).unwrap();
    std::fs::write(
        etc.join("avahi-daemon.conf"),
        "[server]\nhost-name=avahilab\nuse-ipv4=yes\nuse-ipv6=no\nenable-dbus=no\nallow-interfaces=veth0\n\
         [wide-area]\nenable-wide-area=no\n[publish]\npublish-hinfo=no\npublish-workstation=no\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("services/presence.service"),
        r#"<?xml version="1.0" standalone='no'?>
<!DOCTYPE service-group SYSTEM "avahi-service.dtd">
<service-group>
  <name>avahi-peer@lab</name>
  <service>
    <type>_presence._tcp</type>
    <port>5298</port>
    <txt-record>txtvers=1</txt-record>
    <txt-record>nick=avahi-peer</txt-record>
    <txt-record>status=dnd</txt-record>
    <txt-record>port.p2pj=5298</txt-record>
  </service>
</service-group>
"#,
    )
    .unwrap();
    std::fs::create_dir_all("/run/avahi-daemon").unwrap();
    let log = lab.dir.join("avahi.log");
    // Own tmpfs on /run/avahi-daemon (pid file, socket) in this command's private mount namespace.
    lab.spawn(
        1,
        &[
            "unshare",
            "-m",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /run/avahi-daemon && exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f /etc/avahi/avahi-daemon.conf",
        ],
        &log,
    )
    .unwrap();
    start(&mut lab, 0, "alice", &[]);
    let row = wait_for_listed(&lab, 0, "avahi-peer@lab", &log, "avahi");
    assert_eq!(row["legacy"], true);
    assert_eq!(row["nick"], "avahi-peer");
    assert_eq!(row["status"], "dnd");
    assert_eq!(row["addrs"][0], lab.host(1).ip.to_string().as_str());
    assert_eq!(row["port"], 5298);
}

#[test]
fn netns_invitations_survive_the_seed_black_hole_by_courier() {
    if skip_unless_root("netns_invitations_survive_the_seed_black_hole_by_courier") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    for (i, n) in ["alice", "bob", "carol"].iter().enumerate() {
        start(&mut lab, i, n, &[]);
    }
    wait_for(Duration::from_secs(20), || {
        (0..3).all(|i| nicks(&lab, i).len() == 2)
    })
    .expect("all see all");
    let events_log = follow_events(&mut lab, 0);

    // Healthy path: TCP.
    let mut healthy = Vec::new();
    for k in 0..3 {
        let (code, v) = nbhd_json(
            &lab,
            0,
            &["invite", "bob", &format!("warmup{k}"), "--timeout", "10"],
        );
        assert_eq!(code, Some(0), "{v}");
        assert_eq!(v["via"], "tcp", "{v}");
        healthy.push(v["latency_ms"].as_f64().unwrap());
    }
    eprintln!("FIGURE healthy path: 3 invitations over tcp, latencies {healthy:?} ms");

    // The seed: every IP packet from alice to bob silently dropped on the bridge.
    lab.drop_unicast(0, 1).unwrap();
    let mut lat = Vec::new();
    let mut ids = Vec::new();
    for k in 0..20 {
        let (code, v) = nbhd_json(
            &lab,
            0,
            &["invite", "bob", &format!("act{k}"), "--timeout", "10"],
        );
        assert_eq!(code, Some(0), "invitation {k}: {v}");
        assert_eq!(v["delivered"], true);
        // Unicast from alice to bob is gone: nothing can arrive by TCP.
        assert_eq!(
            v["via"], "courier",
            "invitation {k} under the black hole: {v}"
        );
        lat.push(v["latency_ms"].as_f64().unwrap());
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let (p50, p99) = (
        percentile(&mut lat.clone(), 0.5),
        percentile(&mut lat.clone(), 0.99),
    );
    eprintln!("FIGURE seed black hole: 20 of 20 invitations delivered by courier, p50 {p50} ms, p99 {p99} ms, max {}", lat.iter().cloned().fold(0.0, f64::max));
    assert!(lat.iter().all(|l| *l < 1000.0), "each under 1 s: {lat:?}");
    // Bob shows each exactly once.
    let (_, inv) = nbhd_json(&lab, 1, &["invitations"]);
    let rows = inv.as_array().cloned().unwrap_or_default();
    assert_eq!(
        rows.len(),
        23,
        "3 warm-up and 20 invitations: {inv}; bob's log:\n{}",
        read(&lab.dir.join("nbhd-h2-bob.log"))
    );
    for id in &ids {
        assert_eq!(
            rows.iter().filter(|r| r["id"] == id.as_str()).count(),
            1,
            "invitation {id} shown once"
        );
    }
    let names: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["activity"]["name"].as_str())
        .collect();
    assert!(names.contains(&"act19"), "{names:?}");
    assert!(rows.iter().all(|r| r["from_nick"] == "alice"));
    // A message goes the same way.
    let (code, v) = nbhd_json(
        &lab,
        0,
        &["send", "bob", "hello through the hole", "--timeout", "10"],
    );
    assert_eq!(code, Some(0), "{v}");
    // Alice to carol still goes by TCP.
    let (code, v) = nbhd_json(&lab, 0, &["send", "carol", "hi", "--timeout", "10"]);
    assert_eq!((code, v["via"].as_str()), (Some(0), Some("tcp")), "{v}");
    // Doctor: probes and the peers' observations name the direction, on both sides.
    let row_for = |host: usize, nick: &str| -> Value {
        let (_, doctor) = nbhd_json(&lab, host, &["doctor"]);
        doctor
            .as_array()
            .and_then(|a| a.iter().find(|r| r["nick"] == nick).cloned())
            .unwrap_or(Value::Null)
    };
    let want_a = |r: &Value| {
        r["state"] == "unicast-broken"
            && r["unicast_out"] == "broken"
            && r["unicast_in"] == "ok"
            && r["multicast_out"] == "ok"
            && r["multicast_in"] == "ok"
    };
    let want_b = |r: &Value| {
        r["state"] == "unicast-broken" && r["unicast_out"] == "ok" && r["unicast_in"] == "broken"
    };
    let took = wait_for(Duration::from_secs(60), || {
        want_a(&row_for(0, "bob")) && want_b(&row_for(1, "alice"))
    });
    let (a, b) = (row_for(0, "bob"), row_for(1, "alice"));
    eprintln!("FIGURE alice's doctor row for bob: {a}");
    eprintln!("FIGURE bob's doctor row for alice: {b}");
    assert!(
        took.is_some(),
        "doctor did not name the direction:\nalice: {a}\nbob: {b}"
    );
    assert!(
        a["diagnosis"].as_str().unwrap().starts_with(
            "unicast from you to bob is dropped on the way (your probes never arrive; bob's reach you), \
             so TCP is impossible both ways; multicast works both ways; messages go by courier"
        ),
        "{a}"
    );
    let out = nbhd(&lab, 0, &data_dir(&lab, 0), &["doctor"]);
    eprintln!(
        "FIGURE alice's nbhd doctor:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let changes: Vec<Value> = read(&events_log)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "path-changed" && e["nick"] == "bob")
        .collect();
    eprintln!(
        "FIGURE alice's path-changed events for bob: {:?}",
        changes
            .iter()
            .map(|e| format!("{}/{}", e["state"], e["path"]))
            .collect::<Vec<_>>()
    );
    assert!(
        changes
            .iter()
            .any(|e| e["state"] == "unicast-broken" && e["path"] == "courier"),
        "{changes:?}"
    );

    // Healing: the rule goes; with one message every 5 s, deliveries are back on TCP and the
    // doctor says up within 30 s.
    lab.clear_faults().unwrap();
    let healed_at = Instant::now();
    let mut back = None;
    for k in 0..8 {
        let (code, v) = nbhd_json(
            &lab,
            0,
            &["send", "bob", &format!("tick {k}"), "--timeout", "10"],
        );
        assert_eq!(code, Some(0), "{v}");
        eprintln!(
            "FIGURE healing step {k}: {v} doctor {}",
            row_for(0, "bob")["state"]
        );
        if v["via"] == "tcp" && row_for(0, "bob")["state"] == "up" {
            back = Some(healed_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let back = back.expect("back on TCP and up within 40 s");
    eprintln!("FIGURE healed: deliveries back on tcp and doctor up {back:?} after the rule went");
    assert!(back <= Duration::from_secs(30), "{back:?}");
}

#[test]
fn netns_messages_use_no_courier_when_healthy_survive_loss_and_never_wait_for_a_frozen_peer() {
    if skip_unless_root(
        "netns_messages_use_no_courier_when_healthy_survive_loss_and_never_wait_for_a_frozen_peer",
    ) {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    let mut pids = Vec::new();
    for (i, n) in ["alice", "bob", "carol"].iter().enumerate() {
        pids.push(start(&mut lab, i, n, &[]));
    }
    wait_for(Duration::from_secs(20), || {
        (0..3).all(|i| nicks(&lab, i).len() == 2)
    })
    .expect("all see all");
    lab.count_udp(7641).unwrap();

    // Healthy: TCP, and not one courier frame on the wire.
    let mut lat = Vec::new();
    for k in 0..10 {
        let (code, v) = nbhd_json(
            &lab,
            0,
            &["invite", "bob", &format!("h{k}"), "--timeout", "10"],
        );
        assert_eq!((code, v["via"].as_str()), (Some(0), Some("tcp")), "{v}");
        lat.push(v["latency_ms"].as_f64().unwrap());
    }
    let (frames, _) = lab.udp_counter(7641).unwrap();
    eprintln!("FIGURE healthy: 10 invitations over tcp, latencies {lat:?} ms, courier frames on the wire: {frames}");
    assert_eq!(frames, 0);

    // 20 % loss on every host: still all delivered, each exactly once.
    for i in 0..3 {
        lab.loss(i, 20).unwrap();
    }
    let mut ids = Vec::new();
    let mut vias = Vec::new();
    for k in 0..20 {
        let (code, v) = nbhd_json(
            &lab,
            0,
            &["invite", "bob", &format!("lossy{k}"), "--timeout", "20"],
        );
        assert_eq!(code, Some(0), "lossy invitation {k}: {v}");
        ids.push(v["id"].as_str().unwrap().to_string());
        vias.push(v["via"].as_str().unwrap().to_string());
    }
    lab.clear_faults().unwrap();
    let (_, inv) = nbhd_json(&lab, 1, &["invitations"]);
    let rows = inv.as_array().cloned().unwrap_or_default();
    for id in &ids {
        assert_eq!(
            rows.iter().filter(|r| r["id"] == id.as_str()).count(),
            1,
            "{id} shown once"
        );
    }
    eprintln!("FIGURE 20 % loss everywhere: 20 of 20 delivered, each shown once; via {vias:?}");

    // Bob frozen: a send to bob waits (in the background) while one to carol completes at once.
    lab.signal(pids[1], libc::SIGSTOP);
    let mut slow = lab.command(0, NBHD);
    slow.arg("--data-dir").arg(data_dir(&lab, 0)).args([
        "send",
        "bob",
        "are you there",
        "--timeout",
        "8",
    ]);
    let slow_pid = lab
        .spawn_command(slow, &lab.dir.join("slow-send.log"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (code, v) = nbhd_json(&lab, 0, &["send", "carol", "hi carol", "--timeout", "8"]);
    let took = t.elapsed();
    eprintln!("FIGURE bob frozen: send to carol took {took:?} ({v})");
    assert_eq!(code, Some(0), "{v}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        lab.wait_exit(slow_pid, Duration::from_secs(20)),
        Some(1),
        "the send to frozen bob fails at its timeout"
    );
    lab.signal(pids[1], libc::SIGCONT);
}

#[test]
fn netns_hostile_stream_peers_get_a_stream_error_and_the_daemon_keeps_serving() {
    if skip_unless_root(
        "netns_hostile_stream_peers_get_a_stream_error_and_the_daemon_keeps_serving",
    ) {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    start(&mut lab, 0, "alice", &[]);
    start(&mut lab, 1, "bob", &[]);
    wait_for(Duration::from_secs(20), || nicks(&lab, 0) == ["bob"]).expect("alice sees bob");
    let port = peers(&lab, 0)[0]["port"].as_u64().unwrap().to_string();
    let bob_ip = lab.host(1).ip.to_string();
    for case in ["malformed", "endless", "bomb", "unproven"] {
        let out = lab
            .exec(
                2,
                &["python3", &support("hostile.py"), &bob_ip, &port, case],
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "FIGURE hostile peer ({case}): {}",
            text.trim().replace('\n', ", ")
        );
        assert!(
            text.contains("stream-error") && text.contains("closed"),
            "{case}: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = read(&lab.dir.join("nbhd-h2-bob.log"));
    assert!(
        log.contains("dropped") && log.contains("stream-error"),
        "bob logs what it dropped: {log}"
    );
    let (_, stats) = nbhd_json(&lab, 1, &["stats"]);
    assert_eq!(
        stats["messages"]["dropped"]["stream-error"], 4,
        "each hostile stream counted once: {stats}"
    );
    // Still serving: alice's invitation arrives.
    let (code, v) = nbhd_json(
        &lab,
        0,
        &["invite", "bob", "after the storm", "--timeout", "10"],
    );
    assert_eq!((code, v["via"].as_str()), (Some(0), Some("tcp")), "{v}");
}

#[test]
fn netns_with_neither_tcp_nor_courier_an_invitation_goes_through_a_relay() {
    if skip_unless_root("netns_with_neither_tcp_nor_courier_an_invitation_goes_through_a_relay") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    for (i, n) in ["alice", "bob", "carol"].iter().enumerate() {
        start(&mut lab, i, n, &[]);
    }
    wait_for(Duration::from_secs(20), || {
        (0..3).all(|i| nicks(&lab, i).len() == 2)
    })
    .expect("all see all");
    // Alice knows carol's TCP path works.
    let (code, _) = nbhd_json(&lab, 0, &["send", "carol", "hello", "--timeout", "10"]);
    assert_eq!(code, Some(0));
    // Alice to bob: unicast dropped, and alice's courier frames towards bob's port too.
    lab.drop_unicast(0, 1).unwrap();
    lab.drop_udp_towards(0, 1, 7641).unwrap();
    let (code, v) = nbhd_json(
        &lab,
        0,
        &["invite", "bob", "relayed chess", "--timeout", "15"],
    );
    eprintln!("FIGURE relay: {v}");
    assert_eq!((code, v["via"].as_str()), (Some(0), Some("relay")), "{v}");
    let carol_id = status(&lab, 2)["id"].as_str().unwrap().to_string();
    let (_, inv) = nbhd_json(&lab, 1, &["invitations"]);
    let row = inv
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["activity"]["name"] == "relayed chess")
        .cloned()
        .expect("bob has it");
    eprintln!("FIGURE bob's invitation row: {row}");
    assert_eq!(row["relayed_by"], carol_id.as_str());
    assert_eq!(row["via"], "relay");
    assert_eq!(row["from_nick"], "alice");
}

#[test]
fn netns_legacy_xep0174_clients_get_and_send_plain_messages() {
    if skip_unless_root("netns_legacy_xep0174_clients_get_and_send_plain_messages") {
        return;
    }
    let mut lab = Lab::new(3).expect("lab");
    start(&mut lab, 0, "alice", &[]);
    let alice = status(&lab, 0)["instance"].as_str().unwrap().to_string();
    let log = lab.dir.join("legacy.log");
    let h3 = lab.host(2).ip.to_string();
    lab.spawn(
        2,
        &[
            "python3",
            &support("legacy_peer.py"),
            "pyleg@h3",
            &h3,
            &alice,
        ],
        &log,
    )
    .unwrap();
    wait_for(Duration::from_secs(20), || {
        peers(&lab, 0).iter().any(|p| p["instance"] == "pyleg@h3")
    })
    .unwrap_or_else(|| panic!("alice does not see the legacy client: {}", read(&log)));
    let (code, v) = nbhd_json(
        &lab,
        0,
        &["send", "pyleg@h3", "hi legacy", "--timeout", "10"],
    );
    assert_eq!(
        (code, v["via"].as_str()),
        (Some(0), Some("tcp")),
        "{v}; legacy log: {}",
        read(&log)
    );
    wait_for(Duration::from_secs(10), || read(&log).contains("sent"))
        .unwrap_or_else(|| panic!("legacy log: {}", read(&log)));
    assert!(read(&log).contains("got hi legacy"), "{}", read(&log));
    // What it sent is stored under its instance, as unverified, and printed so.
    let from_it = || -> Vec<Value> {
        let (_, v) = nbhd_json(&lab, 0, &["messages"]);
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["from"] == "legacy:pyleg@h3")
            .cloned()
            .collect()
    };
    wait_for(Duration::from_secs(10), || !from_it().is_empty())
        .unwrap_or_else(|| panic!("not stored: {:?}", nbhd_json(&lab, 0, &["messages"]).1));
    assert!(
        from_it().iter().all(|m| m["verified"] == false),
        "{:?}",
        from_it()
    );
    let human = nbhd(&lab, 0, &data_dir(&lab, 0), &["messages"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("(unverified) -> "), "{human}");
    let alice_log = lab.dir.join("nbhd-h1-alice.log");
    wait_for(Duration::from_secs(10), || {
        read(&alice_log).contains("leg1")
    })
    .unwrap_or_else(|| {
        panic!(
            "alice did not take the legacy message: {}",
            read(&alice_log)
        )
    });
    eprintln!(
        "FIGURE legacy client: {}",
        read(&log).trim().replace('\n', ", ")
    );
}
