//! The soak of issue 11 for two minutes (bench/soak runs it for thirty): eight daemons under
//! random faults lose nothing, keep their memory, and log no error.

use std::time::Duration;

use nbhd_bench::soak;
use nbhd_lab::skip_unless_root;

#[test]
fn netns_two_minute_soak_loses_no_invitation_keeps_memory_flat_and_logs_no_error() {
    if skip_unless_root(
        "netns_two_minute_soak_loses_no_invitation_keeps_memory_flat_and_logs_no_error",
    ) {
        return;
    }
    let cfg = soak::Config {
        hosts: 8,
        duration: Duration::from_secs(120),
        seed: 11,
        nbhd: env!("CARGO_BIN_EXE_nbhd").into(),
    };
    let r = soak::run(&cfg, |p| eprintln!("soak: {p}"));
    eprint!("{}", soak::print(&r));
    assert!(r.kills > 0 && r.black_holes > 0 && r.loss_bursts > 0 && r.flood_packets > 0);
    assert!(
        r.delivered * 2 > r.invitations_tried,
        "most invitations delivered"
    );
    assert!(r.missing.is_empty(), "delivered, not kept: {:?}", r.missing);
    // Each delivered invitation was announced by its receiver (so the log was read) ...
    assert!(
        r.unannounced.is_empty(),
        "delivered, never announced: {:?}",
        r.unannounced
    );
    // ... and none twice, over restarts.
    assert!(
        r.duplicated.is_empty(),
        "announced twice: {:?}",
        r.duplicated
    );
    assert!(r.errors.is_empty(), "errors in the logs: {:#?}", r.errors);
    assert!(!r.rss.is_empty());
    for (warm, end, _) in &r.rss {
        // Flat after warm-up: a few pages of slack, no growth with the run.
        assert!(end - warm < 4.0, "RSS grew from {warm:.1} to {end:.1} MB");
    }
}
