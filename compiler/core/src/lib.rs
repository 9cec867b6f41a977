//! `lmc-core`: the middle of the pipeline, free of LLVM. It checks a parsed `.model` file
//! (names, config, element types, symbolic shapes), builds the typed IR ([`ir::Graph`]), and
//! describes it to the runtime as a [`lmc_abi::Manifest`].

pub mod check;
pub mod config;
pub mod cost;
pub mod decode;
pub mod grad;
pub mod interp;
pub mod ir;
pub mod program;
pub mod suggest;
pub mod value;

pub use check::{check_model, model_names, CheckError, Checked, DROPOUT_SEED};
pub use config::{ConfigOverrides, Given};
pub use program::{load_file, load_source, LoadFailure, Program};

use ir::{ConfigValue, Dim, Graph, TensorDecl};
use lmc_abi::{DecodeSpec, Entry, Manifest, SymbolSpec, TensorSpec};

/// The symbol an entry point is exported under.
pub fn entry_symbol(entry: &str) -> String {
    format!("lmc_{entry}")
}

/// Describes a graph's calling convention for the runtime.
pub fn manifest(g: &Graph) -> Manifest {
    let spec = |d: &TensorDecl| TensorSpec {
        name: d.name.clone(),
        dtype: d.ty.dtype,
        shape: d
            .ty
            .dims
            .iter()
            .map(|dim| match dim {
                Dim::Static(n) => lmc_abi::Dim::Static(*n),
                Dim::Symbol(s) => lmc_abi::Dim::Symbol(g.symbols[s.0 as usize].name.clone()),
            })
            .collect(),
        index_bound: d.index_bound.clone(),
        packing: None,
        default: d.default,
    };
    Manifest {
        abi_version: lmc_abi::ABI_VERSION,
        generator: lmc_abi::generator_string(),
        model: g.model.clone(),
        config: g
            .config
            .iter()
            .map(|(k, v)| {
                let json = match v {
                    ConfigValue::Int(i) => serde_json::json!(i),
                    ConfigValue::Float(f) => serde_json::json!(f),
                    ConfigValue::Bool(b) => serde_json::json!(b),
                    ConfigValue::Text(s) => serde_json::json!(s),
                };
                (k.clone(), json)
            })
            .collect(),
        symbols: g
            .symbols
            .iter()
            .map(|s| SymbolSpec {
                name: s.name.clone(),
                max: s.max.clone(),
            })
            .collect(),
        params: g.params.iter().map(spec).collect(),
        inputs: g.inputs.iter().map(spec).collect(),
        outputs: g.outputs.iter().map(|(d, _)| spec(d)).collect(),
        entries: vec![Entry {
            name: "forward".into(),
            symbol: entry_symbol("forward"),
        }],
        decode: g.decode.as_ref().map(|d| DecodeSpec {
            capacity: d.capacity,
            position: g.inputs[d.position].name.clone(),
            tokens: g.inputs[d.tokens].name.clone(),
            position_ids: d.position_ids.map(|k| g.inputs[k].name.clone()),
            logits: g.outputs[d.logits].0.name.clone(),
            caches: d.caches.iter().map(|c| g.outputs[c.output].0.name.clone()).collect(),
            context: d.context.iter().map(|k| g.inputs[*k].name.clone()).collect(),
        }),
        device: Default::default(),
    }
}
