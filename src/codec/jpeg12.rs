//! JPEG decoder for the sequential DCT-based processes with Huffman coding: ITU-T T.81 |
//! ISO/IEC 10918-1 baseline (process 1, SOF0, 8-bit) and extended (processes 2 and 4,
//! SOF1, 8- or 12-bit). This is DICOM's "JPEG Extended (Process 2 & 4)", transfer syntax
//! 1.2.840.10008.1.2.4.51, and also decodes "JPEG Baseline" (.50) streams.
//!
//! Supported: 1..=4 components, interleaved or not, sampling factors that are the same for
//! every component (so no component is sub-sampled), restart intervals, quantization tables
//! of 8 or 16 bits, Huffman tables redefined between scans.
//!
//! Not supported (an error names the feature): progressive (SOF2, SOF6), lossless (SOF3,
//! SOF7), hierarchical and arithmetic-coded processes, sub-sampled components, and a height
//! defined by DNL. Multi-component images are returned as coded: no YCbCr to RGB conversion.
//!
//! The inverse DCT is computed in double precision from its definition (T.81 A.3.3), then
//! rounded, level-shifted by 2^(P-1) and clamped to 0..2^P - 1. Decoders with integer IDCTs
//! (libjpeg's and others) differ from it by at most 1 in an occasional sample.

use super::bytes::{ByteCursor, RST0, RST7};
use super::{checked_sample_count, CodecError, Frame};

// Marker codes (T.81 Table B.1).
const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;
const DQT: u8 = 0xDB;
const DNL: u8 = 0xDC;
const DRI: u8 = 0xDD;
const DHT: u8 = 0xC4;
const SOF0: u8 = 0xC0;
const SOF1: u8 = 0xC1;

/// Zig-zag order (T.81 Figure A.6): `ZIGZAG[k]` is the row-major index of the k-th
/// coefficient in the coded order.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// Decodes one JPEG codestream (SOI ... EOI) of the sequential Huffman processes.
pub fn decode_jpeg_extended(data: &[u8]) -> Result<Frame, CodecError> {
    let mut cursor = ByteCursor::new(data, 0);
    if cursor.read_marker().ok() != Some(SOI) {
        return Err(CodecError::Invalid("JPEG codestream does not start with SOI".into()));
    }
    let mut tables = Tables::default();
    let mut frame: Option<FrameHeader> = None;
    let mut restart_interval = 0u16;
    let mut samples: Vec<u16> = Vec::new();
    let mut component_decoded: Vec<bool> = Vec::new();
    let idct = InverseDct::new();

    while cursor.remaining() > 0 {
        let marker = cursor.read_marker()?;
        match marker {
            SOF0 | SOF1 => {
                if frame.is_some() {
                    return Err(CodecError::Invalid("more than one frame header".into()));
                }
                let header = FrameHeader::parse(cursor.read_segment("SOF")?, marker)?;
                component_decoded = vec![false; header.components.len()];
                frame = Some(header);
            }
            0xC2 | 0xC6 => return Err(unsupported_process(marker, "progressive DCT")),
            0xC3 | 0xC7 => return Err(unsupported_process(marker, "lossless")),
            0xC5 => return Err(unsupported_process(marker, "hierarchical")),
            0xC9..=0xCB | 0xCD..=0xCF => return Err(unsupported_process(marker, "arithmetic coding")),
            0xF7 => return Err(unsupported_process(marker, "JPEG-LS")),
            DHT => tables.read_huffman_tables(cursor.read_segment("DHT")?)?,
            DQT => tables.read_quantization_tables(cursor.read_segment("DQT")?)?,
            DRI => {
                let payload = cursor.read_segment("DRI")?;
                if payload.len() != 2 {
                    return Err(CodecError::Invalid("DRI segment length".into()));
                }
                restart_interval = u16::from_be_bytes([payload[0], payload[1]]);
            }
            SOS => {
                let header = frame.as_ref().ok_or_else(|| CodecError::Invalid("SOS before the frame header".into()))?;
                let scan = ScanHeader::parse(cursor.read_segment("SOS")?, header)?;
                for &index in &scan.component_indices {
                    if component_decoded[index] {
                        return Err(CodecError::Invalid("a component coded in two sequential scans".into()));
                    }
                }
                if samples.is_empty() {
                    if header.height == 0 {
                        return Err(CodecError::Unsupported("number of lines defined by a DNL marker (Y = 0)".into()));
                    }
                    let count = checked_sample_count(header.width, header.height, header.components.len())?;
                    samples = vec![0u16; count];
                }
                let end = decode_scan(
                    data,
                    cursor.position(),
                    header,
                    &scan,
                    &tables,
                    restart_interval,
                    &idct,
                    &mut samples,
                )?;
                for &index in &scan.component_indices {
                    component_decoded[index] = true;
                }
                cursor = ByteCursor::new(data, end);
            }
            EOI => break,
            SOI => return Err(CodecError::Invalid("second SOI marker".into())),
            RST0..=RST7 => return Err(CodecError::Invalid("restart marker outside a scan".into())),
            DNL => return Err(CodecError::Unsupported("number of lines defined by DNL".into())),
            // APPn, COM, DAC-less others: skip the segment.
            _ => {
                cursor.read_segment("marker segment")?;
            }
        }
    }

    let header = frame.ok_or_else(|| CodecError::Truncated("no frame header".into()))?;
    if let Some(missing) = component_decoded.iter().position(|&done| !done) {
        return Err(CodecError::Truncated(format!("no scan for component {}", header.components[missing].id)));
    }
    Ok(Frame {
        width: header.width,
        height: header.height,
        components: header.components.len() as u8,
        bits_per_sample: header.precision,
        samples,
    })
}

