//! `lmc-abi`: the contract between a library that lmc generated (JIT'd in memory or a `.so`)
//! and the runtime that loads it. Codegen writes it; the runtime reads it; neither depends on the
//! other.
//!
//! A generated module exports three symbols:
//!
//! | symbol | C signature | meaning |
//! |---|---|---|
//! | [`ABI_VERSION_SYMBOL`] | `uint32_t lmc_abi_version(void)` | must equal [`ABI_VERSION`] |
//! | [`MANIFEST_SYMBOL`] | `const char *lmc_manifest(void)` | NUL-terminated JSON [`Manifest`] |
//! | one per [`Entry`] | `void lmc_<entry>(void **args)` | runs the entry point |
//!
//! An entry point takes one array of pointers, `args`, in the order of [`Entry::args`]: every
//! parameter (a parameter with a [`Packing`] in its packed shape), then every input, then every
//! output. Each pointer points to a *memref descriptor*
//! (the MLIR strided-memref layout), whose length depends on the rank `r`:
//!
//! ```c
//! struct { void *allocated; void *aligned; int64_t offset; int64_t sizes[r]; int64_t strides[r]; }
//! ```
//!
//! The caller owns every buffer, outputs included, and sizes outputs from the manifest's shapes.
//! Entry points do no validation: the runtime checks names, dtypes, shapes, symbolic dimension
//! bounds and index ranges before it calls one. (Gathers also clamp indices, so a caller that
//! skips the runtime gets wrong numbers, never an out-of-bounds read.)

pub mod buffers;
mod packing;

pub use packing::{quantize_block, quantize_int4_block, Packing, WeightFormat, INT8_BLOCK, INT8_DOT_GROUP, INT8_SCALE_ROWS};

use serde::{Deserialize, Serialize};

/// Bumped whenever the calling convention or the manifest schema changes incompatibly.
pub const ABI_VERSION: u32 = 4;
pub const ABI_VERSION_SYMBOL: &str = "lmc_abi_version";
pub const MANIFEST_SYMBOL: &str = "lmc_manifest";

/// Element types that cross the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I64,
    I32,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
        }
    }

    /// The dtype's name in a safetensors header.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::I64 => "I64",
            DType::I32 => "I32",
        }
    }

    pub fn from_safetensors_name(name: &str) -> Option<DType> {
        match name {
            "F32" => Some(DType::F32),
            "I64" => Some(DType::I64),
            "I32" => Some(DType::I32),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
            DType::I32 => "i32",
        }
    }
}

/// One dimension of a tensor in the manifest: fixed when the model was compiled, or a symbol
/// (`B`, `T`) bound at run time from the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Static(i64),
    Symbol(String),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Static(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// A named tensor the module reads or writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// For parameters, the tensor's name in the checkpoint; for inputs and outputs, the name of
    /// the tensor in the inputs/outputs safetensors file.
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
    /// For integer inputs used as indices: every value must be in `0..index_bound.limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_bound: Option<Bound>,
    /// For parameters the module reads in another layout than the checkpoint's `shape`: the
    /// caller passes the tensor packed this way (the runtime packs it when it binds weights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing: Option<Packing>,
    /// For inputs the caller may leave out: the values the runtime passes instead, shaped by the
    /// symbols the given inputs bind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<InputDefault>,
}

/// What an input the caller leaves out holds (`attention_mask: i64[B, T] = ones`), as Hugging
/// Face's models default their optional inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputDefault {
    /// Every element 1 (an attention mask that masks nothing).
    Ones,
    /// Every element 0 (token type ids of a single segment).
    Zeros,
    /// Each element its index along the last axis (position ids `0..T` for every row).
    Arange,
}

impl InputDefault {
    /// The names a `.model` file writes after `=`.
    pub const NAMES: [&'static str; 3] = ["ones", "zeros", "arange"];

    pub fn from_name(name: &str) -> Option<InputDefault> {
        match name {
            "ones" => Some(InputDefault::Ones),
            "zeros" => Some(InputDefault::Zeros),
            "arange" => Some(InputDefault::Arange),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            InputDefault::Ones => "ones",
            InputDefault::Zeros => "zeros",
            InputDefault::Arange => "arange",
        }
    }

    /// The value of the element at flat index `flat` of a tensor whose last axis has `last`
    /// elements.
    pub fn value(self, flat: usize, last: usize) -> i64 {
        match self {
            InputDefault::Ones => 1,
            InputDefault::Zeros => 0,
            InputDefault::Arange => (flat % last.max(1)) as i64,
        }
    }
}

/// An upper limit and why it exists, phrased for an error message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub limit: i64,
    /// e.g. "rows of embeddings.position_embeddings.weight"
    pub reason: String,
}

