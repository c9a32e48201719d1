//! Correlation on captures built here with known truth: the seed's black hole, healthy pairs,
//! every packet's fate and the clock under offset, drift, duplicates, reordering and capture loss,
//! every supported format and link type, identical captures, and broken files.

use std::collections::HashMap;
use std::path::PathBuf;

use nbhd_trace::packet::Class;
use nbhd_trace::synth::{self, CaptureWriter, Format, Link, Scenario, SynthHost};
use nbhd_trace::{analyze, Fate, Input, Options, Outcome, Report};
use pcap_parser::Linktype;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nbhd-trace-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn inputs(paths: &[PathBuf]) -> Vec<Input> {
    paths
        .iter()
        .map(|p| Input {
            path: p.clone(),
            name: None,
        })
        .collect()
}

/// Writes a scenario's captures; returns their paths and the truth.
fn write(s: &Scenario, tag: &str, format: Format, lt: Linktype) -> (Vec<PathBuf>, synth::Truth) {
    let (recs, truth) = synth::generate(s, lt);
    let paths: Vec<PathBuf> = (0..s.hosts)
        .map(|h| tmp(&format!("{tag}-h{h}.cap")))
        .collect();
    for (h, r) in recs.iter().enumerate() {
        synth::write_capture(&paths[h], r, format, lt).unwrap();
    }
    (paths, truth)
}

/// The founding report's pair: A's three SYNs to B vanish, multicast both ways and the ARP reply
/// from B to A arrive.
fn seed_pair() -> Vec<PathBuf> {
    let hosts = [SynthHost::new(0), SynthHost::new(1)];
    let lt = Linktype::ETHERNET;
    let t0 = 1_213_124_586_000_000_000i64; // June 2008
    let mut a: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut b: Vec<(i64, Vec<u8>)> = Vec::new();
    let b_clock = 3_250_000_000i64; // B's clock is 3.25 s ahead
    let d = 800_000;
    // 1-2: A's ARP request, B's reply.
    let req = synth::arp(&hosts, 0, 1, false);
    a.push((t0, synth::frame(&hosts, &req, lt, true)));
    b.push((t0 + d + b_clock, synth::frame(&hosts, &req, lt, false)));
    let rep = synth::arp(&hosts, 1, 0, true);
    b.push((t0 + 2 * d + b_clock, synth::frame(&hosts, &rep, lt, true)));
    a.push((t0 + 3 * d, synth::frame(&hosts, &rep, lt, false)));
    // 3-5: three SYNs from A, none arrives.
    for (i, at) in [0i64, 3, 9].iter().enumerate() {
        let syn = synth::tcp(&hosts, 0, 1, 100 + i as u16, 40001, 7, true, &[]);
        a.push((
            t0 + 10_000_000 + at * 1_000_000_000,
            synth::frame(&hosts, &syn, lt, true),
        ));
    }
    // mDNS both ways: 14 from A, 6 from B, all arriving.
    let group = Some(std::net::Ipv4Addr::new(224, 0, 0, 251));
    for i in 0..20u16 {
        let from = if i < 14 { 0 } else { 1 };
        let m = synth::udp(
            &hosts,
            from,
            None,
            group,
            500 + i,
            5353,
            5353,
            &i.to_be_bytes(),
        );
        let t = t0 + 20_000_000 + i as i64 * 500_000_000;
        let (own, other) = if from == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let (own_t, other_t) = if from == 0 {
            (t, t + d + b_clock)
        } else {
            (t + b_clock, t + d)
        };
        own.push((own_t, synth::frame(&hosts, &m, lt, true)));
        other.push((other_t, synth::frame(&hosts, &m, lt, false)));
    }
    let mut paths = Vec::new();
    for (name, mut recs) in [("seed-a.pcap", a), ("seed-b.pcap", b)] {
        recs.sort_by_key(|r| r.0);
        let p = tmp(name);
        let f = std::fs::File::create(&p).unwrap();
        let mut w = CaptureWriter::new(f, Format::PcapMicros, lt).unwrap();
        for (t, fr) in &recs {
            w.write(*t, fr).unwrap();
        }
        paths.push(p);
    }
    paths
}