fn unsupported_process(marker: u8, what: &str) -> CodecError {
    CodecError::Unsupported(format!("{what} JPEG (SOF marker 0xFF{marker:02X})"))
}

// ---------------------------------------------------------------------------------------
// Marker segments (T.81 Annex B)
// ---------------------------------------------------------------------------------------

struct ComponentSpec {
    id: u8,
    horizontal_sampling: u8,
    vertical_sampling: u8,
    quantization_table: usize,
}

/// The frame header (T.81 B.2.2).
struct FrameHeader {
    /// `P`: 8, or 12 (SOF1 only).
    precision: u8,
    height: u32,
    width: u32,
    components: Vec<ComponentSpec>,
}

impl FrameHeader {
    fn parse(payload: &[u8], marker: u8) -> Result<Self, CodecError> {
        let mut fields = ByteCursor::new(payload, 0);
        let precision = fields.read_u8("SOF")?;
        let height = u32::from(fields.read_u16("SOF")?);
        let width = u32::from(fields.read_u16("SOF")?);
        let count = usize::from(fields.read_u8("SOF")?);
        // B.2.2 Table B.2: P = 8 for baseline, 8 or 12 for extended sequential.
        match (marker, precision) {
            (SOF0, 8) | (SOF1, 8 | 12) => {}
            _ => {
                return Err(CodecError::Invalid(format!("sample precision {precision} in SOF marker 0xFF{marker:02X}")))
            }
        }
        if !(1..=4).contains(&count) {
            return Err(CodecError::Unsupported(format!("{count} components in a frame")));
        }
        if width == 0 {
            return Err(CodecError::Invalid("frame width 0".into()));
        }
        let mut components: Vec<ComponentSpec> = Vec::with_capacity(count);
        for _ in 0..count {
            let id = fields.read_u8("SOF component")?;
            let sampling = fields.read_u8("SOF component")?;
            let quantization_table = usize::from(fields.read_u8("SOF component")?);
            let (horizontal_sampling, vertical_sampling) = (sampling >> 4, sampling & 0x0F);
            if !(1..=4).contains(&horizontal_sampling)
                || !(1..=4).contains(&vertical_sampling)
                || quantization_table > 3
            {
                return Err(CodecError::Invalid(format!("component {id}: bad parameters")));
            }
            if components.iter().any(|c| c.id == id) {
                return Err(CodecError::Invalid(format!("component id {id} appears twice")));
            }
            if let Some(first) = components.first() {
                if (first.horizontal_sampling, first.vertical_sampling) != (horizontal_sampling, vertical_sampling) {
                    return Err(CodecError::Unsupported("sub-sampled components (different sampling factors)".into()));
                }
            }
            components.push(ComponentSpec { id, horizontal_sampling, vertical_sampling, quantization_table });
        }
        Ok(FrameHeader { precision, height, width, components })
    }
}

/// The scan header (T.81 B.2.3).
struct ScanHeader {
    component_indices: Vec<usize>,
    dc_tables: Vec<usize>,
    ac_tables: Vec<usize>,
}

