//! JPEG-LS decoder: ITU-T Recommendation T.87 (06/98) | ISO/IEC 14495-1, the baseline
//! LOCO-I algorithm, lossless (`NEAR = 0`) and near-lossless (`NEAR > 0`).
//!
//! Supported: 2..=16-bit samples; any number of components (DICOM uses 1 or 3) coded
//! one scan per component (`ILV = 0`), line-interleaved (`ILV = 1`) or sample-interleaved
//! (`ILV = 2`, up to 4 components per scan); preset coding parameters (LSE id 1, with the
//! defaults of C.2.4.1.1 for any parameter that is 0 or absent); oversize image dimensions
//! (LSE id 4); restart intervals (DRI with a 2-, 3- or 4-byte interval, RSTm markers).
//!
//! Not supported (an error names the feature): mapping tables (palettes, LSE ids 2 and 3,
//! `Tm != 0`), sub-sampled components, the point transform (`Al != 0`), a height defined by
//! DNL, and the HP colour transforms of the APP8 "mrfx" marker (transform 1, 2 or 3).
//!
//! Clause numbers in comments refer to T.87: Annex A (coding procedures), Annex C (marker
//! syntax). The decoder mirrors the encoding procedures of Annex A step by step; each
//! decoding step is the inverse of the encoding step it cites.

use super::bytes::{ByteCursor, RST0, RST7};
use super::{checked_sample_count, CodecError, Frame};

// Marker codes (T.81 Table B.1, T.87 Table C.1).
const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DNL: u8 = 0xDC;
const DRI: u8 = 0xDD;
const APP8: u8 = 0xE8;
const SOF55: u8 = 0xF7;
const LSE: u8 = 0xF8;

/// Run-length order table J (T.87 A.7.1.2): a run segment at `RUNindex` covers 2^J samples.
const J: [u32; 32] =
    [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 10, 11, 12, 13, 14, 15];

/// Regular-mode contexts 0..=364 (T.87 A.3.4: 365 contexts after sign merging).
const REGULAR_CONTEXTS: usize = 365;
/// Bias correction limits (T.87 A.6.2: MIN_C, MAX_C).
const MIN_C: i32 = -128;
const MAX_C: i32 = 127;
/// Entries of the gradient quantization table: 2 MAXVAL + 1 <= 2^17 - 1.
const GRADIENT_TABLE_SIZE: usize = 1 << 17;
/// Most components in one scan (T.81 B.2.3: Ns <= 4).
const MAX_SCAN_COMPONENTS: usize = 4;

/// Decodes one JPEG-LS codestream (SOI ... EOI) into raw unsigned samples.
///
/// The samples are interleaved by pixel whatever the interleave mode of the scans, and
/// are returned exactly as coded: no colour transform, no sign extension.
pub fn decode_jpeg_ls(data: &[u8]) -> Result<Frame, CodecError> {
    let mut cursor = ByteCursor::new(data, 0);
    if cursor.read_marker().ok() != Some(SOI) {
        return Err(CodecError::Invalid("JPEG-LS codestream does not start with SOI".into()));
    }

    let mut frame: Option<FrameHeader> = None;
    let mut presets = PresetParameters::default();
    let mut restart_interval: u32 = 0;
    let mut samples: Vec<u16> = Vec::new();
    let mut component_decoded: Vec<bool> = Vec::new();

    while cursor.remaining() > 0 {
        let marker = cursor.read_marker()?;
        match marker {
            SOF55 => {
                if frame.is_some() {
                    return Err(CodecError::Invalid("more than one SOF55 frame header".into()));
                }
                let header = FrameHeader::parse(cursor.read_segment("SOF55")?)?;
                component_decoded = vec![false; header.component_ids.len()];
                frame = Some(header);
            }
            // T.81 SOFn markers other than DHT (C4), JPG (C8), DAC (CC).
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                return Err(CodecError::Unsupported(format!(
                    "SOF marker 0xFF{marker:02X}: a T.81 JPEG codestream, not JPEG-LS"
                )));
            }
            LSE => {
                let payload = cursor.read_segment("LSE")?;
                // Once a scan has been decoded the dimensions are fixed.
                let frame_to_resize = if samples.is_empty() { frame.as_mut() } else { None };
                parse_preset_segment(payload, &mut presets, frame_to_resize)?;
            }
            DRI => {
                // T.87 C.2.5: the restart interval field is 2, 3 or 4 bytes long.
                let payload = cursor.read_segment("DRI")?;
                if payload.is_empty() || payload.len() > 4 {
                    return Err(CodecError::Invalid(format!("DRI segment with a {}-byte interval", payload.len())));
                }
                restart_interval = payload.iter().fold(0u32, |v, &b| (v << 8) | u32::from(b));
            }
            SOS => {
                let header =
                    frame.as_ref().ok_or_else(|| CodecError::Invalid("SOS before the SOF55 frame header".into()))?;
                let scan = ScanHeader::parse(cursor.read_segment("SOS")?, header)?;
                for &index in &scan.component_indices {
                    if component_decoded[index] {
                        return Err(CodecError::Invalid(format!(
                            "component {} coded in two scans",
                            header.component_ids[index]
                        )));
                    }
                }
                if samples.is_empty() {
                    if header.height == 0 {
                        return Err(CodecError::Unsupported("number of lines defined by a DNL marker (Y = 0)".into()));
                    }
                    let count = checked_sample_count(header.width, header.height, header.component_ids.len())?;
                    samples = vec![0u16; count];
                }
                let end =
                    decode_scan(data, cursor.position(), header, &scan, &presets, restart_interval, &mut samples)?;
                for &index in &scan.component_indices {
                    component_decoded[index] = true;
                }
                cursor = ByteCursor::new(data, end);
            }
            APP8 => {
                let payload = cursor.read_segment("APP8")?;
                check_hp_colour_transform(payload)?;
            }
            EOI => break,
            SOI => return Err(CodecError::Invalid("second SOI marker".into())),
            RST0..=RST7 => {
                return Err(CodecError::Invalid("restart marker outside a scan".into()));
            }
            DNL => {
                return Err(CodecError::Unsupported("image height defined by a DNL marker".into()));
            }
            // APPn, COM, and reserved markers: skip the segment.
            _ => {
                cursor.read_segment("marker segment")?;
            }
        }
    }

    let header = frame.ok_or_else(|| CodecError::Truncated("no SOF55 frame header".into()))?;
    if let Some(missing) = component_decoded.iter().position(|&done| !done) {
        return Err(CodecError::Truncated(format!("no scan for component {}", header.component_ids[missing])));
    }
    Ok(Frame {
        width: header.width,
        height: header.height,
        components: header.component_ids.len() as u8,
        bits_per_sample: header.precision,
        samples,
    })
}

