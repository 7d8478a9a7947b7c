//! A progress bar on stderr while an engine operation runs, when stderr is a terminal.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use berth_engine::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

/// Draws `progress` until dropped.
pub struct Bar {
    task: Option<JoinHandle<()>>,
    bar: ProgressBar,
}

impl Bar {
    /// Starts drawing, or does nothing when stderr is not a terminal or `quiet` is set.
    pub fn start(progress: &Arc<Progress>, quiet: bool) -> Bar {
        if quiet || !std::io::stderr().is_terminal() {
            return Bar { task: None, bar: ProgressBar::hidden() };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        let (p, b) = (progress.clone(), bar.clone());
        let task = tokio::spawn(async move {
            loop {
                b.set_prefix(p.phase());
                b.set_length(p.bytes_total.load(Ordering::Relaxed));
                b.set_position(p.bytes_done.load(Ordering::Relaxed));
                b.set_message(format!(
                    "{}/{} files",
                    p.files_done.load(Ordering::Relaxed),
                    p.files_total.load(Ordering::Relaxed)
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar { task: Some(task), bar }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}
