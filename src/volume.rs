//! Multiplanar reformatting (MPR): whether a series of slices forms a regular volume, and the
//! volume's three planes.
//!
//! A series forms a volume when every slice is a single-frame grey image with the same Image
//! Orientation (Patient), rows, columns and Pixel Spacing, and the slices, ordered by their
//! position along the normal (row direction × column direction), are evenly spaced with no
//! duplicate positions and no in-plane shift between them. Otherwise [`NotAVolume`] says why,
//! in words the viewer shows as they are.
//!
//! The planes (nearest neighbour, no interpolation anywhere):
//! * [`PlaneKind::Acquired`]: slice `k` as stored (rows × columns);
//! * [`PlaneKind::Reformat1`]: row `r` of every slice (slices × columns), the plane spanned by
//!   the row direction and the normal;
//! * [`PlaneKind::Reformat2`]: column `c` of every slice (slices × rows), the plane spanned by
//!   the column direction and the normal.
//!
//! In the reformats one display row is one slice. Which end of the normal is at the top
//! follows the radiological habit: the head end when the normal is mostly head–foot, else the
//! anterior end when it is mostly front–back, else the patient's right
//! ([`Volume::last_slice_on_top`]).

use crate::image::MedicalImage;

/// Largest difference between two slices' direction cosines that still counts as the same
/// orientation: DS values carry about six significant digits, so equal orientations written
/// by one scanner agree far better than this, and 1e-4 is under 0.006°.
pub const ORIENTATION_TOLERANCE: f64 = 1e-4;
/// Largest difference between two slices' Pixel Spacing that still counts as equal, in mm.
pub const PIXEL_SPACING_TOLERANCE_MM: f64 = 1e-4;
/// A gap between neighbouring slices is regular when it differs from the median gap by at
/// most this fraction of the median gap, or by [`GAP_TOLERANCE_MM`], whichever is larger.
pub const GAP_TOLERANCE_FRACTION: f64 = 0.02;
/// Absolute floor of the gap tolerance. Image Position (Patient) is a DS string and scanners
/// often round it to 0.1 mm (the shipped MR series does: its gaps along the normal vary from
/// 6.958 to 7.071 mm for a 7.0 mm step), so a tighter floor would refuse real, regular series.
/// A missing slice doubles a gap, far outside it.
pub const GAP_TOLERANCE_MM: f64 = 0.1;
/// Two slices closer than this along the normal are at the same position, in mm.
pub const DUPLICATE_MM: f64 = 0.01;
/// Slices may be shifted in their own plane relative to the first by at most this fraction of
/// a pixel (a tilted gantry shifts them by millimetres; rounding by hundredths).
pub const SHIFT_TOLERANCE_PIXELS: f64 = 0.5;
/// An orientation is axis-aligned when the row, column and normal directions each lie within
/// this angle of a patient axis; the planes are then named axial, coronal and sagittal.
pub const AXIS_ALIGNED_DEGREES: f64 = 1.0;

/// Why a series cannot be viewed as a volume. Slice numbers are 1-based: in series order for
/// per-slice checks, in order along the normal for spacing checks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotAVolume {
    #[error("a volume needs at least 2 slices; this series has {0}")]
    TooFewSlices(usize),
    #[error("slice {slice} is a multi-frame image ({frames} frames); MPR needs one single-frame image per slice")]
    MultiFrame { slice: usize, frames: usize },
    #[error("slice {0} is a colour image; MPR needs grey slices")]
    Colour(usize),
    #[error("slice {0}'s pixel data does not match its size")]
    BadPixels(usize),
    #[error("slice {slice} has no {attribute}")]
    Missing { slice: usize, attribute: &'static str },
    #[error("slice {0}'s Image Orientation (Patient) is not two perpendicular unit vectors")]
    InvalidOrientation(usize),
    #[error("orientations differ: slice {slice} is not oriented as slice 1")]
    OrientationsDiffer { slice: usize },
    #[error("sizes differ: slice {slice} is {cols} × {rows}, slice 1 {first_cols} × {first_rows}")]
    SizesDiffer { slice: usize, rows: usize, cols: usize, first_rows: usize, first_cols: usize },
    #[error("pixel spacings differ: slice {slice} has {spacing:?} mm, slice 1 {first:?} mm")]
    SpacingsDiffer { slice: usize, spacing: [f64; 2], first: [f64; 2] },
    #[error("slices {first} and {second} are at the same position ({position:.2} mm along the normal)")]
    Duplicate { first: usize, second: usize, position: f64 },
    #[error("slice {slice} is {gap:.2} mm from slice {previous}, the others {typical:.2} mm")]
    Irregular { slice: usize, previous: usize, gap: f64, typical: f64 },
    #[error("slice {slice} is shifted {shift:.2} mm within the image plane from slice 1 (a tilted gantry?); MPR needs slices stacked along the normal")]
    Shifted { slice: usize, shift: f64 },
}

