//! Keyboard shortcuts and the help overlay that lists them. One table ([`SHORTCUTS`]) drives
//! both, so the overlay cannot drift from what the keys do.

use egui::{Key, KeyboardShortcut, Modifiers};

use super::diagnosis::DiagnosisCommand;
use super::{Command, Tab, ViewerCommand};

/// A key combination and the command it sends.
pub struct Shortcut {
    pub shortcut: KeyboardShortcut,
    /// Single keys without modifiers would type into text fields: they only act when no
    /// widget has the keyboard.
    pub needs_free_keyboard: bool,
    pub action: &'static str,
    pub command: fn() -> Command,
}

const fn key(modifiers: Modifiers, key: Key) -> KeyboardShortcut {
    KeyboardShortcut::new(modifiers, key)
}

/// Most specific first: egui ignores an extra Shift when matching, so Ctrl+Shift+O must be
/// tried before Ctrl+O.
pub const SHORTCUTS: &[Shortcut] = &[
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::F1),
        needs_free_keyboard: false,
        action: "Show or hide this help",
        command: || Command::ToggleHelp,
    },
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::Questionmark),
        needs_free_keyboard: true,
        action: "Show or hide this help",
        command: || Command::ToggleHelp,
    },
    Shortcut {
        shortcut: key(Modifiers::COMMAND.plus(Modifiers::SHIFT), Key::O),
        needs_free_keyboard: false,
        action: "Open a folder",
        command: || Command::PickFolder,
    },
    Shortcut {
        shortcut: key(Modifiers::COMMAND, Key::O),
        needs_free_keyboard: false,
        action: "Open files",
        command: || Command::PickFiles,
    },
    Shortcut {
        shortcut: key(Modifiers::COMMAND, Key::Num1),
        needs_free_keyboard: false,
        action: "Viewer and diagnosis",
        command: || Command::SetTab(Tab::Viewer),
    },
    Shortcut {
        shortcut: key(Modifiers::COMMAND, Key::Num2),
        needs_free_keyboard: false,
        action: "Privacy audit",
        command: || Command::SetTab(Tab::Privacy),
    },
    Shortcut {
        shortcut: key(Modifiers::COMMAND, Key::Num3),
        needs_free_keyboard: false,
        action: "Studies (PACS and local store)",
        command: || Command::SetTab(Tab::Studies),
    },
    Shortcut {
        shortcut: key(Modifiers::COMMAND, Key::Enter),
        needs_free_keyboard: false,
        action: "Run the audit (privacy tab)",
        command: || Command::RunAudit,
    },
    Shortcut {
        shortcut: key(Modifiers::COMMAND, Key::E),
        needs_free_keyboard: false,
        action: "Export the audit report",
        command: || Command::ExportAudit,
    },
    Shortcut {
        shortcut: key(Modifiers::COMMAND, Key::L),
        needs_free_keyboard: false,
        action: "Load an adapter from elsewhere",
        command: || Command::Diagnosis(DiagnosisCommand::OpenImportDialog),
    },
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::D),
        needs_free_keyboard: true,
        action: "Show or hide the diagnosis panel",
        command: || Command::Diagnosis(DiagnosisCommand::TogglePanel),
    },
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::H),
        needs_free_keyboard: true,
        action: "Heatmap overlay on or off",
        command: || Command::ToggleHeatmap,
    },
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::A),
        needs_free_keyboard: true,
        action: "All-tasks table on or off",
        command: || Command::ToggleAllTasks,
    },
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::OpenBracket),
        needs_free_keyboard: true,
        action: "Previous diagnosis task",
        command: || Command::Diagnosis(DiagnosisCommand::StepTask(-1)),
    },
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::CloseBracket),
        needs_free_keyboard: true,
        action: "Next diagnosis task",
        command: || Command::Diagnosis(DiagnosisCommand::StepTask(1)),
    },
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::T),
        needs_free_keyboard: true,
        action: "Tag browser",
        command: || Command::Viewer(ViewerCommand::ToggleTags),
    },
    Shortcut {
        shortcut: key(Modifiers::NONE, Key::F),
        needs_free_keyboard: true,
        action: "Fit the image to the view",
        command: || Command::Viewer(ViewerCommand::Fit),
    },
];

/// Viewer keys handled by the viewer itself (listed in the overlay only).
pub const VIEWER_KEYS: &[(&str, &str)] = &[
    ("↑ ↓ ← →", "Previous / next slice"),
    ("Page Up / Page Down", "10 slices back / forward"),
    ("Home / End", "First / last slice"),
    ("Ctrl or Shift + wheel", "Page through slices"),
    ("Wheel", "Zoom around the cursor"),
    ("Left drag", "Pan"),
    ("Right drag", "Window / level"),
    ("Double-click", "Fit"),
    ("V / L / G / R / E", "Tool: pan / length / angle / rectangle ROI / ellipse ROI"),
    ("Ctrl+Z", "Undo the last measurement added or deleted"),
    ("Delete", "Delete the selected measurement"),
    ("Space", "Play / pause cine"),
    ("M", "MPR: three planes side by side (click a plane to move the others)"),
    ("Wheel (MPR)", "Step through the plane under the cursor"),
];

/// The commands of the shortcuts pressed this frame (their key events are consumed).
pub fn pressed(ctx: &egui::Context) -> Vec<Command> {
    let keyboard_free = ctx.memory(|m| m.focused().is_none());
    ctx.input_mut(|input| {
        SHORTCUTS
            .iter()
            .filter(|s| keyboard_free || !s.needs_free_keyboard)
            .filter(|s| input.consume_shortcut(&s.shortcut))
            .map(|s| (s.command)())
            .collect()
    })
}

/// The help overlay: every shortcut, in a window over the app.
pub fn help_ui(ctx: &egui::Context, open: &mut bool, extra: &[(&str, &str)]) {
    let mut still_open = *open;
    egui::Window::new("Keyboard shortcuts")
        .open(&mut still_open)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
        .show(ctx, |ui| {
            egui::Grid::new("help_shortcuts").striped(true).num_columns(2).show(ui, |ui| {
                let mut seen = Vec::new();
                for s in SHORTCUTS {
                    let keys = ctx.format_shortcut(&s.shortcut);
                    // Two keys for one action share a row.
                    if let Some(row) = seen.iter_mut().find(|(a, _): &&mut (&str, String)| *a == s.action) {
                        row.1 = format!("{} or {keys}", row.1);
                    } else {
                        seen.push((s.action, keys));
                    }
                }
                for (action, keys) in seen {
                    ui.monospace(keys);
                    ui.label(action);
                    ui.end_row();
                }
                for (keys, action) in VIEWER_KEYS.iter().chain(extra) {
                    ui.monospace(*keys);
                    ui.label(*action);
                    ui.end_row();
                }
                ui.monospace("Esc");
                ui.label("Close this help / cancel a running audit");
                ui.end_row();
            });
        });
    *open = still_open;
}
