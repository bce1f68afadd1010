//! The image viewer: one slice of the current stack, with window/level, zoom, pan, slice
//! navigation, corner overlays, the value under the cursor and the tag browser.
//!
//! Input becomes [`ViewerCommand`]s (sent to the app, which hands them back through
//! [`Viewer::apply`]); the state they change is kept in plain fields ([`ViewerState`]) so tests
//! and later views can read it.

use egui::{
    Align, Color32, FontId, Key, Layout, Modifiers, MouseWheelUnit, PointerButton, Pos2, Rect, RichText, Sense, Stroke,
    StrokeKind, TextureHandle, TextureOptions, UiBuilder, Vec2,
};

use super::mpr::{self, Mpr};
use super::overlay;
use super::stack::{render_color_image, SliceStack};
use super::tags::TagBrowser;
use super::Command;
use crate::cine::{header_rate, CineClock, RateSource, MAX_FPS, MIN_FPS};
use crate::display::{orientation_labels, preset_voi, Voi, WindowPreset};
use crate::image::{ImageMeta, MedicalImage, Window};
use crate::measure::{measure, Calibration, Measurements, Point, Shape, SliceKey};
use crate::volume::Cursor;

/// Window/level change per point dragged, as a fraction of the current width: the same drag
/// is a fine adjustment on a narrow brain window and a coarse one on a full 16-bit range.
const WINDOW_SENSITIVITY: f64 = 0.005;
/// Zoom factor per wheel line (one notch of a typical mouse wheel).
const ZOOM_PER_LINE: f32 = 1.1;
/// Points of pixel-precise (trackpad) scrolling that count as one wheel line.
const POINTS_PER_LINE: f32 = 40.0;
/// Zoom limits, in screen points per image pixel.
const MIN_ZOOM: f32 = 0.01;
const MAX_ZOOM: f32 = 64.0;
/// How much of the image stays in view however far it is panned, in points.
const MIN_VISIBLE: f32 = 32.0;

/// What a left-drag (or click) on the image does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tool {
    /// Pan (the default).
    #[default]
    Navigate,
    /// Drag from one end to the other.
    Length,
    /// Click the first end, the vertex, then the second end.
    Angle,
    /// Drag between opposite corners.
    Rectangle,
    /// Drag the corners of the ellipse's bounding box.
    Ellipse,
}

impl Tool {
    pub const ALL: [Tool; 5] = [Tool::Navigate, Tool::Length, Tool::Angle, Tool::Rectangle, Tool::Ellipse];

    pub fn label(self) -> &'static str {
        match self {
            Tool::Navigate => "Pan (V)",
            Tool::Length => "Length (L)",
            Tool::Angle => "Angle (G)",
            Tool::Rectangle => "Rectangle ROI (R)",
            Tool::Ellipse => "Ellipse ROI (E)",
        }
    }

    pub fn key(self) -> Key {
        match self {
            Tool::Navigate => Key::V,
            Tool::Length => Key::L,
            Tool::Angle => Key::G,
            Tool::Rectangle => Key::R,
            Tool::Ellipse => Key::E,
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Tool::Navigate => "Left-drag pans the image",
            Tool::Length => "Drag from one end of the length to the other",
            Tool::Angle => "Click the first end, the vertex, then the second end",
            Tool::Rectangle => "Drag between opposite corners; mean, SD, min, max and area inside",
            Tool::Ellipse => "Drag the corners of the ellipse's box; mean, SD, min, max and area inside",
        }
    }
}

/// Cine playback of a multi-frame image or a series.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CineState {
    /// Playing since this clock started; `None` when paused.
    pub clock: Option<CineClock>,
    /// The user's rate, frames per second; `None`: the header's.
    pub chosen_fps: Option<f64>,
}

/// What the viewer shows and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewerState {
    /// Index into the stack's slices (every frame of every file, in series order).
    pub slice: usize,
    /// How grey values map to display: the header's window or LUT, a preset, or the user's
    /// right-drag (always a plain window once dragged).
    pub voi: Voi,
    /// The preset `voi` came from (unchanged by dragging).
    pub preset: WindowPreset,
    /// Screen points per image pixel.
    pub zoom: f32,
    /// Offset of the image centre from the centre of the view, in points.
    pub pan: Vec2,
    /// The zoom follows the view's size ("Fit") until the user zooms, pans or picks 1:1.
    pub fit: bool,
    /// The value under the cursor for the status line ("x 12  y 40  -1000 HU"), if any.
    pub probe: Option<String>,
    pub tool: Tool,
    pub cine: CineState,
}

impl Default for ViewerState {
    fn default() -> Self {
        Self {
            slice: 0,
            voi: Voi::Window(Window { center: 0.5, width: 1.0 }),
            preset: WindowPreset::FromHeader,
            zoom: 1.0,
            pan: Vec2::ZERO,
            fit: true,
            probe: None,
            tool: Tool::Navigate,
            cine: CineState::default(),
        }
    }
}

impl ViewerState {
    /// The current VOI as centre/width (a LUT reports its span).
    pub fn window(&self) -> Window {
        self.voi.as_window()
    }
}

