//! A server-to-client WebSocket text frame, encoded once and shared.
//!
//! Frames from a server are never masked (RFC 6455 section 5.1), so the
//! complete frame of a message, header and payload, is the same bytes for
//! every subscriber. The hub encodes it once per publish into a
//! [`WireFrame`]; every connection's queue holds a cheap clone of those
//! bytes, and the session, or the hub's writer while the session is idle,
//! writes them straight to its socket (see `ws::session` and
//! [`crate::direct`]), with no per-connection copy and no per-connection
//! write buffer. The header is tungstenite's own encoding ([`FrameHeader::format`]).

use std::io::{self, IoSlice};
use std::os::fd::AsFd;

use bytes::Bytes;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// One complete, unmasked, final text frame: header then payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame(Bytes);

impl WireFrame {
    /// Encodes `text` as a single (final, unmasked) text frame.
    pub fn text(text: &str) -> Self {
        let header =
            FrameHeader { is_final: true, opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
        let length = text.len() as u64;
        let mut bytes = Vec::with_capacity(header.len(length) + text.len());
        header.format(length, &mut bytes).expect("formatting into a Vec cannot fail");
        bytes.extend_from_slice(text.as_bytes());
        Self(Bytes::from(bytes))
    }

    /// The frame as it goes on the wire.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The frame without its first `sent` bytes: what is left to write
    /// after a write that stopped inside it. Not a frame by itself; it only
    /// ever goes on the wire right after those bytes.
    pub fn rest_after(&self, sent: usize) -> Self {
        Self(self.0.slice(sent..))
    }

    /// Bytes on the wire (header included).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The payload as text (tests read what was queued).
    #[cfg(test)]
    pub fn payload_str(&self) -> &str {
        let mut cursor = std::io::Cursor::new(self.0.as_ref());
        FrameHeader::parse(&mut cursor).expect("a frame this module encoded").expect("a complete header");
        std::str::from_utf8(&self.0[cursor.position() as usize..]).expect("a text frame")
    }

    /// Never true: a frame has at least its two-byte header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Writes what `socket` takes of `slices` at once, with one non-blocking
/// `sendmsg`: the bytes taken, or `WouldBlock` when its send buffer is
/// full. MSG_NOSIGNAL: a peer that has gone away is an EPIPE error, not a
/// signal. MSG_DONTWAIT: never block, whatever the socket's mode.
pub fn send_nonblocking(socket: impl AsFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    socket2::SockRef::from(&socket).send_vectored_with_flags(slices, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tungstenite::protocol::frame::FrameHeader;

    use super::*;

    /// The bytes parse back, with tungstenite's own parser, into a final,
    /// unmasked text frame carrying exactly the payload, at each of the
    /// three length encodings (7-bit, 16-bit and 64-bit).
    #[test]
    fn frames_parse_back_at_every_length_encoding() {
        for size in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let payload = "x".repeat(size);
            let frame = WireFrame::text(&payload);
            let mut cursor = Cursor::new(frame.bytes().as_ref());
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().expect("a complete header");
            assert!(header.is_final, "size {size}");
            assert_eq!(header.opcode, OpCode::Data(Data::Text), "size {size}");
            assert_eq!(header.mask, None, "size {size}");
            assert_eq!(length, size as u64);
            let start = cursor.position() as usize;
            assert_eq!(&frame.bytes()[start..], payload.as_bytes(), "size {size}");
            assert_eq!(frame.len(), start + size);
        }
    }
}
