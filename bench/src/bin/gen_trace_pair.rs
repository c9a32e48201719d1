//! Writes a pair of synthetic captures (as `bench/trace` measures them) for profiling by hand:
//! `gen_trace_pair N DIR` writes DIR/h0.pcapng and DIR/h1.pcapng with about N packets each.

use nbhd_trace::synth::{self, Format, Link, Scenario};
use pcap_parser::Linktype;

fn main() {
    let mut a = std::env::args().skip(1);
    let n: usize = a
        .next()
        .and_then(|v| v.parse().ok())
        .expect("usage: gen_trace_pair N DIR");
    let dir = std::path::PathBuf::from(a.next().expect("usage: gen_trace_pair N DIR"));
    let mut s = Scenario::healthy(2, n, 1);
    s.rate_pps = 20_000.0;
    s.offset_ns = vec![0, 2_500_000_000];
    s.drift_ppm = vec![0.0, 40.0];
    s.links.insert(
        (0, 1),
        Link {
            loss: 0.05,
            unicast_black_hole: false,
        },
    );
    let (recs, _) = synth::generate(&s, Linktype::ETHERNET);
    std::fs::create_dir_all(&dir).expect("dir");
    for (h, r) in recs.iter().enumerate() {
        synth::write_capture(
            &dir.join(format!("h{h}.pcapng")),
            r,
            Format::PcapNgNanos,
            Linktype::ETHERNET,
        )
        .expect("write");
    }
}