/// Everything the viewer's input can ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum ViewerCommand {
    GoToSlice(usize),
    /// Move this many slices forward (negative: back), stopping at the ends.
    StepSlice(i64),
    ApplyPreset(WindowPreset),
    /// A right-drag of this many points: horizontal changes the width (right = wider),
    /// vertical the centre (down = higher centre, so a darker image).
    AdjustWindow {
        dx: f32,
        dy: f32,
    },
    /// Zoom by `factor`, keeping the image point under `anchor` (screen points) in place.
    ZoomAt {
        factor: f32,
        anchor: Pos2,
    },
    Pan(Vec2),
    Fit,
    /// One image pixel per screen pixel.
    ActualSize,
    ToggleTags,
    SetTool(Tool),
    /// Adds a measurement to the current slice.
    AddMeasurement(Shape),
    DeleteMeasurement(u64),
    /// Reverts the last measurement added or deleted.
    UndoMeasurement,
    SelectMeasurement(Option<u64>),
    ToggleMeasurementList,
    /// Play or pause cine.
    ToggleCine,
    /// Cine rate in frames per second; `None` goes back to the header's.
    SetCineRate(Option<f64>),
    /// MPR mode on or off (three planes side by side instead of one slice).
    ToggleMpr,
    /// Moves the point where the three MPR planes cross (the acquired plane's slice becomes
    /// the viewer's slice).
    SetMprCursor(Cursor),
}

/// What a cached texture was rendered from; a new render happens only when this changes.
#[derive(Debug, Clone, PartialEq)]
struct RenderKey {
    stack_id: u64,
    slice: usize,
    /// `None` for colour images, which ignore the VOI.
    voi: Option<Voi>,
}

/// The viewer view.
pub struct Viewer {
    pub state: ViewerState,
    /// The series being shown, once loaded.
    pub stack: Option<SliceStack>,
    /// The preset the user last chose, applied to each newly opened series (and persisted).
    pub preferred_preset: WindowPreset,
    pub tags: TagBrowser,
    pub show_tags: bool,
    /// Where the image was drawn last frame (screen points); `None` before the first frame.
    pub view_rect: Option<Rect>,
    /// Where the image itself was drawn last frame (screen points).
    pub image_rect: Option<Rect>,
    /// A translucent overlay (the diagnosis heatmap) and its opacity, set by the app each
    /// frame; drawn over exactly the image's rectangle so it follows zoom and pan.
    pub overlay: Option<(egui::TextureId, f32)>,
    /// Where the overlay was drawn last frame, if it was.
    pub overlay_rect: Option<Rect>,
    texture: Option<(RenderKey, TextureHandle)>,
    /// The current file's metadata with patient details removed, for when they are hidden;
    /// keyed by (stack id, file index) so `without_phi` runs once per file, not per frame.
    phi_free_meta: Option<((u64, usize), ImageMeta)>,
    /// Fractional slice steps from pixel-precise scrolling, carried between events.
    pending_wheel_lines: f32,
    pixels_per_point: f32,
    /// Every measurement drawn since the files were opened, per slice.
    pub measurements: Measurements,
    pub selected_measurement: Option<u64>,
    pub show_measurements: bool,
    /// Points of the measurement being drawn (image coordinates); the last follows the pointer
    /// while dragging.
    pub drawing: Vec<Point>,
    /// The UI clock (seconds) of the last frame, for starting cine.
    now: f64,
    /// MPR mode and its volume.
    pub mpr: Mpr,
}

impl Default for Viewer {
    fn default() -> Self {
        Self {
            state: ViewerState::default(),
            stack: None,
            preferred_preset: WindowPreset::FromHeader,
            tags: TagBrowser::default(),
            show_tags: false,
            view_rect: None,
            image_rect: None,
            overlay: None,
            overlay_rect: None,
            texture: None,
            phi_free_meta: None,
            pending_wheel_lines: 0.0,
            pixels_per_point: 1.0,
            measurements: Measurements::default(),
            selected_measurement: None,
            show_measurements: false,
            drawing: Vec::new(),
            now: 0.0,
            mpr: Mpr::default(),
        }
    }
}

impl Viewer {
    /// Shows a newly loaded series from its first slice, fitted, with the preferred preset
    /// (a CT preset is not applied to other modalities: it would show nothing useful).
    pub fn set_stack(&mut self, stack: SliceStack) {
        self.state = ViewerState { preset: self.state.preset, tool: self.state.tool, ..ViewerState::default() };
        self.drawing.clear();
        self.selected_measurement = None;
        self.texture = None;
        self.phi_free_meta = None;
        self.pending_wheel_lines = 0.0;
        let preset = match stack.slice(0) {
            Some((image, _)) if self.preferred_preset.fixed_window().is_some() && image.meta.modality != "CT" => {
                WindowPreset::FromHeader
            }
            _ => self.preferred_preset,
        };
        // MPR needs every slice: a series still loading is checked once it is complete.
        if stack.complete {
            self.mpr.set_stack(&stack);
        } else {
            self.mpr.clear();
        }
        self.stack = Some(stack);
        self.use_preset(preset);
    }

    /// Adds the next decoded files of the series being loaded (see [`SliceStack::loading`]);
    /// what is on screen stays as it is, the slider's range grows.
    pub fn extend_stack(&mut self, stack_id: u64, images: Vec<MedicalImage>) {
        if let Some(stack) = self.stack.as_mut().filter(|s| s.id == stack_id && !s.complete) {
            stack.extend(images);
        }
    }

    /// Every file of the series being loaded has arrived: MPR can check it for a volume now.
    pub fn finish_stack(&mut self, stack_id: u64) {
        if let Some(stack) = self.stack.as_mut().filter(|s| s.id == stack_id && !s.complete) {
            stack.finish();
            self.mpr.set_stack(stack);
        }
    }

    /// The (stack id, slice) whose image the last frame drew, if it drew one: what is on screen.
    pub fn drawn_slice(&self) -> Option<(u64, usize)> {
        self.texture.as_ref().filter(|_| self.image_rect.is_some()).map(|(key, _)| (key.stack_id, key.slice))
    }

    /// Forgets the shown series (e.g. when another folder is opened).
    pub fn clear(&mut self) {
        self.stack = None;
        self.mpr.clear();
        self.measurements.clear();
        self.drawing.clear();
        self.selected_measurement = None;
        self.state.cine.clock = None;
        self.texture = None;
        self.phi_free_meta = None;
        self.state.probe = None;
    }