// ---------------------------------------------------------------------------------------
// Marker segments (T.87 Annex C)
// ---------------------------------------------------------------------------------------

/// The frame header (T.87 C.2.2; SOF55 is T.81's SOFn with JPEG-LS meaning).
struct FrameHeader {
    /// `P`: sample precision, 2..=16.
    precision: u8,
    /// `X`: samples per line.
    width: u32,
    /// `Y`: lines.
    height: u32,
    /// `Ci` of each component, in frame order (which is the order of the output samples).
    component_ids: Vec<u8>,
}

impl FrameHeader {
    fn parse(payload: &[u8]) -> Result<Self, CodecError> {
        let mut fields = ByteCursor::new(payload, 0);
        let precision = fields.read_u8("SOF55")?;
        let height = u32::from(fields.read_u16("SOF55")?);
        let width = u32::from(fields.read_u16("SOF55")?);
        let component_count = usize::from(fields.read_u8("SOF55")?);
        if !(2..=16).contains(&precision) {
            return Err(CodecError::Invalid(format!("sample precision P = {precision}")));
        }
        if component_count == 0 {
            return Err(CodecError::Invalid("frame with no components".into()));
        }
        let mut component_ids = Vec::with_capacity(component_count);
        let mut first_sampling = None;
        for _ in 0..component_count {
            let id = fields.read_u8("SOF55 component")?;
            let sampling = fields.read_u8("SOF55 component")?;
            let _table = fields.read_u8("SOF55 component")?; // Tq, 0 in JPEG-LS
            if component_ids.contains(&id) {
                return Err(CodecError::Invalid(format!("component id {id} appears twice")));
            }
            if *first_sampling.get_or_insert(sampling) != sampling {
                return Err(CodecError::Unsupported("components with different sampling factors (sub-sampled)".into()));
            }
            component_ids.push(id);
        }
        // Y = 0 announces a DNL marker, unless LSE id 4 later sets the dimensions.
        Ok(FrameHeader { precision, width, height, component_ids })
    }
}

/// Preset coding parameters as signalled (T.87 C.2.4.1.1, LSE id 1); 0 means "default".
#[derive(Default, Clone, Copy)]
struct PresetParameters {
    maxval: u16,
    t1: u16,
    t2: u16,
    t3: u16,
    reset: u16,
}

/// An LSE marker segment (T.87 C.2.4.1).
fn parse_preset_segment(
    payload: &[u8],
    presets: &mut PresetParameters,
    frame: Option<&mut FrameHeader>,
) -> Result<(), CodecError> {
    let mut fields = ByteCursor::new(payload, 0);
    match fields.read_u8("LSE")? {
        // C.2.4.1.1: preset coding parameters.
        1 => {
            presets.maxval = fields.read_u16("LSE")?;
            presets.t1 = fields.read_u16("LSE")?;
            presets.t2 = fields.read_u16("LSE")?;
            presets.t3 = fields.read_u16("LSE")?;
            presets.reset = fields.read_u16("LSE")?;
            Ok(())
        }
        // C.2.4.1.2 / C.2.4.1.3: mapping tables and their continuation.
        2 | 3 => Err(CodecError::Unsupported("JPEG-LS mapping table (LSE id 2/3)".into())),
        // C.2.4.1.4: oversize image dimensions, Wxy-byte Y and X.
        4 => {
            let frame = frame
                .ok_or_else(|| CodecError::Invalid("oversize-dimension LSE outside the frame header's scope".into()))?;
            let field_width = usize::from(fields.read_u8("LSE")?);
            if !(2..=4).contains(&field_width) {
                return Err(CodecError::Invalid(format!("LSE id 4 with Wxy = {field_width}")));
            }
            frame.height = fields.read_be(field_width, "LSE")?;
            frame.width = fields.read_be(field_width, "LSE")?;
            Ok(())
        }
        id => Err(CodecError::Unsupported(format!("LSE marker segment with id {id}"))),
    }
}

/// The HP colour transforms (APP8 "mrfx", an HP/SPIFF extension outside T.87) decorrelate
/// R, G, B before coding. Transform 0 is "none"; the others are refused with a clear error.
/// Other APP8 segments (e.g. a SPIFF header) are ignored.
fn check_hp_colour_transform(payload: &[u8]) -> Result<(), CodecError> {
    if payload.len() >= 5 && &payload[..4] == b"mrfx" && payload[4] != 0 {
        return Err(CodecError::Unsupported(format!("HP colour transform {} (APP8 \"mrfx\")", payload[4])));
    }
    Ok(())
}

/// The scan header (T.87 C.2.3).
struct ScanHeader {
    /// Index in the frame of each component of the scan, in scan order.
    component_indices: Vec<usize>,
    /// `NEAR`: the maximum reconstruction error, 0 for lossless.
    near: u8,
    /// `ILV`: 0 = one component per scan, 1 = line, 2 = sample interleaved.
    interleave: u8,
}