/// One of a volume's three planes (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlaneKind {
    /// The acquired slices; the index is the slice.
    Acquired,
    /// One row of every slice; the index is the row.
    Reformat1,
    /// One column of every slice; the index is the column.
    Reformat2,
}

impl PlaneKind {
    pub const ALL: [PlaneKind; 3] = [PlaneKind::Acquired, PlaneKind::Reformat1, PlaneKind::Reformat2];
}

/// Where the three planes cross: a voxel, by slice (in order along the normal), row and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    pub slice: usize,
    pub row: usize,
    pub col: usize,
}

/// The geometry of a series that forms a volume, without its pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Geometry {
    pub rows: usize,
    pub cols: usize,
    /// Input indices of the slices, in order along the normal.
    pub order: Vec<usize>,
    /// Row spacing (between rows, down a column) and column spacing, mm (Pixel Spacing).
    pub pixel_spacing: [f64; 2],
    /// Mean distance between neighbouring slices along the normal, mm.
    pub slice_spacing: f64,
    /// Direction of increasing column index (along a row), patient LPS.
    pub row_dir: [f64; 3],
    /// Direction of increasing row index (down a column).
    pub col_dir: [f64; 3],
    /// row_dir × col_dir: the direction of increasing slice index.
    pub normal: [f64; 3],
}

/// A regular volume of grey values after the modality LUT.
#[derive(Debug, Clone)]
pub struct Volume {
    pub geometry: Geometry,
    /// Slice-major, then row-major: value (k, r, c) at `(k * rows + r) * cols + c`.
    pub values: Vec<f32>,
}

/// One plane of a volume, ready to display: `height` rows of `width` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    pub kind: PlaneKind,
    pub index: usize,
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
    /// Millimetres per display pixel: [down (between rows), across (between columns)], so the
    /// plane is drawn `width × across` by `height × down` mm.
    pub pixel_mm: [f64; 2],
    /// Patient directions of increasing x (across) and y (down), as Image Orientation
    /// (Patient) would give them, for the edge labels.
    pub orientation: [f64; 6],
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn neg(a: [f64; 3]) -> [f64; 3] {
    [-a[0], -a[1], -a[2]]
}

/// Index (0 x, 1 y, 2 z) of the largest component.
fn dominant_axis(v: [f64; 3]) -> usize {
    (0..3).max_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs())).unwrap_or(2)
}

