//! Cancellation of long work: the core polls [`check`] between chunks (of images, texts,
//! batches), and whoever drives the core decides what "cancelled" means. The Python bindings
//! install a poll that runs Python's signal handlers, so Ctrl-C stops a long `encode_image`,
//! `encode_text`, `predict`, evaluation or folder embedding within one chunk; without a poll
//! (Rust users, cargo tests) nothing is ever cancelled.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Returns true when the work in progress should stop.
pub type Poll = fn() -> bool;

static POLL: OnceLock<Poll> = OnceLock::new();

/// Installs the process's poll (the first one wins: there is one driver per process).
pub fn install(poll: Poll) {
    let _ = POLL.set(poll);
}

/// [`Error::Interrupted`] when the installed poll says to stop.
pub fn check() -> Result<()> {
    match POLL.get() {
        Some(poll) if poll() => Err(Error::Interrupted),
        _ => Ok(()),
    }
}
