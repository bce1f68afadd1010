//! Measurements on one frame of an image: length, angle, and rectangle / ellipse ROI statistics,
//! plus the per-image list the viewer keeps with its undo history. Free of any GUI toolkit.
//!
//! Coordinates are continuous image coordinates in pixels: (0, 0) is the top-left corner of
//! the first pixel, so pixel (column i, row j) covers [i, i+1) × [j, j+1) and its centre is
//! (i + 0.5, j + 0.5). An ROI holds the pixels whose centre lies inside it (edges included);
//! `tools/measure_reference.py` builds the same masks with numpy.

use serde::Serialize;

use crate::image::{ImageMeta, MedicalImage};

/// A point in image coordinates (pixels, see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

impl Point {
    pub const fn new(x: f64, y: f64) -> Self {
        Self { x, y }
    }
}

/// Where the mm of a measurement come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Calibration {
    /// Pixel Spacing (0028,0030): row spacing, column spacing in mm, in the patient.
    PixelSpacing { row_mm: f64, col_mm: f64 },
    /// Imager Pixel Spacing (0018,1164): spacing at the detector. A projection image magnifies
    /// the patient (the source–detector geometry), so lengths in the patient are smaller.
    ImagerPixelSpacing { row_mm: f64, col_mm: f64 },
    /// Neither: lengths are in pixels.
    Pixels,
}

impl Calibration {
    /// Pixel Spacing when the header has a usable one, else Imager Pixel Spacing, else pixels.
    pub fn of(meta: &ImageMeta) -> Self {
        let usable = |s: &Option<[f64; 2]>| s.filter(|[r, c]| r.is_finite() && c.is_finite() && *r > 0.0 && *c > 0.0);
        if let Some([row_mm, col_mm]) = usable(&meta.pixel_spacing) {
            Calibration::PixelSpacing { row_mm, col_mm }
        } else if let Some([row_mm, col_mm]) = usable(&meta.imager_pixel_spacing) {
            Calibration::ImagerPixelSpacing { row_mm, col_mm }
        } else {
            Calibration::Pixels
        }
    }

    /// (row, column) size of one pixel in [`Self::unit`]s.
    pub fn spacing(&self) -> (f64, f64) {
        match *self {
            Calibration::PixelSpacing { row_mm, col_mm } | Calibration::ImagerPixelSpacing { row_mm, col_mm } => {
                (row_mm, col_mm)
            }
            Calibration::Pixels => (1.0, 1.0),
        }
    }

    pub fn unit(&self) -> &'static str {
        match self {
            Calibration::Pixels => "px",
            _ => "mm",
        }
    }

    /// What the user must know about this calibration, if anything.
    pub fn caveat(&self) -> Option<&'static str> {
        match self {
            Calibration::PixelSpacing { .. } => None,
            Calibration::ImagerPixelSpacing { .. } => {
                Some("Imager Pixel Spacing: mm at the detector, not calibrated for magnification in the patient")
            }
            Calibration::Pixels => Some("no pixel spacing in the header: lengths in pixels"),
        }
    }

    /// The physical vector from `a` to `b` (x along columns, y along rows).
    fn vector(&self, a: Point, b: Point) -> (f64, f64) {
        let (row, col) = self.spacing();
        ((b.x - a.x) * col, (b.y - a.y) * row)
    }

    /// Distance between two points in [`Self::unit`]s.
    pub fn length(&self, a: Point, b: Point) -> f64 {
        let (dx, dy) = self.vector(a, b);
        dx.hypot(dy)
    }

    /// The angle at `vertex` between the rays to `a` and `b`, in degrees (0..=180), measured in
    /// the patient's geometry (non-square pixels count). `None` when a ray has no length.
    pub fn angle(&self, a: Point, vertex: Point, b: Point) -> Option<f64> {
        let (ux, uy) = self.vector(vertex, a);
        let (vx, vy) = self.vector(vertex, b);
        if ux.hypot(uy) == 0.0 || vx.hypot(vy) == 0.0 {
            return None;
        }
        Some((ux * vy - uy * vx).abs().atan2(ux * vx + uy * vy).to_degrees())
    }
}

/// What can be drawn on an image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Shape {
    Length {
        a: Point,
        b: Point,
    },
    Angle {
        a: Point,
        vertex: Point,
        b: Point,
    },
    /// Axis-aligned rectangle between two opposite corners.
    Rectangle {
        a: Point,
        b: Point,
    },
    /// The ellipse inscribed in the axis-aligned rectangle between two opposite corners.
    Ellipse {
        a: Point,
        b: Point,
    },
}

impl Shape {
    pub fn kind(&self) -> &'static str {
        match self {
            Shape::Length { .. } => "Length",
            Shape::Angle { .. } => "Angle",
            Shape::Rectangle { .. } => "Rectangle",
            Shape::Ellipse { .. } => "Ellipse",
        }
    }
}

