//! The progress bar the CLI shows on stderr while `--wait` waits on long work (volume creation and
//! restore, attach with rebuilds, detach, backups). Nothing is drawn when stderr is not a terminal, so
//! scripts and `--json` output stay clean.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A percentage bar with a status message; a no-op when stderr is not a terminal.
pub struct WaitProgress {
    bar: Option<ProgressBar>,
}

impl WaitProgress {
    pub fn new() -> WaitProgress {
        if !std::io::stderr().is_terminal() {
            return WaitProgress { bar: None };
        }
        let bar = ProgressBar::new(100);
        let style =
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos:>3}% {elapsed_precise} {wide_msg}")
                .map(|s| s.progress_chars("=> "))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        WaitProgress { bar: Some(bar) }
    }

    /// Shows `percent` (0-100) and `message`.
    pub fn update(&self, percent: u32, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_position(u64::from(percent.min(100)));
            bar.set_message(message);
        }
    }

    /// Removes the bar (the command prints its result next).
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
