//! One progress-bar factory (indicatif) for long commands: items/s and ETA on stderr, hidden
//! when asked to be quiet or when stderr is not a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar over `len` items, hidden unless `visible` and stderr is a terminal.
pub fn bar(len: u64, visible: bool) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if !visible || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}]",
        )
        .expect("valid template"),
    );
    pb
}
