//! `lmc.compile` and `lmc.load`: a model compiled in memory (the JIT) or loaded from a library
//! of `lmc compile`, bound to its weights, and called with tensors; its decode step driven by a
//! [`Decoder`] or by [`Model::generate`].

use std::path::PathBuf;
use std::sync::Arc;

use lmc_lab::source::{collect_diagnostics, load_configured, overrides, Collected};
use lmc_lab::{jit_module, require_device, ConfigSource, Failure, Weights};
use lmc_runtime::{HostTensor, LoadedModel, RuntimeError, WeightsSource};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::dlpack::{host_tensor, Tensor};
use crate::errors::{failure, runtime_error, warn_all, LmcError};

/// A model bound to its weights, shared by the Python objects that use it (a [`Model`], its
/// [`Decoder`]s), so it lives as long as the last of them.
struct BoundModel {
    model: LoadedModel,
    /// An encoder-decoder's context function (its encoder), compiled beside its decode step.
    context: Option<LoadedModel>,
    /// The config as a checkpoint's config.json states it (JSON): the checkpoint's own, with
    /// the model's values over it; `None` for a library.
    config: Option<String>,
    /// `FILE:MODEL`, or the library's path.
    source: String,
    /// Kernel threads for each call (libomp's default, one per core, when `None`).
    threads: Option<usize>,
}

/// Why compiling failed: the compiler's failure (with its diagnostics), or the runtime's
/// (weights that do not fit, a library that does not load).
enum CompileFailure {
    Compiler(Failure),
    Runtime(RuntimeError),
}

impl From<Failure> for CompileFailure {
    fn from(f: Failure) -> Self {
        CompileFailure::Compiler(f)
    }
}

impl From<RuntimeError> for CompileFailure {
    fn from(e: RuntimeError) -> Self {
        CompileFailure::Runtime(e)
    }
}

/// What `lmc.compile` was asked for, owned, to go to the compiler's thread.
struct CompileRequest {
    spec: String,
    weights: Option<PathBuf>,
    random_weights: bool,
    seed: Option<u64>,
    config: Option<PathBuf>,
    set: Vec<String>,
    strict: bool,
    given: Vec<String>,
    decode: Option<i64>,
    threads: Option<usize>,
    device: lmc_codegen::Device,
}

fn weights_of(weights: Option<PathBuf>, random_weights: bool, seed: Option<u64>) -> Result<Weights, Failure> {
    match (weights, random_weights) {
        (Some(_), true) => Err(Failure::Message("give weights=PATH or random_weights=True, not both".into())),
        (None, false) => Err(Failure::Message(
            "give the weights: weights=PATH (a checkpoint directory or safetensors file), or random_weights=True".into(),
        )),
        (Some(_), false) if seed.is_some() => Err(Failure::Message(
            "seed= seeds random weights; with a checkpoint it changes nothing".into(),
        )),
        (Some(path), false) => Ok(Weights::Checkpoint(path)),
        (None, true) => Ok(Weights::Random(seed.unwrap_or(0))),
    }
}

fn weights_source(weights: &Weights, manifest: &lmc_abi::Manifest) -> Result<WeightsSource, RuntimeError> {
    Ok(match weights {
        Weights::Checkpoint(path) => WeightsSource::Path(path.clone()),
        // Seeded by tensor name, as `lmc run --random-weights` seeds them.
        Weights::Random(seed) => WeightsSource::Files(vec![lmc_runtime::random_weights(manifest, *seed)?]),
    })
}