/// Checks that `images` (one per slice, any order) form a volume; returns its geometry with
/// the slices ordered along the normal.
pub fn check(images: &[MedicalImage]) -> Result<Geometry, NotAVolume> {
    if images.len() < 2 {
        return Err(NotAVolume::TooFewSlices(images.len()));
    }
    let first = &images[0];
    let mut first_orientation = None;
    let mut first_spacing = None;
    let mut positions = Vec::with_capacity(images.len());
    for (i, image) in images.iter().enumerate() {
        let slice = i + 1;
        if image.frames != 1 {
            return Err(NotAVolume::MultiFrame { slice, frames: image.frames });
        }
        if image.channels != 1 {
            return Err(NotAVolume::Colour(slice));
        }
        if image.rows == 0 || image.cols == 0 || image.values.len() != image.rows * image.cols {
            return Err(NotAVolume::BadPixels(slice));
        }
        if (image.rows, image.cols) != (first.rows, first.cols) {
            return Err(NotAVolume::SizesDiffer {
                slice,
                rows: image.rows,
                cols: image.cols,
                first_rows: first.rows,
                first_cols: first.cols,
            });
        }
        let missing = |attribute| NotAVolume::Missing { slice, attribute };
        let o = image.meta.image_orientation.ok_or(missing("Image Orientation (Patient)"))?;
        let p = image.meta.image_position.ok_or(missing("Image Position (Patient)"))?;
        let s = image
            .meta
            .pixel_spacing
            .filter(|s| s.iter().all(|v| v.is_finite() && *v > 0.0))
            .ok_or(missing("Pixel Spacing"))?;
        let (row, col) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
        let unit = |v: [f64; 3]| (dot(v, v).sqrt() - 1.0).abs() < 1e-3;
        if !o.iter().chain(&p).all(|v| v.is_finite()) || !unit(row) || !unit(col) || dot(row, col).abs() > 1e-3 {
            return Err(NotAVolume::InvalidOrientation(slice));
        }
        match first_orientation {
            None => first_orientation = Some(o),
            Some(f) => {
                if o.iter().zip(&f).any(|(a, b)| (a - b).abs() > ORIENTATION_TOLERANCE) {
                    return Err(NotAVolume::OrientationsDiffer { slice });
                }
            }
        }
        match first_spacing {
            None => first_spacing = Some(s),
            Some(f) => {
                if s.iter().zip(&f).any(|(a, b)| (a - b).abs() > PIXEL_SPACING_TOLERANCE_MM) {
                    return Err(NotAVolume::SpacingsDiffer { slice, spacing: s, first: f });
                }
            }
        }
        positions.push(p);
    }
    let (Some(o), Some(pixel_spacing)) = (first_orientation, first_spacing) else {
        return Err(NotAVolume::TooFewSlices(images.len()));
    };
    // Re-normalised: the DS cosines are rounded, and the normal scales every distance.
    let unit = |v: [f64; 3]| {
        let n = dot(v, v).sqrt();
        [v[0] / n, v[1] / n, v[2] / n]
    };
    let (row_dir, col_dir) = (unit([o[0], o[1], o[2]]), unit([o[3], o[4], o[5]]));
    let normal = unit(cross(row_dir, col_dir));

    let mut order: Vec<usize> = (0..images.len()).collect();
    let along = |i: usize| dot(positions[i], normal);
    order.sort_by(|&a, &b| along(a).total_cmp(&along(b)).then(a.cmp(&b)));
    let distances: Vec<f64> = order.iter().map(|&i| along(i)).collect();
    let gaps: Vec<f64> = distances.windows(2).map(|w| w[1] - w[0]).collect();
    if let Some(k) = gaps.iter().position(|&g| g < DUPLICATE_MM) {
        return Err(NotAVolume::Duplicate { first: k + 1, second: k + 2, position: distances[k] });
    }
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let tolerance = (median * GAP_TOLERANCE_FRACTION).max(GAP_TOLERANCE_MM);
    let worst = gaps.iter().enumerate().max_by(|a, b| (a.1 - median).abs().total_cmp(&(b.1 - median).abs()));
    if let Some((k, &gap)) = worst.filter(|(_, g)| (*g - median).abs() > tolerance) {
        return Err(NotAVolume::Irregular { slice: k + 2, previous: k + 1, gap, typical: median });
    }
    let origin = positions[order[0]];
    for (n, &i) in order.iter().enumerate() {
        let d = [positions[i][0] - origin[0], positions[i][1] - origin[1], positions[i][2] - origin[2]];
        let (across, down) = (dot(d, row_dir), dot(d, col_dir));
        if across.abs() > SHIFT_TOLERANCE_PIXELS * pixel_spacing[1]
            || down.abs() > SHIFT_TOLERANCE_PIXELS * pixel_spacing[0]
        {
            return Err(NotAVolume::Shifted { slice: n + 1, shift: across.hypot(down) });
        }
    }
    let slice_spacing = (distances[distances.len() - 1] - distances[0]) / (distances.len() - 1) as f64;
    Ok(Geometry { rows: first.rows, cols: first.cols, order, pixel_spacing, slice_spacing, row_dir, col_dir, normal })
}

impl Geometry {
    pub fn slices(&self) -> usize {
        self.order.len()
    }

    /// How many planes of a kind there are (slices, rows or columns).
    pub fn count(&self, kind: PlaneKind) -> usize {
        match kind {
            PlaneKind::Acquired => self.slices(),
            PlaneKind::Reformat1 => self.rows,
            PlaneKind::Reformat2 => self.cols,
        }
    }

