//! `lmc._lmc`: the native half of the Python package `lmc` (its Python half is `python/lmc/`):
//! models compiled in memory or loaded from libraries of `lmc compile` and called with DLPack
//! tensors ([`model`], [`dlpack`]), diagnostics as objects ([`diagnostics`]), tokenizers, and the
//! command line run in this process ([`command`]). It holds no logic of its own beyond the
//! conversions: everything else is the compiler's and the runtime's crates.

mod command;
mod diagnostics;
mod dlpack;
mod errors;
mod model;
mod tokenizer;

use pyo3::prelude::*;

#[pymodule]
fn _lmc(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LmcError", py.get_type::<errors::LmcError>())?;
    m.add("CompileError", py.get_type::<errors::CompileError>())?;
    m.add("InputError", py.get_type::<errors::InputError>())?;
    m.add("WeightsError", py.get_type::<errors::WeightsError>())?;
    m.add("LmcWarning", py.get_type::<errors::LmcWarning>())?;
    m.add_class::<diagnostics::Diagnostic>()?;
    m.add_class::<dlpack::Tensor>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Decoder>()?;
    m.add_class::<tokenizer::Tokenizer>()?;
    m.add_function(wrap_pyfunction!(model::compile, m)?)?;
    m.add_function(wrap_pyfunction!(model::load, m)?)?;
    m.add_function(wrap_pyfunction!(command::main, m)?)?;
    m.add_function(wrap_pyfunction!(command::run_command, m)?)?;
    m.add_function(wrap_pyfunction!(command::check, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
