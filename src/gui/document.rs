//! A structured report in the viewer's place: an SR has no pixels, so the window shows its
//! content tree as text (read by `crate::report::content`), patient details blanked while
//! *Hide patient details* is on.

use egui::{Color32, RichText};

use crate::report::content::SrDocument;

pub fn ui(ui: &mut egui::Ui, documents: &[SrDocument], hide_patient_details: bool) {
    egui::Frame::central_panel(ui.style()).show(ui, |ui| {
        egui::ScrollArea::vertical().id_salt("sr_document_scroll").auto_shrink([false, false]).show(ui, |ui| {
            for (i, doc) in documents.iter().enumerate() {
                if i > 0 {
                    ui.separator();
                }
                document_ui(ui, doc, hide_patient_details);
            }
        });
    });
}

fn document_ui(ui: &mut egui::Ui, doc: &SrDocument, hide: bool) {
    let ctx = ui.ctx().clone();
    let text = |s: &str| super::drawable(&ctx, s);
    let lines = doc.text_lines(hide);
    ui.heading(text(&lines[0]));
    for line in &lines[1..4] {
        ui.label(RichText::new(text(line)).small());
    }
    ui.add_space(6.0);
    for line in &doc.lines {
        // Wrapped: a long value (the algorithm parameters) stays readable in a narrow window.
        ui.horizontal_wrapped(|ui| {
            ui.add_space(18.0 * line.depth as f32);
            let value = if line.identifying && hide { "(hidden)".to_string() } else { line.value.clone() };
            if line.value_type == "CONTAINER" {
                ui.strong(text(&line.concept));
            } else {
                // Image references have no concept name: say what the value is instead.
                let concept = if line.concept.is_empty() { value_type_name(&line.value_type) } else { &line.concept };
                ui.label(RichText::new(text(&format!("{concept}:"))).color(Color32::from_gray(170)));
                let value = RichText::new(text(&value));
                ui.label(if line.value_type == "NUM" { value.strong() } else { value });
            }
            ui.label(RichText::new(text(&line.relationship)).small().weak());
        });
    }
    if doc.omitted > 0 {
        ui.label(RichText::new(format!("{} more item(s) not listed", doc.omitted)).weak());
    }
}

/// What an item without a concept name holds, by its value type.
fn value_type_name(value_type: &str) -> &str {
    match value_type {
        "IMAGE" => "Image",
        "COMPOSITE" => "Object",
        "WAVEFORM" => "Waveform",
        other => other,
    }
}
