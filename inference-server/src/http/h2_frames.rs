//! Just enough of HTTP/2's framing (RFC 9113 §4.1) to tell, from the bytes passing through a
//! connection, whether a request is in progress on it: the header-read and idle deadline
//! of [`super::slow_clients`] runs while none is, or while a header block is incomplete.
//!
//! Frames are read by their 9-byte headers (length, type, flags, stream) and their payloads
//! skipped. A client's HEADERS frame opens its stream (a complete header block needs
//! END_HEADERS, on the HEADERS frame or a CONTINUATION); the server's HEADERS or DATA with
//! END_STREAM, or an RST_STREAM from either side, closes it.

use std::collections::HashSet;

/// The connection preface a client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// Streams tracked at most (hyper refuses more than its concurrency limit long before).
const MAX_TRACKED: usize = 4096;

/// One frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

/// Reads frame headers out of a byte stream that arrives in pieces.
#[derive(Debug, Default)]
pub struct Scanner {
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass over.
    skip: usize,
}

impl Scanner {
    /// Feeds `bytes`, calling `frame` for each frame header completed.
    pub fn feed(&mut self, mut bytes: &[u8], mut frame: impl FnMut(Frame)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = self.header;
                self.have = 0;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                frame(Frame {
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7FFF_FFFF,
                });
            }
        }
    }
}

/// An HTTP/2 connection seen from both sides.
#[derive(Debug, Default)]
pub struct Connection {
    /// Client bytes of the preface still to pass over before frames begin.
    preface_left: usize,
    from_client: Scanner,
    from_server: Scanner,
    open: HashSet<u32>,
    /// A client header block has begun and not ended (CONTINUATION frames to come).
    block_open: bool,
}

impl Connection {
    /// A connection whose client has sent `preface_seen` bytes of the preface so far.
    pub fn after_preface(preface_seen: usize) -> Connection {
        Connection {
            preface_left: PREFACE.len().saturating_sub(preface_seen),
            ..Connection::default()
        }
    }

    /// True while no request is in progress, or a header block is incomplete: the
    /// deadline runs.
    pub fn waiting_for_a_request(&self) -> bool {
        self.block_open || self.open.is_empty()
    }

    /// Bytes the client sent.
    pub fn from_client(&mut self, mut bytes: &[u8]) {
        let n = self.preface_left.min(bytes.len());
        self.preface_left -= n;
        bytes = &bytes[n..];
        let (open, block_open) = (&mut self.open, &mut self.block_open);
        self.from_client.feed(bytes, |f| match f.kind {
            HEADERS => {
                *block_open = f.flags & END_HEADERS == 0;
                if f.stream != 0 && open.len() < MAX_TRACKED {
                    open.insert(f.stream);
                }
            }
            CONTINUATION if f.flags & END_HEADERS != 0 => *block_open = false,
            RST_STREAM => {
                open.remove(&f.stream);
            }
            _ => {}
        });
    }

    /// Bytes the server sent.
    pub fn from_server(&mut self, bytes: &[u8]) {
        let open = &mut self.open;
        self.from_server.feed(bytes, |f| match f.kind {
            HEADERS | DATA if f.flags & END_STREAM != 0 => {
                open.remove(&f.stream);
            }
            RST_STREAM => {
                open.remove(&f.stream);
            }
            _ => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: usize) -> Vec<u8> {
        let mut out = vec![(payload >> 16) as u8, (payload >> 8) as u8, payload as u8];
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend(std::iter::repeat_n(0xAB, payload));
        out
    }

    #[test]
    fn a_request_is_in_progress_from_its_header_block_to_the_servers_end_of_stream() {
        let mut c = Connection::after_preface(14);
        assert!(c.waiting_for_a_request());
        c.from_client(&PREFACE[14..]);
        c.from_client(&frame(0x4, 0, 0, 6)); // SETTINGS
        assert!(c.waiting_for_a_request());
        // HEADERS without END_HEADERS, then CONTINUATION split across reads.
        c.from_client(&frame(HEADERS, END_STREAM, 1, 3));
        assert!(
            c.waiting_for_a_request(),
            "the header block is not complete"
        );
        let cont = frame(CONTINUATION, END_HEADERS, 1, 2);
        c.from_client(&cont[..4]);
        assert!(c.waiting_for_a_request());
        c.from_client(&cont[4..]);
        assert!(!c.waiting_for_a_request(), "a request is in progress");
        // The server's SETTINGS and a PING ack change nothing; its END_STREAM ends it.
        c.from_server(&frame(0x4, 0, 0, 0));
        c.from_server(&frame(0x6, 0x1, 0, 8));
        assert!(!c.waiting_for_a_request());
        let mut answer = frame(HEADERS, END_HEADERS, 1, 20);
        answer.extend(frame(DATA, END_STREAM, 1, 100));
        c.from_server(&answer[..33]);
        assert!(!c.waiting_for_a_request());
        c.from_server(&answer[33..]);
        assert!(c.waiting_for_a_request(), "idle again");
        // A client reset closes its stream too.
        c.from_client(&frame(HEADERS, END_HEADERS, 3, 0));
        assert!(!c.waiting_for_a_request());
        c.from_client(&frame(RST_STREAM, 0, 3, 4));
        assert!(c.waiting_for_a_request());
    }
}
