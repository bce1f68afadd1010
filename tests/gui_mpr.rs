//! Headless tests of the viewer's MPR mode: the real `MeloApp` driven through egui_kittest on
//! the shipped 20-slice MR series (and a copy of it with a slice missing).

mod common;

use std::path::{Path, PathBuf};

use egui::{Key, Pos2, Rect, Vec2};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use melo::gui::{MeloApp, ViewerCommand};
use melo::volume::Cursor;

fn mr_folder() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/samples/mr_brain_series");
    assert!(path.exists(), "fixture {} is missing", path.display());
    path
}

fn open(paths: Vec<PathBuf>) -> Harness<'static, MeloApp> {
    let mut harness = Harness::builder()
        .with_size(Vec2::new(1400.0, 800.0))
        .with_max_steps(32)
        .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), MeloApp::with_paths(paths));
    common::wait_until_loaded(&mut harness);
    harness
}

/// The plane headings shown: label text starting with `prefix`, the views themselves left out.
fn labels(harness: &Harness<'_, MeloApp>, prefix: &str) -> Vec<String> {
    harness
        .query_all_by_label_contains(prefix)
        .filter_map(|n| n.accesskit_node().label().or_else(|| n.accesskit_node().value()))
        .filter(|l| l.starts_with(prefix) && !l.ends_with(" view"))
        .collect()
}

fn view_rect(harness: &Harness<'_, MeloApp>, plane: &str) -> Rect {
    let views: Vec<_> = harness
        .query_all_by_label_contains(" view")
        .filter(|n| n.accesskit_node().label().is_some_and(|l| l.starts_with(plane)))
        .collect();
    assert_eq!(views.len(), 1, "one {plane} view");
    views[0].rect()
}

fn click(harness: &mut Harness<'_, MeloApp>, at: Pos2) {
    harness.hover_at(at);
    harness.drag_at(at);
    harness.drop_at(at);
    harness.run();
}

#[test]
fn mpr_shows_three_planes_and_a_click_moves_the_others() {
    let mut harness = open(vec![mr_folder()]);
    assert_eq!(harness.state().viewer.slice_count(), 20);
    harness.get_by_label("MPR").click();
    harness.run();
    assert!(harness.state().viewer.mpr.on);
    // Oblique (tilted 7.7°): named by the acquisition, with the nearest patient plane.
    assert_eq!(labels(&harness, "Acquired"), ["Acquired (≈ axial) 1/20"]);
    assert_eq!(labels(&harness, "Reformat 1 ("), ["Reformat 1 (≈ coronal) 129/256"]);
    assert_eq!(labels(&harness, "Reformat 2 ("), ["Reformat 2 (≈ sagittal) 129/256"]);
    // MPR opens on the viewer's slice (the first), and the cross-hair at the centre of it.
    let viewer = &harness.state().viewer;
    let g = viewer.mpr.geometry().unwrap().clone();
    assert_eq!(g.order[viewer.mpr.cursor.slice], viewer.state.slice);

    // The aspect from the spacings: the reformats are 20 slices × 7.0 mm tall and
    // 256 × 0.86 mm wide; the acquired plane is square.
    let acquired = view_rect(&harness, "Acquired");
    assert!((acquired.width() / acquired.height() - 1.0).abs() < 0.01, "{acquired:?}");
    let reformat = view_rect(&harness, "Reformat 1");
    let want = (256.0 * 0.859375) / (20.0 * g.slice_spacing);
    assert!(((reformat.width() / reformat.height()) as f64 - want).abs() < 0.02, "{reformat:?} vs {want}");

    // A click in the acquired plane, a quarter in from its top-left corner: row and column
    // move (so do the reformats' planes), the slice stays.
    let at = acquired.min + acquired.size() * 0.25 + Vec2::splat(0.1);
    click(&mut harness, at);
    let cursor = harness.state().viewer.mpr.cursor;
    assert_eq!(cursor, Cursor { slice: 0, row: 64, col: 64 });
    assert_eq!(labels(&harness, "Reformat 1 ("), ["Reformat 1 (≈ coronal) 65/256"]);
    assert_eq!(labels(&harness, "Reformat 2 ("), ["Reformat 2 (≈ sagittal) 65/256"]);

    // A click in the top row of a reformat: the last slice along the normal (the head end is
    // on top), which the viewer's slice follows.
    let reformat = view_rect(&harness, "Reformat 1");
    click(&mut harness, Pos2::new(reformat.center().x, reformat.top() + 2.0));
    let viewer = &harness.state().viewer;
    assert_eq!(viewer.mpr.cursor.slice, 19);
    assert_eq!(viewer.mpr.cursor.row, 64, "the reformat's own row stays");
    assert_eq!(viewer.state.slice, g.order[19]);
    assert_eq!(labels(&harness, "Acquired"), ["Acquired (≈ axial) 20/20"]);

    // The viewer's window applies to all three: a new window re-renders each plane.
    let before = harness.state().viewer.state.window();
    harness.state_mut().send(melo::gui::Command::Viewer(ViewerCommand::AdjustWindow { dx: 40.0, dy: 0.0 }));
    harness.run();
    assert_ne!(harness.state().viewer.state.window(), before);

    // M leaves MPR; the single image shows the slice chosen there.
    harness.key_press(Key::M);
    harness.run();
    assert!(!harness.state().viewer.mpr.on);
    assert!(labels(&harness, "Reformat 1").is_empty());
    assert_eq!(harness.state().viewer.state.slice, g.order[19]);
}

#[test]
fn an_irregular_series_says_why_it_cannot_be_a_volume() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(mr_folder()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "brain_008.dcm" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut harness = open(vec![dir.path().to_path_buf()]);
    assert_eq!(harness.state().viewer.slice_count(), 19);
    assert!(harness.get_by_label("MPR").accesskit_node().is_disabled(), "MPR disabled");
    let why = "slice 8 is 14.03 mm from slice 7, the others 6.97 mm";
    let reason = harness.state().viewer.mpr.availability().unwrap().clone().unwrap_err();
    assert_eq!(reason, why);
    // The M key still asks: the reason replaces the planes.
    harness.key_press(Key::M);
    harness.run();
    assert!(harness.state().viewer.mpr.on);
    assert!(harness.query_all_by_label_contains(why).next().is_some(), "the reason is shown");
    assert!(labels(&harness, "Reformat 1").is_empty(), "no planes");
}

#[test]
fn the_help_overlay_lists_the_mpr_key() {
    assert!(melo::gui::VIEWER_KEYS.iter().any(|(key, action)| *key == "M" && action.starts_with("MPR")));
    let mut harness = open(vec![mr_folder()]);
    harness.key_press(Key::F1);
    harness.run();
    assert!(harness.query_all_by_label_contains("MPR: three planes side by side").next().is_some());
}
