//! Streaming capture reader: pcap (micro- and nanosecond) and pcapng (any section, interface,
//! resolution and endianness), one frame at a time, in bounded memory.
//!
//! `pcap-parser` does the block parsing; this module owns what it leaves to us: timestamps in
//! nanoseconds (pcapng's `if_tsresol`/`if_tsoffset` per interface), growing the buffer for large
//! frames up to a bound, and errors that name the file and the byte offset.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use pcap_parser::pcapng::Block;
use pcap_parser::traits::PcapReaderIterator;
use pcap_parser::{Linktype, PcapBlockOwned, PcapError};

use crate::TraceError;

const INITIAL_BUFFER: usize = 1 << 20;
/// A frame (or block) larger than this is an absurd length, not a packet.
const MAX_BUFFER: usize = 16 << 20;

/// How much of each frame is kept: link header, IPv4 header with options, and the first bytes
/// of the payload that [`crate::packet`] hashes.
pub const FRAME_HEAD: usize = 256;

/// One captured frame (its first [`FRAME_HEAD`] bytes), borrowed from the reader until the next
/// call.
pub struct Frame<'a> {
    /// Capture time, nanoseconds since the Unix epoch, as the capturing host's clock said.
    pub ts_ns: i64,
    pub linktype: Linktype,
    pub data: &'a [u8],
    /// Byte offset of the frame's record in the file.
    pub offset: u64,
}

struct Interface {
    linktype: Linktype,
    /// Units per second.
    resolution: u64,
    offset_s: i64,
}

pub struct CaptureReader {
    path: PathBuf,
    inner: Box<dyn PcapReaderIterator + Send>,
    capacity: usize,
    /// Bytes consumed before the block being looked at.
    consumed: u64,
    legacy_linktype: Linktype,
    legacy_nanos: bool,
    interfaces: Vec<Interface>,
    /// The block to release on the next call.
    pending_consume: usize,
    frame_buf: Vec<u8>,
    /// pcapng simple packet blocks carry no time; they are skipped and counted.
    pub skipped_untimed: u64,
}

impl CaptureReader {
    pub fn open(path: &Path) -> Result<CaptureReader, TraceError> {
        let file = File::open(path).map_err(|e| TraceError::io(path, e))?;
        CaptureReader::from_reader(path, file)
    }