    /// Which slice measurements are attached to now.
    pub fn slice_key(&self) -> Option<SliceKey> {
        let stack = self.stack.as_ref()?;
        (self.state.slice < stack.len()).then_some(SliceKey { stack: stack.id, slice: self.state.slice })
    }

    /// The cine rate in use and where it comes from.
    pub fn cine_rate(&self) -> (f64, RateSource) {
        match self.state.cine.chosen_fps {
            Some(fps) => (fps, RateSource::Chosen),
            None => match self.current() {
                Some((image, _)) => header_rate(&image.meta),
                None => (crate::cine::DEFAULT_FPS, RateSource::Default),
            },
        }
    }

    pub fn slice_count(&self) -> usize {
        self.stack.as_ref().map_or(0, SliceStack::len)
    }

    /// The decoded file and frame of the current slice.
    pub fn current(&self) -> Option<(&MedicalImage, usize)> {
        self.stack.as_ref()?.slice(self.state.slice)
    }

    pub fn apply(&mut self, command: ViewerCommand) {
        let last = self.slice_count().saturating_sub(1);
        match command {
            ViewerCommand::GoToSlice(index) => self.state.slice = index.min(last),
            ViewerCommand::StepSlice(delta) => {
                let target = i64::try_from(self.state.slice).unwrap_or(i64::MAX).saturating_add(delta);
                self.state.slice = usize::try_from(target.max(0)).unwrap_or(usize::MAX).min(last);
            }
            ViewerCommand::ApplyPreset(preset) => {
                self.preferred_preset = preset;
                self.use_preset(preset);
            }
            ViewerCommand::AdjustWindow { dx, dy } => {
                let window = self.state.voi.as_window();
                let step = window.width.max(1.0) * WINDOW_SENSITIVITY;
                let adjusted = Window {
                    center: window.center + f64::from(dy) * step,
                    width: (window.width + f64::from(dx) * step).max(1.0),
                };
                if adjusted.center.is_finite() && adjusted.width.is_finite() {
                    self.state.voi = Voi::Window(adjusted);
                }
            }
            ViewerCommand::ZoomAt { factor, anchor } => {
                let Some(view) = self.view_rect else { return };
                if !factor.is_finite() || factor <= 0.0 {
                    return;
                }
                let old = self.state.zoom.max(MIN_ZOOM);
                let new = (old * factor).clamp(MIN_ZOOM, MAX_ZOOM);
                // Image point under the anchor, relative to the image centre, in points:
                // (anchor - centre - pan) scales with the zoom; solve for the new pan.
                let from_center = anchor - view.center();
                self.state.pan = from_center - (from_center - self.state.pan) * (new / old);
                self.state.zoom = new;
                self.state.fit = false;
            }
            ViewerCommand::Pan(delta) => {
                self.state.pan += delta;
                self.state.fit = false;
            }
            ViewerCommand::Fit => {
                self.state.fit = true;
                self.state.pan = Vec2::ZERO;
            }
            ViewerCommand::ActualSize => {
                self.state.fit = false;
                self.state.pan = Vec2::ZERO;
                self.state.zoom = 1.0 / self.pixels_per_point.max(0.01);
            }
            ViewerCommand::ToggleTags => self.show_tags = !self.show_tags,
            ViewerCommand::SetTool(tool) => {
                self.state.tool = tool;
                self.drawing.clear();
                if tool != Tool::Navigate {
                    self.show_measurements = true;
                }
            }
            ViewerCommand::AddMeasurement(shape) => {
                if let Some(key) = self.slice_key() {
                    self.selected_measurement = Some(self.measurements.add(key, shape));
                    self.show_measurements = true;
                }
            }
            ViewerCommand::DeleteMeasurement(id) => {
                self.measurements.delete(id);
                if self.selected_measurement == Some(id) {
                    self.selected_measurement = None;
                }
            }
            ViewerCommand::UndoMeasurement => {
                self.measurements.undo();
            }
            ViewerCommand::SelectMeasurement(id) => self.selected_measurement = id,
            ViewerCommand::ToggleMeasurementList => self.show_measurements = !self.show_measurements,
            ViewerCommand::ToggleCine => {
                self.state.cine.clock = match self.state.cine.clock {
                    Some(_) => None,
                    None if self.slice_count() > 1 => Some(CineClock::new(self.cine_rate().0, self.now)),
                    None => None,
                };
            }
            ViewerCommand::SetCineRate(fps) => {
                self.state.cine.chosen_fps = fps.filter(|f| f.is_finite()).map(|f| f.clamp(MIN_FPS, MAX_FPS));
                if self.state.cine.clock.is_some() {
                    self.state.cine.clock = Some(CineClock::new(self.cine_rate().0, self.now));
                }
            }
            ViewerCommand::ToggleMpr => self.mpr.on = self.stack.is_some() && !self.mpr.on,
            ViewerCommand::SetMprCursor(cursor) => {
                if let Some(slice) = self.mpr.set_cursor(cursor) {
                    self.state.slice = slice.min(last);
                }
            }
        }
    }

    fn use_preset(&mut self, preset: WindowPreset) {
        self.state.preset = preset;
        if let Some((image, frame)) = self.current() {
            self.state.voi = preset_voi(image, frame, preset);
        }
    }

    fn shown_meta(&self, hide_patient_details: bool) -> Option<&ImageMeta> {
        shown_meta(self.stack.as_ref(), self.phi_free_meta.as_ref(), self.state.slice, hide_patient_details)
    }

    fn meta_key(&self) -> Option<(u64, usize)> {
        meta_key(self.stack.as_ref()?, self.state.slice)
    }

