//! Headless tests of the viewer window: the real `MeloApp`, driven through egui_kittest with
//! synthetic input, loading real DICOM files on its background threads.

mod common;

use std::path::{Path, PathBuf};

use egui::{Event, Key, Modifiers, MouseWheelUnit, PointerButton, Pos2, Vec2};
use egui_kittest::kittest::{NodeT, Queryable};
use egui_kittest::Harness;
use melo::display::WindowPreset;
use melo::gui::{Command, MeloApp, MessageLevel, SliceStack, ViewerCommand};

/// A committed fixture (relative to the crate root); a missing one fails the test that needs it.
fn fixture(relative: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(path.exists(), "fixture {} is missing", path.display());
    path
}

/// The shipped 20-slice MR brain series (one series, nothing else in the folder).
const MR_SERIES_SLICES: usize = 20;

fn mr_series_folder() -> PathBuf {
    fixture("assets/samples/mr_brain_series")
}

/// A single-frame CT with a patient name ("CompressedSamples^CT1", read as "CompressedSamples CT1")
/// and patient ID "1CT1".
fn ct_file() -> PathBuf {
    fixture("tests/data/dicom/CT_small.dcm")
}

fn harness(app: MeloApp) -> Harness<'static, MeloApp> {
    Harness::builder()
        .with_size(Vec2::new(1280.0, 800.0))
        .with_max_steps(32)
        .build_ui_state(|ui, app: &mut MeloApp| app.show(ui), app)
}

fn open(paths: Vec<PathBuf>) -> Harness<'static, MeloApp> {
    let mut harness = harness(MeloApp::with_paths(paths));
    common::wait_until_loaded(&mut harness);
    harness
}

fn image_center(harness: &Harness<'_, MeloApp>) -> Pos2 {
    harness.get_by_label("Image view").rect().center()
}

fn label_shown(harness: &Harness<'_, MeloApp>, text: &str) -> bool {
    harness.query_all_by_label_contains(text).next().is_some()
}

/// Opens the MR folder, which must group into exactly one series holding every slice, and
/// shows it.
fn open_series_folder() -> Harness<'static, MeloApp> {
    let harness = open(vec![mr_series_folder()]);
    let app = harness.state();
    let sizes: Vec<usize> = app.series.iter().map(|s| s.series.files.len()).collect();
    assert_eq!(sizes, [MR_SERIES_SLICES], "the MR folder must group into one series: {:?}", app.messages);
    assert_eq!(app.selected_series, Some(0), "the series is shown");
    harness
}

#[test]
fn opening_a_series_folder_loads_every_slice() {
    let files_in_folder = std::fs::read_dir(mr_series_folder()).expect("fixture folder").count();
    assert_eq!(files_in_folder, MR_SERIES_SLICES, "the fixture folder holds the series and nothing else");
    let harness = open_series_folder();
    let app = harness.state();
    // Every file is a readable slice of the one series: nothing skipped, nothing unreadable.
    let problems: Vec<&str> = app.messages.iter().map(|m| m.text.as_str()).collect();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(app.viewer.slice_count(), MR_SERIES_SLICES);
    assert_eq!(app.viewer.state.slice, 0);
    assert!(label_shown(&harness, &format!("Slice 1/{MR_SERIES_SLICES}")), "slice overlay");
}