#[test]
fn the_seed_pair_yields_one_black_hole_verdict_with_its_evidence() {
    let paths = seed_pair();
    let r = analyze(&inputs(&paths), &Options::default(), None).unwrap();
    assert_eq!(r.hosts[0].ip.unwrap().to_string(), "10.0.0.1");
    assert_eq!(r.hosts[1].ip.unwrap().to_string(), "10.0.0.2");
    // A's SYNs are in A's capture only: that names A even though A and B are endpoints of
    // equally many unicast packets; B is then the other one.
    assert!(
        r.hosts
            .iter()
            .all(|h| h.identified_by.starts_with("traffic")),
        "{:?}",
        r.hosts
    );
    assert_eq!(r.verdicts.len(), 1, "{:#?}", r.verdicts);
    let v = &r.verdicts[0];
    assert_eq!(v.kind, "unicast-black-hole");
    assert_eq!((v.from, v.to), (0, 1));
    assert!(v.text.contains("black hole"), "{}", v.text);
    assert_eq!(
        v.text,
        "unicast 10.0.0.1 → 10.0.0.2 black hole: 0 of 3 SYNs arrived, 15 of 15 broadcast and multicast and the ARP reply back did"
    );
    assert_eq!(v.evidence["by_class"]["tcp-syn"]["sent"], 3);
    assert_eq!(v.evidence["by_class"]["tcp-syn"]["arrived"], 0);
    let j = r.to_json();
    assert_eq!(j["verdicts"][0]["from"], "10.0.0.1");
    assert_eq!(j["verdicts"][0]["to"], "10.0.0.2");
    assert!(
        (r.clocks[1].offset_ns - 3.25e9).abs() < 1e6,
        "offset {}",
        r.clocks[1].offset_ns
    );
    println!("{}", r.to_text());
}

#[test]
fn host_names_from_the_command_line_appear_in_verdicts() {
    let paths = seed_pair();
    let inputs = vec![
        Input {
            path: paths[0].clone(),
            name: Some("A".into()),
        },
        Input {
            path: paths[1].clone(),
            name: Some("B".into()),
        },
    ];
    let r = analyze(&inputs, &Options::default(), None).unwrap();
    assert!(r.verdicts[0]
        .text
        .starts_with("unicast A (10.0.0.1) → B (10.0.0.2) black hole"));
    assert_eq!(r.to_json()["verdicts"][0]["from_name"], "A");
}

#[test]
fn pairs_without_loss_get_no_verdict() {
    let mut s = Scenario::healthy(3, 5000, 11);
    s.offset_ns = vec![0, 1_500_000_000, -700_000_000];
    let (paths, _) = write(&s, "healthy", Format::PcapNgNanos, Linktype::ETHERNET);
    let r = analyze(&inputs(&paths), &Options::default(), None).unwrap();
    assert!(r.verdicts.is_empty(), "{:#?}", r.verdicts);
    for d in &r.directions {
        for c in &d.classes {
            assert_eq!(c.lost, 0, "{:?} {}→{}", c.class, d.from, d.to);
        }
    }
}