/// Statistics of the values inside an ROI, in the image's units after the modality LUT.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoiStats {
    pub pixels: usize,
    pub mean: f64,
    /// Population standard deviation (numpy's default `std`, ddof = 0).
    pub sd: f64,
    pub min: f64,
    pub max: f64,
    /// Pixel count × pixel area, in the calibration's unit squared.
    pub area: f64,
}

/// Why an ROI has no statistics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeasureError {
    #[error("the ROI holds no pixel centre")]
    EmptyRoi,
    #[error("ROI statistics need a greyscale image")]
    ColourImage,
    #[error("frame {0} is not in the image")]
    NoSuchFrame(usize),
}

/// Bounds of an axis-aligned box, normalised so that min <= max.
fn bounds(a: Point, b: Point) -> (f64, f64, f64, f64) {
    (a.x.min(b.x), a.y.min(b.y), a.x.max(b.x), a.y.max(b.y))
}

/// Whether the centre of pixel (col, row) lies in the ROI.
fn roi_contains(shape: &Shape, col: usize, row: usize) -> bool {
    let (cx, cy) = (col as f64 + 0.5, row as f64 + 0.5);
    match *shape {
        Shape::Rectangle { a, b } => {
            let (x0, y0, x1, y1) = bounds(a, b);
            (x0..=x1).contains(&cx) && (y0..=y1).contains(&cy)
        }
        Shape::Ellipse { a, b } => {
            let (x0, y0, x1, y1) = bounds(a, b);
            let (rx, ry) = ((x1 - x0) / 2.0, (y1 - y0) / 2.0);
            if rx <= 0.0 || ry <= 0.0 {
                return false;
            }
            let (dx, dy) = ((cx - (x0 + rx)) / rx, (cy - (y0 + ry)) / ry);
            dx * dx + dy * dy <= 1.0
        }
        Shape::Length { .. } | Shape::Angle { .. } => false,
    }
}

/// ROI statistics of a rectangle or ellipse over one frame of a greyscale image. The values are
/// the decoded ones (after the modality LUT: HU for CT).
pub fn roi_stats(image: &MedicalImage, frame: usize, shape: &Shape) -> Result<RoiStats, MeasureError> {
    if image.is_color() {
        return Err(MeasureError::ColourImage);
    }
    if frame >= image.frames {
        return Err(MeasureError::NoSuchFrame(frame));
    }
    let (Shape::Rectangle { a, b } | Shape::Ellipse { a, b }) = *shape else {
        return Err(MeasureError::EmptyRoi);
    };
    let values = image.frame(frame);
    let (x0, y0, x1, y1) = bounds(a, b);
    // Only rows and columns whose centres can fall inside, clipped to the image.
    let first = |lo: f64| (lo - 0.5).ceil().max(0.0) as usize;
    let last = |hi: f64, n: usize| ((hi - 0.5).floor().min(n as f64 - 1.0)).max(-1.0);
    let (c0, r0) = (first(x0), first(y0));
    let (c1, r1) = (last(x1, image.cols), last(y1, image.rows));
    if c1 < 0.0 || r1 < 0.0 {
        return Err(MeasureError::EmptyRoi);
    }
    let mut inside = Vec::new();
    for row in r0..=r1 as usize {
        for col in c0..=c1 as usize {
            if roi_contains(shape, col, row) {
                inside.push(f64::from(values[row * image.cols + col]));
            }
        }
    }
    if inside.is_empty() {
        return Err(MeasureError::EmptyRoi);
    }
    let n = inside.len() as f64;
    let mean = inside.iter().sum::<f64>() / n;
    let sd = (inside.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    let (min, max) = inside.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (row, col) = Calibration::of(&image.meta).spacing();
    Ok(RoiStats { pixels: inside.len(), mean, sd, min, max, area: n * row * col })
}

/// A measurement's result, ready to show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Reading {
    Length { value: f64, unit: &'static str },
    Angle { degrees: Option<f64> },
    Roi { stats: Result<RoiStats, String>, unit: &'static str, value_units: String },
}

/// Measures `shape` on one frame of `image`.
pub fn measure(image: &MedicalImage, frame: usize, shape: &Shape) -> Reading {
    let calibration = Calibration::of(&image.meta);
    match *shape {
        Shape::Length { a, b } => Reading::Length { value: calibration.length(a, b), unit: calibration.unit() },
        Shape::Angle { a, vertex, b } => Reading::Angle { degrees: calibration.angle(a, vertex, b) },
        Shape::Rectangle { .. } | Shape::Ellipse { .. } => Reading::Roi {
            stats: roi_stats(image, frame, shape).map_err(|e| e.to_string()),
            unit: calibration.unit(),
            value_units: image.meta.units.clone(),
        },
    }
}

impl Reading {
    /// One line for the measurement list, e.g. "12.3 mm" or "mean 41.2 HU, SD 5.1, ...".
    pub fn text(&self) -> String {
        match self {
            Reading::Length { value, unit } => format!("{value:.1} {unit}"),
            Reading::Angle { degrees: Some(d) } => format!("{d:.1}°"),
            Reading::Angle { degrees: None } => "no angle (a side has no length)".into(),
            Reading::Roi { stats: Ok(s), unit, value_units } => {
                let u = if value_units.is_empty() { String::new() } else { format!(" {value_units}") };
                format!(
                    "mean {:.1}{u}, SD {:.1}, min {:.0}, max {:.0}, area {:.1} {unit}² ({} px)",
                    s.mean, s.sd, s.min, s.max, s.area, s.pixels
                )
            }
            Reading::Roi { stats: Err(e), .. } => e.clone(),
        }
    }
}

/// Which image a measurement belongs to: a stack and one of its slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct SliceKey {
    pub stack: u64,
    pub slice: usize,
}

/// A drawn measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measurement {
    /// Unique within one [`Measurements`] list, never reused.
    pub id: u64,
    pub on: SliceKey,
    pub shape: Shape,
}

