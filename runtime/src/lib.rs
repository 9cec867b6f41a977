//! `lmc-runtime`: runs the modules that lmc generates.
//!
//! Its job starts where the compiler's ends. Given a module, from a shared library
//! ([`Module::open_library`]) or from the compiler's JIT ([`Module::from_symbols`]), it checks
//! the ABI version, reads the manifest, maps the safetensors weights and checks every parameter
//! against them ([`Module::bind_weights`]), and then, on each run, checks the inputs (names,
//! dtypes, shapes, symbolic dimension limits, index ranges) before it calls generated code,
//! which does no checking of its own ([`LoadedModel::run`]).
//!
//! It never depends on a compiler crate: everything it knows about a module comes through the
//! `lmc-abi` contract, so a deployed program links only this crate (or, from C, the library it
//! builds, through `include/lmc_runtime.h`).

pub mod capi;
pub mod cuda;
pub mod error;
pub mod generate;
pub mod model;
pub mod module;
pub mod random;
pub mod safetensors;
pub mod sampling;
pub mod tensor;
pub mod validate;
pub mod widen;

pub use error::{ErrorKind, RuntimeError};
pub use generate::{generate, greedy, Decoder, Generated, Stop};
pub use lmc_abi::{DType, Dim, Manifest};
pub use model::{weight_files, LoadedModel, WeightsSource};
pub use module::Module;
pub use random::random_weights;
pub use safetensors::{
    safetensors_bytes, write_safetensors, write_safetensors_to, SafeTensorsFile, StDType, TensorInfo, TensorRef, WeightsError,
};
pub use tensor::HostTensor;
pub use validate::{validate_inputs, BoundInputs};
