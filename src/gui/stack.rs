//! A loaded series as one stack of 2-D slices, and the conversion of a slice to display pixels.
//!
//! Multi-file series (one slice per file) and multi-frame files (one slice per frame) are the
//! same thing to the viewer: an ordered list of (file, frame) pairs.

use std::path::PathBuf;

use egui::ColorImage;

use crate::display::{render_rgba, Voi};
use crate::image::MedicalImage;

/// Where one slice of a stack lives: which decoded file, which frame of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRef {
    pub image: usize,
    pub frame: usize,
}

/// Every frame of every file of one series, in series order.
#[derive(Debug, Clone)]
pub struct SliceStack {
    /// Identifies this load, so caches keyed on it never mix two series up.
    pub id: u64,
    /// What the series strip calls this series.
    pub description: String,
    /// The decoded files, in series order (only those that can be displayed).
    pub images: Vec<MedicalImage>,
    pub slices: Vec<SliceRef>,
    /// False while the series is still being decoded: slices are added at the end as their
    /// files arrive, so the indices of those already shown never change. Whatever needs the
    /// whole series (the MPR volume) waits for this.
    pub complete: bool,
}

impl SliceStack {
    /// Builds a stack from decoded files; files whose pixel buffer does not match their
    /// declared size are left out (they would make slicing panic), and so are empty ones.
    pub fn new(id: u64, description: String, images: Vec<MedicalImage>) -> Self {
        let mut stack = Self::loading(id, description, images);
        stack.complete = true;
        stack
    }

    /// The first decoded files of a series whose other files are still being decoded; more
    /// come with [`SliceStack::extend`], the end with [`SliceStack::finish`].
    pub fn loading(id: u64, description: String, images: Vec<MedicalImage>) -> Self {
        let mut stack = Self { id, description, images: Vec::new(), slices: Vec::new(), complete: false };
        stack.extend(images);
        stack
    }

    /// Adds the next decoded files of the series at the end (undisplayable ones are left out).
    pub fn extend(&mut self, images: Vec<MedicalImage>) {
        for decoded in images.into_iter().filter(is_displayable) {
            let image = self.images.len();
            self.slices.extend((0..decoded.frames).map(|frame| SliceRef { image, frame }));
            self.images.push(decoded);
        }
    }

    /// Every file of the series has been decoded.
    pub fn finish(&mut self) {
        self.complete = true;
    }

    pub fn len(&self) -> usize {
        self.slices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// The decoded file and frame index of a slice, or `None` past the end.
    pub fn slice(&self, index: usize) -> Option<(&MedicalImage, usize)> {
        let slice = self.slices.get(index)?;
        Some((self.images.get(slice.image)?, slice.frame))
    }

    /// The file a slice came from (for the status line).
    pub fn source(&self, index: usize) -> Option<&PathBuf> {
        self.slice(index).and_then(|(image, _)| image.meta.source.as_ref())
    }
}

/// True when every frame of the image can be sliced out of its value buffer.
pub fn is_displayable(image: &MedicalImage) -> bool {
    let frame_len = image.rows.checked_mul(image.cols).and_then(|n| n.checked_mul(image.channels));
    let total = frame_len.and_then(|n| n.checked_mul(image.frames));
    matches!(image.channels, 1 | 3)
        && image.frames > 0
        && frame_len.is_some_and(|n| n > 0)
        && total == Some(image.values.len())
}

/// Renders one frame through the VOI, shrunk (nearest neighbour) so neither side exceeds
/// `max_side` pixels: textures larger than the GPU allows are refused, and thumbnails are small.
/// `None` when the image cannot be displayed.
pub fn render_color_image(image: &MedicalImage, frame: usize, voi: &Voi, max_side: usize) -> Option<ColorImage> {
    if !is_displayable(image) || frame >= image.frames {
        return None;
    }
    let rgba = render_rgba(image, frame, voi);
    let (cols, rows) = (image.cols, image.rows);
    if rgba.len() != cols * rows * 4 {
        return None;
    }
    let max_side = max_side.max(1);
    // The smallest integer step that brings both sides under the limit.
    let step = cols.max(rows).div_ceil(max_side).max(1);
    if step == 1 {
        return Some(ColorImage::from_rgba_unmultiplied([cols, rows], &rgba));
    }
    let (out_cols, out_rows) = (cols.div_ceil(step), rows.div_ceil(step));
    let mut out = Vec::with_capacity(out_cols * out_rows * 4);
    for y in (0..rows).step_by(step) {
        for x in (0..cols).step_by(step) {
            let at = (y * cols + x) * 4;
            out.extend_from_slice(&rgba[at..at + 4]);
        }
    }
    Some(ColorImage::from_rgba_unmultiplied([out_cols, out_rows], &out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{ImageMeta, Window};

    fn grey(rows: usize, cols: usize, frames: usize) -> MedicalImage {
        MedicalImage {
            meta: ImageMeta::default(),
            frames,
            rows,
            cols,
            channels: 1,
            values: (0..rows * cols * frames).map(|v| v as f32).collect(),
        }
    }

    #[test]
    fn frames_of_every_file_become_slices() {
        let stack = SliceStack::new(1, "s".into(), vec![grey(2, 2, 3), grey(2, 2, 1)]);
        assert_eq!(stack.len(), 4);
        assert_eq!(stack.slices[3], SliceRef { image: 1, frame: 0 });
        assert!(stack.slice(4).is_none());
    }

    #[test]
    fn a_loading_stack_grows_at_its_end_and_keeps_its_slice_numbers() {
        let mut stack = SliceStack::loading(1, "s".into(), vec![grey(2, 2, 2)]);
        assert!(!stack.complete);
        assert_eq!(stack.len(), 2);
        let mut short = grey(2, 2, 1);
        short.values.truncate(1);
        stack.extend(vec![short, grey(2, 2, 1)]);
        assert_eq!(stack.len(), 3, "the broken file is left out");
        assert_eq!(stack.slices[..2], [SliceRef { image: 0, frame: 0 }, SliceRef { image: 0, frame: 1 }]);
        assert_eq!(stack.slices[2], SliceRef { image: 1, frame: 0 });
        stack.finish();
        assert!(stack.complete);
        assert!(SliceStack::new(2, "s".into(), vec![grey(2, 2, 1)]).complete);
    }

    #[test]
    fn inconsistent_or_empty_images_are_dropped() {
        let mut short = grey(4, 4, 1);
        short.values.truncate(3);
        let stack = SliceStack::new(1, "s".into(), vec![short, grey(0, 4, 1), grey(3, 3, 0)]);
        assert!(stack.is_empty());
        assert!(stack.slice(0).is_none());
    }

    #[test]
    fn large_frames_are_shrunk_to_the_limit() {
        let image = grey(10, 25, 1);
        let voi = Voi::Window(Window { center: 100.0, width: 200.0 });
        let small = render_color_image(&image, 0, &voi, 8).expect("renders");
        assert!(small.size[0] <= 8 && small.size[1] <= 8, "{:?}", small.size);
        let full = render_color_image(&image, 0, &voi, 4096).expect("renders");
        assert_eq!(full.size, [25, 10]);
        assert!(render_color_image(&image, 1, &voi, 8).is_none());
    }
}
