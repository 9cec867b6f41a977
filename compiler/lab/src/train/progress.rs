//! `lmc train`'s report while it runs, on stderr: each step's loss, tokens per second and the
//! time left, with the evaluations' losses noted between the steps.

use std::io::IsTerminal;
use std::time::Instant;

/// A progress bar on a terminal; plain lines every `logging_steps` otherwise.
pub(crate) struct Progress {
    total: u64,
    first: u64,
    started: Instant,
    every: u64,
    terminal: bool,
    drawn: bool,
}

impl Progress {
    pub(crate) fn new(total: u64, first: u64, every: u64) -> Progress {
        Progress {
            total,
            first,
            started: Instant::now(),
            every: every.max(1),
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    pub(crate) fn step(&mut self, step: u64, loss: f64, tokens_per_s: f64) {
        let done = step - self.first;
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = elapsed / done as f64 * (self.total - step) as f64;
        let line = format!(
            "step {step}/{} · loss {loss:.4} · {} tokens/s · {} left",
            self.total,
            crate::units::fmt_count(tokens_per_s as u64),
            clock(left)
        );
        if self.terminal {
            let width = 24usize;
            let filled = (width as u64 * step / self.total) as usize;
            eprint!("\r\x1b[2K[{}{}] {line}", "#".repeat(filled), "-".repeat(width - filled));
            self.drawn = true;
        } else if step.is_multiple_of(self.every) || step == self.total {
            eprintln!("{line}");
        }
    }

    pub(crate) fn note(&mut self, text: &str) {
        if self.drawn {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{text}");
    }

    pub(crate) fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

/// `1:02:03` or `4:05`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}