fn compile_in(r: CompileRequest) -> Result<BoundModel, CompileFailure> {
    let weights = weights_of(r.weights, r.random_weights, r.seed)?;
    weights.check("weights=")?;
    if let Some(config) = &r.config {
        lmc_lab::check_input_file(
            "config=",
            &if config.is_dir() {
                config.join("config.json")
            } else {
                config.clone()
            },
        )?;
    }
    require_device(r.device)?;
    let checkpoint_dir = match &weights {
        Weights::Checkpoint(p) if p.is_dir() => Some(p.as_path()),
        _ => None,
    };
    let source = ConfigSource {
        config: r.config,
        set: r.set,
        strict: r.strict,
    };
    let mut o = overrides(&source, checkpoint_dir)?;
    o.given = lmc_core::Given::Named(r.given);
    let (graph, stated) = load_configured(&r.spec, &o)?;
    // The checkpoint's config.json, with what the model's config states over it (a variant's
    // values, `set`, defaults of keys the file lacks): the config a checkpoint of it would carry.
    let mut config: serde_json::Map<String, serde_json::Value> = o.checkpoint.iter().cloned().collect();
    config.extend(stated);
    let (graph, context) = match r.decode {
        None => (graph, None),
        Some(capacity) => {
            let d = lmc_core::decode::derive_decode(&graph, capacity)
                .map_err(|e| Failure::Message(format!("cannot derive decoding for {}: {e}", graph.model)))?;
            (d.step, d.context)
        }
    };
    let bind = |graph: &lmc_core::ir::Graph| -> Result<LoadedModel, CompileFailure> {
        let module = jit_module(graph, r.device).map_err(Failure::Message)?;
        let source = weights_source(&weights, module.manifest())?;
        Ok(module.bind_weights(source)?)
    };
    let model = bind(&graph)?;
    let context = context.as_ref().map(bind).transpose()?;
    for w in model.non_finite_parameters() {
        lmc_lab::output::warning(&format!("{}: {w}", r.spec));
    }
    Ok(BoundModel {
        model,
        context,
        config: Some(serde_json::Value::Object(config).to_string()),
        source: r.spec,
        threads: r.threads,
    })
}

/// Runs `work` on the compiler's stack, with the GIL released, collecting its diagnostics;
/// turns its failure into the exception of its kind and its warnings into `LmcWarning`s.
fn on_compiler<R: Send + 'static>(py: Python<'_>, work: impl FnOnce() -> Result<R, CompileFailure> + Send + 'static) -> PyResult<R> {
    let ran = py.detach(move || lmc_cli::on_compiler_stack(move || collect_diagnostics(work)));
    let (result, collected): (Result<R, CompileFailure>, Vec<Collected>) =
        ran.ok_or_else(|| LmcError::new_err("internal compiler error (lmc crashed); please report it with the input that caused it"))?;
    match result {
        Ok(value) => {
            warn_all(py, &collected)?;
            Ok(value)
        }
        Err(CompileFailure::Compiler(f)) => Err(failure(py, f, collected)),
        Err(CompileFailure::Runtime(e)) => {
            warn_all(py, &collected)?;
            Err(runtime_error(e))
        }
    }
}

fn check_threads(threads: Option<usize>) -> PyResult<()> {
    if threads == Some(0) {
        return Err(pyo3::exceptions::PyValueError::new_err("threads must be at least 1"));
    }
    Ok(())
}

fn device(name: &str) -> PyResult<lmc_codegen::Device> {
    match name {
        "cpu" => Ok(lmc_codegen::Device::Cpu),
        "cuda" => Ok(lmc_codegen::Device::Cuda),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "device={other:?}: expected \"cpu\" or \"cuda\""
        ))),
    }
}

/// Compiles `FILE[:MODEL]` in memory and binds its weights (see `lmc.compile` in `lmc/__init__.py`).
#[pyfunction]
#[pyo3(signature = (spec, weights=None, *, random_weights=false, seed=None, config=None, set=Vec::new(), strict=false, given=Vec::new(), decode=None, threads=None, device="cpu"))]
#[allow(clippy::too_many_arguments)]
pub fn compile(
    py: Python<'_>,
    spec: String,
    weights: Option<PathBuf>,
    random_weights: bool,
    seed: Option<u64>,
    config: Option<PathBuf>,
    set: Vec<String>,
    strict: bool,
    given: Vec<String>,
    decode: Option<i64>,
    threads: Option<usize>,
    device: &str,
) -> PyResult<Model> {
    check_threads(threads)?;
    if decode.is_some_and(|c| c < 1) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "decode= is the caches' capacity in positions: at least 1",
        ));
    }
    let request = CompileRequest {
        spec,
        weights,
        random_weights,
        seed,
        config,
        set,
        strict,
        given,
        decode,
        threads,
        device: self::device(device)?,
    };
    let bound = on_compiler(py, move || compile_in(request))?;
    Ok(Model { inner: Arc::new(bound) })
}

