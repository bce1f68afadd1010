//! Measurements on the shipped CT slice against pydicom + numpy
//! (`tools/measure/roi_reference.py` → `tests/data/measure_reference.json`): the same pixel
//! mask gives the same count, mean, SD, min, max and area, in HU after the modality LUT.

mod common;

use melo::image::{load_image, LoadOptions};
use melo::measure::{measure, roi_stats, Calibration, Point, Reading, Shape};
use serde_json::Value;

fn reference() -> Value {
    let path = common::repo().join("tests/data/measure_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ct() -> melo::image::MedicalImage {
    load_image(&common::repo().join("assets/samples/ct/693_J2KR.dcm"), &LoadOptions::default()).unwrap()
}

fn close(ours: f64, numpy: f64, what: &str) {
    // Summation order differs (numpy sums pairwise): a few ulps of the magnitudes summed.
    assert!((ours - numpy).abs() <= 1e-9 * numpy.abs().max(1.0), "{what}: ours {ours}, numpy {numpy}");
}

#[test]
fn roi_statistics_equal_numpy_on_pydicom_values() {
    let refs = reference();
    let image = ct();
    assert_eq!(image.meta.units, "HU");
    let rois = refs["rois"].as_array().unwrap();
    assert_eq!(rois.len(), 5);
    for r in rois {
        let c: Vec<f64> = serde_json::from_value(r["corners"].clone()).unwrap();
        let (a, b) = (Point::new(c[0], c[1]), Point::new(c[2], c[3]));
        let shape = match r["kind"].as_str().unwrap() {
            "rectangle" => Shape::Rectangle { a, b },
            _ => Shape::Ellipse { a, b },
        };
        let s = roi_stats(&image, 0, &shape).unwrap();
        let what = format!("{shape:?}");
        assert_eq!(s.pixels as u64, r["pixels"].as_u64().unwrap(), "{what}: pixel count");
        assert_eq!(s.min, r["min"].as_f64().unwrap(), "{what}: min");
        assert_eq!(s.max, r["max"].as_f64().unwrap(), "{what}: max");
        close(s.mean, r["mean"].as_f64().unwrap(), &format!("{what}: mean"));
        close(s.sd, r["sd"].as_f64().unwrap(), &format!("{what}: SD"));
        close(s.area, r["area_mm2"].as_f64().unwrap(), &format!("{what}: area"));
        let Reading::Roi { value_units, unit, .. } = measure(&image, 0, &shape) else { panic!("not an ROI reading") };
        assert_eq!((value_units.as_str(), unit), ("HU", "mm"));
    }
}

#[test]
fn length_across_known_pixels_is_spacing_times_pixels() {
    let refs = reference();
    let image = ct();
    let calibration = Calibration::of(&image.meta);
    let spacing: Vec<f64> = serde_json::from_value(refs["meta"]["pixel_spacing"].clone()).unwrap();
    assert_eq!(calibration, Calibration::PixelSpacing { row_mm: spacing[0], col_mm: spacing[1] });
    // 200 pixels along a row, 400 down a column.
    assert_eq!(calibration.length(Point::new(100.0, 200.0), Point::new(300.0, 200.0)), 200.0 * spacing[1]);
    assert_eq!(calibration.length(Point::new(256.5, 10.5), Point::new(256.5, 410.5)), 400.0 * spacing[0]);
    for l in refs["lengths"].as_array().unwrap() {
        let p: Vec<f64> = serde_json::from_value(l["points"].clone()).unwrap();
        let Reading::Length { value, unit } =
            measure(&image, 0, &Shape::Length { a: Point::new(p[0], p[1]), b: Point::new(p[2], p[3]) })
        else {
            panic!("not a length")
        };
        assert_eq!(unit, "mm");
        close(value, l["mm"].as_f64().unwrap(), "length");
    }
}
