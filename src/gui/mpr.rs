//! The viewer's MPR mode: the volume's three planes side by side (see [`crate::volume`]), each
//! drawn with its physical aspect, the viewer's window/level on all three, and linked
//! cross-hairs: a click or drag in one plane moves the other two planes through that point.

use egui::{
    Color32, FontId, Key, Modifiers, MouseWheelUnit, PointerButton, Pos2, Rect, RichText, Sense, Stroke, TextureHandle,
    TextureOptions, Vec2,
};

use super::stack::{render_color_image, SliceStack};
use super::viewer::{overlay_label, ViewerCommand};
use super::Command;
use crate::display::{orientation_labels, Voi};
use crate::image::{ImageMeta, MedicalImage};
use crate::volume::{check, Cursor, Geometry, PlaneKind, Volume};

/// Each plane's colour: its frame, and the cross-hair line that shows it in the other two.
fn colour(kind: PlaneKind) -> Color32 {
    match kind {
        PlaneKind::Acquired => Color32::from_rgb(255, 210, 60),
        PlaneKind::Reformat1 => Color32::from_rgb(80, 200, 255),
        PlaneKind::Reformat2 => Color32::from_rgb(255, 110, 200),
    }
}

fn slot(kind: PlaneKind) -> usize {
    match kind {
        PlaneKind::Acquired => 0,
        PlaneKind::Reformat1 => 1,
        PlaneKind::Reformat2 => 2,
    }
}

/// What a plane's texture was rendered from.
#[derive(Debug, Clone, PartialEq)]
struct PlaneKey {
    stack_id: u64,
    index: usize,
    voi: Voi,
}

/// A rendered plane: its key, its values (for the value under the pointer), its texture.
struct RenderedPlane {
    key: PlaneKey,
    width: usize,
    height: usize,
    values: Vec<f32>,
    texture: TextureHandle,
}

/// MPR state of the viewer.
#[derive(Default)]
pub struct Mpr {
    /// MPR mode is on (the planes replace the single image).
    pub on: bool,
    /// Whether the current series forms a volume, checked when it is loaded (geometry only,
    /// no pixels copied); the reason when it does not.
    pub check: Option<(u64, Result<Geometry, String>)>,
    /// The volume, built when MPR is first shown for a series (it copies every slice).
    volume: Option<(u64, Volume)>,
    /// Where the three planes cross.
    pub cursor: Cursor,
    /// Where each plane's image was drawn last frame, acquired first (screen points).
    pub plane_rects: [Option<Rect>; 3],
    textures: [Option<RenderedPlane>; 3],
    /// Fractional wheel steps per plane, carried between events.
    pending_wheel: [f32; 3],
}

impl Mpr {
    /// Checks a newly shown series; MPR stays on if it was (and the new series says why not,
    /// if it cannot).
    pub fn set_stack(&mut self, stack: &SliceStack) {
        let geometry = check(&stack.images).map_err(|e| e.to_string());
        if let Ok(g) = &geometry {
            self.cursor = g.centre();
        }
        self.check = Some((stack.id, geometry));
        self.volume = None;
        self.textures = Default::default();
        self.plane_rects = [None; 3];
    }

    pub fn clear(&mut self) {
        *self = Mpr { on: self.on, ..Mpr::default() };
    }

    /// The geometry of the current series, or why it is not a volume.
    pub fn availability(&self) -> Option<&Result<Geometry, String>> {
        self.check.as_ref().map(|(_, result)| result)
    }

    pub fn geometry(&self) -> Option<&Geometry> {
        self.availability()?.as_ref().ok()
    }

    /// Moves the cursor (clamped to the volume); returns the stack slice of its acquired plane.
    pub fn set_cursor(&mut self, cursor: Cursor) -> Option<usize> {
        let g = self.geometry()?;
        let cursor = Cursor {
            slice: cursor.slice.min(g.slices() - 1),
            row: cursor.row.min(g.rows - 1),
            col: cursor.col.min(g.cols - 1),
        };
        let slice = g.order[cursor.slice];
        self.cursor = cursor;
        Some(slice)
    }

