//! Progress of long commands on a terminal — `lockstep run`, `replay` and
//! `verify` — with rate and ETA ([`indicatif`]).  Nothing is drawn when
//! stderr is not a terminal, so scripts and `--json` see no bar.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over ticks (a spinner when the end is not known).
#[derive(Debug)]
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar labelled `what`, from `start` to tick `end` (`None`: runs
    /// until stopped).  `visible` false draws nothing (e.g. when agent logs
    /// share stderr).
    pub fn ticks(what: &str, start: u64, end: Option<u64>, visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let template = if end.is_some() {
            "{prefix} [{bar:28}] tick {pos}/{len}  {rate}  ETA {eta}  {msg}"
        } else {
            "{prefix} {spinner} tick {pos}  {rate}  {msg}"
        };
        let bar = ProgressBar::with_draw_target(end, target);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(
                style
                    .with_key(
                        "rate",
                        |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = write!(w, "{:.0} ticks/s", s.per_sec());
                        },
                    )
                    .progress_chars("=> "),
            );
        }
        bar.set_prefix(what.to_owned());
        bar.set_position(start);
        bar.reset_eta();
        Self(bar)
    }

    /// Sets the range to `start..=end` if it is not that already.
    pub fn reset(&self, start: u64, end: u64) {
        if self.0.length() != Some(end) {
            self.0.set_length(end);
            self.0.set_position(start);
            self.0.reset_eta();
        }
    }

    /// The run is at `tick`.
    pub fn at(&self, tick: u64) {
        self.0.set_position(tick);
    }

    /// The status shown after the counts.
    pub fn message(&self, msg: String) {
        self.0.set_message(msg);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
