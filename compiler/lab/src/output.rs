//! Where a command's words go, and in what colours. The human-readable report goes to stdout,
//! unless stdout carries a machine-readable one (`--json -`): then it goes to stderr, so that
//! stdout stays valid JSON. Diagnostics and `error:` lines are coloured as rustc colours them,
//! as `--color` and `NO_COLOR` say.

use crate::Failure;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Whether stdout is reserved for a machine-readable report.
static STDOUT_RESERVED: AtomicBool = AtomicBool::new(false);

/// `--color`: when to colour what lmc prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set to a non-empty value.
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether to colour a stream that is (or is not) a terminal, given the value of
    /// `NO_COLOR`. An explicit `always` wins over `NO_COLOR`, as no-color.org asks.
    pub fn colors(self, terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal && no_color.is_none_or(|v| v.is_empty()),
        }
    }
}

/// The choice in effect: 0 auto, 1 always, 2 never.
static COLOR: AtomicU8 = AtomicU8::new(0);

/// Sets `--color` for the rest of the process.
pub fn set_color(choice: ColorChoice) {
    let v = match choice {
        ColorChoice::Auto => 0,
        ColorChoice::Always => 1,
        ColorChoice::Never => 2,
    };
    COLOR.store(v, Ordering::Relaxed);
}

fn color_choice() -> ColorChoice {
    match COLOR.load(Ordering::Relaxed) {
        1 => ColorChoice::Always,
        2 => ColorChoice::Never,
        _ => ColorChoice::Auto,
    }
}

/// Whether what goes to stderr (diagnostics, `error:` lines) is coloured.
pub fn stderr_colors() -> bool {
    color_choice().colors(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

/// Whether what goes to stdout (`lmc fmt --check`'s diff) is coloured.
pub fn stdout_colors() -> bool {
    color_choice().colors(std::io::stdout().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

/// SGR sequences of the colours rustc uses.
pub mod ansi {
    pub const RESET: &str = "\x1b[0m";
    pub const BOLD: &str = "\x1b[1m";
    pub const BOLD_RED: &str = "\x1b[1;31m";
    pub const BOLD_YELLOW: &str = "\x1b[1;33m";
    pub const BOLD_BLUE: &str = "\x1b[1;34m";
    pub const RED: &str = "\x1b[31m";
    pub const GREEN: &str = "\x1b[32m";
    pub const CYAN: &str = "\x1b[36m";
}

/// `error: MESSAGE` (coloured on a terminal: `error` bold red, the first line bold).
pub fn error_line(message: &str) -> String {
    labelled("error", ansi::BOLD_RED, message)
}

/// `warning: MESSAGE`, coloured as [`error_line`] but yellow.
pub fn warning_line(message: &str) -> String {
    labelled("warning", ansi::BOLD_YELLOW, message)
}

fn labelled(label: &str, color: &str, message: &str) -> String {
    if !stderr_colors() {
        return format!("{label}: {message}");
    }
    let (first, rest) = match message.split_once('\n') {
        Some((first, rest)) => (first, format!("\n{rest}")),
        None => (message, String::new()),
    };
    format!("{color}{label}{}{}: {first}{}{rest}", ansi::RESET, ansi::BOLD, ansi::RESET)
}

/// Prints `error: MESSAGE` to stderr.
pub fn error(message: &str) {
    eprintln!("{}", error_line(message));
}

/// Prints `warning: MESSAGE` to stderr.
pub fn warning(message: &str) {
    eprintln!("{}", warning_line(message));
}

/// From now on the human-readable report goes to stderr: stdout carries a machine-readable one.
pub fn reserve_stdout() {
    STDOUT_RESERVED.store(true, Ordering::Relaxed);
}

/// Whether a report path is `-`: stdout.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Prints one line of a human-readable report: to stdout, or to stderr once stdout is reserved
/// (see [`reserve_stdout`]). Use it through [`outln!`](crate::outln).
pub fn line(args: std::fmt::Arguments<'_>) {
    if STDOUT_RESERVED.load(Ordering::Relaxed) {
        eprintln!("{args}");
    } else {
        println!("{args}");
    }
}

/// `println!` for the human-readable report: see [`output::line`](crate::output::line).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

/// Writes a report's text to `path` (creating its directory), or to stdout when it is `-`.
/// Returns whether it went to a file (for the caller's "wrote PATH").
pub fn write_report(path: &Path, text: &str) -> Result<bool, Failure> {
    if is_stdout(path) {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Failure::Message(format!("cannot write the report to stdout: {e}")))?;
        return Ok(false);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Failure::Message(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(path, text).map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
    Ok(true)
}

/// The first `shown` of `names`, comma-separated, and how many more there are.
pub fn list_some(names: &[String], shown: usize) -> String {
    let head = names.iter().take(shown).cloned().collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(shown) {
        0 => head,
        more => format!("{head} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn color_follows_the_choice_the_terminal_and_no_color() {
        let auto = ColorChoice::Auto;
        assert!(auto.colors(true, None));
        assert!(!auto.colors(false, None));
        assert!(!auto.colors(true, Some(OsStr::new("1"))));
        // An empty NO_COLOR is as if it were not set.
        assert!(auto.colors(true, Some(OsStr::new(""))));
        assert!(ColorChoice::Always.colors(false, Some(OsStr::new("1"))));
        assert!(!ColorChoice::Never.colors(true, None));
    }
}
