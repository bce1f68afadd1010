//! Training-time augmentation of prepared (normalised, square, channel-first) images.
//!
//! Flips are exact pixel permutations. The affine augmentation (small rotation, scale and
//! shift) is for modalities where the same anatomy is seen under slightly different probe or
//! patient positions (ultrasound, X-ray): each output pixel is mapped back through the inverse
//! transform and sampled bilinearly, with coordinates outside the image clamped to its border
//! (a replicated edge looks like the image's own background; a constant would add a frame the
//! test images never have).

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Training-time augmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Augment {
    None,
    /// Horizontal flip with probability ½ (MeLo's only augmentation).
    Hflip,
    /// Horizontal and vertical flips, each with probability ½ (microscopy, fundus: no
    /// preferred orientation).
    Flips,
    /// Horizontal flip with probability ½, then a random rotation (±10°), scale (0.9–1.1) and
    /// shift (±6 % of the side) (ultrasound, X-ray: small changes of probe or patient pose).
    Affine,
}

/// Largest rotation of [`Augment::Affine`], in degrees.
const MAX_ROTATION_DEG: f64 = 10.0;
/// Scale range of [`Augment::Affine`] (1 ± this).
const MAX_SCALE_CHANGE: f64 = 0.1;
/// Largest shift of [`Augment::Affine`], as a fraction of the side.
const MAX_SHIFT: f64 = 0.06;

impl Augment {
    /// How many flip variants (plain, h, v, both) the augmentation draws from: what a linear
    /// probe or head phase precomputes frozen features for. The affine part of
    /// [`Augment::Affine`] is not precomputed (it is continuous), only its flip.
    pub fn flip_variants(self) -> usize {
        match self {
            Augment::None => 1,
            Augment::Hflip | Augment::Affine => 2,
            Augment::Flips => 4,
        }
    }

    /// One random transform for one training image.
    pub fn sample(self, rng: &mut impl Rng) -> Transform {
        let hflip = !matches!(self, Augment::None) && rng.random_bool(0.5);
        let vflip = matches!(self, Augment::Flips) && rng.random_bool(0.5);
        let affine = matches!(self, Augment::Affine).then(|| Affine {
            rotation_deg: rng.random_range(-MAX_ROTATION_DEG..=MAX_ROTATION_DEG),
            scale: rng.random_range(1.0 - MAX_SCALE_CHANGE..=1.0 + MAX_SCALE_CHANGE),
            shift: (rng.random_range(-MAX_SHIFT..=MAX_SHIFT), rng.random_range(-MAX_SHIFT..=MAX_SHIFT)),
        });
        Transform { hflip, vflip, affine }
    }
}

/// A rotation about the image centre, a zoom (> 1 enlarges the content) and a shift (fractions
/// of the side, + = content moves right / down), applied after the flips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub rotation_deg: f64,
    pub scale: f64,
    pub shift: (f64, f64),
}

/// What is done to one image.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Transform {
    pub hflip: bool,
    pub vflip: bool,
    pub affine: Option<Affine>,
}

impl Transform {
    pub fn flips(hflip: bool, vflip: bool) -> Self {
        Self { hflip, vflip, affine: None }
    }

    /// Appends `src` ([channels, size, size]) transformed to `out`.
    pub fn apply(&self, src: &[f32], size: usize, out: &mut Vec<f32>) {
        let plane = size * size;
        if plane == 0 {
            return;
        }
        debug_assert_eq!(src.len() % plane, 0);
        let Some(affine) = self.affine else {
            self.apply_flips(src, size, out);
            return;
        };
        // Inverse map: output (x, y) -> source coordinates, about the centre c. The flips act
        // on the source side, so the affine part sees the flipped image.
        let c = (size as f64 - 1.0) / 2.0;
        let (sin, cos) = affine.rotation_deg.to_radians().sin_cos();
        let inv = 1.0 / affine.scale;
        let (dx, dy) = (affine.shift.0 * size as f64, affine.shift.1 * size as f64);
        let last = (size - 1) as f64;
        let mut taps = Vec::with_capacity(plane);
        for y in 0..size {
            for x in 0..size {
                let (u, v) = (x as f64 - c - dx, y as f64 - c - dy);
                // Rotating the content by +θ means sampling the source at −θ.
                let sx = (inv * (cos * u + sin * v) + c).clamp(0.0, last);
                let sy = (inv * (-sin * u + cos * v) + c).clamp(0.0, last);
                let sx = if self.hflip { last - sx } else { sx };
                let sy = if self.vflip { last - sy } else { sy };
                let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
                let (x1, y1) = ((x0 + 1).min(size - 1), (y0 + 1).min(size - 1));
                let (fx, fy) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
                taps.push(Tap { corners: [y0 * size + x0, y0 * size + x1, y1 * size + x0, y1 * size + x1], fx, fy });
            }
        }
        for channel in src.chunks_exact(plane) {
            out.extend(taps.iter().map(|t| {
                let [a, b, c, d] = t.corners.map(|i| channel[i]);
                let top = a + (b - a) * t.fx;
                let bottom = c + (d - c) * t.fx;
                top + (bottom - top) * t.fy
            }));
        }
    }