    fn refresh_phi_free_meta(&mut self, hide_patient_details: bool) {
        if !hide_patient_details {
            self.phi_free_meta = None;
            return;
        }
        let Some(key) = self.meta_key() else {
            self.phi_free_meta = None;
            return;
        };
        if self.phi_free_meta.as_ref().is_some_and(|(cached, _)| *cached == key) {
            return;
        }
        self.phi_free_meta = self.current().map(|(image, _)| (key, image.meta.without_phi()));
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, hide_patient_details: bool, commands: &mut Vec<Command>) {
        self.pixels_per_point = ui.ctx().pixels_per_point();
        let last = self.slice_count().saturating_sub(1);
        self.state.slice = self.state.slice.min(last);
        self.now = ui.input(|i| i.time);
        self.advance_cine(ui.ctx());
        self.refresh_phi_free_meta(hide_patient_details);

        egui::Panel::top("viewer_toolbar").show(ui, |ui| self.toolbar_ui(ui, commands));
        egui::Panel::bottom("viewer_status").show(ui, |ui| self.status_ui(ui, hide_patient_details));
        if self.show_tags {
            egui::Panel::right("viewer_tags").default_size(420.0).show(ui, |ui| {
                // Split borrows: the browser's filter changes while the metadata is read.
                let Viewer { tags, stack, phi_free_meta, state, .. } = self;
                let meta = shown_meta(stack.as_ref(), phi_free_meta.as_ref(), state.slice, hide_patient_details);
                tags.ui(ui, meta);
            });
        }
        if self.show_measurements && self.stack.is_some() {
            egui::Panel::right("viewer_measurements")
                .default_size(320.0)
                .show(ui, |ui| self.measurement_list_ui(ui, commands));
        }
        if mpr::toggle_pressed(ui) {
            commands.push(Command::Viewer(ViewerCommand::ToggleMpr));
        }
        egui::CentralPanel::no_frame().show(ui, |ui| {
            // A series still loading shows its slices one by one until MPR has its volume.
            if self.mpr.on && self.stack.as_ref().is_some_and(|s| s.complete) {
                self.mpr_ui(ui, commands);
            } else {
                self.image_ui(ui, hide_patient_details, commands);
            }
        });
    }

    /// The three MPR planes in place of the image; the keyboard pages the acquired plane.
    fn mpr_ui(&mut self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        self.view_rect = Some(ui.max_rect());
        self.image_rect = None;
        self.overlay_rect = None;
        self.state.probe = None;
        self.keyboard_input(ui, commands);
        let Viewer { mpr, stack, state, .. } = self;
        if let Some(stack) = stack.as_ref() {
            mpr.ui(ui, stack, state.slice, &state.voi, &mut state.probe, commands);
        }
    }