    /// The direction perpendicular to a plane.
    fn plane_normal(&self, kind: PlaneKind) -> [f64; 3] {
        match kind {
            PlaneKind::Acquired => self.normal,
            PlaneKind::Reformat1 => self.col_dir,
            PlaneKind::Reformat2 => self.row_dir,
        }
    }

    /// Largest angle, in degrees, between the row, column or normal direction and the nearest
    /// patient axis.
    pub fn obliquity_degrees(&self) -> f64 {
        [self.row_dir, self.col_dir, self.normal]
            .iter()
            .map(|v| v[dominant_axis(*v)].abs().clamp(0.0, 1.0).acos().to_degrees())
            .fold(0.0, f64::max)
    }

    pub fn is_axis_aligned(&self) -> bool {
        self.obliquity_degrees() <= AXIS_ALIGNED_DEGREES
    }

    /// The patient plane a plane is closest to: "axial", "coronal" or "sagittal".
    pub fn nearest_patient_plane(&self, kind: PlaneKind) -> &'static str {
        match dominant_axis(self.plane_normal(kind)) {
            0 => "sagittal",
            1 => "coronal",
            _ => "axial",
        }
    }

    /// "Axial", "Coronal", "Sagittal" for an axis-aligned volume; "Acquired", "Reformat 1",
    /// "Reformat 2" for an oblique one (naming those by patient axes would mislead).
    pub fn plane_name(&self, kind: PlaneKind) -> String {
        if self.is_axis_aligned() {
            let name = self.nearest_patient_plane(kind);
            let mut chars = name.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        } else {
            match kind {
                PlaneKind::Acquired => "Acquired",
                PlaneKind::Reformat1 => "Reformat 1",
                PlaneKind::Reformat2 => "Reformat 2",
            }
            .to_string()
        }
    }

    /// Whether the reformats show the last slice (furthest along the normal) in their top row:
    /// the head end on top when the normal is mostly head–foot, else the anterior end, else the
    /// patient's right (LPS: +z is head, −y anterior, −x right).
    pub fn last_slice_on_top(&self) -> bool {
        let axis = dominant_axis(self.normal);
        let towards_top = if axis == 2 { self.normal[2] } else { -self.normal[axis] };
        towards_top > 0.0
    }

    /// The display row of the reformats that shows slice `k`, and back (the map is its own
    /// inverse).
    pub fn display_row(&self, k: usize) -> usize {
        if self.last_slice_on_top() {
            self.slices() - 1 - k.min(self.slices() - 1)
        } else {
            k.min(self.slices() - 1)
        }
    }

    /// Which plane of a kind passes through the cursor.
    pub fn plane_index(&self, kind: PlaneKind, cursor: Cursor) -> usize {
        match kind {
            PlaneKind::Acquired => cursor.slice,
            PlaneKind::Reformat1 => cursor.row,
            PlaneKind::Reformat2 => cursor.col,
        }
    }

    /// Where the cursor is in a plane of a kind: (x, y) in display pixels.
    pub fn cursor_in_plane(&self, kind: PlaneKind, cursor: Cursor) -> (usize, usize) {
        match kind {
            PlaneKind::Acquired => (cursor.col, cursor.row),
            PlaneKind::Reformat1 => (cursor.col, self.display_row(cursor.slice)),
            PlaneKind::Reformat2 => (cursor.row, self.display_row(cursor.slice)),
        }
    }

    /// The cursor after a click at display pixel (x, y) of the plane of `kind` through
    /// `cursor`: the plane's own index stays, the other two follow the click (clamped).
    pub fn click(&self, kind: PlaneKind, cursor: Cursor, x: usize, y: usize) -> Cursor {
        let (last_slice, last_row, last_col) = (self.slices() - 1, self.rows - 1, self.cols - 1);
        match kind {
            PlaneKind::Acquired => Cursor { row: y.min(last_row), col: x.min(last_col), ..cursor },
            PlaneKind::Reformat1 => {
                Cursor { col: x.min(last_col), slice: self.display_row(y.min(last_slice)), ..cursor }
            }
            PlaneKind::Reformat2 => {
                Cursor { row: x.min(last_row), slice: self.display_row(y.min(last_slice)), ..cursor }
            }
        }
    }

    /// Millimetres per display pixel of a plane: [down, across].
    pub fn plane_pixel_mm(&self, kind: PlaneKind) -> [f64; 2] {
        let [row_mm, col_mm] = self.pixel_spacing;
        match kind {
            PlaneKind::Acquired => [row_mm, col_mm],
            PlaneKind::Reformat1 => [self.slice_spacing, col_mm],
            PlaneKind::Reformat2 => [self.slice_spacing, row_mm],
        }
    }

    /// Patient directions of a plane's increasing x (across) and y (down), in the layout of
    /// Image Orientation (Patient), for its edge labels.
    pub fn plane_orientation(&self, kind: PlaneKind) -> [f64; 6] {
        let down = if self.last_slice_on_top() { neg(self.normal) } else { self.normal };
        let (across, down) = match kind {
            PlaneKind::Acquired => (self.row_dir, self.col_dir),
            PlaneKind::Reformat1 => (self.row_dir, down),
            PlaneKind::Reformat2 => (self.col_dir, down),
        };
        [across[0], across[1], across[2], down[0], down[1], down[2]]
    }

    /// The cursor at the centre of the volume.
    pub fn centre(&self) -> Cursor {
        Cursor { slice: self.slices() / 2, row: self.rows / 2, col: self.cols / 2 }
    }
}

