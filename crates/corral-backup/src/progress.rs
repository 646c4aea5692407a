//! Progress reporting for long operations (create, restore, verify).

/// Receives progress of one operation. Implementations must be cheap: `advance` is called per block.
pub trait Progress: Send + Sync {
    /// The operation starts; `total_bytes` is the amount of work (0 if unknown).
    fn begin(&self, _operation: &str, _total_bytes: u64) {}
    /// `bytes` more are done.
    fn advance(&self, _bytes: u64) {}
    /// The operation ended (successfully or not).
    fn finish(&self) {}
}

/// Ignores progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// A terminal progress bar (bytes, rate, ETA) on stderr, for the CLI when stdout is a terminal.
#[derive(Debug)]
pub struct TerminalProgress {
    bar: indicatif::ProgressBar,
}

impl TerminalProgress {
    /// A hidden bar until [`Progress::begin`] is called.
    pub fn new() -> Self {
        TerminalProgress { bar: indicatif::ProgressBar::hidden() }
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for TerminalProgress {
    fn begin(&self, operation: &str, total_bytes: u64) {
        self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.bar.set_length(total_bytes);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>9} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_message(operation.to_string());
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