impl ScanHeader {
    fn parse(payload: &[u8], frame: &FrameHeader) -> Result<Self, CodecError> {
        let mut fields = ByteCursor::new(payload, 0);
        let count = usize::from(fields.read_u8("SOS")?);
        if !(1..=4).contains(&count) {
            return Err(CodecError::Invalid(format!("scan with {count} components")));
        }
        let mut scan = ScanHeader { component_indices: Vec::new(), dc_tables: Vec::new(), ac_tables: Vec::new() };
        for _ in 0..count {
            let id = fields.read_u8("SOS component")?;
            let tables = fields.read_u8("SOS component")?;
            let index = frame
                .components
                .iter()
                .position(|c| c.id == id)
                .ok_or_else(|| CodecError::Invalid(format!("scan names unknown component {id}")))?;
            if scan.component_indices.contains(&index) {
                return Err(CodecError::Invalid(format!("component {id} twice in one scan")));
            }
            let (dc, ac) = (usize::from(tables >> 4), usize::from(tables & 0x0F));
            if dc > 3 || ac > 3 {
                return Err(CodecError::Invalid("Huffman table selector > 3".into()));
            }
            scan.component_indices.push(index);
            scan.dc_tables.push(dc);
            scan.ac_tables.push(ac);
        }
        let spectral_start = fields.read_u8("SOS")?;
        let spectral_end = fields.read_u8("SOS")?;
        let approximation = fields.read_u8("SOS")?;
        // B.2.3 Table B.3: a sequential DCT scan has Ss = 0, Se = 63, Ah = Al = 0.
        if spectral_start != 0 || spectral_end != 63 || approximation != 0 {
            return Err(CodecError::Invalid(format!(
                "sequential scan with Ss = {spectral_start}, Se = {spectral_end}, \
                 Ah/Al = 0x{approximation:02X} (must be 0, 63, 0)"
            )));
        }
        Ok(scan)
    }
}

/// The tables a scan may use.
#[derive(Default)]
struct Tables {
    /// Quantization tables in zig-zag order (B.2.4.1).
    quantization: [Option<[u16; 64]>; 4],
    dc: [Option<HuffmanTable>; 4],
    ac: [Option<HuffmanTable>; 4],
}

impl Tables {
    /// DQT (T.81 B.2.4.1): one or more tables of 8-bit (Pq = 0) or 16-bit (Pq = 1) values.
    fn read_quantization_tables(&mut self, payload: &[u8]) -> Result<(), CodecError> {
        let mut fields = ByteCursor::new(payload, 0);
        while fields.remaining() > 0 {
            let spec = fields.read_u8("DQT")?;
            let (precision, id) = (spec >> 4, usize::from(spec & 0x0F));
            if precision > 1 || id > 3 {
                return Err(CodecError::Invalid(format!("DQT table Pq = {precision}, Tq = {id}")));
            }
            let mut table = [0u16; 64];
            for value in table.iter_mut() {
                *value = if precision == 0 { u16::from(fields.read_u8("DQT")?) } else { fields.read_u16("DQT")? };
            }
            self.quantization[id] = Some(table);
        }
        Ok(())
    }