#[derive(Debug, Clone, PartialEq)]
enum Edit {
    Added(u64),
    Deleted { index: usize, measurement: Measurement },
}

/// Every measurement drawn in this session, with undo of additions and deletions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurements {
    items: Vec<Measurement>,
    history: Vec<Edit>,
    next_id: u64,
}

impl Measurements {
    pub fn add(&mut self, on: SliceKey, shape: Shape) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.items.push(Measurement { id, on, shape });
        self.history.push(Edit::Added(id));
        id
    }

    /// Deletes a measurement; false when there is none with that id.
    pub fn delete(&mut self, id: u64) -> bool {
        let Some(index) = self.items.iter().position(|m| m.id == id) else { return false };
        let measurement = self.items.remove(index);
        self.history.push(Edit::Deleted { index, measurement });
        true
    }

    /// Reverts the last addition or deletion; false when there is nothing to undo.
    pub fn undo(&mut self) -> bool {
        match self.history.pop() {
            Some(Edit::Added(id)) => {
                self.items.retain(|m| m.id != id);
                true
            }
            Some(Edit::Deleted { index, measurement }) => {
                self.items.insert(index.min(self.items.len()), measurement);
                true
            }
            None => false,
        }
    }

    pub fn can_undo(&self) -> bool {
        !self.history.is_empty()
    }

    /// The measurements of one slice, in the order they were drawn.
    pub fn on(&self, key: SliceKey) -> impl Iterator<Item = &Measurement> {
        self.items.iter().filter(move |m| m.on == key)
    }

    pub fn all(&self) -> &[Measurement] {
        &self.items
    }

    /// Forgets everything (a new set of files was opened).
    pub fn clear(&mut self) {
        *self = Self { next_id: self.next_id, ..Self::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(values: Vec<f32>, rows: usize, cols: usize, spacing: Option<[f64; 2]>) -> MedicalImage {
        let meta = ImageMeta { pixel_spacing: spacing, units: "HU".into(), ..ImageMeta::default() };
        MedicalImage { meta, frames: 1, rows, cols, channels: 1, values }
    }

    #[test]
    fn length_is_spacing_times_pixels() {
        let meta = ImageMeta { pixel_spacing: Some([0.5, 0.25]), ..ImageMeta::default() };
        let c = Calibration::of(&meta);
        // 40 pixels along a row (x): 40 × column spacing; 40 down a column: 40 × row spacing.
        assert_eq!(c.length(Point::new(10.0, 10.0), Point::new(50.0, 10.0)), 40.0 * 0.25);
        assert_eq!(c.length(Point::new(10.0, 10.0), Point::new(10.0, 50.0)), 40.0 * 0.5);
        assert_eq!(c.length(Point::new(0.0, 0.0), Point::new(3.0, 4.0)), (0.75f64.powi(2) + 2.0f64.powi(2)).sqrt());
        assert_eq!(c.caveat(), None);
    }

    #[test]
    fn calibration_falls_back_to_imager_spacing_then_pixels() {
        let imager = ImageMeta { imager_pixel_spacing: Some([0.2, 0.2]), ..ImageMeta::default() };
        let c = Calibration::of(&imager);
        assert_eq!(c, Calibration::ImagerPixelSpacing { row_mm: 0.2, col_mm: 0.2 });
        assert!(c.caveat().unwrap().contains("detector"));
        assert!((c.length(Point::new(0.0, 0.0), Point::new(100.0, 0.0)) - 20.0).abs() < 1e-12);
        let none = Calibration::of(&ImageMeta { pixel_spacing: Some([0.0, 1.0]), ..ImageMeta::default() });
        assert_eq!((none, none.unit()), (Calibration::Pixels, "px"));
        assert_eq!(none.length(Point::new(0.0, 0.0), Point::new(30.0, 40.0)), 50.0);
        assert!(none.caveat().unwrap().contains("pixels"));
    }

    #[test]
    fn angles_use_physical_geometry() {
        let square = Calibration::Pixels;
        let v = Point::new(10.0, 10.0);
        let right = square.angle(Point::new(20.0, 10.0), v, Point::new(10.0, 0.0)).unwrap();
        assert!((right - 90.0).abs() < 1e-12);
        let diagonal = square.angle(Point::new(20.0, 10.0), v, Point::new(20.0, 0.0)).unwrap();
        assert!((diagonal - 45.0).abs() < 1e-12);
        // Pixels twice as tall as wide: the one-by-one pixel diagonal is steeper than 45°.
        let tall = Calibration::PixelSpacing { row_mm: 2.0, col_mm: 1.0 };
        let steep = tall.angle(Point::new(20.0, 10.0), v, Point::new(20.0, 0.0)).unwrap();
        assert!((steep - 2f64.atan().to_degrees()).abs() < 1e-12);
        assert_eq!(square.angle(v, v, Point::new(0.0, 0.0)), None);
    }

    #[test]
    fn roi_holds_the_pixels_whose_centre_is_inside() {
        let values: Vec<f32> = (0..100).map(|v| v as f32).collect();
        let img = image(values, 10, 10, Some([0.5, 0.5]));
        // Corners (1,1)-(3,3): centres 1.5 and 2.5 in each direction: pixels 11, 12, 21, 22.
        let s = roi_stats(&img, 0, &Shape::Rectangle { a: Point::new(3.0, 3.0), b: Point::new(1.0, 1.0) }).unwrap();
        assert_eq!((s.pixels, s.min, s.max, s.mean), (4, 11.0, 22.0, 16.5));
        assert_eq!(s.sd, 25.25f64.sqrt());
        assert_eq!(s.area, 4.0 * 0.25);
        // An ellipse inscribed in a 4 × 4 box: all 16 pixels but the four corners.
        let e = roi_stats(&img, 0, &Shape::Ellipse { a: Point::new(0.0, 0.0), b: Point::new(4.0, 4.0) }).unwrap();
        assert_eq!((e.pixels, e.min, e.max), (12, 1.0, 32.0));
        assert_eq!(e.mean, (264.0 - (0.0 + 3.0 + 30.0 + 33.0)) / 12.0);
        // Outside the image, or between centres: no pixels.
        let none = Shape::Rectangle { a: Point::new(20.0, 20.0), b: Point::new(30.0, 30.0) };
        assert_eq!(roi_stats(&img, 0, &none), Err(MeasureError::EmptyRoi));
        let thin = Shape::Rectangle { a: Point::new(1.6, 1.0), b: Point::new(2.4, 5.0) };
        assert_eq!(roi_stats(&img, 0, &thin), Err(MeasureError::EmptyRoi));
        assert_eq!(roi_stats(&img, 1, &none), Err(MeasureError::NoSuchFrame(1)));
    }

    #[test]
    fn undo_reverts_additions_and_deletions_in_order() {
        let mut list = Measurements::default();
        let key = SliceKey { stack: 1, slice: 0 };
        let other = SliceKey { stack: 1, slice: 1 };
        let line = Shape::Length { a: Point::new(0.0, 0.0), b: Point::new(1.0, 1.0) };
        let first = list.add(key, line);
        let second = list.add(other, line);
        let third = list.add(key, line);
        assert_eq!(list.on(key).map(|m| m.id).collect::<Vec<_>>(), [first, third]);
        assert!(list.delete(first));
        assert!(!list.delete(first));
        assert_eq!(list.on(key).map(|m| m.id).collect::<Vec<_>>(), [third]);
        assert!(list.undo()); // the deletion
        assert_eq!(list.on(key).map(|m| m.id).collect::<Vec<_>>(), [first, third]);
        assert!(list.undo()); // the third addition
        assert_eq!(list.all().iter().map(|m| m.id).collect::<Vec<_>>(), [first, second]);
        assert!(list.undo()); // the second
        assert_eq!(list.all().iter().map(|m| m.id).collect::<Vec<_>>(), [first]);
        assert!(list.undo());
        assert!(!list.undo());
        assert!(!list.can_undo());
        let fresh = list.add(key, line);
        assert!(fresh > third, "ids are never reused");
    }
}
