//! Reading the marker-segment layer shared by JPEG (T.81 Annex B) and JPEG-LS (T.87 Annex C):
//! big-endian fields, markers, and length-prefixed marker segments, all bounds-checked.

use super::CodecError;

/// Restart markers RST0…RST7 (T.81 B.1.1.3, T.87 C.1.2), in both JPEG and JPEG-LS scans.
pub(crate) const RST0: u8 = 0xD0;
pub(crate) const RST7: u8 = 0xD7;

/// A position in a codestream, for reading header fields.
pub(crate) struct ByteCursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> ByteCursor<'a> {
    pub(crate) fn new(data: &'a [u8], pos: usize) -> Self {
        ByteCursor { data, pos: pos.min(data.len()) }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(crate) fn read_u8(&mut self, what: &str) -> Result<u8, CodecError> {
        let byte = *self.data.get(self.pos).ok_or_else(|| CodecError::Truncated(format!("end of data in {what}")))?;
        self.pos += 1;
        Ok(byte)
    }

    pub(crate) fn read_u16(&mut self, what: &str) -> Result<u16, CodecError> {
        let high = self.read_u8(what)?;
        let low = self.read_u8(what)?;
        Ok(u16::from_be_bytes([high, low]))
    }

    /// A big-endian unsigned field of `width` (1..=4) bytes.
    pub(crate) fn read_be(&mut self, width: usize, what: &str) -> Result<u32, CodecError> {
        let mut value = 0u32;
        for _ in 0..width.min(4) {
            value = (value << 8) | u32::from(self.read_u8(what)?);
        }
        Ok(value)
    }

    /// The next marker code (T.81 B.1.1.2): an 0xFF byte, optionally preceded by more 0xFF
    /// fill bytes, then a code that is neither 0x00 nor 0xFF.
    pub(crate) fn read_marker(&mut self) -> Result<u8, CodecError> {
        let first = self.read_u8("marker")?;
        if first != 0xFF {
            return Err(CodecError::Invalid(format!(
                "expected a marker at byte {}, found 0x{first:02X}",
                self.pos - 1
            )));
        }
        loop {
            let code = self.read_u8("marker")?;
            match code {
                0xFF => continue, // fill byte
                0x00 => {
                    return Err(CodecError::Invalid(format!(
                        "expected a marker at byte {}, found 0xFF00",
                        self.pos - 2
                    )))
                }
                _ => return Ok(code),
            }
        }
    }

    /// The restart marker RST`expected` (0…7) that must come next in a scan with restart
    /// intervals; the cursor is left on the first entropy-coded byte after it.
    pub(crate) fn read_restart_marker(&mut self, expected: u8) -> Result<(), CodecError> {
        let marker = self.read_marker().map_err(|_| CodecError::Truncated("restart marker missing".into()))?;
        if marker != RST0 + expected {
            return Err(CodecError::Invalid(format!("expected RST{expected}, found marker 0xFF{marker:02X}")));
        }
        Ok(())
    }

    /// The payload of a marker segment whose marker was just read: a two-byte length
    /// `L` (counting itself) followed by `L - 2` bytes.
    pub(crate) fn read_segment(&mut self, what: &str) -> Result<&'a [u8], CodecError> {
        let length = usize::from(self.read_u16(what)?);
        if length < 2 {
            return Err(CodecError::Invalid(format!("{what}: segment length {length} < 2")));
        }
        let payload_len = length - 2;
        if payload_len > self.remaining() {
            return Err(CodecError::Truncated(format!(
                "{what}: segment of {payload_len} bytes, only {} left",
                self.remaining()
            )));
        }
        let payload = &self.data[self.pos..self.pos + payload_len];
        self.pos += payload_len;
        Ok(payload)
    }
}