fn check_accuracy(s: &Scenario, tag: &str, format: Format, lt: Linktype) -> Report {
    let (paths, truth) = write(s, tag, format, lt);
    let mut got: HashMap<(usize, u64, usize), bool> = HashMap::new();
    let mut classes: HashMap<(usize, u64), Class> = HashMap::new();
    let mut record = |f: &Fate| {
        classes.insert((f.from, f.packet), f.class);
        got.insert(
            (f.from, f.packet, f.to),
            matches!(f.outcome, Outcome::Arrived { .. }),
        );
    };
    let r = analyze(&inputs(&paths), &Options::default(), Some(&mut record)).unwrap();
    let mut right = 0usize;
    for (k, ok) in &truth.fates {
        if got.get(k) == Some(ok) {
            right += 1;
        }
    }
    let acc = right as f64 / truth.fates.len() as f64;
    if std::env::var("TRACE_DEBUG").is_ok() {
        let mut wrong: HashMap<String, usize> = HashMap::new();
        for (k, ok) in &truth.fates {
            if got.get(k) != Some(ok) {
                *wrong
                    .entry(format!(
                        "{}->{} truth={ok} got={:?} cls={:?}",
                        k.0,
                        k.2,
                        got.get(k),
                        classes.get(&(k.0, k.1))
                    ))
                    .or_default() += 1;
            }
        }
        eprintln!("{wrong:#?}");
    }
    println!(
        "{tag}: {right} of {} fates right ({:.4} %), {} reported",
        truth.fates.len(),
        acc * 100.0,
        got.len()
    );
    assert!(acc >= 0.999, "{tag}: accuracy {acc}");
    assert!(
        got.len() <= truth.fates.len() + truth.fates.len() / 1000,
        "no invented fates"
    );
    for h in 1..s.hosts {
        let truth_off = truth.offset_mid_ns[h] - truth.offset_mid_ns[0];
        let est = r.clocks[h].offset_at(truth.mid_true_ns + truth.offset_mid_ns[0] as i64);
        println!(
            "{tag}: host {h} offset truth {:.3} ms, estimated {:.3} ms",
            truth_off / 1e6,
            est / 1e6
        );
        assert!(
            (est - truth_off).abs() < 1e6,
            "{tag}: offset off by {} ns",
            est - truth_off
        );
    }
    r
}

#[test]
fn every_fate_and_the_clock_under_offset_drift_duplicates_reordering_and_capture_loss() {
    let mut s = Scenario::healthy(3, 60_000, 42);
    s.offset_ns = vec![0, 2_500_000_000, -1_200_000_000];
    s.drift_ppm = vec![0.0, 40.0, -25.0];
    s.links.insert(
        (0, 1),
        Link {
            loss: 0.10,
            unicast_black_hole: false,
        },
    );
    s.links.insert(
        (2, 0),
        Link {
            loss: 0.0,
            unicast_black_hole: true,
        },
    );
    s.duplicate = 0.01;
    s.reorder = 0.01;
    s.sender_capture_loss = 0.005;
    let r = check_accuracy(&s, "mixed", Format::PcapNgNanos, Linktype::ETHERNET);
    let kinds: Vec<(&str, usize, usize)> =
        r.verdicts.iter().map(|v| (v.kind, v.from, v.to)).collect();
    assert!(kinds.contains(&("unicast-black-hole", 2, 0)), "{kinds:?}");
    assert!(kinds.contains(&("loss", 0, 1)), "{kinds:?}");
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    let lossy = r
        .directions
        .iter()
        .find(|d| d.from == 0 && d.to == 1)
        .unwrap();
    let udp = lossy
        .classes
        .iter()
        .find(|c| c.class == Class::UnicastUdp)
        .unwrap();
    assert!(
        udp.loss_ci.0 < 0.10 && udp.loss_ci.1 > 0.10,
        "CI {:?} holds the true 10 %",
        udp.loss_ci
    );
}

