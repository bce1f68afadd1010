//! Cine playback timing: the frame rate a header asks for, and how many frames are due at a
//! given time. Free of any GUI toolkit.

use crate::image::ImageMeta;

/// Rate used when the header names none (a series of single-frame files usually does not).
pub const DEFAULT_FPS: f64 = 10.0;
/// The rates a user may choose, frames per second.
pub const MIN_FPS: f64 = 0.5;
pub const MAX_FPS: f64 = 120.0;

/// Where a cine rate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSource {
    /// Frame Time (0018,1063): the interval between frames, in ms.
    FrameTime,
    /// Cine Rate (0018,0040).
    CineRate,
    /// Recommended Display Frame Rate (0008,2144).
    RecommendedDisplayFrameRate,
    /// None in the header: [`DEFAULT_FPS`].
    Default,
    /// Chosen by the user.
    Chosen,
}

impl RateSource {
    pub fn label(self) -> &'static str {
        match self {
            RateSource::FrameTime => "Frame Time",
            RateSource::CineRate => "Cine Rate",
            RateSource::RecommendedDisplayFrameRate => "Recommended Display Frame Rate",
            RateSource::Default => "default",
            RateSource::Chosen => "chosen",
        }
    }
}

/// The header's rate: Frame Time (the acquisition's real interval) first, then Cine Rate, then
/// Recommended Display Frame Rate; [`DEFAULT_FPS`] when none is usable.
pub fn header_rate(meta: &ImageMeta) -> (f64, RateSource) {
    let usable = |v: Option<f64>| v.filter(|v| v.is_finite() && *v > 0.0);
    if let Some(ms) = usable(meta.frame_time_ms) {
        return ((1000.0 / ms).clamp(MIN_FPS, MAX_FPS), RateSource::FrameTime);
    }
    if let Some(fps) = usable(meta.cine_rate) {
        return (fps.clamp(MIN_FPS, MAX_FPS), RateSource::CineRate);
    }
    if let Some(fps) = usable(meta.recommended_frame_rate) {
        return (fps.clamp(MIN_FPS, MAX_FPS), RateSource::RecommendedDisplayFrameRate);
    }
    (DEFAULT_FPS, RateSource::Default)
}

/// Playback clock: frames are due at `start + n / fps`, so a slow UI frame catches up instead
/// of slowing the loop down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CineClock {
    fps: f64,
    start: f64,
    shown: u64,
}

impl CineClock {
    /// Starts at `now` (seconds, any monotonic origin).
    pub fn new(fps: f64, now: f64) -> Self {
        Self { fps: fps.clamp(MIN_FPS, MAX_FPS), start: now, shown: 0 }
    }

    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// How many frames to advance at `now` (0 when the next is not due yet).
    pub fn due(&mut self, now: f64) -> u64 {
        let elapsed = (now - self.start).max(0.0);
        let total = (elapsed * self.fps + 1e-9).floor() as u64;
        let steps = total.saturating_sub(self.shown);
        self.shown = total.max(self.shown);
        steps
    }

    /// Seconds until the next frame is due.
    pub fn until_next(&self, now: f64) -> f64 {
        (self.start + (self.shown + 1) as f64 / self.fps - now).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rate_prefers_frame_time_then_cine_rate_then_recommended() {
        let mut meta = ImageMeta { recommended_frame_rate: Some(25.0), ..ImageMeta::default() };
        assert_eq!(header_rate(&meta), (25.0, RateSource::RecommendedDisplayFrameRate));
        meta.cine_rate = Some(30.0);
        assert_eq!(header_rate(&meta), (30.0, RateSource::CineRate));
        meta.frame_time_ms = Some(40.0);
        assert_eq!(header_rate(&meta), (25.0, RateSource::FrameTime));
        assert_eq!(header_rate(&ImageMeta::default()), (DEFAULT_FPS, RateSource::Default));
        let zero = ImageMeta { frame_time_ms: Some(0.0), ..ImageMeta::default() };
        assert_eq!(header_rate(&zero).1, RateSource::Default);
    }

    #[test]
    fn clock_advances_by_elapsed_time() {
        let mut clock = CineClock::new(4.0, 10.0);
        assert_eq!(clock.due(10.1), 0);
        assert_eq!(clock.due(10.25), 1);
        assert_eq!(clock.due(10.3), 0);
        // A 1-second stall: four frames due at once.
        assert_eq!(clock.due(11.3), 4);
        assert!((clock.until_next(11.3) - 0.2).abs() < 1e-9);
    }
}
