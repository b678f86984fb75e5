//! The COLO frame's `notify_dev` wire format (SPEC §7): each message is a 4-byte big-endian
//! length followed by that many ASCII bytes, without a terminating NUL.
//!
//! The decoder is incremental (bytes in as they arrive, messages out) and bounded: a length
//! prefix above [`MAX_MESSAGE_LEN`] is an error that closes the connection, never an allocation.

use std::fmt;

/// Sent by the frame when it connects.
pub const PROXY_INIT: &str = "COLO_USERSPACE_PROXY_INIT";
/// Our answer to [`PROXY_INIT`].
pub const GET_XEN_INIT: &str = "COLO_COMPARE_GET_XEN_INIT";
/// We ask the frame for a checkpoint.
pub const DO_CHECKPOINT: &str = "DO_CHECKPOINT";
/// The frame says a checkpoint is done.
pub const CHECKPOINT_DONE: &str = "COLO_CHECKPOINT";

/// Largest message accepted. The protocol's messages are a few dozen bytes; QEMU's own limit
/// is larger, but nothing legitimate comes near this.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// A message from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameMessage {
    /// `COLO_USERSPACE_PROXY_INIT`: the frame starts a session.
    ProxyInit,
    /// `COLO_CHECKPOINT`: a checkpoint has completed.
    CheckpointDone,
    /// Anything else (logged and ignored).
    Unknown(String),
}

impl FrameMessage {
    fn parse(bytes: &[u8]) -> FrameMessage {
        // Tolerate a trailing NUL from C senders; the protocol itself has none.
        let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        match bytes {
            b"COLO_USERSPACE_PROXY_INIT" => FrameMessage::ProxyInit,
            b"COLO_CHECKPOINT" => FrameMessage::CheckpointDone,
            other => FrameMessage::Unknown(String::from_utf8_lossy(other).into_owned()),
        }
    }
}

/// Why a byte stream from the frame cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announced more than [`MAX_MESSAGE_LEN`] bytes.
    Oversized(u32),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Oversized(n) => {
                write!(f, "frame announced a {n}-byte message (limit {MAX_MESSAGE_LEN}); closing the connection")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends `msg` in wire format to `out`.
pub fn encode(msg: &str, out: &mut Vec<u8>) {
    let len = u32::try_from(msg.len()).expect("protocol messages are short");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg.as_bytes());
}

/// Incremental decoder for one connection.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed, or an error after
    /// which the connection must be closed.
    pub fn next_message(&mut self) -> Result<Option<FrameMessage>, DecodeError> {
        let Some(prefix) = self.buf.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if len as usize > MAX_MESSAGE_LEN {
            self.buf.clear();
            return Err(DecodeError::Oversized(len));
        }
        let end = 4 + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let msg = FrameMessage::parse(&self.buf[4..end]);
        self.buf.drain(..end);
        Ok(Some(msg))
    }

    /// Bytes of an incomplete message still buffered (a half message at disconnect).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(msg: &str) -> Vec<u8> {
        let mut v = Vec::new();
        encode(msg, &mut v);
        v
    }

    #[test]
    fn encodes_big_endian_length_and_no_nul() {
        assert_eq!(wire(DO_CHECKPOINT), b"\x00\x00\x00\x0dDO_CHECKPOINT");
        assert_eq!(wire(GET_XEN_INIT)[..4], [0, 0, 0, 25]);
    }

    #[test]
    fn decodes_known_messages_across_arbitrary_splits() {
        let mut all = wire(PROXY_INIT);
        all.extend(wire(CHECKPOINT_DONE));
        all.extend(wire("SOMETHING_NEW"));
        for split in 0..all.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            d.push(&all[..split]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            d.push(&all[split..]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            assert_eq!(
                got,
                vec![
                    FrameMessage::ProxyInit,
                    FrameMessage::CheckpointDone,
                    FrameMessage::Unknown("SOMETHING_NEW".into())
                ],
                "split at {split}"
            );
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn a_trailing_nul_is_tolerated() {
        let mut d = Decoder::new();
        d.push(b"\x00\x00\x00\x10COLO_CHECKPOINT\x00");
        assert_eq!(d.next_message().unwrap(), Some(FrameMessage::CheckpointDone));
    }

    #[test]
    fn a_four_gib_length_prefix_is_an_error_not_an_allocation() {
        let mut d = Decoder::new();
        d.push(&[0xff, 0xff, 0xff, 0xff, b'x']);
        assert_eq!(d.next_message(), Err(DecodeError::Oversized(u32::MAX)));
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_half_message_waits_and_is_reported_pending() {
        let mut d = Decoder::new();
        d.push(&wire(CHECKPOINT_DONE)[..7]);
        assert_eq!(d.next_message().unwrap(), None);
        assert_eq!(d.pending(), 7);
    }

    #[test]
    fn garbage_decodes_as_unknown_messages_or_waits() {
        let mut d = Decoder::new();
        d.push(b"\x00\x00\x00\x03\xff\xfe\xfd");
        assert!(matches!(d.next_message().unwrap(), Some(FrameMessage::Unknown(_))));
    }
}
