//! Text burned into RGB pixels with the public-domain 8×8 bitmap font of the `font8x8` crate:
//! compiled in, so no system font is needed and the result looks the same on every machine.

use font8x8::UnicodeFonts;

/// Glyph cell side in pixels at scale 1.
pub const CELL: usize = 8;

/// Pixel width of `text` at `scale`.
pub fn text_width(text: &str, scale: usize) -> usize {
    text.chars().count() * CELL * scale
}

/// Draws `text` into an RGB8 buffer of `width` × `height` with its top-left corner at (x, y),
/// each font pixel a `scale` × `scale` block of `color`; what falls outside is clipped.
/// Characters the font lacks are drawn as '?'.
pub fn draw_text(
    rgb: &mut [u8],
    width: usize,
    height: usize,
    (x, y): (usize, usize),
    text: &str,
    scale: usize,
    color: [u8; 3],
) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let x0 = x + i * CELL * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..CELL {
                // font8x8 stores the leftmost pixel in the lowest bit.
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (x0 + col * scale + dx, y + row * scale + dy);
                        if px < width && py < height {
                            let at = (py * width + px) * 3;
                            rgb[at..at + 3].copy_from_slice(&color);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_inside_the_buffer_only() {
        let (w, h) = (20, 10);
        let mut rgb = vec![0u8; w * h * 3];
        draw_text(&mut rgb, w, h, (14, 4), "AB", 1, [255, 255, 255]);
        assert!(rgb.contains(&255), "something drawn");
        // Nothing left of x = 14 in any row.
        for y in 0..h {
            assert!(rgb[y * w * 3..(y * w + 14) * 3].iter().all(|&v| v == 0));
        }
        assert_eq!(text_width("AB", 2), 32);
    }
}