    fn toolbar_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        ui.horizontal_wrapped(|ui| {
            let enabled = self.stack.is_some();
            ui.add_enabled_ui(enabled, |ui| {
                egui::ComboBox::from_label("Window preset").selected_text(self.state.preset.label()).show_ui(
                    ui,
                    |ui| {
                        for preset in WindowPreset::ALL {
                            if ui.selectable_label(self.state.preset == preset, preset.label()).clicked() {
                                commands.push(Command::Viewer(ViewerCommand::ApplyPreset(preset)));
                            }
                        }
                    },
                );
                if ui.button("Fit").on_hover_text("Fit the image to the view (double-click the image)").clicked() {
                    commands.push(Command::Viewer(ViewerCommand::Fit));
                }
                if ui.button("1:1").on_hover_text("One image pixel per screen pixel").clicked() {
                    commands.push(Command::Viewer(ViewerCommand::ActualSize));
                }
            });
            if ui.selectable_label(self.show_tags, "Tags").on_hover_text("Show the tag browser").clicked() {
                commands.push(Command::Viewer(ViewerCommand::ToggleTags));
            }
            // MPR: enabled when the series forms a volume, else the reason as the tooltip.
            let (mpr_ok, mpr_why) = match self.mpr.availability() {
                Some(Ok(_)) => (true, String::new()),
                Some(Err(reason)) => (false, format!("Not a volume: {reason}")),
                None if self.stack.is_some() => (false, "Waiting for every slice of the series".to_string()),
                None => (false, "Open a series first".to_string()),
            };
            let button = ui
                .add_enabled(mpr_ok || self.mpr.on, egui::Button::selectable(self.mpr.on, "MPR"))
                .on_hover_text("Three planes side by side with linked cross-hairs (M)")
                .on_disabled_hover_text(mpr_why);
            if button.clicked() {
                commands.push(Command::Viewer(ViewerCommand::ToggleMpr));
            }
            ui.separator();
            ui.add_enabled_ui(enabled, |ui| {
                for tool in Tool::ALL {
                    if ui.selectable_label(self.state.tool == tool, tool.label()).on_hover_text(tool.hint()).clicked() {
                        commands.push(Command::Viewer(ViewerCommand::SetTool(tool)));
                    }
                }
                if ui
                    .selectable_label(self.show_measurements, "Measurements")
                    .on_hover_text("The current image's measurements, with delete and undo")
                    .clicked()
                {
                    commands.push(Command::Viewer(ViewerCommand::ToggleMeasurementList));
                }
            });
            let count = self.slice_count();
            if count > 1 {
                ui.separator();
                // Shown 1-based, as the overlays count slices.
                let mut one_based = self.state.slice + 1;
                let slider =
                    egui::Slider::new(&mut one_based, 1..=count).text("Slice").clamping(egui::SliderClamping::Always);
                if ui.add(slider).changed() {
                    commands.push(Command::Viewer(ViewerCommand::GoToSlice(one_based.saturating_sub(1))));
                }
                ui.separator();
                let playing = self.state.cine.clock.is_some();
                let label = if playing { "Pause" } else { "Play" };
                if ui.button(label).on_hover_text("Play or pause cine (Space)").clicked() {
                    commands.push(Command::Viewer(ViewerCommand::ToggleCine));
                }
                let (rate, source) = self.cine_rate();
                let mut fps = rate;
                let drag =
                    egui::DragValue::new(&mut fps).range(MIN_FPS..=MAX_FPS).speed(0.25).max_decimals(1).suffix(" fps");
                if ui.add(drag).on_hover_text("Cine rate").changed() {
                    commands.push(Command::Viewer(ViewerCommand::SetCineRate(Some(fps))));
                }
                if source == RateSource::Chosen {
                    if ui.small_button("Header rate").on_hover_text("Use the rate from the header").clicked() {
                        commands.push(Command::Viewer(ViewerCommand::SetCineRate(None)));
                    }
                } else {
                    ui.label(RichText::new(format!("({})", source.label())).weak());
                }
            }
        });
    }

    /// Moves cine on by the frames due since the last UI frame, and asks for a repaint when
    /// the next one is due.
    fn advance_cine(&mut self, ctx: &egui::Context) {
        let count = self.slice_count();
        let Some(clock) = self.state.cine.clock.as_mut() else { return };
        if count < 2 {
            self.state.cine.clock = None;
            return;
        }
        let steps = clock.due(self.now);
        if steps > 0 {
            self.state.slice = ((self.state.slice as u64 + steps) % count as u64) as usize;
        }
        ctx.request_repaint_after(std::time::Duration::from_secs_f64(clock.until_next(self.now)));
    }

    /// The list of the current image's measurements, with delete, undo and the calibration's caveat.
    fn measurement_list_ui(&self, ui: &mut egui::Ui, commands: &mut Vec<Command>) {
        let mut send = |command| commands.push(Command::Viewer(command));
        ui.heading("Measurements");
        let (Some(key), Some((image, frame))) = (self.slice_key(), self.current()) else {
            ui.label("No image");
            return;
        };
        if let Some(caveat) = Calibration::of(&image.meta).caveat() {
            ui.label(RichText::new(format!("Note: {caveat}")).color(Color32::from_rgb(230, 180, 60)));
        }
        ui.horizontal(|ui| {
            let undo = egui::Button::new("Undo");
            if ui
                .add_enabled(self.measurements.can_undo(), undo)
                .on_hover_text("Undo the last measurement added or deleted (Ctrl+Z)")
                .clicked()
            {
                send(ViewerCommand::UndoMeasurement);
            }
            if ui.button("Hide").clicked() {
                send(ViewerCommand::ToggleMeasurementList);
            }
        });
        ui.label(RichText::new(self.state.tool.hint()).weak());
        ui.separator();
        let mut any = false;
        egui::ScrollArea::vertical().show(ui, |ui| {
            for (n, m) in self.measurements.on(key).enumerate() {
                any = true;
                let text = format!("{} {}: {}", m.shape.kind(), n + 1, measure(image, frame, &m.shape).text());
                ui.horizontal_wrapped(|ui| {
                    if ui.small_button("Delete").on_hover_text("Delete this measurement (Del when selected)").clicked()
                    {
                        send(ViewerCommand::DeleteMeasurement(m.id));
                    }
                    let selected = self.selected_measurement == Some(m.id);
                    if ui.selectable_label(selected, text).clicked() {
                        send(ViewerCommand::SelectMeasurement((!selected).then_some(m.id)));
                    }
                });
            }
        });
        if !any {
            ui.label("None on this image: pick a tool in the tool bar and draw on the image.");
        }
    }

    fn status_ui(&self, ui: &mut egui::Ui, hide_patient_details: bool) {
        ui.horizontal(|ui| {
            match self.current() {
                Some((image, _)) => {
                    // The file name only (folder names can carry patient names), and not even
                    // that while patient details are hidden: file names can be a patient's
                    // name or the SOP Instance UID the tag browser shows replaced.
                    if let Some(name) =
                        image.meta.source.as_ref().and_then(|p| p.file_name()).filter(|_| !hide_patient_details)
                    {
                        ui.label(name.to_string_lossy());
                        ui.separator();
                    }
                    ui.label(format!("{} × {}", image.cols, image.rows));
                    ui.separator();
                    ui.label(self.state.probe.as_deref().unwrap_or("Move the cursor over the image for pixel values"));
                }
                None => {
                    ui.label("No image");
                }
            }
        });
    }

    fn image_ui(&mut self, ui: &mut egui::Ui, hide_patient_details: bool, commands: &mut Vec<Command>) {
        let (rect, response) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
        response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, "Image view"));
        self.view_rect = Some(rect);
        self.image_rect = None;
        self.overlay_rect = None;
        ui.painter_at(rect).rect_filled(rect, 0.0, Color32::BLACK);
        self.state.probe = None;

        if self.stack.is_none() {
            ui.put(
                rect,
                egui::Label::new(RichText::new("Open a file or folder, or drop one here").color(Color32::GRAY))
                    .selectable(false),
            );
            return;
        }
        if rect.width() < 1.0 || rect.height() < 1.0 {
            return;
        }
        self.handle_input(ui, rect, &response, commands);

        let Some((cols, rows)) = self.current().map(|(image, _)| (image.cols as f32, image.rows as f32)) else {
            return;
        };
        if self.state.fit {
            self.state.zoom = (rect.width() / cols).min(rect.height() / rows).clamp(MIN_ZOOM, MAX_ZOOM);
            self.state.pan = Vec2::ZERO;
        }
        let image_size = Vec2::new(cols, rows) * self.state.zoom;
        // Keep some of the image in view however far it is dragged.
        let limit = ((rect.size() + image_size) / 2.0 - Vec2::splat(MIN_VISIBLE)).max(Vec2::ZERO);
        self.state.pan = self.state.pan.clamp(-limit, limit);
        let image_rect = Rect::from_center_size(rect.center() + self.state.pan, image_size);

        match self.texture_id(ui.ctx()) {
            Some(texture) => {
                let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
                ui.painter_at(rect).image(texture, image_rect, uv, Color32::WHITE);
                self.image_rect = Some(image_rect);
                if let Some((overlay, opacity)) = self.overlay {
                    let tint = Color32::from_white_alpha((opacity.clamp(0.0, 1.0) * 255.0).round() as u8);
                    ui.painter_at(rect).image(overlay, image_rect, uv, tint);
                    self.overlay_rect = Some(image_rect);
                }
            }
            None => {
                ui.put(rect, egui::Label::new("This slice cannot be displayed").selectable(false));
            }
        }

        self.measure_input(ui, &response, image_rect, commands);
        self.paint_measurements(ui, rect, image_rect);

        if let Some(pointer) =
            ui.input(|i| i.pointer.hover_pos()).filter(|p| ui.rect_contains_pointer(rect) && rect.contains(*p))
        {
            let at = (pointer - image_rect.min) / self.state.zoom;
            if at.x >= 0.0 && at.y >= 0.0 {
                self.state.probe = self
                    .current()
                    .and_then(|(image, frame)| overlay::probe_text(image, frame, at.x as usize, at.y as usize));
            }
        }
        self.overlays_ui(ui, rect, hide_patient_details);
    }

    /// A left-drag (or clicks, for an angle) with a measuring tool becomes a measurement, in
    /// image coordinates so that it stays on the anatomy whatever the zoom and pan.
    fn measure_input(
        &mut self,
        ui: &egui::Ui,
        response: &egui::Response,
        image_rect: Rect,
        commands: &mut Vec<Command>,
    ) {
        let tool = self.state.tool;
        if tool == Tool::Navigate {
            self.drawing.clear();
            return;
        }
        let zoom = self.state.zoom.max(MIN_ZOOM);
        let to_image = |p: Pos2| {
            Point::new(f64::from((p.x - image_rect.min.x) / zoom), f64::from((p.y - image_rect.min.y) / zoom))
        };
        let pointer = ui.input(|i| i.pointer.latest_pos());
        let mut add = |shape| commands.push(Command::Viewer(ViewerCommand::AddMeasurement(shape)));
        if tool == Tool::Angle {
            if response.clicked_by(PointerButton::Primary) {
                if let Some(p) = response.interact_pointer_pos() {
                    self.drawing.push(to_image(p));
                }
            }
            if let [a, vertex, b] = self.drawing[..] {
                add(Shape::Angle { a, vertex, b });
                self.drawing.clear();
            }
            return;
        }
        if response.drag_started_by(PointerButton::Primary) {
            if let Some(origin) = ui.input(|i| i.pointer.press_origin()) {
                self.drawing = vec![to_image(origin), to_image(origin)];
            }
        }
        if self.drawing.len() == 2 {
            if let Some(p) = pointer {
                self.drawing[1] = to_image(p);
            }
        }
        if response.drag_stopped_by(PointerButton::Primary) && self.drawing.len() == 2 {
            let (a, b) = (self.drawing[0], self.drawing[1]);
            // A press without a real drag draws nothing.
            if (a.x - b.x).abs().max((a.y - b.y).abs()) >= 0.5 {
                add(match tool {
                    Tool::Length => Shape::Length { a, b },
                    Tool::Rectangle => Shape::Rectangle { a, b },
                    _ => Shape::Ellipse { a, b },
                });
            }
            self.drawing.clear();
        }
    }

    /// The current slice's measurements (and the one being drawn) over the image.
    fn paint_measurements(&self, ui: &egui::Ui, rect: Rect, image_rect: Rect) {
        let (Some(key), Some((image, frame))) = (self.slice_key(), self.current()) else { return };
        let painter = ui.painter_at(rect);
        let zoom = self.state.zoom;
        let to_screen =
            |p: Point| Pos2::new(image_rect.min.x + p.x as f32 * zoom, image_rect.min.y + p.y as f32 * zoom);
        for (n, m) in self.measurements.on(key).enumerate() {
            let colour = if self.selected_measurement == Some(m.id) {
                Color32::from_rgb(255, 140, 0)
            } else {
                Color32::from_rgb(255, 230, 0)
            };
            let anchor = paint_shape(&painter, &m.shape, &to_screen, Stroke::new(1.5, colour));
            let reading = measure(image, frame, &m.shape);
            let text = match &reading {
                crate::measure::Reading::Roi { stats: Ok(s), value_units, .. } => {
                    format!("{}: mean {:.1} {value_units}, SD {:.1}", n + 1, s.mean, s.sd)
                }
                other => format!("{}: {}", n + 1, other.text()),
            };
            let galley = painter.layout_no_wrap(text, FontId::proportional(13.0), colour);
            let at = Rect::from_min_size(anchor + Vec2::new(6.0, 4.0), galley.size()).expand(2.0);
            painter.rect_filled(at, 2.0, Color32::from_black_alpha(160));
            painter.galley(at.min + Vec2::splat(2.0), galley, colour);
        }
        // The measurement being drawn: its points so far, then the pointer.
        let pointer = ui.input(|i| i.pointer.hover_pos());
        let preview = Stroke::new(1.0, Color32::from_rgb(120, 220, 255));
        match (self.state.tool, &self.drawing[..]) {
            (Tool::Angle, points) if !points.is_empty() => {
                let mut screen: Vec<Pos2> = points.iter().map(|&p| to_screen(p)).collect();
                screen.extend(pointer);
                painter.add(egui::Shape::line(screen, preview));
            }
            (Tool::Length, [a, b]) => {
                paint_shape(&painter, &Shape::Length { a: *a, b: *b }, &to_screen, preview);
            }
            (Tool::Rectangle, [a, b]) => {
                paint_shape(&painter, &Shape::Rectangle { a: *a, b: *b }, &to_screen, preview);
            }
            (Tool::Ellipse, [a, b]) => {
                paint_shape(&painter, &Shape::Ellipse { a: *a, b: *b }, &to_screen, preview);
            }
            _ => {}
        }
    }

    /// The texture of the current slice, re-rendered only when the slice or the VOI changed.
    fn texture_id(&mut self, ctx: &egui::Context) -> Option<egui::TextureId> {
        let stack = self.stack.as_ref()?;
        let (image, frame) = stack.slice(self.state.slice)?;
        let key = RenderKey {
            stack_id: stack.id,
            slice: self.state.slice,
            voi: (!image.is_color()).then(|| self.state.voi.clone()),
        };
        if self.texture.as_ref().is_some_and(|(cached, _)| *cached == key) {
            return self.texture.as_ref().map(|(_, texture)| texture.id());
        }
        let max_side = ctx.input(|i| i.max_texture_side).max(1);
        let Some(pixels) = render_color_image(image, frame, &self.state.voi, max_side) else {
            self.texture = None;
            return None;
        };
        match &mut self.texture {
            Some((cached, texture)) => {
                texture.set(pixels, TextureOptions::LINEAR);
                *cached = key;
            }
            None => self.texture = Some((key, ctx.load_texture("melo-slice", pixels, TextureOptions::LINEAR))),
        }
        self.texture.as_ref().map(|(_, texture)| texture.id())
    }

    /// Mouse and keyboard on the image become commands.
    fn handle_input(&mut self, ui: &egui::Ui, rect: Rect, response: &egui::Response, commands: &mut Vec<Command>) {
        let mut send = |command| commands.push(Command::Viewer(command));
        let delta = response.drag_delta();
        if delta != Vec2::ZERO {
            if response.dragged_by(PointerButton::Secondary) {
                send(ViewerCommand::AdjustWindow { dx: delta.x, dy: delta.y });
            } else if response.dragged_by(PointerButton::Middle)
                || (response.dragged_by(PointerButton::Primary) && self.state.tool == Tool::Navigate)
            {
                send(ViewerCommand::Pan(delta));
            }
        }
        if response.double_clicked() {
            send(ViewerCommand::Fit);
        }

        // Raw wheel events rather than egui's smoothed scroll: one notch is one slice, and
        // egui would turn Ctrl+wheel into its own zoom.
        let pointer = ui.input(|i| i.pointer.hover_pos());
        if let Some(anchor) = pointer.filter(|p| rect.contains(*p) && ui.rect_contains_pointer(rect)) {
            let wheels: Vec<(MouseWheelUnit, Vec2, Modifiers)> = ui.input(|i| {
                i.events
                    .iter()
                    .filter_map(|event| match event {
                        egui::Event::MouseWheel { unit, delta, modifiers, .. } => Some((*unit, *delta, *modifiers)),
                        _ => None,
                    })
                    .collect()
            });
            for (unit, delta, modifiers) in wheels {
                // Some platforms turn Shift+wheel into horizontal scrolling.
                let amount = if delta.y != 0.0 { delta.y } else { delta.x };
                let lines = match unit {
                    MouseWheelUnit::Line => amount,
                    MouseWheelUnit::Point => amount / POINTS_PER_LINE,
                    MouseWheelUnit::Page => amount * 10.0,
                };
                if modifiers.ctrl || modifiers.command || modifiers.shift {
                    // Wheel towards the user (negative) goes forward through the stack.
                    self.pending_wheel_lines -= lines;
                    let steps = self.pending_wheel_lines.trunc();
                    if steps != 0.0 {
                        self.pending_wheel_lines -= steps;
                        send(ViewerCommand::StepSlice(steps as i64));
                    }
                } else if lines != 0.0 {
                    send(ViewerCommand::ZoomAt { factor: ZOOM_PER_LINE.powf(lines), anchor });
                }
            }
        }

        self.keyboard_input(ui, commands);
    }

    /// Keys on the viewer: slices, tools, undo, cine.
    fn keyboard_input(&self, ui: &egui::Ui, commands: &mut Vec<Command>) {
        let mut send = |command| commands.push(Command::Viewer(command));
        // Arrow keys page through the stack unless a widget (a text box, the slider) has the
        // keyboard: egui uses arrows there to move the cursor or the focus.
        if ui.ctx().memory(|m| m.focused().is_none()) {
            let steps = ui.input_mut(|i| {
                let mut steps = 0i64;
                for (key, step) in [
                    (Key::ArrowDown, 1),
                    (Key::ArrowRight, 1),
                    (Key::ArrowUp, -1),
                    (Key::ArrowLeft, -1),
                    (Key::PageDown, 10),
                    (Key::PageUp, -10),
                ] {
                    steps += step * i.count_and_consume_key(Modifiers::NONE, key) as i64;
                }
                steps
            });
            if steps != 0 {
                send(ViewerCommand::StepSlice(steps));
            }
            if ui.input_mut(|i| i.consume_key(Modifiers::NONE, Key::Home)) {
                send(ViewerCommand::GoToSlice(0));
            }
            if ui.input_mut(|i| i.consume_key(Modifiers::NONE, Key::End)) {
                send(ViewerCommand::GoToSlice(usize::MAX));
            }
            for tool in Tool::ALL {
                if ui.input_mut(|i| i.consume_key(Modifiers::NONE, tool.key())) {
                    send(ViewerCommand::SetTool(tool));
                }
            }
            if ui.input_mut(|i| i.consume_key(Modifiers::COMMAND, Key::Z)) {
                send(ViewerCommand::UndoMeasurement);
            }
            if let Some(id) = self.selected_measurement {
                if ui.input_mut(|i| i.consume_key(Modifiers::NONE, Key::Delete)) {
                    send(ViewerCommand::DeleteMeasurement(id));
                }
            }
            if ui.input_mut(|i| i.consume_key(Modifiers::NONE, Key::Space)) {
                send(ViewerCommand::ToggleCine);
            }
        }
    }

    /// Text in the four corners and orientation labels on the edges. Drawn as labels (not
    /// painted text) so screen readers, and tests, can find them.
    fn overlays_ui(&self, ui: &mut egui::Ui, rect: Rect, hide_patient_details: bool) {
        // Too small a view for text: the overlays would cover the image (or have no room).
        if rect.width() < 120.0 || rect.height() < 80.0 {
            return;
        }
        let Some((image, _)) = self.current() else { return };
        let Some(meta) = self.shown_meta(hide_patient_details) else {
            return;
        };
        let count = self.slice_count();

        let top_left = if hide_patient_details { Vec::new() } else { overlay::patient_lines(meta) };
        let top_right = overlay::study_lines(meta);
        let single_file = self.stack.as_ref().is_some_and(|s| s.images.len() == 1);
        let mut bottom_left = vec![overlay::position_line(self.state.slice, count, single_file && count > 1)];
        if !image.is_color() {
            bottom_left.push(overlay::window_line(self.state.window()));
        }
        let bottom_right = vec![overlay::zoom_line(self.state.zoom, self.pixels_per_point)];

        let inner = rect.shrink(6.0);
        corner(ui, inner, Layout::top_down(Align::Min), &top_left);
        corner(ui, inner, Layout::top_down(Align::Max), &top_right);
        corner(ui, inner, Layout::bottom_up(Align::Min), &bottom_left);
        corner(ui, inner, Layout::bottom_up(Align::Max), &bottom_right);

        if let Some(orientation) = &meta.image_orientation {
            let [left, right, top, bottom] = orientation_labels(orientation);
            let size = Vec2::new(40.0, 20.0);
            let places = [
                (Pos2::new(inner.left() + size.x / 2.0, inner.center().y), left),
                (Pos2::new(inner.right() - size.x / 2.0, inner.center().y), right),
                (Pos2::new(inner.center().x, inner.top() + size.y / 2.0), top),
                (Pos2::new(inner.center().x, inner.bottom() - size.y / 2.0), bottom),
            ];
            for (center, text) in places {
                if !text.is_empty() {
                    ui.put(Rect::from_center_size(center, size), overlay_label(&text));
                }
            }
        }
    }
}