#[test]
fn right_drag_changes_window_width_and_centre() {
    let mut harness = open_series_folder();
    let before = harness.state().viewer.state.window();

    let start = image_center(&harness);
    harness.event(Event::PointerMoved(start));
    harness.event(Event::PointerButton {
        pos: start,
        button: PointerButton::Secondary,
        pressed: true,
        modifiers: Modifiers::NONE,
    });
    let mut end = start;
    for _ in 0..10 {
        // Right and down: wider window, higher centre.
        end += Vec2::new(12.0, 8.0);
        harness.event(Event::PointerMoved(end));
    }
    harness.event(Event::PointerButton {
        pos: end,
        button: PointerButton::Secondary,
        pressed: false,
        modifiers: Modifiers::NONE,
    });
    harness.run();

    let after = harness.state().viewer.state.window();
    assert!(after.width > before.width, "width {} -> {}", before.width, after.width);
    assert!(after.center > before.center, "centre {} -> {}", before.center, after.center);
    // Nothing else moved: a right-drag is not a pan.
    assert_eq!(harness.state().viewer.state.pan, Vec2::ZERO);

    // And left: narrower; up: lower centre.
    let before = after;
    harness.event(Event::PointerMoved(start));
    harness.event(Event::PointerButton {
        pos: start,
        button: PointerButton::Secondary,
        pressed: true,
        modifiers: Modifiers::NONE,
    });
    let mut end = start;
    for _ in 0..10 {
        end -= Vec2::new(12.0, 8.0);
        harness.event(Event::PointerMoved(end));
    }
    harness.event(Event::PointerButton {
        pos: end,
        button: PointerButton::Secondary,
        pressed: false,
        modifiers: Modifiers::NONE,
    });
    harness.run();
    let after = harness.state().viewer.state.window();
    assert!(after.width < before.width, "width {} -> {}", before.width, after.width);
    assert!(after.center < before.center, "centre {} -> {}", before.center, after.center);
}

/// The slider's value as assistive technology (and this test) reads it.
fn slider_value(harness: &Harness<'_, MeloApp>) -> Option<f64> {
    harness.query_all_by_label("Slice").find_map(|node| node.accesskit_node().numeric_value())
}