impl Volume {
    /// Builds the volume from one decoded image per slice (values already through the
    /// modality LUT), or says why the images do not form one.
    pub fn build(images: &[MedicalImage]) -> Result<Volume, NotAVolume> {
        let geometry = check(images)?;
        let mut values = Vec::with_capacity(geometry.slices() * geometry.rows * geometry.cols);
        for &i in &geometry.order {
            values.extend_from_slice(&images[i].values);
        }
        Ok(Volume { geometry, values })
    }

    /// The value at (slice, row, column).
    pub fn at(&self, k: usize, r: usize, c: usize) -> f32 {
        let g = &self.geometry;
        self.values[(k * g.rows + r) * g.cols + c]
    }

    /// Plane `index` of a kind (see the module documentation); `None` past the end.
    pub fn plane(&self, kind: PlaneKind, index: usize) -> Option<Plane> {
        let g = &self.geometry;
        if index >= g.count(kind) {
            return None;
        }
        let slices = g.slices();
        let (width, height, values) = match kind {
            PlaneKind::Acquired => {
                let n = g.rows * g.cols;
                (g.cols, g.rows, self.values[index * n..(index + 1) * n].to_vec())
            }
            PlaneKind::Reformat1 => {
                let values = (0..slices)
                    .flat_map(|y| (0..g.cols).map(move |c| (g.display_row(y), c)))
                    .map(|(k, c)| self.at(k, index, c));
                (g.cols, slices, values.collect())
            }
            PlaneKind::Reformat2 => {
                let values = (0..slices)
                    .flat_map(|y| (0..g.rows).map(move |r| (g.display_row(y), r)))
                    .map(|(k, r)| self.at(k, r, index));
                (g.rows, slices, values.collect())
            }
        };
        let (pixel_mm, orientation) = (g.plane_pixel_mm(kind), g.plane_orientation(kind));
        Some(Plane { kind, index, width, height, values, pixel_mm, orientation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageMeta;

    /// A 2 × 3 slice at `z` mm, axial (LPS), whose values encode (slice, row, column).
    fn slice(z: f64, k: usize) -> MedicalImage {
        let meta = ImageMeta {
            image_orientation: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            image_position: Some([0.0, 0.0, z]),
            pixel_spacing: Some([0.5, 0.25]),
            ..ImageMeta::default()
        };
        let values = (0..6).map(|i| (k * 100 + (i / 3) * 10 + i % 3) as f32).collect();
        MedicalImage { meta, frames: 1, rows: 2, cols: 3, channels: 1, values }
    }

    #[test]
    fn axial_slices_in_any_order_form_a_volume_with_named_planes() {
        // Given out of order: the volume sorts them along the normal.
        let images = vec![slice(4.0, 2), slice(0.0, 0), slice(2.0, 1)];
        let volume = Volume::build(&images).expect("regular");
        let g = &volume.geometry;
        assert_eq!(g.order, [1, 2, 0]);
        assert_eq!(g.slice_spacing, 2.0);
        assert!(g.is_axis_aligned());
        assert_eq!(PlaneKind::ALL.map(|k| g.plane_name(k)), ["Axial".to_string(), "Coronal".into(), "Sagittal".into()]);
        // Head at the top of the reformats: slice 2 (z = 4, most superior) in display row 0.
        assert!(g.last_slice_on_top());
        let coronal = volume.plane(PlaneKind::Reformat1, 1).unwrap();
        assert_eq!((coronal.width, coronal.height, coronal.pixel_mm), (3, 3, [2.0, 0.25]));
        assert_eq!(coronal.values, [210.0, 211.0, 212.0, 110.0, 111.0, 112.0, 10.0, 11.0, 12.0]);
        let sagittal = volume.plane(PlaneKind::Reformat2, 2).unwrap();
        assert_eq!((sagittal.width, sagittal.height, sagittal.pixel_mm), (2, 3, [2.0, 0.5]));
        assert_eq!(sagittal.values, [202.0, 212.0, 102.0, 112.0, 2.0, 12.0]);
        assert!(volume.plane(PlaneKind::Reformat2, 3).is_none());
    }

    #[test]
    fn clicks_move_the_other_planes_and_keep_their_own() {
        let volume = Volume::build(&[slice(0.0, 0), slice(2.0, 1), slice(4.0, 2)]).unwrap();
        let g = &volume.geometry;
        let start = Cursor { slice: 0, row: 0, col: 0 };
        let moved = g.click(PlaneKind::Reformat1, start, 2, 0);
        // Display row 0 of the reformat is the last slice.
        assert_eq!(moved, Cursor { slice: 2, row: 0, col: 2 });
        assert_eq!(g.cursor_in_plane(PlaneKind::Reformat2, moved), (0, 0));
        assert_eq!(g.click(PlaneKind::Acquired, moved, 9, 9), Cursor { slice: 2, row: 1, col: 2 });
    }

    #[test]
    fn irregular_duplicate_and_mismatched_series_are_refused_with_the_reason() {
        let gap = Volume::build(&[slice(0.0, 0), slice(5.0, 1), slice(10.0, 2), slice(15.2, 3), slice(20.2, 4)]);
        assert_eq!(gap.unwrap_err().to_string(), "slice 4 is 5.20 mm from slice 3, the others 5.00 mm");
        let dup = Volume::build(&[slice(0.0, 0), slice(0.0, 1)]).unwrap_err();
        assert!(matches!(dup, NotAVolume::Duplicate { first: 1, second: 2, .. }), "{dup}");
        let mut tilted = slice(2.0, 1);
        tilted.meta.image_orientation = Some([1.0, 0.0, 0.0, 0.0, 0.0, -1.0]);
        assert_eq!(Volume::build(&[slice(0.0, 0), tilted]).unwrap_err(), NotAVolume::OrientationsDiffer { slice: 2 });
        let mut shifted = slice(2.0, 1);
        shifted.meta.image_position = Some([3.0, 0.0, 2.0]);
        assert!(matches!(Volume::build(&[slice(0.0, 0), shifted]), Err(NotAVolume::Shifted { slice: 2, .. })));
        let mut no_spacing = slice(2.0, 1);
        no_spacing.meta.pixel_spacing = None;
        assert_eq!(
            Volume::build(&[slice(0.0, 0), no_spacing]).unwrap_err().to_string(),
            "slice 2 has no Pixel Spacing"
        );
        assert_eq!(Volume::build(&[slice(0.0, 0)]).unwrap_err(), NotAVolume::TooFewSlices(1));
    }

    #[test]
    fn oblique_acquisitions_name_their_planes_by_acquisition() {
        let tilt = 10f64.to_radians();
        let images: Vec<MedicalImage> = (0..3)
            .map(|k| {
                let mut s = slice(0.0, k);
                s.meta.image_orientation = Some([1.0, 0.0, 0.0, 0.0, tilt.cos(), tilt.sin()]);
                // Along the normal (0, -sin, cos).
                s.meta.image_position = Some([0.0, -(k as f64) * 2.0 * tilt.sin(), k as f64 * 2.0 * tilt.cos()]);
                s
            })
            .collect();
        let g = check(&images).unwrap();
        assert!((g.obliquity_degrees() - 10.0).abs() < 1e-9);
        assert_eq!(g.plane_name(PlaneKind::Reformat2), "Reformat 2");
        assert_eq!(g.nearest_patient_plane(PlaneKind::Reformat1), "coronal");
        assert!((g.slice_spacing - 2.0).abs() < 1e-12);
    }
}
