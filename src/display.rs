//! From values to display pixels: VOI windows and LUTs, presets, MONOCHROME1 inversion.

use serde::{Deserialize, Serialize};

use crate::image::{MedicalImage, VoiLut, Window};

/// Named window presets a radiologist expects (centre / width in HU for CT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowPreset {
    FromHeader,
    FullRange,
    CtLung,
    CtMediastinum,
    CtBone,
    CtBrain,
    CtAbdomen,
}

impl WindowPreset {
    pub const ALL: [WindowPreset; 7] = [
        WindowPreset::FromHeader,
        WindowPreset::FullRange,
        WindowPreset::CtLung,
        WindowPreset::CtMediastinum,
        WindowPreset::CtBone,
        WindowPreset::CtBrain,
        WindowPreset::CtAbdomen,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WindowPreset::FromHeader => "From header",
            WindowPreset::FullRange => "Full range",
            WindowPreset::CtLung => "CT lung (-600/1500)",
            WindowPreset::CtMediastinum => "CT mediastinum (50/350)",
            WindowPreset::CtBone => "CT bone (400/1800)",
            WindowPreset::CtBrain => "CT brain (40/80)",
            WindowPreset::CtAbdomen => "CT abdomen (40/400)",
        }
    }

    /// The fixed window of a CT preset; `None` for the data-dependent ones.
    pub fn fixed_window(self) -> Option<Window> {
        let (center, width) = match self {
            WindowPreset::CtLung => (-600.0, 1500.0),
            WindowPreset::CtMediastinum => (50.0, 350.0),
            WindowPreset::CtBone => (400.0, 1800.0),
            WindowPreset::CtBrain => (40.0, 80.0),
            WindowPreset::CtAbdomen => (40.0, 400.0),
            WindowPreset::FromHeader | WindowPreset::FullRange => return None,
        };
        Some(Window { center, width })
    }
}

/// How values become grey levels.
#[derive(Debug, Clone, PartialEq)]
pub enum Voi {
    /// DICOM linear window (PS3.3 C.11.2.1.2.1).
    Window(Window),
    /// A VOI LUT from the header.
    Lut(VoiLut),
}

/// The initial VOI: the header's first window, else its first VOI LUT, else the frame range.
pub fn default_voi(image: &MedicalImage, frame: usize) -> Voi {
    if let Some(w) = image.meta.windows.first() {
        return Voi::Window(*w);
    }
    if let Some(lut) = image.meta.voi_luts.first() {
        return Voi::Lut(lut.clone());
    }
    Voi::Window(full_range_window(image, frame))
}

/// A window spanning the frame's values.
pub fn full_range_window(image: &MedicalImage, frame: usize) -> Window {
    let (lo, hi) = image.frame_range(frame.min(image.frames.saturating_sub(1)));
    if !lo.is_finite() || !hi.is_finite() {
        return Window { center: 0.5, width: 1.0 };
    }
    Window {
        center: (f64::from(lo) + f64::from(hi) + 1.0) / 2.0,
        width: (f64::from(hi) - f64::from(lo) + 1.0).max(1.0),
    }
}

/// The VOI for a preset on this image.
pub fn preset_voi(image: &MedicalImage, frame: usize, preset: WindowPreset) -> Voi {
    match preset {
        WindowPreset::FromHeader => default_voi(image, frame),
        WindowPreset::FullRange => Voi::Window(full_range_window(image, frame)),
        p => Voi::Window(p.fixed_window().expect("CT presets are fixed")),
    }
}

impl Voi {
    /// Maps one value to 0..=1.
    pub fn apply(&self, x: f64) -> f64 {
        match self {
            Voi::Window(w) => {
                let width = w.width.max(1.0);
                let c = w.center - 0.5;
                let half = (width - 1.0) / 2.0;
                if x <= c - half {
                    0.0
                } else if x > c + half || width <= 1.0 {
                    1.0
                } else {
                    ((x - c) / (width - 1.0) + 0.5).clamp(0.0, 1.0)
                }
            }
            Voi::Lut(lut) => {
                let n = lut.data.len();
                if n == 0 {
                    return 0.0;
                }
                let index = (x - lut.first_mapped).clamp(0.0, (n - 1) as f64) as usize;
                let max = ((1u32 << lut.bits.clamp(1, 16)) - 1) as f64;
                (f64::from(lut.data[index]) / max).clamp(0.0, 1.0)
            }
        }
    }

    /// The equivalent window (for dragging and display); LUTs report their value span.
    pub fn as_window(&self) -> Window {
        match self {
            Voi::Window(w) => *w,
            Voi::Lut(lut) => {
                Window { center: lut.first_mapped + lut.data.len() as f64 / 2.0, width: lut.data.len() as f64 }
            }
        }
    }
}

/// Renders one frame to RGBA8. Grey images go through the VOI (inverted for MONOCHROME1);
/// colour images are shown as stored, scaled to 8 bits.
pub fn render_rgba(image: &MedicalImage, frame: usize, voi: &Voi) -> Vec<u8> {
    let frame = frame.min(image.frames.saturating_sub(1));
    let values = image.frame(frame);
    let mut out = Vec::with_capacity(image.rows * image.cols * 4);
    if image.is_color() {
        let max = values.iter().fold(0.0f32, |m, &v| m.max(v));
        let scale = if max > 255.0 { 255.0 / max } else { 1.0 };
        for px in values.chunks_exact(3) {
            out.extend(px.iter().map(|&v| (v * scale).round().clamp(0.0, 255.0) as u8));
            out.push(255);
        }
    } else {
        let invert = image.meta.is_monochrome1();
        for &v in values {
            let mut g = voi.apply(f64::from(v));
            if invert {
                g = 1.0 - g;
            }
            let g = (g * 255.0).round() as u8;
            out.extend([g, g, g, 255]);
        }
    }
    out
}

/// The four edge labels (left, right, top, bottom) from Image Orientation (Patient):
/// e.g. a standard axial image gives R, L, A, P.
pub fn orientation_labels(orientation: &[f64; 6]) -> [String; 4] {
    let axis = |v: [f64; 3]| -> String {
        let mut parts: Vec<(f64, char)> = vec![
            (v[0], if v[0] < 0.0 { 'R' } else { 'L' }),
            (v[1], if v[1] < 0.0 { 'A' } else { 'P' }),
            (v[2], if v[2] < 0.0 { 'F' } else { 'H' }),
        ];
        parts.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
        parts.iter().filter(|(c, _)| c.abs() > 0.25).map(|(_, l)| *l).collect()
    };
    let row = [orientation[0], orientation[1], orientation[2]];
    let col = [orientation[3], orientation[4], orientation[5]];
    let neg = |v: [f64; 3]| [-v[0], -v[1], -v[2]];
    [axis(neg(row)), axis(row), axis(neg(col)), axis(col)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_window_matches_dicom_formula() {
        // PS3.3 C.11.2.1.2.1 with c = 40, w = 400: x <= -160 -> 0; x > 239 -> 1.
        let voi = Voi::Window(Window { center: 40.0, width: 400.0 });
        assert_eq!(voi.apply(-160.0), 0.0);
        assert_eq!(voi.apply(240.0), 1.0);
        let mid = voi.apply(39.5);
        assert!((mid - 0.5).abs() < 1e-9, "{mid}");
    }

    #[test]
    fn axial_orientation_labels() {
        let labels = orientation_labels(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        assert_eq!(labels, ["R".to_string(), "L".into(), "A".into(), "P".into()]);
    }
}
