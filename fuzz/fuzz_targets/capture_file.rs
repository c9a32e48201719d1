//! The capture reader and frame decoder on arbitrary files: every input ends in frames or a
//! clear error, never a panic, and no allocation beyond the reader's bound.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nbhd_trace::packet;
use nbhd_trace::read::CaptureReader;

fuzz_target!(|data: &[u8]| {
    let Ok(mut r) = CaptureReader::from_reader(Path::new("fuzz.pcap"), Cursor::new(data.to_vec())) else {
        return;
    };
    while let Ok(Some(f)) = r.next_frame() {
        let _ = packet::summarize(f.ts_ns, f.linktype, f.data);
    }
});
