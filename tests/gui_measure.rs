//! Headless tests of the viewer's measuring tools and cine: the real `MeloApp` driven through
//! egui_kittest, on the shipped CT slice and MR series.

mod common;

use std::path::{Path, PathBuf};

use egui::{Event, Key, Modifiers, PointerButton, Pos2, Vec2};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use melo::gui::{Command, MeloApp, Tool, ViewerCommand};
use melo::measure::{Calibration, Shape};

fn fixture(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(path.exists(), "fixture {} is missing", path.display());
    path
}

fn open(paths: Vec<PathBuf>) -> Harness<'static, MeloApp> {
    let mut harness = Harness::builder()
        .with_size(Vec2::new(1280.0, 800.0))
        .with_max_steps(32)
        .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), MeloApp::with_paths(paths));
    common::wait_until_loaded(&mut harness);
    harness
}

fn ct() -> Harness<'static, MeloApp> {
    open(vec![fixture("assets/samples/ct/693_J2KR.dcm")])
}

fn image_center(harness: &Harness<'_, MeloApp>) -> Pos2 {
    harness.get_by_label("Image view").rect().center()
}

fn drag(harness: &mut Harness<'_, MeloApp>, from: Pos2, to: Pos2) {
    harness.drag_at(from);
    for step in 1..=4 {
        harness.hover_at(from + (to - from) * (step as f32 / 4.0));
    }
    harness.drop_at(to);
    harness.run();
}

fn listed(harness: &Harness<'_, MeloApp>, prefix: &str) -> Vec<String> {
    harness
        .query_all_by_label_contains(prefix)
        .filter_map(|n| n.accesskit_node().label())
        .filter(|l| l.starts_with(prefix))
        .collect()
}

#[test]
fn drawing_a_length_lists_it_in_mm_and_undo_removes_it() {
    let mut harness = ct();
    harness.get_by_label("Length (L)").click();
    harness.run();
    assert_eq!(harness.state().viewer.state.tool, Tool::Length);

    let center = image_center(&harness);
    let zoom = harness.state().viewer.state.zoom;
    // 100 image pixels to the right, whatever the fit zoom.
    let to = center + Vec2::new(100.0 * zoom, 0.0);
    drag(&mut harness, center, to);

    let viewer = &harness.state().viewer;
    let key = viewer.slice_key().unwrap();
    let drawn: Vec<_> = viewer.measurements.on(key).collect();
    assert_eq!(drawn.len(), 1, "one measurement on this slice");
    let Shape::Length { a, b } = drawn[0].shape else { panic!("not a length: {:?}", drawn[0].shape) };
    assert!(((b.x - a.x) - 100.0).abs() < 0.01 && (b.y - a.y).abs() < 0.01, "{a:?} -> {b:?}");
    // The image was not panned by the drag.
    assert_eq!(viewer.state.pan, Vec2::ZERO);
    let (image, _) = viewer.current().unwrap();
    let mm = Calibration::of(&image.meta).length(a, b);
    assert!((mm - 100.0 * 0.478516).abs() < 0.01);
    let rows = listed(&harness, "Length 1: ");
    assert_eq!(rows, [format!("Length 1: {mm:.1} mm")], "listed with its length in mm");

    // It stays put in image coordinates when the view zooms.
    harness.state_mut().send(Command::Viewer(ViewerCommand::ZoomAt { factor: 2.0, anchor: center }));
    harness.run();
    assert_eq!(harness.state().viewer.measurements.all()[0].shape, Shape::Length { a, b });

    harness.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    harness.run();
    assert!(harness.state().viewer.measurements.all().is_empty(), "Ctrl+Z undid it");
    assert!(listed(&harness, "Length 1: ").is_empty());
}

#[test]
fn rectangle_roi_shows_hu_statistics_and_delete_removes_it() {
    let mut harness = ct();
    harness.key_press(Key::R);
    harness.run();
    assert_eq!(harness.state().viewer.state.tool, Tool::Rectangle);
    let center = image_center(&harness);
    let zoom = harness.state().viewer.state.zoom;
    drag(&mut harness, center - Vec2::splat(20.0 * zoom), center + Vec2::splat(20.0 * zoom));
    let rows = listed(&harness, "Rectangle 1: ");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].contains(" HU, SD ") && rows[0].contains("mm²"), "{}", rows[0]);

    harness.get_by_label("Delete").click();
    harness.run();
    assert!(listed(&harness, "Rectangle 1: ").is_empty(), "deleted");
    harness.get_by_label("Undo").click();
    harness.run();
    assert_eq!(listed(&harness, "Rectangle 1: ").len(), 1, "undo brings the deleted ROI back");
}

#[test]
fn angle_takes_three_clicks() {
    let mut harness = ct();
    harness.key_press(Key::G);
    harness.run();
    let c = image_center(&harness);
    for p in [c + Vec2::new(80.0, 0.0), c, c + Vec2::new(0.0, -80.0)] {
        harness.hover_at(p);
        for pressed in [true, false] {
            harness.event(Event::PointerButton {
                pos: p,
                button: PointerButton::Primary,
                pressed,
                modifiers: Modifiers::NONE,
            });
        }
        harness.run();
    }
    let rows = listed(&harness, "Angle 1: ");
    assert_eq!(rows, ["Angle 1: 90.0°"]);
}

#[test]
fn cine_plays_a_series_at_the_chosen_rate_and_pauses() {
    let mut harness = open(vec![fixture("assets/samples/mr_brain_series")]);
    assert_eq!(harness.state().viewer.slice_count(), 20);
    // The MR files name no rate: the default, said as such.
    assert!(harness.query_all_by_label_contains("(default)").next().is_some());
    // kittest advances the UI clock by 0.25 s a frame: at 4 fps one slice per frame.
    harness.state_mut().send(Command::Viewer(ViewerCommand::SetCineRate(Some(4.0))));
    harness.run();
    harness.get_by_label("Play").click();
    harness.step();
    let start = harness.state().viewer.state.slice;
    for _ in 0..6 {
        harness.step();
    }
    let moved = harness.state().viewer.state.slice - start;
    assert!((5..=7).contains(&moved), "6 frames of 0.25 s at 4 fps: moved {moved} slices");

    harness.key_press(Key::Space);
    harness.step();
    let paused = harness.state().viewer.state.slice;
    for _ in 0..4 {
        harness.step();
    }
    assert_eq!(harness.state().viewer.state.slice, paused, "paused");
    assert!(harness.state().viewer.state.cine.clock.is_none());
    assert!(harness.query_all_by_label("Play").next().is_some());
}

#[test]
fn without_pixel_spacing_lengths_are_in_pixels_and_the_list_says_so() {
    // The CR sample's Pixel Spacing is "0.000\0.000" and it has no Imager Pixel Spacing.
    let mut harness = open(vec![fixture("assets/samples/cr_chest/RG1_J2KR.dcm")]);
    harness.key_press(Key::L);
    harness.run();
    let center = image_center(&harness);
    drag(&mut harness, center, center + Vec2::new(0.0, 60.0));
    let rows = listed(&harness, "Length 1: ");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].ends_with(" px"), "{}", rows[0]);
    assert!(harness.query_all_by_label_contains("no pixel spacing in the header").next().is_some());
}
