//! The chunked transfer coding (RFC 9112 §7.1) as a resumable decoder. No I/O.
//!
//! Bytes go in as they arrive, decoded data is appended to the caller's buffer, and the decoder
//! stops at the end of the message so the bytes after it (a pipelined request) stay with the
//! caller. A declared chunk size is checked against the body limit before a single byte of it
//! is copied, so a client announcing a huge chunk is refused at once; chunk lines, extensions
//! and trailers have their own small bounds. Nothing is allocated beyond the decoded data.

use std::fmt;

/// Longest chunk-size line (size, extensions) and longest trailer line, in bytes.
pub const MAX_LINE_BYTES: usize = 4096;
/// Longest trailer section, in bytes.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Why a chunked body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChunkError {
    /// The decoded body would exceed the limit.
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The coding is malformed at `offset` (counted from the first byte of the body).
    Malformed {
        /// Byte offset in the encoded body.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::TooLarge { limit } => write!(f, "chunked body larger than {limit} bytes"),
            ChunkError::Malformed { offset, why } => write!(f, "malformed chunked body at byte {offset}: {why}"),
        }
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size.
    Size { digits: u32 },
    /// After the size: optional whitespace and extensions up to the CR.
    Extension,
    /// The LF ending a chunk-size line.
    SizeLf,
    /// Chunk data still to copy.
    Data { remaining: u64 },
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// A trailer line (or the final empty line).
    Trailer,
    /// The LF ending a trailer line; `empty` when the line was the final empty line.
    TrailerLf { empty: bool },
    /// The whole message was decoded.
    Done,
}

/// A resumable decoder for one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    limit: usize,
    /// Size of the chunk being read.
    size: u64,
    /// Data bytes decoded so far.
    decoded: u64,
    /// Encoded bytes consumed so far (for error offsets).
    offset: u64,
    /// Bytes of the current chunk-size or trailer line.
    line: usize,
    /// Bytes of the trailer section.
    trailer: usize,
}

