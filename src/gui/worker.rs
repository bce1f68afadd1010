//! One way to run background work for the window: a named thread whose events go over a
//! channel and wake the window, and whose panic becomes an event too, so the window never
//! waits on a dead thread. The audit, the cost estimate, the adapter audit, the loader and
//! the results sender all start their threads here; the diagnosis worker (a long-lived
//! request loop) sends through the same kind of channel.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Sender;

/// Runs `work` on a thread named `name`. Each event `work` reports is sent over `sender` and
/// wakes the window; if `work` panics, `on_panic` gets the panic's message and the same
/// reporter, to say so. An error means the thread could not be started (nothing runs).
pub fn spawn_reporting<E: Send + 'static>(
    name: &str,
    ctx: &egui::Context,
    sender: Sender<E>,
    on_panic: impl FnOnce(String, &dyn Fn(E)) + Send + 'static,
    work: impl FnOnce(&dyn Fn(E)) + Send + 'static,
) -> std::io::Result<()> {
    let ctx = ctx.clone();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let send = |event: E| {
            // The receiver goes away only when its view is dropped; nothing to do then.
            let _ = sender.send(event);
            ctx.request_repaint();
        };
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| work(&send))) {
            on_panic(panic_text(&*payload), &send);
        }
    })?;
    Ok(())
}

/// The message of a panic's payload.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