/// A symbolic dimension and the limits the model puts on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolSpec {
    pub name: String,
    /// The largest value the model can run with (e.g. a learned position table's length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Bound>,
}

/// An exported entry point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `forward`.
    pub name: String,
    /// The exported C symbol.
    pub symbol: String,
}

/// Everything a runtime needs to call a module: self-description, never weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub abi_version: u32,
    /// The lmc version that generated the module.
    pub generator: String,
    /// The model (or variant) name.
    pub model: String,
    /// Resolved config values, for reports (`hidden_size = 768`).
    pub config: Vec<(String, serde_json::Value)>,
    pub symbols: Vec<SymbolSpec>,
    pub params: Vec<TensorSpec>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub entries: Vec<Entry>,
    /// Present when the module is a decode step derived from a forward (`lmc compile --decode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<DecodeSpec>,
    /// Where the module runs its ops. A [`Device::Cuda`] module's entry points take device
    /// pointers in their descriptors, and its host code calls the runtime's device layer
    /// through the table [`DEVICE_BIND_SYMBOL`] binds (see [`DEVICE_FUNCTIONS`]).
    #[serde(default, skip_serializing_if = "Device::is_cpu")]
    pub device: Device,
}

/// Where a module runs its ops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The host's cores.
    #[default]
    Cpu,
    /// An NVIDIA GPU (compute capability 9.0), through the CUDA driver.
    Cuda,
}

impl Device {
    pub fn is_cpu(&self) -> bool {
        *self == Device::Cpu
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// `void lmc_device_bind(void *const *table)`, exported by a [`Device::Cuda`] module: gives it
/// the runtime's device functions, one pointer per name of [`DEVICE_FUNCTIONS`], in that order.
/// Called once, before [`DEVICE_INIT_SYMBOL`].
pub const DEVICE_BIND_SYMBOL: &str = "lmc_device_bind";
/// `void lmc_device_init(void)`: loads the module's kernels onto the device (what MLIR's
/// lowering would have run as global constructors, which would run before the table is bound).
pub const DEVICE_INIT_SYMBOL: &str = "lmc_device_init";
/// `void lmc_device_fini(void)`: unloads them.
pub const DEVICE_FINI_SYMBOL: &str = "lmc_device_fini";

/// The host-side GPU functions that MLIR's `gpu-to-llvm` lowering calls (the `mgpu*` API of
/// MLIR's CUDA runtime wrappers, with the same C signatures), which a [`Device::Cuda`] module
/// reaches through the table it is bound to. The order is the table's.
pub const DEVICE_FUNCTIONS: &[&str] = &[
    "mgpuModuleLoad",
    "mgpuModuleLoadJIT",
    "mgpuModuleUnload",
    "mgpuModuleGetFunction",
    "mgpuLaunchKernel",
    "mgpuStreamCreate",
    "mgpuStreamDestroy",
    "mgpuStreamSynchronize",
    "mgpuStreamWaitEvent",
    "mgpuEventCreate",
    "mgpuEventDestroy",
    "mgpuEventSynchronize",
    "mgpuEventRecord",
    "mgpuMemAlloc",
    "mgpuMemFree",
    "mgpuMemcpy",
    "mgpuMemset32",
    "mgpuMemset16",
    "mgpuSetDefaultDevice",
];

/// How to decode with a derived step function. A call computes the logits of the new tokens
/// (`tokens` holds `[batch, n]`, starting at sequence position `position`) and updates every
/// cache. Caches are outputs whose buffers carry state: the caller passes each holding what the
/// previous call left there (zeros before the first call, the prompt at position 0), and the
/// step reads it and writes only what changes. The runtime checks `position + n <= capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeSpec {
    /// Positions each cache holds: the longest sequence (prompt and generated tokens) a decode
    /// can reach.
    pub capacity: i64,
    /// The i64 scalar input holding the first new position.
    pub position: String,
    /// The input holding the new tokens.
    pub tokens: String,
    /// The input of the new tokens' position ids (`[batch, n]`), when the model takes one: each
    /// row's count of the tokens before it, so that a left-padded row numbers its tokens from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_ids: Option<String>,
    /// The output holding their logits, `[batch, n, vocabulary]`.
    pub logits: String,
    /// The outputs that are caches.
    pub caches: Vec<String>,
    /// The inputs that an encoder-decoder's context module computes once per prompt (its
    /// outputs of the same names), given to every step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serializes")
    }

    pub fn from_json(text: &str) -> Result<Manifest, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Total number of pointers an entry point's `args` array holds.
    pub fn arg_count(&self) -> usize {
        self.params.len() + self.inputs.len() + self.outputs.len()
    }
}

/// The version string every manifest carries, to name the producer of a mismatched library.
pub fn generator_string() -> String {
    format!("lmc {}", env!("CARGO_PKG_VERSION"))
}