    /// Reads a capture from any byte source; `path` only names it in errors.
    pub fn from_reader<R: Read + Send + 'static>(
        path: &Path,
        source: R,
    ) -> Result<CaptureReader, TraceError> {
        let inner = pcap_parser::create_reader(INITIAL_BUFFER, source).map_err(|e| match e {
            PcapError::Eof => TraceError::at(path, 0, "empty file: not a capture"),
            PcapError::HeaderNotRecognized => {
                TraceError::at(path, 0, "not a pcap or pcapng file (unknown magic number)")
            }
            other => TraceError::at(
                path,
                0,
                &format!("cannot read the file header: {}", describe(&other)),
            ),
        })?;
        Ok(CaptureReader {
            path: path.to_path_buf(),
            inner,
            capacity: INITIAL_BUFFER,
            consumed: 0,
            legacy_linktype: Linktype::ETHERNET,
            legacy_nanos: false,
            interfaces: Vec::new(),
            pending_consume: 0,
            frame_buf: Vec::new(),
            skipped_untimed: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn refill(&mut self) -> Result<(), TraceError> {
        let consumed = self.consumed;
        self.inner.refill().map_err(|e| {
            TraceError::at(
                &self.path,
                consumed,
                &format!("read error: {}", describe(&e)),
            )
        })
    }

    /// The next frame, or None at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, TraceError> {
        if self.pending_consume > 0 {
            self.inner.consume(self.pending_consume);
            self.consumed += self.pending_consume as u64;
            self.pending_consume = 0;
        }
        loop {
            let (size, frame) = match self.inner.next() {
                Ok((size, block)) => {
                    let frame = match block {
                        PcapBlockOwned::LegacyHeader(h) => {
                            self.legacy_linktype = h.network;
                            self.legacy_nanos = h.is_nanosecond_precision();
                            None
                        }
                        PcapBlockOwned::Legacy(b) => {
                            let frac = if self.legacy_nanos {
                                b.ts_usec as i64
                            } else {
                                b.ts_usec as i64 * 1000
                            };
                            let len = (b.caplen as usize).min(b.data.len());
                            Some((
                                b.ts_sec as i64 * 1_000_000_000 + frac,
                                self.legacy_linktype,
                                &b.data[..len],
                            ))
                        }
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                            self.interfaces.clear(); // interface ids restart in every section
                            None
                        }
                        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                            self.interfaces.push(Interface {
                                linktype: idb.linktype,
                                resolution: idb.ts_resolution().unwrap_or(1_000_000),
                                offset_s: idb.ts_offset(),
                            });
                            None
                        }
                        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                            let Some(ifc) = self.interfaces.get(epb.if_id as usize) else {
                                let at = self.consumed;
                                return Err(TraceError::at(
                                    &self.path,
                                    at,
                                    &format!(
                                        "packet block names interface {} that was never described",
                                        epb.if_id
                                    ),
                                ));
                            };
                            let ts = ((epb.ts_high as u64) << 32) | epb.ts_low as u64;
                            let ns: i128 = match ifc.resolution {
                                1_000_000_000 => ts as i128,
                                1_000_000 => ts as i128 * 1000,
                                r => ts as i128 * 1_000_000_000 / r.max(1) as i128,
                            };
                            let len = (epb.caplen as usize).min(epb.data.len());
                            Some((
                                clamp_ts(ns + ifc.offset_s as i128 * 1_000_000_000),
                                ifc.linktype,
                                &epb.data[..len],
                            ))
                        }
                        PcapBlockOwned::NG(Block::SimplePacket(_)) => {
                            self.skipped_untimed += 1;
                            None
                        }
                        PcapBlockOwned::NG(_) => None,
                    };
                    match frame {
                        Some((ts, lt, data)) => {
                            // Copy out so the reader can be advanced on the next call; the
                            // headers and the start of the payload are all correlation reads.
                            self.frame_buf.clear();
                            self.frame_buf
                                .extend_from_slice(&data[..data.len().min(FRAME_HEAD)]);
                            (size, Some((ts, lt)))
                        }
                        None => (size, None),
                    }
                }
                Err(PcapError::Eof) => return Ok(None),
                Err(PcapError::Incomplete(_)) => {
                    self.refill()?;
                    continue;
                }
                Err(PcapError::BufferTooSmall) => {
                    if self.capacity >= MAX_BUFFER || !self.inner.grow(self.capacity * 2) {
                        return Err(TraceError::at(
                            &self.path,
                            self.consumed,
                            &format!(
                                "record larger than {} MiB: absurd length, the file is corrupt",
                                MAX_BUFFER >> 20
                            ),
                        ));
                    }
                    self.capacity *= 2;
                    self.refill()?;
                    continue;
                }
                Err(PcapError::UnexpectedEof) => {
                    return Err(TraceError::at(
                        &self.path,
                        self.consumed,
                        "truncated: the file ends inside a record",
                    ))
                }
                Err(e) => {
                    let what = format!("bad record: {}", describe(&e));
                    return Err(TraceError::at(&self.path, self.consumed, &what));
                }
            };
            if size == 0 {
                return Err(TraceError::at(
                    &self.path,
                    self.consumed,
                    "bad record: zero-length block",
                ));
            }
            match frame {
                Some((ts_ns, linktype)) => {
                    self.pending_consume = size;
                    let offset = self.consumed;
                    return Ok(Some(Frame {
                        ts_ns,
                        linktype,
                        data: &self.frame_buf,
                        offset,
                    }));
                }
                None => {
                    self.inner.consume(size);
                    self.consumed += size as u64;
                }
            }
        }
    }
}

/// Timestamps are kept within ±2^61 ns (±73 years around 1970) whatever a file claims, so that
/// every later sum and difference of two of them fits in an i64.
const TS_LIMIT: i128 = 1 << 61;

fn clamp_ts(ns: i128) -> i64 {
    ns.clamp(-TS_LIMIT, TS_LIMIT) as i64
}

fn describe(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::NomError(_, kind) => format!("{kind:?}"),
        PcapError::OwnedNomError(_, kind) => format!("{kind:?}"),
        PcapError::HeaderNotRecognized => "header not recognized".into(),
        PcapError::ReadError => "I/O error".into(),
        other => format!("{other:?}"),
    }
}