impl ScanHeader {
    fn parse(payload: &[u8], frame: &FrameHeader) -> Result<Self, CodecError> {
        let mut fields = ByteCursor::new(payload, 0);
        let count = usize::from(fields.read_u8("SOS")?);
        if count == 0 || count > MAX_SCAN_COMPONENTS {
            return Err(CodecError::Invalid(format!("scan with {count} components")));
        }
        let mut component_indices = Vec::with_capacity(count);
        for _ in 0..count {
            let id = fields.read_u8("SOS component")?;
            let mapping_table = fields.read_u8("SOS component")?;
            let index = frame
                .component_ids
                .iter()
                .position(|&frame_id| frame_id == id)
                .ok_or_else(|| CodecError::Invalid(format!("scan names unknown component {id}")))?;
            if component_indices.contains(&index) {
                return Err(CodecError::Invalid(format!("component {id} twice in one scan")));
            }
            if mapping_table != 0 {
                return Err(CodecError::Unsupported(format!(
                    "mapping table {mapping_table} (palette) on component {id}"
                )));
            }
            component_indices.push(index);
        }
        let near = fields.read_u8("SOS")?;
        let interleave = fields.read_u8("SOS")?;
        let point_transform = fields.read_u8("SOS")? & 0x0F;
        if point_transform != 0 {
            return Err(CodecError::Unsupported(format!("point transform Al = {point_transform}")));
        }
        let interleave = match (interleave, count) {
            // A single-component scan is coded the same way whatever ILV says.
            (0..=2, 1) => 0,
            (1 | 2, _) => interleave,
            (0, _) => return Err(CodecError::Invalid("ILV = 0 with more than one component".into())),
            _ => return Err(CodecError::Invalid(format!("interleave mode ILV = {interleave}"))),
        };
        Ok(ScanHeader { component_indices, near, interleave })
    }
}

// ---------------------------------------------------------------------------------------
// Coding parameters (T.87 A.2.1, C.2.4.1.1)
// ---------------------------------------------------------------------------------------

/// The parameters fixed for one scan.
#[derive(Clone, Copy, Debug)]
struct CodingParameters {
    maxval: i32,
    near: i32,
    /// `2 * NEAR + 1`, the quantization step.
    step: i32,
    /// `RANGE`: number of distinct quantized prediction errors.
    range: i32,
    /// `qbpp`: bits of a quantized error, `ceil(log2 RANGE)`.
    qbpp: u32,
    /// `LIMIT`: the most bits a regular-mode Golomb code word may have.
    limit: u32,
    t1: i32,
    t2: i32,
    t3: i32,
    reset: i32,
}

/// Smallest `n` with `2^n >= value` (value >= 1).
fn ceil_log2(value: i32) -> u32 {
    let mut bits = 0;
    while (1i64 << bits) < i64::from(value) {
        bits += 1;
    }
    bits
}

impl CodingParameters {
    fn new(precision: u8, near: u8, presets: &PresetParameters) -> Result<Self, CodecError> {
        // C.2.4.1.1 Table C.2: MAXVAL defaults to 2^P - 1.
        let maxval = if presets.maxval != 0 { i32::from(presets.maxval) } else { (1i32 << precision) - 1 };
        let near = i32::from(near);
        // C.2.3: NEAR <= min(255, MAXVAL / 2).
        if near > maxval / 2 {
            return Err(CodecError::Invalid(format!("NEAR = {near} with MAXVAL = {maxval}")));
        }
        let step = 2 * near + 1;
        // A.2.1: RANGE, qbpp, bpp, LIMIT.
        let range = (maxval + 2 * near) / step + 1;
        let qbpp = ceil_log2(range);
        let bpp = ceil_log2(maxval + 1).max(2);
        let limit = 2 * (bpp + bpp.max(8));

        // C.2.4.1.1.1: default thresholds from MAXVAL and NEAR, scaling those of 8-bit
        // lossless coding (BASIC_T1..3); CLAMP(i, j) is j when i > MAXVAL or i < j.
        const BASIC_T1: i32 = 3;
        const BASIC_T2: i32 = 7;
        const BASIC_T3: i32 = 21;
        let clamp = |value: i32, low: i32| {
            if value > maxval || value < low {
                low
            } else {
                value
            }
        };
        let (default_t1, default_t2, default_t3) = if maxval >= 128 {
            let factor = (maxval.min(4095) + 128) / 256;
            let t1 = clamp(factor * (BASIC_T1 - 2) + 2 + 3 * near, near + 1);
            let t2 = clamp(factor * (BASIC_T2 - 3) + 3 + 5 * near, t1);
            let t3 = clamp(factor * (BASIC_T3 - 4) + 4 + 7 * near, t2);
            (t1, t2, t3)
        } else {
            let factor = 256 / (maxval + 1);
            let t1 = clamp((BASIC_T1 / factor + 3 * near).max(2), near + 1);
            let t2 = clamp((BASIC_T2 / factor + 5 * near).max(3), t1);
            let t3 = clamp((BASIC_T3 / factor + 7 * near).max(4), t2);
            (t1, t2, t3)
        };
        let or_default = |signalled: u16, default: i32| {
            if signalled != 0 {
                i32::from(signalled)
            } else {
                default
            }
        };
        let reset = or_default(presets.reset, 64);
        let (t1, t2, t3) = (
            or_default(presets.t1, default_t1),
            or_default(presets.t2, default_t2),
            or_default(presets.t3, default_t3),
        );
        // C.2.4.1.1: NEAR + 1 <= T1 <= T2 <= T3 <= MAXVAL, and 3 <= RESET.
        if !(near < t1 && t1 <= t2 && t2 <= t3 && t3 <= maxval) || reset < 3 {
            return Err(CodecError::Invalid(format!(
                "preset parameters T1 = {t1}, T2 = {t2}, T3 = {t3}, RESET = {reset} \
                 (NEAR = {near}, MAXVAL = {maxval})"
            )));
        }
        Ok(CodingParameters { maxval, near, step, range, qbpp, limit, t1, t2, t3, reset })
    }

    /// The A.3.3 quantization of every gradient -MAXVAL..=MAXVAL, at index `d + MAXVAL`.
    /// With NEAR < T1 <= T2 <= T3 the regions are intervals symmetric about 0:
    /// 0 for |d| <= NEAR, 1 below T1, 2 below T2, 3 below T3, 4 from T3 on.
    fn fill_gradient_table(&self, table: &mut [i8]) {
        let maxval = self.maxval as usize;
        let bounds = [self.near + 1, self.t1, self.t2, self.t3, self.maxval + 1];
        for region in 0..4usize {
            let low = bounds[region] as usize;
            let high = (bounds[region + 1] as usize).min(maxval + 1);
            if low < high {
                let value = region as i8 + 1;
                table[maxval + low..maxval + high].fill(value);
                table[maxval + 1 - high..maxval + 1 - low].fill(-value);
            }
        }
        table[maxval - self.near as usize..=maxval + self.near as usize].fill(0);
    }

