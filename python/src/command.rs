//! The command line in this process: the `lmc` program the package installs, and one command
//! run for a function of the Python half (`lmc.train`, `lmc.grad`, `lmc.ab`, `lmc.generate`
//! from a model file), which passes its keyword arguments as the command's options.

use std::ffi::OsString;

use pyo3::prelude::*;

use crate::diagnostics::Diagnostic;
use crate::errors::{failure, warn_all, LmcError};

/// The `lmc` program: runs `argv` (the program's name first) and returns its exit status.
#[pyfunction]
pub fn main(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(move || lmc_cli::main_with(argv))
}

/// Runs one command (`args`: the words after `lmc`), with the GIL released. Its failure is an
/// exception (`CompileError` with the diagnostics, `LmcError` with the message); its warnings
/// are `LmcWarning`s. Ctrl-C stays Python's: it asks the command to stop at its next safe point
/// (`lmc train` saves the step), and then raises `KeyboardInterrupt` with what the command said.
#[pyfunction]
pub fn run_command(py: Python<'_>, args: Vec<OsString>) -> PyResult<()> {
    lmc_lab::interrupt::handled_by_front_end();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(lmc_cli::execute(args));
    });
    let mut interrupted: Option<PyErr> = None;
    let caught = &mut interrupted;
    let outcome = py.detach(move || loop {
        match finished.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(outcome) => return Some(outcome),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Python's signal handlers run only on the main thread, holding the GIL.
                if let Err(e) = Python::attach(|py| py.check_signals()) {
                    lmc_lab::interrupt::request();
                    caught.get_or_insert(e);
                }
            }
        }
    });
    let (result, collected) = outcome.ok_or_else(|| LmcError::new_err("internal error: the command's thread ended without a result"))?;
    if let Some(e) = interrupted {
        warn_all(py, &collected)?;
        return Err(match result {
            Err(lmc_lab::Failure::Message(m)) => pyo3::exceptions::PyKeyboardInterrupt::new_err(m),
            _ => e,
        });
    }
    match result {
        Ok(()) => warn_all(py, &collected),
        Err(f) => Err(failure(py, f, collected)),
    }
}

/// Checks every model and variant of each file (a directory: every `*.model` file under it), as
/// `lmc check` does; returns the diagnostics, errors and warnings, each once.
#[pyfunction]
#[pyo3(signature = (paths, config=None))]
pub fn check(py: Python<'_>, paths: Vec<OsString>, config: Option<OsString>) -> PyResult<Vec<Diagnostic>> {
    // What keeps a file from being checked at all is an exception, not a finding.
    for path in &paths {
        if let Err(e) = std::fs::metadata(path) {
            return Err(LmcError::new_err(format!("{}: {e}", std::path::Path::new(path).display())));
        }
    }
    let mut args: Vec<OsString> = vec!["check".into(), "--message-format".into(), "json".into()];
    if let Some(config) = config {
        args.push("--config".into());
        args.push(config);
    }
    args.push("--".into());
    args.extend(paths);
    let (result, collected) = py.detach(move || lmc_cli::execute(args));
    match result {
        // Diagnostics are findings, returned; what kept the check from running (a missing
        // file, a bad config) is an exception.
        Err(lmc_lab::Failure::Message(m)) if collected.is_empty() => Err(failure(py, lmc_lab::Failure::Message(m), collected)),
        _ => collected.iter().map(Diagnostic::from_collected).collect(),
    }
}
