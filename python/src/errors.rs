//! The package's exceptions, and how the compiler's and the runtime's failures become them.

use lmc_lab::source::Collected;
use lmc_lab::Failure;
use lmc_runtime::{ErrorKind, RuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3::{create_exception, exceptions};

use crate::diagnostics::Diagnostic;

create_exception!(lmc, LmcError, exceptions::PyException, "Something lmc was asked to do failed.");
create_exception!(
    lmc,
    CompileError,
    LmcError,
    "A model file does not check: `diagnostics` lists what is wrong, each with its place."
);
create_exception!(
    lmc,
    InputError,
    LmcError,
    "The inputs of a call do not fit the model (a name, dtype, shape or value): the message names the tensor."
);
create_exception!(
    lmc,
    WeightsError,
    LmcError,
    "The weights do not fit the model (a missing tensor, another dtype or shape): the message names the tensor."
);
create_exception!(
    lmc,
    LmcWarning,
    exceptions::PyUserWarning,
    "A warning of lmc's checker (a config key the model assumes otherwise, say)."
);

/// A runtime error as the exception of its kind.
pub fn runtime_error(e: RuntimeError) -> PyErr {
    let message = e.message().to_string();
    match e.kind() {
        ErrorKind::Input | ErrorKind::InvalidArgument => InputError::new_err(message),
        ErrorKind::Weights => WeightsError::new_err(message),
        _ => LmcError::new_err(message),
    }
}

/// A failed command or compile as an exception: `CompileError` when the checker reported
/// errors (their text is the message, the objects its `diagnostics`), `LmcError` otherwise.
/// Warnings among `collected` are issued as `LmcWarning`s first.
pub fn failure(py: Python<'_>, failure: Failure, collected: Vec<Collected>) -> PyErr {
    let (errors, warnings): (Vec<Collected>, Vec<Collected>) = collected.into_iter().partition(is_error);
    if let Err(e) = warn_all(py, &warnings) {
        return e;
    }
    let message = match failure {
        Failure::Message(m) => m,
        Failure::Reported => String::new(),
    };
    if errors.is_empty() {
        return LmcError::new_err(if message.is_empty() { "failed".to_string() } else { message });
    }
    let mut text: Vec<String> = errors.iter().map(|d| d.rendered.trim_end().to_string()).collect();
    if !message.is_empty() {
        text.push(message);
    }
    let err = CompileError::new_err(text.join("\n\n"));
    let objects: PyResult<Vec<Diagnostic>> = errors.iter().map(|d| Diagnostic::from_json(&d.json, &d.rendered)).collect();
    let attached = objects.and_then(|objects| {
        let list = PyList::new(py, objects.into_iter().map(|d| Py::new(py, d)).collect::<PyResult<Vec<_>>>()?)?;
        err.value(py).setattr("diagnostics", list)
    });
    match attached {
        Ok(()) => err,
        Err(e) => e,
    }
}

/// Issues each collected warning as an `LmcWarning`.
pub fn warn_all(py: Python<'_>, warnings: &[Collected]) -> PyResult<()> {
    for w in warnings {
        let text = std::ffi::CString::new(w.rendered.trim_end().replace('\0', " ")).unwrap_or_default();
        PyErr::warn(py, &py.get_type::<LmcWarning>(), &text, 2)?;
    }
    Ok(())
}

fn is_error(d: &Collected) -> bool {
    d.json.get("severity").and_then(|s| s.as_str()) == Some("error")
}
