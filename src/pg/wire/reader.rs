//! The one cursor that reads the wire.

use super::{DecodeError, DecodeErrorKind};

/// A bounds-checked cursor over one message body.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf[0]` within the enclosing frame, for error positions.
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0, base: 0 }
    }

    /// A reader whose error offsets are shifted by `base`.
    pub fn with_base(buf: &'a [u8], base: usize) -> Reader<'a> {
        Reader { buf, pos: 0, base }
    }

    /// Offset of the next byte (within the frame).
    pub fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// An error at the current offset.
    pub fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError { offset: self.offset(), kind }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.error(DecodeErrorKind::UnexpectedEof { needed: n - self.remaining() }));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Big-endian i16.
    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    /// Big-endian i32.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// Big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Big-endian i64.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// Big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A NUL-terminated UTF-8 string (the NUL is consumed, not returned).
    pub fn cstr(&mut self) -> Result<&'a str, DecodeError> {
        let rest = &self.buf[self.pos..];
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error(DecodeErrorKind::UnterminatedString));
        };
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| self.error(DecodeErrorKind::InvalidUtf8))?;
        self.pos += nul + 1;
        Ok(s)
    }

    /// The rest of the buffer.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// A count that must be non-negative and fit in the remaining bytes at `min_each` bytes
    /// per item: checked before anything is allocated for it.
    pub fn count(&mut self, raw: i64, min_each: usize) -> Result<usize, DecodeError> {
        if raw < 0 {
            return Err(self.error(DecodeErrorKind::InvalidLength(raw)));
        }
        let n = raw as usize;
        if n.saturating_mul(min_each.max(1)) > self.remaining() {
            return Err(self.error(DecodeErrorKind::CountTooLarge(raw)));
        }
        Ok(n)
    }

    /// Fails when bytes are left.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() > 0 {
            return Err(self.error(DecodeErrorKind::TrailingBytes(self.remaining())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_bounds_checks() {
        let mut r = Reader::new(&[0, 1, 0, 0, 0, 2, b'h', b'i', 0, 9]);
        assert_eq!(r.i16().unwrap(), 1);
        assert_eq!(r.i32().unwrap(), 2);
        assert_eq!(r.cstr().unwrap(), "hi");
        assert_eq!(r.offset(), 9);
        assert!(r.finish().is_err());
        assert_eq!(r.u8().unwrap(), 9);
        assert_eq!(r.u8().unwrap_err().kind, DecodeErrorKind::UnexpectedEof { needed: 1 });
        r.finish().unwrap();
    }

    #[test]
    fn counts_are_checked_before_allocation() {
        let mut r = Reader::new(&[0; 10]);
        assert_eq!(r.count(60_000, 1).unwrap_err().kind, DecodeErrorKind::CountTooLarge(60_000));
        assert_eq!(r.count(-1, 1).unwrap_err().kind, DecodeErrorKind::InvalidLength(-1));
        assert_eq!(r.count(5, 2).unwrap(), 5);
        let mut r = Reader::new(b"abc");
        assert_eq!(r.cstr().unwrap_err().kind, DecodeErrorKind::UnterminatedString);
        let mut r = Reader::new(&[0xff, 0]);
        assert_eq!(r.cstr().unwrap_err().kind, DecodeErrorKind::InvalidUtf8);
    }
}