/// Loads a library built by `lmc compile` and binds its weights (see `lmc.load`).
#[pyfunction]
#[pyo3(signature = (library, weights=None, *, random_weights=false, seed=None, threads=None))]
pub fn load(
    py: Python<'_>,
    library: PathBuf,
    weights: Option<PathBuf>,
    random_weights: bool,
    seed: Option<u64>,
    threads: Option<usize>,
) -> PyResult<Model> {
    check_threads(threads)?;
    let bound = on_compiler(py, move || {
        lmc_lab::check_input_file("library", &library)?;
        let weights = weights_of(weights, random_weights, seed)?;
        weights.check("weights=")?;
        let module = lmc_runtime::Module::open_library(&library)?;
        let source = weights_source(&weights, module.manifest())?;
        Ok(BoundModel {
            model: module.bind_weights(source)?,
            context: None,
            config: None,
            source: library.display().to_string(),
            threads,
        })
    })?;
    Ok(Model { inner: Arc::new(bound) })
}

/// Copies each of `inputs` (name → tensor) into a runtime tensor.
fn host_tensors(py: Python<'_>, inputs: &Bound<'_, PyDict>) -> PyResult<Vec<HostTensor>> {
    let mut tensors = Vec::with_capacity(inputs.len());
    for (name, value) in inputs.iter() {
        let name: String = name.extract()?;
        tensors.push(host_tensor(py, &name, &value)?);
    }
    Ok(tensors)
}

fn use_threads(threads: Option<usize>) {
    if let Some(n) = threads {
        lmc_codegen::llvm::set_threads(n);
    }
}

/// A compiled model bound to its weights. Calls run on the caller's thread with the GIL
/// released; any number of threads may call it at once.
#[pyclass(frozen, module = "lmc._lmc")]
pub struct Model {
    inner: Arc<BoundModel>,
}

#[pymethods]
impl Model {
    /// Runs the forward on `inputs` (name → tensor); returns its outputs, name → [`Tensor`].
    fn run(&self, py: Python<'_>, inputs: &Bound<'_, PyDict>) -> PyResult<Vec<(String, Tensor)>> {
        let tensors = host_tensors(py, inputs)?;
        let inner = self.inner.clone();
        let outputs = py
            .detach(move || {
                use_threads(inner.threads);
                inner.model.run(&tensors)
            })
            .map_err(runtime_error)?;
        Ok(outputs.into_iter().map(|t| (t.name.clone(), Tensor::new(t))).collect())
    }

    /// The module's manifest (inputs, outputs, parameters, decode step), as JSON.
    #[getter]
    fn manifest_json(&self) -> &str {
        self.inner.model.module().manifest_json()
    }

    /// The config as a checkpoint's config.json states it, as JSON (`None` for a library).
    #[getter]
    fn config_json(&self) -> Option<&str> {
        self.inner.config.as_deref()
    }

    #[getter]
    fn source(&self) -> &str {
        &self.inner.source
    }

    /// The dtype the checkpoint stores its floats in (`F32`, `BF16`, `F16`: widened to f32).
    #[getter]
    fn weights_dtype(&self) -> Option<&str> {
        self.inner.model.weights_dtype()
    }

    /// Checkpoint tensors the model does not use.
    #[getter]
    fn unused_tensors(&self) -> Vec<String> {
        self.inner.model.unused_tensors()
    }

    #[getter]
    fn threads(&self) -> Option<usize> {
        self.inner.threads
    }