    /// DHT (T.81 B.2.4.2): one or more Huffman tables.
    fn read_huffman_tables(&mut self, payload: &[u8]) -> Result<(), CodecError> {
        let mut fields = ByteCursor::new(payload, 0);
        while fields.remaining() > 0 {
            let spec = fields.read_u8("DHT")?;
            let (class, id) = (spec >> 4, usize::from(spec & 0x0F));
            if class > 1 || id > 3 {
                return Err(CodecError::Invalid(format!("DHT table Tc = {class}, Th = {id}")));
            }
            let mut counts = [0u8; 16];
            for count in counts.iter_mut() {
                *count = fields.read_u8("DHT")?;
            }
            let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
            let mut values = Vec::with_capacity(total);
            for _ in 0..total {
                values.push(fields.read_u8("DHT")?);
            }
            let table = HuffmanTable::new(&counts, values)?;
            if class == 0 {
                self.dc[id] = Some(table);
            } else {
                self.ac[id] = Some(table);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Huffman decoding (T.81 Annex C, F.2.2)
// ---------------------------------------------------------------------------------------

/// Code words of up to this many bits are decoded with one table look-up.
const FAST_BITS: u32 = 9;

struct HuffmanTable {
    /// For every `FAST_BITS`-bit prefix: `length << 8 | value` of the code word it starts
    /// with, or 0 if that code word is longer.
    fast: Box<[u16; 1 << FAST_BITS]>,
    /// F.2.2.3 / Figure F.16: for each code length 1..=16, the largest code (-1 if none),
    /// and the offset that turns a code of that length into an index into `values`.
    max_code: [i32; 17],
    value_offset: [i32; 17],
    values: Vec<u8>,
}

impl HuffmanTable {
    /// Annex C (Figures C.1 - C.3): canonical codes from the count of codes of each length.
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self, CodecError> {
        let mut fast = Box::new([0u16; 1 << FAST_BITS]);
        let mut max_code = [-1i32; 17];
        let mut value_offset = [0i32; 17];
        let mut code: u32 = 0;
        let mut index = 0usize;
        for length in 1..=16u32 {
            let count = u32::from(counts[length as usize - 1]);
            if count > 0 {
                value_offset[length as usize] = index as i32 - code as i32;
                for _ in 0..count {
                    if code >= 1 << length {
                        return Err(CodecError::Invalid("over-subscribed Huffman table".into()));
                    }
                    if length <= FAST_BITS {
                        let shift = FAST_BITS - length;
                        let entry = (length as u16) << 8 | u16::from(values[index]);
                        for prefix in (code << shift)..((code + 1) << shift) {
                            fast[prefix as usize] = entry;
                        }
                    }
                    code += 1;
                    index += 1;
                }
                max_code[length as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        Ok(HuffmanTable { fast, max_code, value_offset, values })
    }
}

/// Reads Huffman-coded data most significant bit first, removing the 0x00 stuffed after
/// every 0xFF (T.81 F.1.2.3). A marker ends the data; past it the reader supplies 0 bits
/// and counts them, so that consuming them can be reported as truncation.
struct HuffmanBitReader<'a> {
    data: &'a [u8],
    position: usize,
    buffer: u64,
    available: u32,
    at_marker: bool,
    padding_bits: u64,
}

impl<'a> HuffmanBitReader<'a> {
    fn new(data: &'a [u8], position: usize) -> Self {
        HuffmanBitReader { data, position, buffer: 0, available: 0, at_marker: false, padding_bits: 0 }
    }

    /// Loads bytes until at least 57 bits are available.
    fn refill(&mut self) {
        while self.available <= 56 {
            let byte = if self.at_marker {
                self.padding_bits += 8;
                0
            } else {
                match self.data.get(self.position) {
                    None => {
                        self.at_marker = true;
                        continue;
                    }
                    Some(0xFF) => match self.data.get(self.position + 1) {
                        Some(0x00) => {
                            self.position += 2;
                            0xFF
                        }
                        _ => {
                            self.at_marker = true;
                            continue;
                        }
                    },
                    Some(&byte) => {
                        self.position += 1;
                        byte
                    }
                }
            };
            self.buffer |= u64::from(byte) << (56 - self.available);
            self.available += 8;
        }
    }

    /// `count` (0..=16) bits as an unsigned number.
    #[inline]
    fn read_bits(&mut self, count: u32) -> u32 {
        if count == 0 {
            return 0;
        }
        if self.available < count {
            self.refill();
        }
        let value = (self.buffer >> (64 - count)) as u32;
        self.buffer <<= count;
        self.available -= count;
        value
    }

    /// F.2.2.3 DECODE: the value of the next Huffman code word, or `None` for a bit
    /// pattern that is no code word of the table.
    #[inline]
    fn decode(&mut self, table: &HuffmanTable) -> Option<u8> {
        if self.available < 16 {
            self.refill();
        }
        let entry = table.fast[(self.buffer >> (64 - FAST_BITS)) as usize];
        if entry != 0 {
            let length = u32::from(entry >> 8);
            self.buffer <<= length;
            self.available -= length;
            return Some(entry as u8);
        }
        for length in FAST_BITS + 1..=16 {
            let code = (self.buffer >> (64 - length)) as i32;
            if code <= table.max_code[length as usize] {
                self.buffer <<= length;
                self.available -= length;
                let index = (table.value_offset[length as usize] + code) as usize;
                return table.values.get(index).copied();
            }
        }
        None
    }

    /// F.2.2.1: RECEIVE(s) and EXTEND: an `s`-bit magnitude category value as a signed
    /// difference.
    #[inline]
    fn receive_extend(&mut self, size: u32) -> i32 {
        let value = self.read_bits(size) as i32;
        if size > 0 && value < 1 << (size - 1) {
            value - (1 << size) + 1
        } else {
            value
        }
    }

    fn overrun(&self) -> bool {
        self.padding_bits > u64::from(self.available)
    }

    /// Position of the next marker at or after the read position.
    fn marker_position(&self) -> usize {
        let mut index = self.position;
        while index + 1 < self.data.len() {
            if self.data[index] == 0xFF && self.data[index + 1] != 0x00 {
                return index;
            }
            index += 1;
        }
        self.data.len()
    }

    /// F.2.2.5 / F.1.2.3 restart: discards the rest of the interval's last byte, checks
    /// that RSTm with `m = expected` follows, and continues after it.
    fn consume_restart_marker(&mut self, expected: u8) -> Result<(), CodecError> {
        let mut cursor = ByteCursor::new(self.data, self.marker_position());
        cursor.read_restart_marker(expected)?;
        *self = HuffmanBitReader::new(self.data, cursor.position());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Scan decoding (T.81 F.2)
// ---------------------------------------------------------------------------------------

/// One component of a scan, with everything its blocks need.
struct ScanComponent<'t> {
    /// Index of the component in the frame (its position in each output pixel).
    frame_index: usize,
    quantization: &'t [u16; 64],
    dc_table: &'t HuffmanTable,
    ac_table: &'t HuffmanTable,
    /// Blocks per MCU horizontally and vertically (1 x 1 in a non-interleaved scan).
    mcu_width: usize,
    mcu_height: usize,
    /// DC prediction (F.2.1.3.1), reset to 0 at the start of the scan and of each
    /// restart interval.
    dc_predictor: i32,
}

#[allow(clippy::too_many_arguments)]
fn decode_scan(
    data: &[u8],
    position: usize,
    frame: &FrameHeader,
    scan: &ScanHeader,
    tables: &Tables,
    restart_interval: u16,
    idct: &InverseDct,
    samples: &mut [u16],
) -> Result<usize, CodecError> {
    let missing = |what: &str| CodecError::Invalid(format!("scan uses an undefined {what}"));
    let interleaved = scan.component_indices.len() > 1;
    let mut components = Vec::with_capacity(scan.component_indices.len());
    for (s, &index) in scan.component_indices.iter().enumerate() {
        let spec = &frame.components[index];
        components.push(ScanComponent {
            frame_index: index,
            quantization: tables.quantization[spec.quantization_table]
                .as_ref()
                .ok_or_else(|| missing("quantization table"))?,
            dc_table: tables.dc[scan.dc_tables[s]].as_ref().ok_or_else(|| missing("DC table"))?,
            ac_table: tables.ac[scan.ac_tables[s]].as_ref().ok_or_else(|| missing("AC table"))?,
            mcu_width: if interleaved { usize::from(spec.horizontal_sampling) } else { 1 },
            mcu_height: if interleaved { usize::from(spec.vertical_sampling) } else { 1 },
            dc_predictor: 0,
        });
    }

    // A.2: all components share the sampling factors, so each covers the full image. An
    // interleaved MCU holds H x V blocks of each component; a non-interleaved one, one
    // block. Blocks that lie past the right or bottom edge are decoded, then dropped.
    let width = frame.width as usize;
    let height = frame.height as usize;
    let (mcu_pixel_width, mcu_pixel_height) = match interleaved {
        true => (8 * components[0].mcu_width, 8 * components[0].mcu_height),
        false => (8, 8),
    };
    let mcus_per_line = width.div_ceil(mcu_pixel_width);
    let mcu_lines = height.div_ceil(mcu_pixel_height);
    let frame_components = frame.components.len();
    let level_shift = 1i32 << (frame.precision - 1);
    let max_sample = (1i32 << frame.precision) - 1;

    let mut reader = HuffmanBitReader::new(data, position);
    let mut block = [0i32; 64];
    let mut pixels = [0i32; 64];
    let mut restart_count = 0u8;
    let mut mcus_decoded = 0usize;
    for mcu_y in 0..mcu_lines {
        for mcu_x in 0..mcus_per_line {
            if restart_interval != 0 && mcus_decoded != 0 && mcus_decoded.is_multiple_of(usize::from(restart_interval))
            {
                reader.consume_restart_marker(restart_count)?;
                restart_count = (restart_count + 1) % 8;
                components.iter_mut().for_each(|c| c.dc_predictor = 0);
            }
            for component in components.iter_mut() {
                for block_y in 0..component.mcu_height {
                    for block_x in 0..component.mcu_width {
                        decode_block(&mut reader, component, &mut block)?;
                        idct.transform(&block, &mut pixels);
                        // Write the part of the block inside the image.
                        let x0 = (mcu_x * component.mcu_width + block_x) * 8;
                        let y0 = (mcu_y * component.mcu_height + block_y) * 8;
                        for row in 0..8.min(height.saturating_sub(y0)) {
                            for column in 0..8.min(width.saturating_sub(x0)) {
                                let value = pixels[row * 8 + column].saturating_add(level_shift).clamp(0, max_sample);
                                samples
                                    [((y0 + row) * width + x0 + column) * frame_components + component.frame_index] =
                                    value as u16;
                            }
                        }
                    }
                }
            }
            mcus_decoded += 1;
        }
        if reader.overrun() {
            return Err(CodecError::Truncated(format!(
                "entropy-coded data ends in MCU row {} of {mcu_lines}",
                mcu_y + 1
            )));
        }
    }
    Ok(reader.marker_position())
}

/// F.2.2.1 - F.2.2.2: the Huffman-coded coefficients of one 8x8 block, dequantized
/// (A.3.4) into row-major order.
fn decode_block(
    reader: &mut HuffmanBitReader,
    component: &mut ScanComponent,
    block: &mut [i32; 64],
) -> Result<(), CodecError> {
    let invalid = || CodecError::Invalid("invalid Huffman code".into());
    *block = [0; 64];
    // F.2.2.1: DC difference, magnitude category 0..=15 (16 bits at most for 12-bit).
    let category = reader.decode(component.dc_table).ok_or_else(invalid)?;
    if category > 15 {
        return Err(CodecError::Invalid(format!("DC magnitude category {category}")));
    }
    let difference = reader.receive_extend(u32::from(category));
    component.dc_predictor = component.dc_predictor.wrapping_add(difference);
    block[0] = component.dc_predictor.wrapping_mul(i32::from(component.quantization[0]));

    // F.2.2.2 (Figure F.13): AC coefficients as (run of zeros, category) pairs.
    let mut k = 1;
    while k < 64 {
        let symbol = reader.decode(component.ac_table).ok_or_else(invalid)?;
        let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 0x0F));
        if size == 0 {
            if run == 15 {
                k += 16; // ZRL: sixteen zeros
                continue;
            }
            break; // EOB
        }
        k += run;
        if k > 63 {
            return Err(CodecError::Invalid("AC coefficients past the end of a block".into()));
        }
        let value = reader.receive_extend(size);
        block[ZIGZAG[k]] = value.wrapping_mul(i32::from(component.quantization[k]));
        k += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Inverse DCT (T.81 A.3.3)
// ---------------------------------------------------------------------------------------

/// The 8x8 inverse DCT of T.81 A.3.3,
/// `s(y, x) = 1/4 sum_u sum_v C(u) C(v) S(v, u) cos((2x+1)u pi/16) cos((2y+1)v pi/16)`,
/// computed separably (rows, then columns) in double precision.
struct InverseDct {
    /// `basis[x][u] = C(u)/2 cos((2x + 1) u pi / 16)`, `C(0) = 1/sqrt 2`, else 1.
    basis: [[f64; 8]; 8],
}

impl InverseDct {
    fn new() -> Self {
        let mut basis = [[0.0; 8]; 8];
        for (x, row) in basis.iter_mut().enumerate() {
            for (u, value) in row.iter_mut().enumerate() {
                let scale = if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
                *value = scale / 2.0 * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos();
            }
        }
        InverseDct { basis }
    }

    /// Dequantized coefficients (row-major, `coefficients[v * 8 + u]`) to samples before
    /// the level shift, rounded to the nearest integer (halves away from zero).
    #[allow(clippy::needless_range_loop)] // index loops read best for this kernel
    fn transform(&self, coefficients: &[i32; 64], output: &mut [i32; 64]) {
        let basis = &self.basis;
        // Horizontal pass: row v of coefficients to the 8 values along x.
        let mut rows = [[0.0f64; 8]; 8];
        for v in 0..8 {
            let input = &coefficients[v * 8..v * 8 + 8];
            if input[1..] == [0; 7] {
                // Only the DC term: a constant row.
                rows[v] = [f64::from(input[0]) * basis[0][0]; 8];
                continue;
            }
            for x in 0..8 {
                let mut sum = 0.0;
                for u in 0..8 {
                    sum += f64::from(input[u]) * basis[x][u];
                }
                rows[v][x] = sum;
            }
        }
        // Vertical pass: column x of the rows to the 8 samples along y.
        for x in 0..8 {
            for y in 0..8 {
                let mut sum = 0.0;
                for v in 0..8 {
                    sum += rows[v][x] * basis[y][v];
                }
                output[y * 8 + x] = sum.round() as i32;
            }
        }
    }
}