/// Strokes a measurement's shape; returns where its label goes (screen points).
fn paint_shape(painter: &egui::Painter, shape: &Shape, to_screen: &dyn Fn(Point) -> Pos2, stroke: Stroke) -> Pos2 {
    match *shape {
        Shape::Length { a, b } => {
            let (a, b) = (to_screen(a), to_screen(b));
            painter.line_segment([a, b], stroke);
            painter.circle_stroke(a, 2.5, stroke);
            painter.circle_stroke(b, 2.5, stroke);
            b
        }
        Shape::Angle { a, vertex, b } => {
            let (a, v, b) = (to_screen(a), to_screen(vertex), to_screen(b));
            painter.line_segment([v, a], stroke);
            painter.line_segment([v, b], stroke);
            v
        }
        Shape::Rectangle { a, b } => {
            let r = Rect::from_two_pos(to_screen(a), to_screen(b));
            painter.rect_stroke(r, 0.0, stroke, StrokeKind::Middle);
            r.right_bottom()
        }
        Shape::Ellipse { a, b } => {
            let r = Rect::from_two_pos(to_screen(a), to_screen(b));
            painter.add(egui::Shape::ellipse_stroke(r.center(), r.size() / 2.0, stroke));
            r.right_bottom()
        }
    }
}

fn meta_key(stack: &SliceStack, slice: usize) -> Option<(u64, usize)> {
    Some((stack.id, stack.slices.get(slice)?.image))
}

