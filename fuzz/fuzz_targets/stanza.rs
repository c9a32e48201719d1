//! The XEP-0174 stream codec and the stanza decoder on arbitrary bytes, cut into arbitrary reads
//! after a valid stream header: never a panic; what parses re-serialises and parses again to the
//! same stanza, and decodes (or is refused) the same way both times. Seeds include each shape
//! libpurple's Bonjour client sends (no id, XHTML-IM, XEP-0022 events, a bare stream end).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbhd_proto::messages::stanza::Stanza;
use nbhd_proto::messages::xml::{stream_header, StreamEvent, StreamParser};

fuzz_target!(|data: &[u8]| {
    let (cut, body) = match data.split_first() {
        Some((c, rest)) => (*c as usize + 1, rest),
        None => return,
    };
    let mut p = StreamParser::new();
    if p.feed(&stream_header("a@x", "b@y")).is_err() {
        return;
    }
    for chunk in body.chunks(cut) {
        if p.feed(chunk).is_err() {
            break;
        }
        while let Some(ev) = p.poll_event() {
            if let StreamEvent::Stanza(s) = ev {
                let decoded = Stanza::from_element(&s);
                let mut again = StreamParser::new();
                let mut bytes = stream_header("a", "b");
                bytes.extend(s.to_stanza_bytes());
                again.feed(&bytes).expect("our own serialisation parses");
                let _header = again.poll_event();
                let Some(StreamEvent::Stanza(back)) = again.poll_event() else {
                    panic!("our own serialisation of {s:?} is not a stanza");
                };
                assert_eq!(back, s);
                assert_eq!(Stanza::from_element(&back), decoded);
            }
        }
    }
});