    /// A.3.3 (code segment A.4): quantization of a local gradient into one of 9 regions
    /// -4..=4, as written in the standard (the decoder uses `fill_gradient_table`).
    #[cfg(test)]
    fn quantize_gradient(&self, d: i32) -> i8 {
        if d <= -self.t3 {
            -4
        } else if d <= -self.t2 {
            -3
        } else if d <= -self.t1 {
            -2
        } else if d < -self.near {
            -1
        } else if d <= self.near {
            0
        } else if d < self.t1 {
            1
        } else if d < self.t2 {
            2
        } else if d < self.t3 {
            3
        } else {
            4
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bit input (T.87 A.1: bit stuffing of the coded data)
// ---------------------------------------------------------------------------------------

/// Reads the entropy-coded data of a scan most significant bit first. After an 0xFF byte
/// the encoder inserts a 0 bit, so the byte following 0xFF carries only 7 data bits
/// (T.87 A.1); an 0xFF followed by a byte >= 0x80 is a marker and ends the data.
/// Past the end the reader supplies 0 bits but counts them, so that a decoder that used
/// them can be told that the data was truncated.
struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte to load.
    position: usize,
    /// Bits not yet consumed, left-aligned (the next bit is bit 63); the bits below
    /// `available` are zero.
    buffer: u64,
    available: u32,
    /// The last byte loaded was 0xFF, so the next carries 7 bits.
    after_ff: bool,
    /// A marker (or the end of the data) was reached at `position`.
    at_marker: bool,
    /// Zero bits appended after the end of the data.
    padding_bits: u64,
    /// A code word that no valid stream contains was met. Decoding goes on (with bounded
    /// work and in-range values) to the end of the line, where the caller checks this, so
    /// that the per-sample path carries no error plumbing.
    corrupt: Option<&'static str>,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], position: usize) -> Self {
        BitReader {
            data,
            position,
            buffer: 0,
            available: 0,
            after_ff: false,
            at_marker: false,
            padding_bits: 0,
            corrupt: None,
        }
    }

    /// Loads bytes until at least 57 bits are available.
    #[inline]
    fn refill(&mut self) {
        // Fast path: the next 8 bytes hold no 0xFF, so no stuffing and no marker: take as
        // many whole bytes as fit.
        if !self.after_ff && !self.at_marker {
            if let Some(chunk) = self.data.get(self.position..self.position + 8) {
                let word = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
                let inverted = !word; // a 0xFF byte becomes 0x00
                let has_ff = inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080;
                if has_ff == 0 {
                    let whole_bytes = (64 - self.available) / 8;
                    let new_available = self.available + 8 * whole_bytes;
                    let keep = !u64::MAX.checked_shr(new_available).unwrap_or(0);
                    self.buffer |= (word >> self.available) & keep;
                    self.available = new_available;
                    self.position += whole_bytes as usize;
                    return;
                }
            }
        }
        while self.available <= 56 {
            if self.at_marker {
                self.available += 8;
                self.padding_bits += 8;
                continue;
            }
            let Some(&byte) = self.data.get(self.position) else {
                self.at_marker = true;
                continue;
            };
            if self.after_ff {
                // Guaranteed < 0x80 by the check below: a stuffed 0 bit, then 7 bits.
                self.buffer |= u64::from(byte) << (64 - 7 - self.available);
                self.available += 7;
                self.after_ff = false;
                self.position += 1;
            } else if byte == 0xFF {
                match self.data.get(self.position + 1) {
                    Some(&next) if next < 0x80 => {
                        self.buffer |= 0xFFu64 << (64 - 8 - self.available);
                        self.available += 8;
                        self.after_ff = true;
                        self.position += 1;
                    }
                    // A marker (or a truncated one) ends the entropy-coded data.
                    _ => self.at_marker = true,
                }
            } else {
                self.buffer |= u64::from(byte) << (64 - 8 - self.available);
                self.available += 8;
                self.position += 1;
            }
        }
    }

    /// Reads `count` (0..=56) bits as an unsigned number.
    #[inline]
    fn read_bits(&mut self, count: u32) -> u32 {
        if count == 0 {
            return 0;
        }
        if self.available < count {
            self.refill();
        }
        let value = self.buffer >> (64 - count);
        self.buffer <<= count;
        self.available -= count;
        value as u32
    }

    #[inline]
    fn read_bit(&mut self) -> bool {
        if self.available == 0 {
            self.refill();
        }
        let bit = self.buffer >> 63;
        self.buffer <<= 1;
        self.available -= 1;
        bit != 0
    }

    /// Counts 0 bits up to and including the next 1 bit; returns the number of zeros, or
    /// `None` if more than `max_zeros` zeros come first.
    #[inline(always)]
    fn read_zeros_then_one(&mut self, max_zeros: u32) -> Option<u32> {
        let mut zeros = 0;
        loop {
            if self.available <= 56 {
                self.refill();
            }
            let leading = self.buffer.leading_zeros();
            if leading < self.available {
                zeros += leading;
                // Consume the zeros and the 1 (leading + 1 <= 64).
                self.buffer = (self.buffer << leading) << 1;
                self.available -= leading + 1;
                return (zeros <= max_zeros).then_some(zeros);
            }
            zeros += self.available;
            self.buffer = 0;
            self.available = 0;
            if zeros > max_zeros {
                return None;
            }
        }
    }

    /// Decodes a limited-length Golomb code word (T.87 A.5.3, inverse of code segment
    /// A.11): a unary prefix of `value >> k` zeros then a 1 and the `k` low bits, or, when
    /// the prefix reaches `limit - qbpp - 1` zeros, an escape followed by `value - 1` in
    /// `qbpp` bits. `k <= 30` (see `golomb_k`).
    #[inline(always)]
    fn read_golomb(&mut self, k: u32, limit: u32, qbpp: u32) -> u32 {
        let escape_zeros = limit.saturating_sub(qbpp + 1);
        // Fast path: the whole code word is buffered and is not an escape.
        if self.available <= 56 {
            self.refill();
        }
        let zeros = self.buffer.leading_zeros();
        if zeros < escape_zeros && zeros + 1 + k <= self.available {
            let after_one = (self.buffer << zeros) << 1;
            let low_bits = (after_one >> 1) >> (63 - k); // the top k bits (none if k = 0)
            self.buffer = after_one << k;
            self.available -= zeros + 1 + k;
            return (zeros << k) | low_bits as u32;
        }
        self.read_golomb_general(k, escape_zeros, qbpp)
    }

    /// `read_golomb` for code words longer than the buffer, escapes and invalid ones.
    #[inline(never)]
    fn read_golomb_general(&mut self, k: u32, escape_zeros: u32, qbpp: u32) -> u32 {
        let Some(zeros) = self.read_zeros_then_one(escape_zeros) else {
            self.corrupt = Some("Golomb code word longer than LIMIT");
            return 0;
        };
        if zeros < escape_zeros {
            // zeros < 64 and k <= 30: fits in u64; callers bound the value.
            let value = (u64::from(zeros) << k) | u64::from(self.read_bits(k));
            value.min(u64::from(u32::MAX)) as u32
        } else {
            self.read_bits(qbpp) + 1
        }
    }

    /// A mapped error value (MErrval, EMErrval) of a scan with the given RANGE: at most
    /// about RANGE in a valid stream; a larger one (only from corrupt data) is flagged and
    /// clamped so that the arithmetic downstream stays in range.
    #[inline(always)]
    fn read_mapped_error(&mut self, k: u32, limit: u32, qbpp: u32, range: i32) -> i32 {
        let mapped = self.read_golomb(k, limit, qbpp);
        let bound = 2 * range as u32;
        if mapped > bound {
            self.corrupt = Some("prediction error out of range for the scan");
            return bound as i32;
        }
        mapped as i32
    }

    /// True if the decoder has consumed bits beyond the end of the entropy-coded data.
    fn overrun(&self) -> bool {
        self.padding_bits > u64::from(self.available)
    }

    /// Position of the marker that ends the entropy-coded data read so far (or the end of
    /// the data): the first 0xFF followed by a byte >= 0x80 at or after the read position.
    fn marker_position(&self) -> usize {
        let mut index = self.position;
        while index + 1 < self.data.len() {
            if self.data[index] == 0xFF && self.data[index + 1] >= 0x80 {
                return index;
            }
            index += 1;
        }
        self.data.len()
    }

    /// At the end of a restart interval: drops the padding bits of the interval's last
    /// byte, checks that RSTm with `m = expected` follows (T.87 C.2.5 / T.81 B.2.1), and
    /// continues after it.
    fn consume_restart_marker(&mut self, expected: u8) -> Result<(), CodecError> {
        let mut cursor = ByteCursor::new(self.data, self.marker_position());
        cursor.read_restart_marker(expected)?;
        *self = BitReader::new(self.data, cursor.position());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Context modelling (T.87 A.2 - A.6, A.7.2)
// ---------------------------------------------------------------------------------------

/// The statistics of one regular-mode context (T.87 A.2.1): A (sum of error magnitudes),
/// B (bias accumulator), C (bias correction) and N (occurrence count).
#[derive(Clone, Copy)]
struct RegularContext {
    a: i64,
    b: i32,
    c: i32,
    n: i32,
}

/// The statistics of one run-interruption context (T.87 A.7.2): A, N, and Nn (count of
/// negative errors).
#[derive(Clone, Copy)]
struct RunInterruptionContext {
    a: i64,
    n: i32,
    nn: i32,
}

/// The adaptive statistics of a scan: the 365 regular contexts and the two
/// run-interruption contexts (365 for RItype 0, 366 for RItype 1).
struct ContextModel {
    regular: [RegularContext; REGULAR_CONTEXTS],
    run_interruption: [RunInterruptionContext; 2],
}

impl ContextModel {
    /// A.2.1 (code segment A.1 initialisation): A = max(2, floor((RANGE + 2^5) / 2^6)),
    /// N = 1, B = C = 0, Nn = 0.
    fn new(params: &CodingParameters) -> Self {
        let initial_a = i64::from(((params.range + 32) / 64).max(2));
        ContextModel {
            regular: [RegularContext { a: initial_a, b: 0, c: 0, n: 1 }; REGULAR_CONTEXTS],
            run_interruption: [RunInterruptionContext { a: initial_a, n: 1, nn: 0 }; 2],
        }
    }
}

/// A.5.1 (code segment A.10): the Golomb parameter, the least k with N * 2^k >= A.
/// Computed without the loop: if A has `d` more significant bits than N, then
/// N * 2^(d-1) < A < N * 2^(d+1), so k is d or d + 1.
#[inline(always)]
fn golomb_k(n: i32, a: i64) -> u32 {
    let n = n.max(1) as u64;
    let a = a.max(0) as u64;
    let bit_length_difference = n.leading_zeros().saturating_sub(a.leading_zeros());
    // k <= 30 for any state a valid stream can produce; the cap keeps shifts in range.
    let d = bit_length_difference.min(30);
    (d + u32::from((n << d) < a)).min(30)
}

/// A.4.1 (code segment A.5): the median edge detector, min(Ra, Rb) if Rc >= max(Ra, Rb),
/// max(Ra, Rb) if Rc <= min(Ra, Rb), else Ra + Rb - Rc; that is, Ra + Rb - Rc clamped to
/// the interval between Ra and Rb.
#[inline(always)]
fn med_predictor(ra: i32, rb: i32, rc: i32) -> i32 {
    let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
    (ra + rb - rc).max(low).min(high)
}

/// Decodes the samples of one scan, writing them into `samples` (interleaved by pixel with
/// `frame.component_ids.len()` components); returns the position after the scan's
/// entropy-coded data (the next marker).
fn decode_scan(
    data: &[u8],
    position: usize,
    frame: &FrameHeader,
    scan: &ScanHeader,
    presets: &PresetParameters,
    restart_interval: u32,
    samples: &mut [u16],
) -> Result<usize, CodecError> {
    let params = CodingParameters::new(frame.precision, scan.near, presets)?;
    let mut decoder = ScanDecoder::new(&params, BitReader::new(data, position));
    let width = frame.width as usize;
    let height = frame.height as usize;
    let frame_components = frame.component_ids.len();
    let scan_components = scan.component_indices.len();
    let line_stride = width * frame_components;
    if samples.len() != line_stride * height {
        return Err(CodecError::Invalid("image dimensions changed between scans".into()));
    }

    // Line buffers with one extra sample on each side (T.87 A.2.1 / A.3.1 edge rules):
    // index 0 holds the Ra / Rc of the first column, index width + 1 the Rd of the last.
    // Sample interleaving keeps all components of a pixel together in one buffer.
    let (buffers, buffer_len) =
        if scan.interleave == 2 { (1, (width + 2) * scan_components) } else { (scan_components, width + 2) };
    let mut previous_lines = vec![vec![0u16; buffer_len]; buffers];
    let mut current_lines = vec![vec![0u16; buffer_len]; buffers];
    // A.7.1: one RUNindex per component in line-interleaved mode, one per scan otherwise.
    let mut run_indices = vec![0usize; buffers];

    let mut restart_count: u8 = 0;
    for line in 0..height {
        if restart_interval != 0 && line != 0 && (line as u64).is_multiple_of(u64::from(restart_interval)) {
            // T.87 C.2.5: each restart interval is coded independently: the statistics,
            // the run index and the line above restart as at the beginning of the scan.
            decoder.reader.consume_restart_marker(restart_count)?;
            restart_count = (restart_count + 1) % 8;
            decoder.contexts = ContextModel::new(&params);
            run_indices.iter_mut().for_each(|index| *index = 0);
            for buffer in previous_lines.iter_mut().chain(current_lines.iter_mut()) {
                buffer.iter_mut().for_each(|sample| *sample = 0);
            }
        }
        let output_line = &mut samples[line * line_stride..(line + 1) * line_stride];
        if scan.interleave == 2 {
            let previous = &mut previous_lines[0];
            let current = &mut current_lines[0];
            let n = scan_components;
            // A.3.1 / B.3: the left neighbour of the first pixel is the pixel above it;
            // the right neighbour above the last pixel repeats the last pixel above.
            current[..n].copy_from_slice(&previous[n..2 * n]);
            previous.copy_within(width * n..(width + 1) * n, (width + 1) * n);
            decoder.decode_interleaved_line(previous, current, n, &mut run_indices[0]);
            for x in 0..width {
                for (s, &component) in scan.component_indices.iter().enumerate() {
                    output_line[x * frame_components + component] = current[(x + 1) * n + s];
                }
            }
            std::mem::swap(&mut previous_lines[0], &mut current_lines[0]);
        } else {
            // ILV 0 (one component) or ILV 1: one line of each component in turn.
            for (s, &component) in scan.component_indices.iter().enumerate() {
                let previous = &mut previous_lines[s];
                let current = &mut current_lines[s];
                current[0] = previous[1];
                previous[width + 1] = previous[width];
                decoder.decode_line(previous, current, &mut run_indices[s]);
                if frame_components == 1 {
                    output_line.copy_from_slice(&current[1..=width]);
                } else {
                    for x in 0..width {
                        output_line[x * frame_components + component] = current[x + 1];
                    }
                }
                std::mem::swap(&mut previous_lines[s], &mut current_lines[s]);
            }
        }
        if decoder.reader.overrun() {
            return Err(CodecError::Truncated(format!("entropy-coded data ends in line {} of {height}", line + 1)));
        }
        if let Some(problem) = decoder.reader.corrupt {
            return Err(CodecError::Invalid(format!("{problem} (line {} of {height})", line + 1)));
        }
    }
    Ok(decoder.reader.marker_position())
}

/// The state of the decoding of one scan.
struct ScanDecoder<'a> {
    params: CodingParameters,
    contexts: ContextModel,
    reader: BitReader<'a>,
    /// A.3.3 gradient quantization for every difference -MAXVAL..=MAXVAL at index
    /// `d + MAXVAL` (< 2^17, so a masked index needs no bounds check).
    quantized_gradient: Box<[i8; GRADIENT_TABLE_SIZE]>,
}

impl<'a> ScanDecoder<'a> {
    fn new(params: &CodingParameters, reader: BitReader<'a>) -> Self {
        let mut quantized_gradient: Box<[i8; GRADIENT_TABLE_SIZE]> =
            vec![0i8; GRADIENT_TABLE_SIZE].into_boxed_slice().try_into().expect("table size");
        params.fill_gradient_table(&mut quantized_gradient[..]);
        ScanDecoder { params: *params, contexts: ContextModel::new(params), reader, quantized_gradient }
    }

    /// A.3.1 - A.3.4: the signed context number `81 Q1 + 9 Q2 + Q3` of the gradients
    /// D1 = Rd - Rb, D2 = Rb - Rc, D3 = Rc - Ra. Its sign is that of the first non-zero
    /// Qi (|9 Q2 + Q3| <= 40 < 81), i.e. SIGN of A.3.4, and its magnitude 0..=364 is a
    /// one-to-one context index Q for the sign-merged triplet. 0 means all |Di| <= NEAR,
    /// which selects run mode (A.3.1).
    #[inline(always)]
    fn context(&self, ra: i32, rb: i32, rc: i32, rd: i32) -> i32 {
        let maxval = self.params.maxval;
        let q = |d: i32| i32::from(self.quantized_gradient[(d + maxval) as usize & (GRADIENT_TABLE_SIZE - 1)]);
        81 * q(rd - rb) + 9 * q(rb - rc) + q(rc - ra)
    }

    /// Decodes one line of a single component (ILV 0 and 1). `previous` and `current` have
    /// `width + 2` entries; the edge entries are already set.
    fn decode_line(&mut self, previous: &[u16], current: &mut [u16], run_index: &mut usize) {
        let width = current.len() - 2;
        let mut x = 1;
        while x <= width {
            let ra = i32::from(current[x - 1]);
            let rb = i32::from(previous[x]);
            let rc = i32::from(previous[x - 1]);
            let rd = i32::from(previous[x + 1]);
            let context = self.context(ra, rb, rc, rd);
            if context != 0 {
                current[x] = self.decode_regular_sample(context, ra, rb, rc) as u16;
                x += 1;
            } else {
                x = self.decode_run(previous, current, x, 1, run_index);
            }
        }
    }

    /// Decodes one line of `n` sample-interleaved components (ILV 2, T.87 B.3): buffers
    /// hold `(width + 2) * n` samples, pixel by pixel.
    fn decode_interleaved_line(&mut self, previous: &[u16], current: &mut [u16], n: usize, run_index: &mut usize) {
        let width = current.len() / n - 2;
        let mut x = 1;
        while x <= width {
            let mut contexts = [0i32; MAX_SCAN_COMPONENTS];
            for (s, context) in contexts.iter_mut().enumerate().take(n) {
                let ra = i32::from(current[(x - 1) * n + s]);
                let rb = i32::from(previous[x * n + s]);
                let rc = i32::from(previous[(x - 1) * n + s]);
                let rd = i32::from(previous[(x + 1) * n + s]);
                *context = self.context(ra, rb, rc, rd);
            }
            if contexts[..n].iter().all(|&context| context == 0) {
                // Run mode only when every component's gradients are flat.
                x = self.decode_run(previous, current, x, n, run_index);
            } else {
                // Otherwise every component in regular mode, even one with context 0.
                for (s, &context) in contexts.iter().enumerate().take(n) {
                    let ra = i32::from(current[(x - 1) * n + s]);
                    let rb = i32::from(previous[x * n + s]);
                    let rc = i32::from(previous[(x - 1) * n + s]);
                    current[x * n + s] = self.decode_regular_sample(context, ra, rb, rc) as u16;
                }
                x += 1;
            }
        }
    }

    /// Regular mode (T.87 A.4 - A.6) for one sample with signed context `context`.
    #[inline(always)]
    fn decode_regular_sample(&mut self, context: i32, ra: i32, rb: i32, rc: i32) -> i32 {
        let params = &self.params;
        // A.3.4: SIGN and the sign-merged context index Q.
        let sign = if context < 0 { -1 } else { 1 };
        let q = context.unsigned_abs() as usize;
        let context = &mut self.contexts.regular[q];

        // A.4.1 - A.4.2 (code segments A.5, A.6): MED prediction, corrected by SIGN * C[Q]
        // and clamped to 0..=MAXVAL.
        let predicted = (med_predictor(ra, rb, rc) + sign * context.c).max(0).min(params.maxval);

        // A.5.1: Golomb parameter; A.5.3: the mapped error value.
        let k = golomb_k(context.n, context.a);
        let mapped = self.reader.read_mapped_error(k, params.limit, params.qbpp, params.range);

        // A.5.2 (code segment A.9), inverted: even values map to errors >= 0 and odd ones to
        // negative errors, except that for NEAR = 0, k = 0 and 2 B[Q] <= -N[Q] the roles are
        // swapped (MErrval = 2 Errval + 1 for Errval >= 0, -2 (Errval + 1) otherwise).
        let mut error = (mapped >> 1) ^ -(mapped & 1);
        if params.near == 0 && k == 0 && 2 * context.b <= -context.n {
            error = -1 - error;
        }

        // A.6.1 (code segment A.12): update of A, B and N, halving at RESET.
        context.b += error * params.step;
        context.a += i64::from(error.abs());
        if context.n == params.reset {
            context.a >>= 1;
            context.b >>= 1; // floor division, as -((1 - B) >> 1) for B < 0
            context.n >>= 1;
        }
        context.n += 1;

        // A.6.2 (code segment A.13): bias correction C[Q], keeping -N[Q] < B[Q] <= 0.
        let n = context.n;
        if context.b <= -n {
            context.b += n;
            if context.c > MIN_C {
                context.c -= 1;
            }
            if context.b <= -n {
                context.b = -n + 1;
            }
        } else if context.b > 0 {
            context.b -= n;
            if context.c < MAX_C {
                context.c += 1;
            }
            if context.b > 0 {
                context.b = 0;
            }
        }

        self.reconstruct(predicted, sign * error)
    }

    /// A.4.4 - A.4.5 as applied by the decoder: Rx = Px + Errval * (2 NEAR + 1), brought
    /// back into range modulo RANGE * (2 NEAR + 1), then clamped to 0..=MAXVAL.
    #[inline(always)]
    fn reconstruct(&self, predicted: i32, error: i32) -> i32 {
        let params = &self.params;
        let mut value = predicted + error * params.step;
        if value < -params.near {
            value += params.range * params.step;
        } else if value > params.maxval + params.near {
            value -= params.range * params.step;
        }
        value.max(0).min(params.maxval)
    }

    /// Run mode (T.87 A.7) from pixel `x` of a line of `n` interleaved components: the run
    /// length (A.7.1, inverse of code segments A.14 - A.16), then, unless the run reaches
    /// the end of the line, the run-interruption sample(s) (A.7.2). Returns the index of
    /// the first pixel after them.
    fn decode_run(
        &mut self,
        previous: &[u16],
        current: &mut [u16],
        x: usize,
        n: usize,
        run_index: &mut usize,
    ) -> usize {
        let width = current.len() / n - 2;
        let pixels_left = width + 1 - x;
        // A.7.1.1: the run value is the reconstructed pixel to the left (Ra).
        let mut run_value = [0u16; MAX_SCAN_COMPONENTS];
        run_value[..n].copy_from_slice(&current[(x - 1) * n..x * n]);

        let mut run_length = 0;
        let interrupted = loop {
            if self.reader.read_bit() {
                // A "1": a full segment of 2^J[RUNindex] pixels, or the rest of the line.
                let segment = 1usize << J[*run_index];
                let count = segment.min(pixels_left - run_length);
                run_length += count;
                if count == segment && *run_index < 31 {
                    *run_index += 1;
                }
                if run_length == pixels_left {
                    break false;
                }
            } else {
                // A "0": the remaining run length in J[RUNindex] bits, then an interruption.
                let mut remainder = self.reader.read_bits(J[*run_index]) as usize;
                if remainder > pixels_left - run_length {
                    self.reader.corrupt = Some("run extends past the end of a line");
                    remainder = pixels_left - run_length;
                }
                run_length += remainder;
                // A run that ends exactly at the end of the line has no interruption sample
                // (an encoder would not write this, but it is unambiguous).
                break run_length < pixels_left;
            }
        };
        if n == 1 {
            current[x..x + run_length].fill(run_value[0]);
        } else {
            for pixel in current[x * n..(x + run_length) * n].chunks_exact_mut(n) {
                pixel.copy_from_slice(&run_value[..n]);
            }
        }
        let next = x + run_length;
        if !interrupted {
            return next;
        }

        // A.7.2: the run-interruption sample. For a single component RItype depends on
        // |Ra - Rb|; in sample-interleaved mode (B.3) each component is coded as RItype 0.
        for s in 0..n {
            let ra = i32::from(run_value[s]);
            let rb = i32::from(previous[next * n + s]);
            let ri_type = n == 1 && (ra - rb).abs() <= self.params.near;
            current[next * n + s] = self.decode_run_interruption_sample(ra, rb, ri_type, *run_index) as u16;
        }
        // A.7.2 (code segment A.16, end): RUNindex decreases after the interruption.
        if *run_index > 0 {
            *run_index -= 1;
        }
        next + 1
    }

    /// A.7.2.1 - A.7.2.2 inverted: one run-interruption sample.
    fn decode_run_interruption_sample(&mut self, ra: i32, rb: i32, ri_type: bool, run_index: usize) -> i32 {
        let params = &self.params;
        let ri = usize::from(ri_type);
        let context = &mut self.contexts.run_interruption[ri];
        // A.7.2.1 (code segment A.17): the prediction and the sign of the error.
        let (predicted, sign) = if ri_type { (ra, 1) } else { (rb, if ra > rb { -1 } else { 1 }) };
        // A.7.2.2 (code segment A.20): TEMP and the Golomb parameter.
        let temp = if ri_type { context.a + i64::from(context.n >> 1) } else { context.a };
        let k = golomb_k(context.n, temp);
        // A.7.2.2: EMErrval is coded with the limit LIMIT - J[RUNindex] - 1.
        let limit = params.limit - J[run_index] - 1;
        let mapped = self.reader.read_mapped_error(k, limit, params.qbpp, params.range);

        // A.7.2.2 (code segment A.21), inverted: EMErrval = 2 |Errval| - RItype - map.
        let with_type = mapped + ri as i32;
        let map = with_type & 1 == 1;
        let magnitude = (with_type + 1) >> 1;
        // map = 1 marks a positive error when k = 0 and 2 Nn[Q] < N[Q], a negative one
        // otherwise (code segment A.22).
        let positive_if_mapped = k == 0 && 2 * context.nn < context.n;
        let error = if map == positive_if_mapped { magnitude } else { -magnitude };

        // A.7.2.2 (code segment A.23): update of A, N, Nn.
        if error < 0 {
            context.nn += 1;
        }
        context.a += i64::from((mapped + 1 - ri as i32) >> 1);
        if context.n == params.reset {
            context.a >>= 1;
            context.n >>= 1;
            context.nn >>= 1;
        }
        context.n += 1;

        self.reconstruct(predicted, sign * error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn med_predictor_matches_code_segment_a5() {
        for ra in 0..12 {
            for rb in 0..12 {
                for rc in 0..12 {
                    let expected = if rc >= ra.max(rb) {
                        ra.min(rb)
                    } else if rc <= ra.min(rb) {
                        ra.max(rb)
                    } else {
                        ra + rb - rc
                    };
                    assert_eq!(med_predictor(ra, rb, rc), expected, "{ra} {rb} {rc}");
                }
            }
        }
    }

    #[test]
    fn golomb_k_matches_the_loop_of_code_segment_a10() {
        for n in 1..300i32 {
            for a in (0..5000i64).chain([1 << 20, (1 << 30) + 7, 1 << 40]) {
                let mut k = 0;
                while (i64::from(n) << k) < a && k < 30 {
                    k += 1;
                }
                assert_eq!(golomb_k(n, a), k, "N = {n}, A = {a}");
            }
        }
    }

    #[test]
    fn gradient_table_matches_code_segment_a4() {
        for (precision, near, presets) in [
            (8u8, 0u8, PresetParameters::default()),
            (8, 3, PresetParameters::default()),
            (12, 4, PresetParameters::default()),
            (16, 0, PresetParameters::default()),
            (2, 0, PresetParameters::default()),
            (5, 1, PresetParameters::default()),
            (16, 2, PresetParameters { t1: 3, t2: 3, t3: 3, ..Default::default() }),
            (10, 0, PresetParameters { maxval: 700, t1: 1, t2: 2, t3: 700, reset: 3 }),
        ] {
            let params = CodingParameters::new(precision, near, &presets).unwrap();
            let mut table = vec![9i8; 2 * params.maxval as usize + 1];
            params.fill_gradient_table(&mut table);
            for d in -params.maxval..=params.maxval {
                assert_eq!(table[(d + params.maxval) as usize], params.quantize_gradient(d), "{params:?}, d = {d}");
            }
        }
    }

    #[test]
    fn default_thresholds_of_c_2_4_1_1() {
        let thresholds = |precision: u8, near: u8| {
            let p = CodingParameters::new(precision, near, &PresetParameters::default()).unwrap();
            (p.t1, p.t2, p.t3, p.reset)
        };
        // The values the encoders of the test files wrote into their LSE segments.
        assert_eq!(thresholds(16, 0), (18, 67, 276, 64));
        assert_eq!(thresholds(16, 2), (24, 77, 290, 64));
        assert_eq!(thresholds(12, 4), (30, 87, 304, 64));
        // T.87 Table C.3 for 8 bits, lossless.
        assert_eq!(thresholds(8, 0), (3, 7, 21, 64));
    }
}
