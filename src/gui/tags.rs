//! The tag browser: every data element of the current slice's file, filtered by a search box.
//! It is handed metadata that already went through `without_phi` when patient details are
//! hidden, so it never decides on its own what is shown.

use egui::{RichText, ScrollArea, TextEdit};

use crate::image::{ImageMeta, TagEntry};

/// Indentation per sequence nesting level, in points.
const INDENT_PER_DEPTH: f32 = 14.0;

#[derive(Debug, Default)]
pub struct TagBrowser {
    /// Case-insensitive text matched against tag number, name and value.
    pub filter: String,
}

/// True if the entry matches the filter (already lower-cased and trimmed). The tag number
/// matches with or without punctuation: "0010,0010", "(0010,0010)" and "00100010" all work.
pub fn tag_matches(entry: &TagEntry, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let tag = entry.tag_string().to_ascii_lowercase();
    let bare_tag: String = tag.chars().filter(char::is_ascii_hexdigit).collect();
    let bare_filter: String = filter.chars().filter(|c| !matches!(c, '(' | ')' | ',' | ' ')).collect();
    tag.contains(filter)
        || (!bare_filter.is_empty() && bare_tag.contains(&bare_filter))
        || entry.name.to_lowercase().contains(filter)
        || entry.value.to_lowercase().contains(filter)
}

impl TagBrowser {
    pub fn ui(&mut self, ui: &mut egui::Ui, meta: Option<&ImageMeta>) {
        ui.heading("Tags");
        ui.add(
            TextEdit::singleline(&mut self.filter).hint_text("Filter: tag, name or value").desired_width(f32::INFINITY),
        );
        let Some(meta) = meta else {
            ui.label("No image open.");
            return;
        };
        let filter = self.filter.trim().to_lowercase();
        let rows: Vec<&TagEntry> = meta.tags.iter().filter(|t| tag_matches(t, &filter)).collect();
        ui.label(format!("{} of {} elements", rows.len(), meta.tags.len()));
        ui.separator();
        let row_height = ui.text_style_height(&egui::TextStyle::Monospace);
        ScrollArea::both().auto_shrink([false, false]).show_rows(ui, row_height, rows.len(), |ui, range| {
            for entry in rows.get(range).unwrap_or_default() {
                ui.horizontal(|ui| {
                    ui.add_space(entry.depth as f32 * INDENT_PER_DEPTH);
                    let text = format!("{} {:<2} {}: {}", entry.tag_string(), entry.vr, entry.name, entry.value);
                    ui.add(egui::Label::new(RichText::new(text).monospace()).truncate());
                });
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> TagEntry {
        TagEntry {
            group: 0x0028,
            element: 0x0010,
            name: "Rows".into(),
            vr: "US".into(),
            value: "512".into(),
            depth: 0,
            phi: false,
        }
    }

    #[test]
    fn filter_matches_number_name_and_value() {
        let e = entry();
        for filter in ["", "0028,0010", "(0028,0010)", "00280010", "rows", "512"] {
            assert!(tag_matches(&e, filter), "{filter:?}");
        }
        assert!(!tag_matches(&e, "columns"));
        assert!(!tag_matches(&e, "()"));
    }
}