#[test]
fn every_format_and_link_type_gives_the_same_answer() {
    for (format, lt, tag) in [
        (Format::PcapMicros, Linktype::ETHERNET, "pcap-us-eth"),
        (Format::PcapNanos, Linktype::LINUX_SLL, "pcap-ns-sll"),
        (Format::PcapNgMicros, Linktype::LINUX_SLL2, "ng-us-sll2"),
        (Format::PcapNgNanos, Linktype::RAW, "ng-ns-raw"),
    ] {
        let mut s = Scenario::healthy(2, 8000, 7);
        s.offset_ns = vec![0, 4_000_000_000];
        s.drift_ppm = vec![0.0, 30.0];
        s.links.insert(
            (0, 1),
            Link {
                loss: 0.0,
                unicast_black_hole: true,
            },
        );
        let r = check_accuracy(&s, tag, format, lt);
        assert_eq!(r.verdicts.len(), 1, "{tag}: {:#?}", r.verdicts);
        assert_eq!(r.verdicts[0].kind, "unicast-black-hole", "{tag}");
    }
}

#[test]
fn identical_captures_say_the_traffic_cannot_tell_and_go_on() {
    let paths = seed_pair();
    let copy = tmp("seed-a-copy.pcap");
    std::fs::copy(&paths[0], &copy).unwrap();
    let r = analyze(
        &inputs(&[paths[0].clone(), copy]),
        &Options::default(),
        None,
    )
    .unwrap();
    assert!(
        r.hosts
            .iter()
            .all(|h| h.identified_by.starts_with("argument order")),
        "{:?}",
        r.hosts
    );
    assert_ne!(r.hosts[0].ip, r.hosts[1].ip);
}

fn expect_error(bytes: &[u8], name: &str, needle: &str) {
    let p = tmp(name);
    std::fs::write(&p, bytes).unwrap();
    let e = analyze(&inputs(std::slice::from_ref(&p)), &Options::default(), None)
        .expect_err("must fail");
    let text = e.to_string();
    assert!(text.contains(&p.display().to_string()), "{text}");
    assert!(text.contains(needle), "{text}");
}

#[test]
fn broken_files_are_clear_errors_naming_file_and_offset() {
    let paths = seed_pair();
    let good = std::fs::read(&paths[0]).unwrap();
    expect_error(&good[..good.len() - 5], "truncated.pcap", "truncated");
    expect_error(&good[..good.len() - 5], "truncated2.pcap", "at byte");
    expect_error(
        b"this is not a capture at all, just text",
        "magic.pcap",
        "not a pcap or pcapng",
    );
    expect_error(b"", "empty.pcap", "empty file");
    // A pcap record that claims 2 GB.
    let mut absurd = good[..24].to_vec();
    absurd.extend_from_slice(&[
        0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 0x7f,
    ]);
    absurd.extend_from_slice(&[0u8; 64]);
    expect_error(&absurd, "absurd.pcap", "at byte 24");
    // A pcapng block whose length is smaller than a block can be.
    let mut ng = Vec::new();
    {
        let mut w = CaptureWriter::new(&mut ng, Format::PcapNgNanos, Linktype::ETHERNET).unwrap();
        w.write(1, &[0u8; 60]).unwrap();
    }
    let epb_at = ng.len() - (32 + 60);
    ng[epb_at + 4..epb_at + 8].copy_from_slice(&8u32.to_le_bytes());
    expect_error(&ng, "badsize.pcapng", &format!("at byte {epb_at}"));
}

#[test]
fn a_capture_with_only_other_traffic_is_fine() {
    let p = tmp("lonely.pcap");
    let f = std::fs::File::create(&p).unwrap();
    let mut w = CaptureWriter::new(f, Format::PcapMicros, Linktype(147)).unwrap(); // a user link type
    w.write(5, &[1, 2, 3]).unwrap();
    drop(w);
    let r = analyze(&inputs(&[p]), &Options::default(), None).unwrap();
    assert!(r.verdicts.is_empty());
    assert_eq!(r.hosts[0].packets, 1);
}

/// Inputs the fuzzer once crashed on: each must now give a report or an error, never a panic.
#[test]
fn fuzz_regressions_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let _ = analyze(&inputs(std::slice::from_ref(&p)), &Options::default(), None);
        let _ = analyze(&inputs(&[p.clone(), p]), &Options::default(), None);
        n += 1;
    }
    assert!(n > 0);
}
