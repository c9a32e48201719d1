//! `nbhd trace` through the real binary: the contract's JSON shape, `--host` names, exit codes,
//! and one-line errors for files that are not captures.

use std::path::PathBuf;
use std::process::Command;

use nbhd_trace::synth::{self, Format, Link, Scenario};
use pcap_parser::Linktype;
use serde_json::Value;

const NBHD: &str = env!("CARGO_BIN_EXE_nbhd");

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("nbhd-cli-trace-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn trace_json_names_the_black_hole_and_the_hosts() {
    let mut s = Scenario::healthy(2, 3000, 5);
    s.offset_ns = vec![0, 1_000_000_000];
    s.links.insert(
        (1, 0),
        Link {
            loss: 0.0,
            unicast_black_hole: true,
        },
    );
    let (recs, _) = synth::generate(&s, Linktype::LINUX_SLL);
    let paths: Vec<PathBuf> = (0..2)
        .map(|h| dir().join(format!("cli-h{h}.pcap")))
        .collect();
    for (h, r) in recs.iter().enumerate() {
        synth::write_capture(&paths[h], r, Format::PcapMicros, Linktype::LINUX_SLL).unwrap();
    }
    let out = Command::new(NBHD)
        .arg("trace")
        .arg(&paths[0])
        .arg("--json")
        .arg(format!("--host=bob={}", paths[1].display()))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON document");
    for k in ["hosts", "clock", "directions", "verdicts"] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    assert_eq!(v["hosts"][1]["name"], "bob");
    let verdicts = v["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    let b = &verdicts[0];
    assert_eq!(b["kind"], "unicast-black-hole");
    assert_eq!(b["from"], "10.0.0.2");
    assert_eq!(b["from_name"], "bob");
    assert_eq!(b["to"], "10.0.0.1");
    for k in ["kind", "from", "to", "text", "evidence"] {
        assert!(b.get(k).is_some(), "verdict lacks {k}");
    }
    assert!(b["text"].as_str().unwrap().contains("black hole"));
    // Without --json: a report for people, verdicts at the end.
    let out = Command::new(NBHD)
        .arg("trace")
        .args(&paths)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verdicts\n  [unicast-black-hole] unicast 10.0.0.2 → 10.0.0.1 black hole"),
        "{text}"
    );
}

#[test]
fn trace_of_a_file_that_is_not_a_capture_is_a_one_line_error() {
    let p = dir().join("notes.txt");
    std::fs::write(&p, "hello, this is text").unwrap();
    let out = Command::new(NBHD).arg("trace").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(&p.display().to_string()) && err.contains("at byte 0"),
        "{err}"
    );
    let out = Command::new(NBHD).arg("trace").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(NBHD)
        .args(["trace", "--host", "nofile"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
