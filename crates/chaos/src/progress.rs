//! Progress bars: one per run, elapsed against planned time, with live counts.
//!
//! Why: a chaos run takes minutes; whoever runs it should see it is alive and
//! roughly how it goes. Bars are hidden when stdout is not a terminal (CI,
//! pipes: the report must stay clean there) or with `--quiet`.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::report::LiveStats;

/// The set of bars of one chaos invocation.
#[derive(Debug, Clone)]
pub struct Progress {
    multi: MultiProgress,
    visible: bool,
}

impl Progress {
    /// Bars drawn on stdout, unless `quiet` or stdout is not a terminal.
    pub fn new(quiet: bool) -> Self {
        let visible = !quiet && std::io::stdout().is_terminal();
        Self::with_visibility(visible)
    }

    /// Bars that are always hidden (tests, CI).
    pub fn hidden() -> Self {
        Self::with_visibility(false)
    }

    fn with_visibility(visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stdout()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            multi: MultiProgress::with_draw_target(target),
            visible,
        }
    }

    /// Whether bars are drawn.
    pub fn is_visible(&self) -> bool {
        self.visible
    }

    /// A new bar for `run`, lasting `total`.
    pub fn run_bar(&self, run: &str, total: Duration) -> RunBar {
        let bar = self
            .multi
            .add(ProgressBar::new(total.as_millis().max(1) as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>22} [{bar:30}] {elapsed:>4} / {len_secs}  {msg}",
            )
            .expect("valid template")
            .with_key(
                "len_secs",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}s", state.len().unwrap_or(0) / 1000);
                },
            )
            .progress_chars("=> "),
        );
        bar.set_prefix(run.to_owned());
        RunBar { bar }
    }
}

/// The bar of one run.
#[derive(Debug, Clone)]
pub struct RunBar {
    bar: ProgressBar,
}

impl RunBar {
    /// Moves the bar to `elapsed` and shows the live counts.
    pub fn update(&self, elapsed: Duration, live: LiveStats) {
        self.bar.set_position(elapsed.as_millis() as u64);
        self.bar.set_message(message(live));
    }

    /// Completes the bar, leaving the final counts visible.
    pub fn finish(&self, live: LiveStats) {
        self.bar.finish_with_message(message(live));
    }

    /// The bar's position in milliseconds (for tests and callers).
    pub fn position_ms(&self) -> u64 {
        self.bar.position()
    }

    /// The bar's message.
    pub fn message(&self) -> String {
        self.bar.message()
    }
}

/// `"123 actions, 97.6% ok"`.
pub fn message(live: LiveStats) -> String {
    format!(
        "{} actions, {:.1}% ok, {} degraded",
        live.actions,
        live.success_rate() * 100.0,
        live.degraded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bar_tracks_position_and_counts() {
        let progress = Progress::hidden();
        assert!(!progress.is_visible());
        let bar = progress.run_bar("heal_on", Duration::from_secs(40));
        let live = LiveStats {
            actions: 200,
            successes: 150,
            degraded: 30,
        };
        bar.update(Duration::from_millis(1500), live);
        assert_eq!(bar.position_ms(), 1500);
        assert_eq!(bar.message(), "200 actions, 75.0% ok, 30 degraded");
        bar.finish(live);
    }

    #[test]
    fn quiet_is_hidden() {
        assert!(!Progress::new(true).is_visible());
    }
}