    /// Keeps the cursor's slice on the viewer's slice (arrow keys, the slider and cine move it).
    fn follow_slice(&mut self, stack_slice: usize) {
        if let Some(k) = self.geometry().and_then(|g| g.order.iter().position(|&i| i == stack_slice)) {
            self.cursor.slice = k;
        }
    }

    /// A plane's heading: its name (with the nearest patient plane when oblique) and position.
    pub fn plane_label(g: &Geometry, kind: PlaneKind, index: usize) -> String {
        let name = g.plane_name(kind);
        let near =
            if g.is_axis_aligned() { String::new() } else { format!(" (≈ {})", g.nearest_patient_plane(kind)) };
        format!("{name}{near} {}/{}", index + 1, g.count(kind))
    }

    /// The three planes, or the reason the series is not a volume.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        stack: &SliceStack,
        stack_slice: usize,
        voi: &Voi,
        probe: &mut Option<String>,
        commands: &mut Vec<Command>,
    ) {
        let (rect, response) = ui.allocate_exact_size(ui.available_size(), Sense::click_and_drag());
        ui.painter_at(rect).rect_filled(rect, 0.0, Color32::BLACK);
        self.plane_rects = [None; 3];
        let geometry = match self.check.as_ref() {
            Some((id, Ok(g))) if *id == stack.id => g.clone(),
            Some((id, Err(reason))) if *id == stack.id => {
                let text = format!("This series cannot be shown as a volume (MPR): {reason}.\nPress M to go back.");
                ui.put(rect.shrink(24.0), egui::Label::new(RichText::new(text).color(Color32::LIGHT_GRAY)));
                return;
            }
            _ => return,
        };
        if response.dragged_by(PointerButton::Secondary) {
            let delta = response.drag_delta();
            commands.push(Command::Viewer(ViewerCommand::AdjustWindow { dx: delta.x, dy: delta.y }));
        }
        if self.volume.as_ref().is_none_or(|(id, _)| *id != stack.id) {
            match Volume::build(&stack.images) {
                Ok(volume) => self.volume = Some((stack.id, volume)),
                Err(e) => {
                    self.check = Some((stack.id, Err(e.to_string())));
                    return;
                }
            }
        }
        self.follow_slice(stack_slice);
        let meta = &stack.images[geometry.order[0]].meta;

        let gap = 6.0;
        let cell_width = ((rect.width() - 2.0 * gap) / 3.0).max(1.0);
        for kind in PlaneKind::ALL {
            let n = slot(kind);
            let cell = Rect::from_min_size(
                rect.min + Vec2::new(n as f32 * (cell_width + gap), 0.0),
                Vec2::new(cell_width, rect.height()),
            );
            self.plane_ui(ui, cell, kind, &geometry, meta, stack.id, voi, probe, commands);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plane_ui(
        &mut self,
        ui: &mut egui::Ui,
        cell: Rect,
        kind: PlaneKind,
        g: &Geometry,
        meta: &ImageMeta,
        stack_id: u64,
        voi: &Voi,
        probe: &mut Option<String>,
        commands: &mut Vec<Command>,
    ) {
        let index = g.plane_index(kind, self.cursor);
        let heading = Mpr::plane_label(g, kind, index);
        let title_height = 22.0;
        let title = Rect::from_min_size(cell.min, Vec2::new(cell.width(), title_height));
        ui.put(title, egui::Label::new(RichText::new(&heading).color(colour(kind)).strong()).selectable(false));
        let area = Rect::from_min_max(cell.min + Vec2::new(0.0, title_height), cell.max);
        if area.width() < 8.0 || area.height() < 8.0 {
            return;
        }
        let Some(texture) = self.texture(ui.ctx(), kind, index, stack_id, voi, meta) else { return };
        let (width, height) = (texture.width, texture.height);
        let texture_id = texture.texture.id();
        let pixel_mm = g.plane_pixel_mm(kind);
        // The physical size in mm, fitted to the cell: the aspect comes from the spacings.
        let size_mm = Vec2::new((width as f64 * pixel_mm[1]) as f32, (height as f64 * pixel_mm[0]) as f32);
        let scale = (area.width() / size_mm.x).min(area.height() / size_mm.y);
        let image_rect = Rect::from_center_size(area.center(), size_mm * scale);
        let response =
            ui.interact(image_rect, ui.scope_id().with(("melo_mpr_plane", slot(kind))), Sense::click_and_drag());
        response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, format!("{heading} view")));
        let painter = ui.painter_at(cell);
        let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
        painter.image(texture_id, image_rect, uv, Color32::WHITE);
        painter.rect_stroke(image_rect, 0.0, Stroke::new(1.0, colour(kind)), egui::StrokeKind::Outside);
        self.plane_rects[slot(kind)] = Some(image_rect);

        let to_pixel = |p: Pos2| {
            let at = (p - image_rect.min) / image_rect.size();
            ((at.x * width as f32).floor(), (at.y * height as f32).floor())
        };
        // A click or drag moves the cross-hair, and so the other two planes.
        if response.clicked_by(PointerButton::Primary) || response.dragged_by(PointerButton::Primary) {
            if let Some(p) = response.interact_pointer_pos() {
                let (x, y) = to_pixel(p);
                let (x, y) = (x.clamp(0.0, (width - 1) as f32) as usize, y.clamp(0.0, (height - 1) as f32) as usize);
                let moved = g.click(kind, self.cursor, x, y);
                if moved != self.cursor {
                    commands.push(Command::Viewer(ViewerCommand::SetMprCursor(moved)));
                }
            }
        }
        if response.dragged_by(PointerButton::Secondary) {
            let delta = response.drag_delta();
            commands.push(Command::Viewer(ViewerCommand::AdjustWindow { dx: delta.x, dy: delta.y }));
        }
        if let Some(p) = response.hover_pos() {
            let (x, y) = to_pixel(p);
            if x >= 0.0 && y >= 0.0 && (x as usize) < width && (y as usize) < height {
                let value = self.textures[slot(kind)].as_ref().map(|t| t.values[y as usize * width + x as usize]);
                let units = if meta.units.is_empty() { String::new() } else { format!(" {}", meta.units) };
                *probe = value.map(|v| format!("{heading}: x {x}  y {y}  {v}{units}"));
            }
            self.wheel(ui, kind, g, commands);
        }

        // The cross-hair: where the other two planes cut this one, in their colours.
        let (cx, cy) = g.cursor_in_plane(kind, self.cursor);
        let sx = image_rect.min.x + (cx as f32 + 0.5) * image_rect.width() / width as f32;
        let sy = image_rect.min.y + (cy as f32 + 0.5) * image_rect.height() / height as f32;
        let (vertical, horizontal) = match kind {
            PlaneKind::Acquired => (PlaneKind::Reformat2, PlaneKind::Reformat1),
            PlaneKind::Reformat1 => (PlaneKind::Reformat2, PlaneKind::Acquired),
            PlaneKind::Reformat2 => (PlaneKind::Reformat1, PlaneKind::Acquired),
        };
        painter.line_segment(
            [Pos2::new(sx, image_rect.top()), Pos2::new(sx, image_rect.bottom())],
            Stroke::new(1.0, colour(vertical).gamma_multiply(0.8)),
        );
        painter.line_segment(
            [Pos2::new(image_rect.left(), sy), Pos2::new(image_rect.right(), sy)],
            Stroke::new(1.0, colour(horizontal).gamma_multiply(0.8)),
        );

        // Edge labels from the plane's directions (R/L, A/P, H/F).
        if image_rect.width() > 60.0 && image_rect.height() > 40.0 {
            let [left, right, top, bottom] = orientation_labels(&g.plane_orientation(kind));
            let size = Vec2::new(36.0, 18.0);
            let inner = image_rect.shrink(2.0);
            for (center, text) in [
                (Pos2::new(inner.left() + size.x / 2.0, inner.center().y), left),
                (Pos2::new(inner.right() - size.x / 2.0, inner.center().y), right),
                (Pos2::new(inner.center().x, inner.top() + size.y / 2.0), top),
                (Pos2::new(inner.center().x, inner.bottom() - size.y / 2.0), bottom),
            ] {
                if !text.is_empty() {
                    ui.put(Rect::from_center_size(center, size), overlay_label(&text));
                }
            }
        }
        let spacing = format!("{:.2} × {:.2} mm", pixel_mm[1], pixel_mm[0]);
        let galley = painter.layout_no_wrap(spacing, FontId::proportional(11.0), Color32::GRAY);
        let at = Pos2::new(cell.left() + 4.0, cell.bottom() - galley.size().y - 2.0);
        painter.galley(at, galley, Color32::GRAY);
    }

    /// The wheel over a plane steps through that plane's positions.
    fn wheel(&mut self, ui: &egui::Ui, kind: PlaneKind, g: &Geometry, commands: &mut Vec<Command>) {
        let lines: f32 = ui.input(|i| {
            i.events
                .iter()
                .filter_map(|event| match event {
                    egui::Event::MouseWheel { unit, delta, .. } => {
                        let amount = if delta.y != 0.0 { delta.y } else { delta.x };
                        Some(match unit {
                            MouseWheelUnit::Line => amount,
                            MouseWheelUnit::Point => amount / 40.0,
                            MouseWheelUnit::Page => amount * 10.0,
                        })
                    }
                    _ => None,
                })
                .sum()
        });
        let pending = &mut self.pending_wheel[slot(kind)];
        *pending -= lines;
        let steps = pending.trunc();
        if steps == 0.0 {
            return;
        }
        *pending -= steps;
        let step = |v: usize, last: usize| (v as i64 + steps as i64).clamp(0, last as i64) as usize;
        let c = self.cursor;
        let moved = match kind {
            PlaneKind::Acquired => Cursor { slice: step(c.slice, g.slices() - 1), ..c },
            PlaneKind::Reformat1 => Cursor { row: step(c.row, g.rows - 1), ..c },
            PlaneKind::Reformat2 => Cursor { col: step(c.col, g.cols - 1), ..c },
        };
        if moved != c {
            commands.push(Command::Viewer(ViewerCommand::SetMprCursor(moved)));
        }
    }

    /// A plane's texture, re-rendered when the plane, the series or the VOI changed.
    fn texture(
        &mut self,
        ctx: &egui::Context,
        kind: PlaneKind,
        index: usize,
        stack_id: u64,
        voi: &Voi,
        meta: &ImageMeta,
    ) -> Option<&RenderedPlane> {
        let key = PlaneKey { stack_id, index, voi: voi.clone() };
        let n = slot(kind);
        if self.textures[n].as_ref().is_some_and(|t| t.key == key) {
            return self.textures[n].as_ref();
        }
        let (_, volume) = self.volume.as_ref()?;
        let plane = volume.plane(kind, index)?;
        // A one-frame grey image, so the viewer's rendering (VOI, MONOCHROME1, the texture
        // size limit) applies unchanged.
        let image = MedicalImage {
            meta: ImageMeta { photometric: meta.photometric.clone(), ..ImageMeta::default() },
            frames: 1,
            rows: plane.height,
            cols: plane.width,
            channels: 1,
            values: plane.values,
        };
        let max_side = ctx.input(|i| i.max_texture_side).max(1);
        let pixels = render_color_image(&image, 0, voi, max_side)?;
        let texture = match self.textures[n].take() {
            Some(mut old) => {
                old.texture.set(pixels, TextureOptions::NEAREST);
                old.texture
            }
            None => ctx.load_texture(format!("melo-mpr-{n}"), pixels, TextureOptions::NEAREST),
        };
        self.textures[n] =
            Some(RenderedPlane { key, width: image.cols, height: image.rows, values: image.values, texture });
        self.textures[n].as_ref()
    }
}

/// The M key toggles MPR (when no widget has the keyboard).
pub fn toggle_pressed(ui: &egui::Ui) -> bool {
    ui.ctx().memory(|m| m.focused().is_none()) && ui.input_mut(|i| i.consume_key(Modifiers::NONE, Key::M))
}