#[test]
fn arrow_keys_and_ctrl_wheel_move_through_slices() {
    let mut harness = open_series_folder();
    let count = harness.state().viewer.slice_count();
    assert!(count > 2, "needs a multi-slice series");
    assert_eq!(harness.state().viewer.state.slice, 0);
    assert_eq!(slider_value(&harness), Some(1.0), "slider shows slice 1");

    harness.key_press(Key::ArrowDown);
    harness.run();
    assert_eq!(harness.state().viewer.state.slice, 1);
    assert_eq!(slider_value(&harness), Some(2.0), "slider follows the keyboard");

    harness.key_press(Key::ArrowRight);
    harness.run();
    assert_eq!(harness.state().viewer.state.slice, 2);

    harness.key_press(Key::ArrowUp);
    harness.run();
    assert_eq!(harness.state().viewer.state.slice, 1);

    // Ctrl + one wheel notch towards the user: next slice, not a zoom.
    let zoom = harness.state().viewer.state.zoom;
    let center = image_center(&harness);
    harness.event(Event::PointerMoved(center));
    harness.event(Event::MouseWheel {
        unit: MouseWheelUnit::Line,
        delta: Vec2::new(0.0, -1.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Wheel,
        modifiers: Modifiers::CTRL,
    });
    harness.run();
    assert_eq!(harness.state().viewer.state.slice, 2);
    assert_eq!(harness.state().viewer.state.zoom, zoom);
    assert_eq!(slider_value(&harness), Some(3.0));
    assert!(label_shown(&harness, &format!("Slice 3/{count}")));

    // Never past the ends.
    harness.key_press(Key::End);
    harness.run();
    harness.key_press(Key::ArrowDown);
    harness.run();
    assert_eq!(harness.state().viewer.state.slice, count - 1);
    harness.key_press(Key::Home);
    harness.key_press(Key::ArrowUp);
    harness.run();
    assert_eq!(harness.state().viewer.state.slice, 0);
}

#[test]
fn wheel_without_modifiers_zooms_around_the_cursor() {
    let mut harness = open(vec![ct_file()]);
    let zoom = harness.state().viewer.state.zoom;
    assert!(harness.state().viewer.state.fit);
    let point = image_center(&harness) + Vec2::new(40.0, 20.0);
    harness.event(Event::PointerMoved(point));
    harness.event(Event::MouseWheel {
        unit: MouseWheelUnit::Line,
        delta: Vec2::new(0.0, 2.0),
        phase: egui::TouchPhase::Move,
        source: egui::MouseWheelSource::Wheel,
        modifiers: Modifiers::NONE,
    });
    harness.run();
    let state = &harness.state().viewer.state;
    assert!(state.zoom > zoom, "zoom {zoom} -> {}", state.zoom);
    assert!(!state.fit);
    // Zooming in around a point right of and below the centre moves the image left and up.
    assert!(state.pan.x < 0.0 && state.pan.y < 0.0, "{:?}", state.pan);
    assert_eq!(state.slice, 0);

    harness.get_by_label("Fit").click();
    harness.run();
    assert!(harness.state().viewer.state.fit);
    assert_eq!(harness.state().viewer.state.zoom, zoom);
}

#[test]
fn a_broken_file_shows_an_error_and_the_app_still_opens_good_files() {
    let good = ct_file();
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.dcm");
    let bytes = std::fs::read(&good).expect("read fixture");
    std::fs::write(&broken, &bytes[..bytes.len().min(700)]).expect("write truncated copy");

    let mut harness = open(vec![broken]);
    let errors: Vec<&str> =
        harness.state().messages.iter().filter(|m| m.level == MessageLevel::Error).map(|m| m.text.as_str()).collect();
    assert_eq!(errors.len(), 1, "{:?}", harness.state().messages);
    assert!(errors[0].contains("broken.dcm"), "{errors:?}");
    assert!(label_shown(&harness, "Error: Cannot open broken.dcm"), "the error is in the window");
    assert!(harness.state().viewer.stack.is_none());

    // The app is still usable: open a good file, then dismiss the error.
    harness.state_mut().send(Command::OpenPaths(vec![good]));
    common::wait_until_loaded(&mut harness);
    assert_eq!(harness.state().viewer.slice_count(), 1);
    assert!(harness.state().viewer.current().is_some());
    harness.get_by_label("Dismiss").click();
    harness.run();
    assert!(harness.state().messages.is_empty());
    assert!(!label_shown(&harness, "Error:"));
}

#[test]
fn a_missing_path_is_an_error_not_a_panic() {
    let mut harness = open(vec![PathBuf::from("/definitely/not/here.dcm")]);
    assert!(harness.state().messages.iter().any(|m| m.level == MessageLevel::Error));
    // Commands on an empty viewer do nothing harmful.
    for command in [
        ViewerCommand::StepSlice(5),
        ViewerCommand::GoToSlice(usize::MAX),
        ViewerCommand::AdjustWindow { dx: 1e30, dy: -1e30 },
        ViewerCommand::ZoomAt { factor: 0.0, anchor: Pos2::ZERO },
        ViewerCommand::ActualSize,
        ViewerCommand::ApplyPreset(WindowPreset::CtLung),
    ] {
        harness.state_mut().send(Command::Viewer(command));
    }
    harness.key_press(Key::ArrowDown);
    harness.run();
    assert_eq!(harness.state().viewer.state.slice, 0);
}

#[test]
fn hide_patient_details_hides_the_patient_name() {
    let mut harness = open(vec![ct_file()]);
    // Show the tag browser too: its rows must follow the toggle as well.
    harness.get_by_label("Tags").click();
    harness.run();

    assert!(harness.state().hide_patient_details, "hidden by default");
    assert!(!label_shown(&harness, "CompressedSamples"), "name hidden by default");
    assert!(!label_shown(&harness, "1CT1"), "patient ID hidden by default");
    assert!(label_shown(&harness, "Slice 1/1"), "the other overlays are still shown");

    harness.get_by_label("Hide patient details").click();
    harness.run();
    assert!(!harness.state().hide_patient_details);
    assert!(label_shown(&harness, "CompressedSamples"), "name shown when not hidden");
    assert!(label_shown(&harness, "1CT1"), "patient ID shown when not hidden");

    harness.get_by_label("Hide patient details").click();
    harness.run();
    assert!(harness.state().hide_patient_details);
    assert!(!label_shown(&harness, "CompressedSamples"), "name hidden again");
    assert!(!label_shown(&harness, "1CT1"));
}

#[test]
fn tag_filter_narrows_the_tag_rows() {
    let mut harness = open(vec![ct_file()]);
    harness.get_by_label("Tags").click();
    harness.run();
    harness.state_mut().viewer.tags.filter = "0028,001".into();
    harness.run();
    assert!(label_shown(&harness, "(0028,0010)"), "Rows tag listed");
    assert!(label_shown(&harness, "(0028,0011)"), "Columns tag listed");
    harness.state_mut().viewer.tags.filter = "0028,0011".into();
    harness.run();
    assert!(label_shown(&harness, "(0028,0011)"));
    assert!(!label_shown(&harness, "(0028,0010)"), "filtered out");
}

#[test]
fn frames_of_a_multiframe_file_are_slices_and_colour_shows_rgb() {
    let mut harness = open(vec![fixture("tests/data/dicom/SC_rgb_rle_2frame.dcm")]);
    assert_eq!(harness.state().viewer.slice_count(), 2, "{:?}", harness.state().messages);
    assert!(label_shown(&harness, "Frame 1/2"));
    harness.key_press(Key::ArrowDown);
    harness.run();
    assert!(label_shown(&harness, "Frame 2/2"));

    harness.hover_at(image_center(&harness));
    harness.run();
    let probe = harness.state().viewer.state.probe.clone().expect("a value under the cursor");
    assert!(probe.contains("RGB ("), "{probe}");
    assert!(label_shown(&harness, "RGB ("), "status line shows it");
}

#[test]
fn left_drag_pans_and_one_to_one_resets() {
    let mut harness = open(vec![ct_file()]);
    let window = harness.state().viewer.state.window();
    let start = image_center(&harness);
    harness.drag_at(start);
    for step in 1..=5 {
        harness.hover_at(start + Vec2::new(-10.0 * step as f32, 6.0 * step as f32));
    }
    harness.drop_at(start + Vec2::new(-50.0, 30.0));
    harness.run();
    let state = &harness.state().viewer.state;
    assert!(state.pan.x < 0.0 && state.pan.y > 0.0, "{:?}", state.pan);
    assert!(!state.fit);
    assert_eq!(state.window(), window, "a left-drag is not window/level");

    harness.get_by_label("1:1").click();
    harness.run();
    let state = &harness.state().viewer.state;
    assert_eq!(state.pan, Vec2::ZERO);
    assert_eq!(state.zoom, 1.0, "one image pixel per screen pixel at pixels_per_point 1");
    assert!(label_shown(&harness, "Zoom 100%"));
}

#[test]
fn presets_apply_fixed_ct_windows() {
    let mut harness = open(vec![ct_file()]);
    harness.state_mut().send(Command::Viewer(ViewerCommand::ApplyPreset(WindowPreset::CtLung)));
    harness.run();
    let state = &harness.state().viewer.state;
    assert_eq!(state.preset, WindowPreset::CtLung);
    assert_eq!((state.window().center, state.window().width), (-600.0, 1500.0));
    assert_eq!(harness.state().viewer.preferred_preset, WindowPreset::CtLung, "remembered for the next series");
    assert!(label_shown(&harness, "W 1500  L -600"));
}

/// Sites name folders after patients, and error messages carry the paths they were given:
/// while patient details are hidden the window cuts the folders and keeps the file name.
#[test]
fn error_messages_show_no_folder_names_while_patient_details_are_hidden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("DOE^JANE 1970");
    std::fs::create_dir(&folder).expect("folder");
    let mut harness = open(vec![folder.join("missing.dcm")]);
    let error = harness.state().messages.iter().find(|m| m.level == MessageLevel::Error).expect("an error");
    let lines = error.details.join("\n");
    assert!(lines.contains("DOE^JANE 1970"), "the message itself keeps the path: {lines}");
    harness.get_by_label_contains("Details (").click();
    harness.run();

    assert!(harness.state().hide_patient_details, "hidden by default");
    assert!(label_shown(&harness, "missing.dcm"), "the file name is shown");
    assert!(!label_shown(&harness, "DOE^JANE"), "the folder is not");

    harness.get_by_label("Hide patient details").click();
    harness.run();
    assert!(label_shown(&harness, "DOE^JANE 1970"), "shown in full when details are shown");
}