    /// Decoding from `prompts` (rows of token ids; shorter rows are left-padded, see
    /// `lmc_runtime::generate`): up to `max_new_tokens`
    /// each, greedy or sampled; returns the new tokens of each row.
    #[pyo3(signature = (prompts, max_new_tokens, *, eos_token_id=Vec::new(), pad_token_id=None, do_sample=false, temperature=1.0, top_k=0, top_p=1.0, seed=0, context=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: Vec<Vec<i64>>,
        max_new_tokens: usize,
        eos_token_id: Vec<i64>,
        pad_token_id: Option<i64>,
        do_sample: bool,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
        context: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Vec<Vec<i64>>> {
        let given = context.map(|c| host_tensors(py, c)).transpose()?.unwrap_or_default();
        let mut sampler = if do_sample {
            let settings = lmc_runtime::sampling::Sampling {
                temperature,
                top_k,
                top_p,
                seed,
            };
            Some(lmc_runtime::sampling::Sampler::new(settings).map_err(runtime_error)?)
        } else {
            None
        };
        let stop = lmc_runtime::Stop {
            eos: eos_token_id,
            pad: pad_token_id,
        };
        let inner = self.inner.clone();
        let generated = py
            .detach(move || {
                use_threads(inner.threads);
                let context = inner.context_of(given)?;
                lmc_runtime::generate(&inner.model, &prompts, context, max_new_tokens, &stop, sampler.as_mut())
            })
            .map_err(runtime_error)?;
        Ok(generated.tokens)
    }
}

impl BoundModel {
    /// What every decode step reads whole: an encoder-decoder's encoder run on `given` (the
    /// prompt and its mask), or `given` as it is.
    fn context_of(&self, given: Vec<HostTensor>) -> Result<Vec<HostTensor>, RuntimeError> {
        match &self.context {
            Some(encoder) if !given.is_empty() => lmc_runtime::generate::context(encoder, given),
            Some(_) => Err(RuntimeError::input(
                "this is an encoder-decoder's decode step: give the encoder's inputs as context (input_ids, attention_mask)",
            )),
            None => Ok(given),
        }
    }
}

/// One batch of sequences being decoded with a model compiled with `decode=` (or a library of
/// `lmc compile --decode`): the runtime keeps the caches; each `step` appends tokens.
#[pyclass(module = "lmc._lmc")]
pub struct Decoder {
    inner: Arc<BoundModel>,
    state: Option<lmc_runtime::Decoder>,
}

#[pymethods]
impl Decoder {
    #[new]
    #[pyo3(signature = (model, batch=1, context=None))]
    fn new(py: Python<'_>, model: &Model, batch: usize, context: Option<&Bound<'_, PyDict>>) -> PyResult<Decoder> {
        let given = context.map(|c| host_tensors(py, c)).transpose()?.unwrap_or_default();
        let inner = model.inner.clone();
        let state = py
            .detach(|| {
                use_threads(inner.threads);
                let context = inner.context_of(given)?;
                Ok::<_, RuntimeError>(lmc_runtime::Decoder::new(&inner.model, batch)?.with_context(context))
            })
            .map_err(runtime_error)?;
        Ok(Decoder { inner, state: Some(state) })
    }

    /// Appends `n` tokens to each sequence (`tokens`: batch × n ids, row-major) and returns the
    /// logits of those positions; `mask` (batch × n, 0 for padding) marks a left-padded prompt.
    #[pyo3(signature = (tokens, n, mask=None))]
    fn step(&mut self, py: Python<'_>, tokens: Vec<i64>, n: usize, mask: Option<Vec<i64>>) -> PyResult<Tensor> {
        let mut state = self
            .state
            .take()
            .ok_or_else(|| LmcError::new_err("the decoder failed earlier; start a new one"))?;
        let inner = self.inner.clone();
        let (state, logits) = py.detach(move || {
            use_threads(inner.threads);
            let logits = state.step_masked(&inner.model, &tokens, n, mask.as_deref());
            (state, logits)
        });
        self.state = Some(state);
        Ok(Tensor::new(logits.map_err(runtime_error)?))
    }

    /// The next position to be written (the tokens decoded so far).
    #[getter]
    fn position(&self) -> i64 {
        self.state.as_ref().map_or(0, |s| s.position())
    }

    /// How many positions the caches hold.
    #[getter]
    fn capacity(&self) -> i64 {
        self.state.as_ref().map_or(0, |s| s.capacity())
    }

    #[getter]
    fn batch(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.batch())
    }
}