    fn apply_flips(&self, src: &[f32], size: usize, out: &mut Vec<f32>) {
        if !self.hflip && !self.vflip {
            out.extend_from_slice(src);
            return;
        }
        for channel in src.chunks_exact(size * size) {
            for y in 0..size {
                let sy = if self.vflip { size - 1 - y } else { y };
                let row = &channel[sy * size..sy * size + size];
                if self.hflip {
                    out.extend(row.iter().rev());
                } else {
                    out.extend_from_slice(row);
                }
            }
        }
    }
}

/// Where one output pixel samples its source: the four neighbours (top-left, top-right,
/// bottom-left, bottom-right) and the bilinear weights along x and y. Shared by all channels.
struct Tap {
    corners: [usize; 4],
    fx: f32,
    fy: f32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn image(channels: usize, size: usize) -> Vec<f32> {
        (0..channels * size * size).map(|i| ((i * 7919) % 251) as f32 / 25.0 - 5.0).collect()
    }

    /// The affine part alone, no flips.
    fn affine_only(rotation_deg: f64, scale: f64, shift: (f64, f64)) -> Transform {
        Transform { affine: Some(Affine { rotation_deg, scale, shift }), ..Default::default() }
    }

    fn apply(t: Transform, src: &[f32], size: usize) -> Vec<f32> {
        let mut out = Vec::new();
        t.apply(src, size, &mut out);
        out
    }

    #[test]
    fn identity_affine_is_exact() {
        let src = image(3, 9);
        let t = affine_only(0.0, 1.0, (0.0, 0.0));
        assert_eq!(apply(t, &src, 9), src);
    }

    #[test]
    fn affine_path_flips_like_the_flip_path() {
        let src = image(3, 8);
        let id = Some(Affine { rotation_deg: 0.0, scale: 1.0, shift: (0.0, 0.0) });
        for (h, v) in [(true, false), (false, true), (true, true)] {
            let plain = apply(Transform::flips(h, v), &src, 8);
            let through_affine = apply(Transform { hflip: h, vflip: v, affine: id }, &src, 8);
            assert_eq!(plain, through_affine, "flips ({h}, {v})");
        }
    }

    #[test]
    fn quarter_turn_moves_pixels_where_a_rotation_should() {
        // Content rotated by +90° in image coordinates (y down): the pixel at (x, y) of the
        // output is the source pixel at (y, s-1-x).
        let s = 7;
        let src = image(1, s);
        let out = apply(affine_only(90.0, 1.0, (0.0, 0.0)), &src, s);
        for y in 0..s {
            for x in 0..s {
                let expected = src[(s - 1 - x) * s + y];
                assert!((out[y * s + x] - expected).abs() < 1e-4, "({x}, {y}): {} vs {expected}", out[y * s + x]);
            }
        }
    }

    #[test]
    fn shift_moves_content_and_replicates_the_edge() {
        let s = 10;
        let src = image(1, s);
        // +0.2 of 10 px = content moves 2 px right.
        let out = apply(affine_only(0.0, 1.0, (0.2, 0.0)), &src, s);
        for y in 0..s {
            for x in 0..s {
                let sx = x.saturating_sub(2);
                assert!((out[y * s + x] - src[y * s + sx]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn zoom_keeps_the_centre_and_interpolates() {
        let s = 5;
        // A horizontal ramp: bilinear sampling of a linear function is exact.
        let src: Vec<f32> = (0..s * s).map(|i| (i % s) as f32).collect();
        let out = apply(affine_only(0.0, 2.0, (0.0, 0.0)), &src, s);
        let row: Vec<f32> = out[2 * s..3 * s].to_vec();
        assert_eq!(row, vec![1.0, 1.5, 2.0, 2.5, 3.0]);
    }

    #[test]
    fn sampled_transforms_stay_in_range_and_depend_only_on_the_seed() {
        let draw = |seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..200).map(|_| Augment::Affine.sample(&mut rng)).collect::<Vec<_>>()
        };
        let a = draw(3);
        assert_eq!(a, draw(3));
        assert!(a.iter().any(|t| t.hflip) && a.iter().any(|t| !t.hflip));
        for t in &a {
            let f = t.affine.expect("affine drawn");
            assert!(f.rotation_deg.abs() <= MAX_ROTATION_DEG);
            assert!((f.scale - 1.0).abs() <= MAX_SCALE_CHANGE + 1e-12);
            assert!(f.shift.0.abs() <= MAX_SHIFT && f.shift.1.abs() <= MAX_SHIFT);
            assert!(!t.vflip);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        assert_eq!(Augment::None.sample(&mut rng), Transform::default());
    }
}