impl ChunkedDecoder {
    /// A decoder refusing bodies larger than `limit` bytes.
    pub fn new(limit: usize) -> ChunkedDecoder {
        ChunkedDecoder { state: State::Size { digits: 0 }, limit, size: 0, decoded: 0, offset: 0, line: 0, trailer: 0 }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decoded bytes so far.
    pub fn decoded(&self) -> u64 {
        self.decoded
    }

    fn malformed(&self, at: usize, why: &'static str) -> ChunkError {
        ChunkError::Malformed { offset: self.offset + at as u64, why }
    }

    /// Decodes from `input`, appending data to `out`. Returns how many bytes of `input` belong
    /// to the body: all of them until the end of the message, where it stops.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Data { remaining } => {
                    let n = (input.len() - i).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 { State::DataCr } else { State::Data { remaining } };
                    continue;
                }
                State::Size { digits } => match (b as char).to_digit(16) {
                    Some(d) => {
                        // 16 hex digits hold any u64; leading zeros beyond that are refused too.
                        if digits >= 16 {
                            return Err(self.malformed(i, "chunk size has too many digits"));
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.state = State::Size { digits: digits + 1 };
                        self.line += 1;
                    }
                    None if digits == 0 => return Err(self.malformed(i, "chunk size expected")),
                    None => {
                        self.check_size()?;
                        self.state = State::Extension;
                        continue; // the same byte, as the start of the extension part
                    }
                },
                State::Extension => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(self.malformed(i, "bare LF after the chunk size")),
                    // Extensions (`;name=value`, with optional whitespace) carry nothing we use;
                    // they are skipped within the line bound.
                    b if b == b'\t' || (b' '..0x7f).contains(&b) => {
                        self.line += 1;
                        if self.line > MAX_LINE_BYTES {
                            return Err(self.malformed(i, "chunk-size line too long"));
                        }
                    }
                    _ => return Err(self.malformed(i, "control character in a chunk extension")),
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(self.malformed(i, "CR not followed by LF after the chunk size"));
                    }
                    self.line = 0;
                    self.state = if self.size == 0 { State::Trailer } else { State::Data { remaining: self.size } };
                    self.decoded += self.size;
                    self.size = 0;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(self.malformed(i, "chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(self.malformed(i, "CR not followed by LF after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::Trailer => match b {
                    b'\r' => self.state = State::TrailerLf { empty: self.line == 0 },
                    b'\n' => return Err(self.malformed(i, "bare LF in the trailer section")),
                    _ => {
                        self.line += 1;
                        self.trailer += 1;
                        if self.line > MAX_LINE_BYTES || self.trailer > MAX_TRAILER_BYTES {
                            return Err(self.malformed(i, "trailer section too long"));
                        }
                    }
                },
                State::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(self.malformed(i, "CR not followed by LF in the trailer section"));
                    }
                    self.line = 0;
                    self.state = if empty { State::Done } else { State::Trailer };
                }
            }
            i += 1;
        }
        self.offset += i as u64;
        Ok(i)
    }

    /// Refuses a declared chunk that would take the body past the limit, before any of it is
    /// read.
    fn check_size(&self) -> Result<(), ChunkError> {
        if self.decoded.saturating_add(self.size) > self.limit as u64 {
            return Err(ChunkError::TooLarge { limit: self.limit });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` in one piece and split at every position; all must agree. Returns the
    /// body and the bytes consumed.
    fn decode(input: &[u8], limit: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let whole = {
            let mut d = ChunkedDecoder::new(limit);
            let mut out = Vec::new();
            d.decode(input, &mut out).map(|n| {
                assert!(d.is_done() || n == input.len());
                (out, n)
            })
        };
        for cut in 0..=input.len() {
            let mut d = ChunkedDecoder::new(limit);
            let mut out = Vec::new();
            let split = d.decode(&input[..cut], &mut out).and_then(|a| {
                if d.is_done() {
                    return Ok((out.clone(), a));
                }
                assert_eq!(a, cut);
                d.decode(&input[cut..], &mut out).map(|b| (out.clone(), a + b))
            });
            // Errors may carry the same offset either way.
            assert_eq!(split, whole, "split at {cut}");
        }
        whole
    }

    #[test]
    fn chunks_extensions_and_trailers() {
        let input =
            b"4\r\nWiki\r\n5;ext=\"x y\"\r\npedia\r\nE \t;a\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (body, used) = decode(input, 100).unwrap();
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(&input[used..], b"NEXT", "stops at the end of the message");
        assert_eq!(decode(b"0\r\n\r\n", 0).unwrap(), (Vec::new(), 5));
        assert_eq!(decode(b"000\r\n\r\n", 0).unwrap(), (Vec::new(), 7));
        assert_eq!(decode(b"a\r\n0123456789\r\n0\r\n\r\n", 10).unwrap().0, b"0123456789");
    }

    #[test]
    fn incomplete_input_needs_more() {
        let mut d = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        assert_eq!(d.decode(b"5\r\nab", &mut out), Ok(5));
        assert!(!d.is_done());
        assert_eq!(out, b"ab");
        assert_eq!(d.decoded(), 5, "declared bytes count as decoded once the size line is read");
    }

    #[test]
    fn sizes_over_the_limit_are_refused_before_reading() {
        assert_eq!(decode(b"b\r\n", 10), Err(ChunkError::TooLarge { limit: 10 }));
        assert_eq!(decode(b"5\r\n12345\r\n6\r\n", 10), Err(ChunkError::TooLarge { limit: 10 }));
        assert_eq!(decode(b"ffffffffffffffff\r\n", 10), Err(ChunkError::TooLarge { limit: 10 }));
        let mut d = ChunkedDecoder::new(usize::MAX);
        let e = d.decode(b"10000000000000000\r\n", &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ChunkError::Malformed { offset: 16, .. }), "{e}");
    }

    #[test]
    fn malformed_codings() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"-1\r\n",
            b"5\nabcde\r\n",
            b"5\rxabcde",
            b"3\r\nabcd\r\n",
            b"3\r\nabc\n",
            b"3\r\nabc\rx",
            b"0\r\nX: y\n",
            b"0\r\nX: y\rz",
            b"1;\x01\r\n",
            b"0\r\n\rx",
        ] {
            let e = decode(bad, 100).expect_err(&String::from_utf8_lossy(bad));
            assert!(matches!(e, ChunkError::Malformed { .. }), "{e}");
            assert!(!e.to_string().is_empty());
        }
        let long_ext = format!("1;{}\r\n", "a".repeat(MAX_LINE_BYTES));
        assert!(matches!(decode(long_ext.as_bytes(), 100), Err(ChunkError::Malformed { .. })));
        let long_trailer = format!("0\r\n{}", "X: y\r\n".repeat(MAX_TRAILER_BYTES / 4 + 1));
        let e = ChunkedDecoder::new(100).decode(long_trailer.as_bytes(), &mut Vec::new()).unwrap_err();
        assert!(matches!(e, ChunkError::Malformed { why: "trailer section too long", .. }), "{e}");
    }

    /// A simple encoder for the randomized round trip.
    fn encode(body: &[u8], sizes: &mut impl Iterator<Item = usize>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
            out.extend_from_slice(format!("{n:X}\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[test]
    fn randomized_round_trips_and_splits() {
        // A small xorshift generator: deterministic, no extra crate.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let len = (next() % 300) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let sizes: Vec<usize> = (0..len + 1).map(|_| (next() % 40) as usize + 1).collect();
            let encoded = encode(&body, &mut sizes.into_iter());
            let mut d = ChunkedDecoder::new(len);
            let mut out = Vec::new();
            let mut at = 0;
            while at < encoded.len() && !d.is_done() {
                let step = ((next() % 17) as usize + 1).min(encoded.len() - at);
                at += d.decode(&encoded[at..at + step], &mut out).unwrap();
            }
            assert!(d.is_done());
            assert_eq!((out, at), (body.clone(), encoded.len()));
            if len > 0 {
                let mut d = ChunkedDecoder::new(len - 1);
                assert_eq!(
                    d.decode(&encoded, &mut Vec::new()),
                    Err(ChunkError::TooLarge { limit: len - 1 }),
                    "one byte over the limit"
                );
            }
        }
    }
}