/// The MR series' files decoded in series order, as the loader sends them.
fn decoded_mr_series() -> Vec<melo::image::MedicalImage> {
    let scan = melo::series::scan_folder(&mr_series_folder()).expect("scan the MR folder");
    let files = &scan.series[0].files;
    assert_eq!(files.len(), MR_SERIES_SLICES);
    files
        .iter()
        .map(|path| melo::image::load_image(path, &melo::image::LoadOptions::default()).expect("decode"))
        .collect()
}

/// A series still loading (the loader streams decoded files in; see the loader's own tests
/// for the order of its events): its first slice is on screen at once, the slider grows as
/// files arrive without moving what is shown, and MPR (which needs the whole volume) waits
/// for the end; with MPR on, the slices are shown until then.
#[test]
fn a_series_is_shown_from_its_first_slice_while_the_rest_decodes() {
    let mut images = decoded_mr_series();
    let rest = images.split_off(1);
    let (middle, rest) = {
        let mut rest = rest;
        let tail = rest.split_off(9);
        (rest, tail)
    };
    let mut harness = harness(MeloApp::with_paths(Vec::new()));
    harness.run();
    // MPR left on from an earlier series: a loading one must still show its slices.
    harness.state_mut().viewer.mpr.on = true;
    let id = 7;
    harness.state_mut().viewer.set_stack(SliceStack::loading(id, "MR".into(), images));
    harness.run();
    let app = harness.state();
    assert_eq!(app.viewer.slice_count(), 1);
    assert!(app.viewer.image_rect.is_some(), "the first slice is drawn before the others are decoded");
    assert_eq!(app.viewer.drawn_slice(), Some((id, 0)));
    assert!(label_shown(&harness, "Slice 1/1"));
    assert!(app.viewer.mpr.availability().is_none(), "no MPR check on a partial series");
    assert!(app.viewer.mpr.plane_rects.iter().all(Option::is_none), "no MPR planes yet");

    // Nine more files: the slider appears and the arrow keys page through what is there.
    harness.state_mut().viewer.extend_stack(id, middle);
    harness.run();
    assert_eq!(harness.state().viewer.slice_count(), 10);
    assert_eq!(harness.state().viewer.state.slice, 0, "what is shown stays");
    assert_eq!(slider_value(&harness), Some(1.0));
    harness.key_press(Key::ArrowDown);
    harness.run();
    assert_eq!(harness.state().viewer.drawn_slice(), Some((id, 1)));
    assert!(label_shown(&harness, "Slice 2/10"));
    // Files of another load are not added.
    harness.state_mut().viewer.extend_stack(id + 1, decoded_mr_series());
    assert_eq!(harness.state().viewer.slice_count(), 10);

    // The rest, then the end of the load: the volume is checked and MPR takes the view.
    harness.state_mut().viewer.extend_stack(id, rest);
    harness.run();
    assert_eq!(harness.state().viewer.slice_count(), MR_SERIES_SLICES);
    assert!(label_shown(&harness, &format!("Slice 2/{MR_SERIES_SLICES}")));
    assert!(harness.state().viewer.mpr.plane_rects.iter().all(Option::is_none));
    harness.state_mut().viewer.finish_stack(id);
    harness.run();
    let app = harness.state();
    assert!(matches!(app.viewer.mpr.availability(), Some(Ok(_))), "{:?}", app.viewer.mpr.availability());
    assert!(app.viewer.mpr.plane_rects.iter().all(Option::is_some), "the three planes are drawn");
    assert_eq!(app.viewer.state.slice, 1, "MPR starts from the slice on screen");
}

/// The real window on the MR folder, frame by frame: whatever part of the series has arrived,
/// a frame with a stack draws a slice, and the end is the whole series with nothing reported.
#[test]
fn every_frame_while_a_series_loads_draws_a_slice() {
    let mut harness = harness(MeloApp::with_paths(vec![mr_series_folder()]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut counts = Vec::new();
    while harness.state().is_busy() {
        assert!(std::time::Instant::now() < deadline, "loading did not finish within the time limit");
        harness.step();
        let viewer = &harness.state().viewer;
        if let Some(stack) = viewer.stack.as_ref() {
            assert!(viewer.image_rect.is_some(), "a frame with {} slices drew none", stack.len());
            counts.push((stack.len(), stack.complete));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    harness.run();
    let viewer = &harness.state().viewer;
    assert!(viewer.stack.as_ref().is_some_and(|s| s.complete));
    assert_eq!(viewer.slice_count(), MR_SERIES_SLICES);
    assert!(harness.state().messages.is_empty(), "{:?}", harness.state().messages);
    assert!(counts.windows(2).all(|w| w[0].0 <= w[1].0), "the stack only grows: {counts:?}");
}
