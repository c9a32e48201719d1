//! The presence engine fed arbitrary datagrams and time steps: never a panic, whatever arrives.
//!
//! Input layout, repeated: one byte of time step (in 10 ms units), two bytes of length, then that
//! many bytes of datagram; the source port alternates between 5353 and a legacy port.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use nbhd_proto::presence::{xep0174_txt, Config, IfaceId, Presence};

fuzz_target!(|data: &[u8]| {
    let mut now = Instant::now();
    let mut p = Presence::new(
        Config {
            instance: "fuzz@lab".into(),
            hostname: "nbhd-f0f0f0f0".into(),
            port: 5298,
            txt: xep0174_txt(5298, "fuzz", "avail", "", "key"),
            host_ttl: 120,
            other_ttl: 4500,
            seed: 1,
            reannounce: true,
        },
        now,
    );
    p.set_interface(now, IfaceId(1), vec![Ipv4Addr::new(10, 0, 0, 1)]);
    let mut rest = data;
    let mut legacy = false;
    while rest.len() >= 3 {
        now += Duration::from_millis(rest[0] as u64 * 10);
        let len = u16::from_be_bytes([rest[1], rest[2]]) as usize;
        rest = &rest[3..];
        let take = len.min(rest.len());
        let port = if legacy { 40000 } else { 5353 };
        legacy = !legacy;
        let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), port);
        let _ = p.handle_packet(now, IfaceId(1), src, &rest[..take]);
        rest = &rest[take..];
        if p.poll_timeout().is_some_and(|t| t <= now) {
            p.handle_timeout(now);
        }
        while p.poll_transmit().is_some() {}
        while p.poll_event().is_some() {}
    }
    now += Duration::from_secs(200);
    p.handle_timeout(now);
    p.close(now);
});