/// The metadata overlays and the tag browser may show: with patient details removed while
/// they are hidden (from the cache kept by `refresh_phi_free_meta`). Never falls back to the
/// full metadata when they are hidden.
fn shown_meta<'a>(
    stack: Option<&'a SliceStack>,
    phi_free_meta: Option<&'a ((u64, usize), ImageMeta)>,
    slice: usize,
    hide_patient_details: bool,
) -> Option<&'a ImageMeta> {
    let stack = stack?;
    if !hide_patient_details {
        return stack.slice(slice).map(|(image, _)| &image.meta);
    }
    let key = meta_key(stack, slice)?;
    phi_free_meta.filter(|(cached, _)| *cached == key).map(|(_, meta)| meta)
}

/// Lines of overlay text stacked from one corner of `rect`.
fn corner(ui: &mut egui::Ui, rect: Rect, layout: Layout, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let mut corner_ui = ui.new_child(UiBuilder::new().max_rect(rect).layout(layout));
    // Bottom-up layouts stack upwards: add the last line first so the text reads downwards.
    let bottom_up = layout.main_dir() == egui::Direction::BottomUp;
    corner_ui.spacing_mut().item_spacing.y = 0.0;
    let ordered: Vec<&String> = if bottom_up { lines.iter().rev().collect() } else { lines.iter().collect() };
    for line in ordered {
        corner_ui.add(overlay_label(line));
    }
}

pub(super) fn overlay_label(text: &str) -> egui::Label {
    // A dark outline is not available for labels; a translucent backing keeps the text
    // readable on bright images.
    egui::Label::new(
        RichText::new(text).color(Color32::from_rgb(235, 235, 200)).background_color(Color32::from_black_alpha(150)),
    )
    .selectable(false)
    .wrap_mode(egui::TextWrapMode::Extend)
}
