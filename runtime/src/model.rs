//! A module with its weights bound: what a caller actually runs.
//!
//! Binding happens once, up front, so that every way the checkpoint can disagree with the module
//! (a missing tensor, a renamed one, the wrong dtype or shape) is reported before the first run,
//! all at once, naming both sides. Weights stay in their memory mappings; only a tensor whose
//! bytes happen to be misaligned for its element type is copied.
//!
//! A run checks its inputs (see [`crate::validate`]), allocates its own outputs and builds its
//! own descriptors, so a [`LoadedModel`] is shared freely between threads.

use std::collections::{BTreeSet, HashMap};
use std::ffi::c_void;
use std::path::{Path, PathBuf};

use lmc_abi::{DType, Dim, Manifest, WeightFormat};

use crate::cuda::DeviceBuffer;
use crate::error::RuntimeError;
use crate::module::Module;
use crate::safetensors::{SafeTensorsFile, StDType};
use crate::tensor::HostTensor;
use crate::validate::{output_shapes, shape_str, validate_inputs};
use crate::widen::Half;

mod parameters;

/// The name of a single-file checkpoint inside a model directory (Hugging Face convention).
pub const SINGLE_FILE_NAME: &str = "model.safetensors";
/// The index of a sharded checkpoint inside a model directory (Hugging Face convention).
pub const SHARD_INDEX_NAME: &str = "model.safetensors.index.json";

/// Where the weights come from.
#[derive(Debug)]
pub enum WeightsSource {
    /// A `.safetensors` file, or a directory holding `model.safetensors`, a sharded checkpoint
    /// listed by `model.safetensors.index.json`, or exactly one `.safetensors` file.
    Path(PathBuf),
    /// Files the caller already opened; a tensor may appear in only one of them.
    Files(Vec<SafeTensorsFile>),
    /// No weights, for a module without parameters.
    None,
}

impl From<PathBuf> for WeightsSource {
    fn from(p: PathBuf) -> WeightsSource {
        WeightsSource::Path(p)
    }
}

impl From<&Path> for WeightsSource {
    fn from(p: &Path) -> WeightsSource {
        WeightsSource::Path(p.to_path_buf())
    }
}

impl WeightsSource {
    fn open(self) -> Result<Vec<SafeTensorsFile>, RuntimeError> {
        match self {
            WeightsSource::Path(p) => weight_files(&p)?
                .iter()
                .map(|f| SafeTensorsFile::open(f).map_err(RuntimeError::from))
                .collect(),
            WeightsSource::Files(files) => Ok(files),
            WeightsSource::None => Ok(Vec::new()),
        }
    }
}

/// The safetensors files a weights path stands for (see [`WeightsSource::Path`]).
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
    let meta = std::fs::metadata(path).map_err(|e| RuntimeError::weights(format!("cannot read weights path {}: {e}", path.display())))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let index = path.join(SHARD_INDEX_NAME);
    if index.is_file() {
        return shard_files(&index);
    }
    let single = path.join(SINGLE_FILE_NAME);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| RuntimeError::weights(format!("cannot list weights directory {}: {e}", path.display())))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors") && p.is_file())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found),
        0 => Err(RuntimeError::weights(format!(
            "weights directory {} holds no .safetensors file (looked for {SINGLE_FILE_NAME} \
             and {SHARD_INDEX_NAME})",
            path.display()
        ))),
        _ => {
            let names: Vec<String> = found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            Err(RuntimeError::weights(format!(
                "weights directory {} holds several .safetensors files ({}) but no \
                 {SINGLE_FILE_NAME} or {SHARD_INDEX_NAME}; pass the file to use",
                path.display(),
                names.join(", ")
            )))
        }
    }
}

/// The shard files an index's `weight_map` names, each once, sorted.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>, RuntimeError> {
    let bad = |msg: String| RuntimeError::weights(format!("{}: {msg}", index.display()));
    let text = std::fs::read_to_string(index).map_err(|e| bad(format!("cannot read: {e}")))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("has no \"weight_map\" object".to_string()))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map entry for \"{tensor}\" is not a file name")))?;
        // Only plain names: an index must not send us outside the checkpoint's directory.
        let mut parts = Path::new(file).components();
        let plain = matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None));
        if !plain {
            return Err(bad(format!(
                "weight_map sends \"{tensor}\" to \"{file}\", which is not a plain file name"
            )));
        }
        shards.insert(file.to_string());
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(shards.into_iter().map(|f| dir.join(f)).collect())
}

/// Where a parameter's bytes live.
#[derive(Debug)]
enum ParamData {
    /// Borrowed from `files[file]` at run time (looked up by the parameter's name).
    Mapped { file: usize },
    /// Copied: from an in-memory file (freed once bound), because the mapped bytes were not
    /// aligned to the element size, or packed for the module (a manifest
    /// [`lmc_abi::Packing`]).
    Copied(HostTensor),
    /// Packed for the module in a weight format other than f32 (bf16, int8 with its scales):
    /// the bytes of [`lmc_abi::Packing::pack_bytes`].
    Packed(crate::tensor::AlignedBytes),
}

/// `bytes` of parameter `name` packed in a format other than f32, in aligned memory.
fn packed_param(name: &str, bytes: &[u8]) -> Result<ParamData, RuntimeError> {
    crate::tensor::AlignedBytes::copied(bytes).map(ParamData::Packed).ok_or_else(|| {
        RuntimeError::invalid_argument(format!(
            "parameter \"{name}\": cannot allocate {} bytes for its packed form",
            bytes.len()
        ))
    })
}

/// A module with every parameter bound to checked weights. `Send + Sync`: runs need only `&self`.
#[derive(Debug)]
pub struct LoadedModel {
    module: Module,
    files: Vec<SafeTensorsFile>,
    /// One per manifest parameter, in manifest order.
    params: Vec<(Vec<usize>, ParamData)>,
    unused: Vec<String>,
    non_finite: Vec<String>,
    /// The safetensors dtype the f32 parameters are stored in (`F32`, `BF16`, `F16`); `None`
    /// without float parameters.
    weights_dtype: Option<String>,
    /// A CUDA module's parameters, copied to the GPU once, in manifest order.
    device_params: Vec<DeviceBuffer>,
}

impl Module {
    /// Binds every manifest parameter to a tensor of the same name, dtype and shape in the
    /// weights. Reports every mismatch at once. Tensors the module does not use are allowed
    /// (see [`LoadedModel::unused_tensors`]).
    pub fn bind_weights(self, weights: WeightsSource) -> Result<LoadedModel, RuntimeError> {
        let files = weights.open()?;
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for t in f.tensors() {
                if let Some(prev) = owner.insert(&t.name, i) {
                    return Err(RuntimeError::weights(format!(
                        "tensor \"{}\" is in both {} and {}",
                        t.name,
                        files[prev].path().display(),
                        f.path().display()
                    )));
                }
            }
        }
        let manifest = self.manifest();
        let mut problems = Vec::new();
        let mut non_finite = Vec::new();
        let mut params = Vec::with_capacity(manifest.params.len());
        // Each floating-point dtype the f32 parameters are stored in, with a parameter in it.
        let mut float_dtypes: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        for spec in &manifest.params {
            // Static and non-negative: the manifest was checked when the module was loaded.
            let want: Vec<usize> = spec
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Static(n) => usize::try_from(*n).ok(),
                    Dim::Symbol(_) => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    RuntimeError::internal(format!(
                        "parameter \"{}\" has shape {}, not a static one",
                        spec.name,
                        shape_str(&spec.shape)
                    ))
                })?;
            let Some(&fi) = owner.get(spec.name.as_str()) else {
                problems.push(Problem::Missing(spec.name.as_str(), spec.dtype, &spec.shape));
                continue;
            };
            let file = &files[fi];
            let Some(t) = file.get(&spec.name) else {
                problems.push(Problem::Missing(spec.name.as_str(), spec.dtype, &spec.shape));
                continue;
            };
            let path = file.path().display();
            // A half-precision checkpoint's tensors are widened to the model's f32.
            let half = match t.dtype() {
                StDType::Other(name) if spec.dtype == DType::F32 => Half::from_name(name),
                _ => None,
            };
            if t.dtype().as_dtype() != Some(spec.dtype) && half.is_none() {
                problems.push(Problem::Other(format!(
                    "parameter \"{}\": {path} has dtype {}, the model expects {}",
                    spec.name,
                    t.dtype(),
                    spec.dtype.safetensors_name()
                )));
                continue;
            }
            if t.shape() != want.as_slice() {
                problems.push(Problem::Other(format!(
                    "parameter \"{}\": {path} has shape {:?}, the model expects {want:?}",
                    spec.name,
                    t.shape()
                )));
                continue;
            }
            if spec.dtype == DType::F32 {
                float_dtypes
                    .entry(t.dtype().name().to_string())
                    .or_insert_with(|| spec.name.clone());
            }
            let widened = half.map(|h| h.widen(t.bytes()));
            if spec.dtype == DType::F32 {
                let warning = match &widened {
                    Some(values) => non_finite_warning(&spec.name, values.iter().copied()),
                    None => non_finite_warning(&spec.name, f32_elements(t.bytes())),
                };
                // Once per tensor, though it may feed a packed copy too.
                non_finite.extend(warning.filter(|w| !non_finite.contains(w)));
            }
            if let Some((packing, (n, k))) = spec.packing.and_then(|p| Some((p, p.matrix(&want)?))) {
                // The module reads this matrix in panels (checked f32 [n, k] above).
                let values = widened.unwrap_or_else(|| f32_elements(t.bytes()).collect());
                let shape = packing.packed_shape(n, k).to_vec();
                let packed = match packing.format {
                    WeightFormat::F32 => {
                        ParamData::Copied(HostTensor::from_f32(spec.name.clone(), shape.clone(), packing.pack(&values, n, k))?)
                    }
                    _ => packed_param(&spec.name, &packing.pack_bytes(&values, n, k))?,
                };
                params.push((shape, packed));
                file.release_mapped(&spec.name);
                continue;
            }
            if let Some(values) = widened {
                params.push((
                    want.clone(),
                    ParamData::Copied(HostTensor::from_f32(spec.name.clone(), want, values)?),
                ));
                file.release_mapped(&spec.name);
                continue;
            }
            // An in-memory file is freed below, once copied out.
            let data = if t.bytes().as_ptr().align_offset(spec.dtype.size_bytes()) == 0 && !file.is_in_memory() {
                ParamData::Mapped { file: fi }
            } else {
                ParamData::Copied(HostTensor::from_bytes(spec.name.clone(), spec.dtype, want.clone(), t.bytes())?)
            };
            params.push((want, data));
        }
        if !problems.is_empty() {
            return Err(RuntimeError::weights(describe_problems(&problems, manifest, &files, &owner)));
        }
        let weights_dtype = match float_dtypes.len() {
            0 => None,
            1 => float_dtypes.into_keys().next(),
            _ => {
                let examples: Vec<String> = float_dtypes.iter().map(|(d, name)| format!("{d} (e.g. \"{name}\")")).collect();
                return Err(RuntimeError::weights(format!(
                    "the weights store the model's f32 parameters in {}: one floating-point dtype \
                     throughout is expected (convert the checkpoint, e.g. `model.to(torch.bfloat16)` \
                     before `save_pretrained`)",
                    examples.join(" and ")
                )));
            }
        };
        let used: std::collections::HashSet<&str> = manifest.params.iter().map(|p| p.name.as_str()).collect();
        let unused = files
            .iter()
            .flat_map(|f| f.tensors())
            .filter(|t| !used.contains(t.name.as_str()))
            .map(|t| t.name.clone())
            .collect();
        drop(owner);
        let mut files = files;
        for f in &mut files {
            f.free_in_memory_bytes();
        }
        let mut model = LoadedModel {
            module: self,
            files,
            params,
            unused,
            non_finite,
            weights_dtype,
            device_params: Vec::new(),
        };
        if model.manifest().device == lmc_abi::Device::Cuda {
            let mut on_device = Vec::with_capacity(model.params.len());
            for (i, spec) in model.manifest().params.iter().enumerate() {
                on_device.push(DeviceBuffer::upload(
                    model.param_bytes(i)?,
                    &format!("parameter \"{}\"", spec.name),
                )?);
            }
            model.device_params = on_device;
        }
        Ok(model)
    }
}

/// A warning if an f32 parameter holds NaN or infinite values: the model still runs (a
/// checkpoint may mean it, a `-inf` mask bias), but it is more often a corrupt or badly converted
/// file.
fn non_finite_warning(name: &str, values: impl Iterator<Item = f32>) -> Option<String> {
    let (mut nan, mut inf, mut count) = (0usize, 0usize, 0usize);
    for v in values {
        nan += usize::from(v.is_nan());
        inf += usize::from(v.is_infinite());
        count += 1;
    }
    (nan + inf > 0).then(|| format!("parameter \"{name}\" holds {nan} NaN and {inf} infinite value(s) of {count}"))
}

/// Little-endian f32 elements.
fn f32_elements(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

enum Problem<'a> {
    Missing(&'a str, DType, &'a [Dim]),
    Other(String),
}

/// At most this many problems are spelled out; a checkpoint with a different naming scheme would
/// otherwise produce hundreds of lines.
const MAX_PROBLEMS_SHOWN: usize = 8;

fn describe_problems(problems: &[Problem<'_>], manifest: &Manifest, files: &[SafeTensorsFile], have: &HashMap<&str, usize>) -> String {
    let where_ = match files {
        [] => "the weights (none were given)".to_string(),
        [f] => f.path().display().to_string(),
        fs => format!(
            "the {} weight files ({})",
            fs.len(),
            fs.iter().map(|f| f.path().display().to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let lines: Vec<String> = problems
        .iter()
        .take(MAX_PROBLEMS_SHOWN)
        .map(|p| match p {
            Problem::Missing(name, dtype, shape) => {
                let mut line = format!(
                    "parameter \"{name}\" ({} {}) is not in {where_}",
                    dtype.safetensors_name(),
                    shape_str(shape)
                );
                if let Some(s) = suggest(name, have.keys().copied()) {
                    line.push_str(&format!("; did you mean \"{s}\"?"));
                }
                line
            }
            Problem::Other(line) => line.clone(),
        })
        .collect();
    if problems.len() == 1 {
        return lines.into_iter().next().unwrap_or_default();
    }
    let mut out = format!(
        "{} of the {} parameters of {} do not match the weights:",
        problems.len(),
        manifest.params.len(),
        manifest.model
    );
    for l in &lines {
        out.push_str("\n  ");
        out.push_str(l);
    }
    if problems.len() > MAX_PROBLEMS_SHOWN {
        out.push_str(&format!("\n  ... and {} more", problems.len() - MAX_PROBLEMS_SHOWN));
    }
    out
}

/// The present name most likely meant by `want`: one that differs only by a dotted prefix
/// (`bert.` in many Hugging Face checkpoints), else the closest by edit distance, if close enough.
fn suggest<'a>(want: &str, have: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    let prefixed = have
        .clone()
        .filter(|h| h.strip_suffix(want).is_some_and(|p| p.ends_with('.')) || want.strip_suffix(*h).is_some_and(|p| p.ends_with('.')))
        .min_by_key(|h| (h.len(), *h));
    if prefixed.is_some() {
        return prefixed;
    }
    let limit = (want.chars().count() / 4).max(2);
    have.map(|h| (edit_distance(want, h), h))
        .filter(|&(d, _)| d <= limit)
        .min()
        .map(|(_, h)| h)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

impl LoadedModel {
    pub fn module(&self) -> &Module {
        &self.module
    }

    pub fn manifest(&self) -> &Manifest {
        self.module.manifest()
    }

    /// Names of tensors in the weights that no parameter uses, in file order (for a note).
    pub fn unused_tensors(&self) -> Vec<String> {
        self.unused.clone()
    }

    /// The safetensors dtype the model's f32 parameters were stored in: `F32`, or `BF16` or
    /// `F16`, which were widened to f32 (exactly) when bound. `None` when the model has no float
    /// parameters.
    pub fn weights_dtype(&self) -> Option<&str> {
        self.weights_dtype.as_deref()
    }

    /// How the weight matrices are stored when the model was compiled with a weight format
    /// other than f32 (`--set weights=...`): the format, how many matrices it holds, and the
    /// bytes they take against f32's. `None` for f32.
    pub fn weight_storage(&self) -> Option<String> {
        self.module.manifest().weight_storage()
    }

    /// One line per f32 parameter holding NaN or infinite values (to warn about).
    pub fn non_finite_parameters(&self) -> &[String] {
        &self.non_finite
    }

    /// The weight files bound, in the order they were opened.
    pub fn weight_files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|f| f.path())
    }

    /// Runs the `forward` entry point. See [`LoadedModel::run_entry`].
    pub fn run(&self, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, RuntimeError> {
        self.run_entry("forward", inputs)
    }

    /// Checks `inputs` against the manifest, allocates the outputs and runs entry point `entry`.
    /// Returns the outputs in manifest order, named as the manifest names them. (A decode step's
    /// caches start from zeros: see [`LoadedModel::run_carrying`] to carry them.)
    pub fn run_entry(&self, entry: &str, inputs: &[HostTensor]) -> Result<Vec<HostTensor>, RuntimeError> {
        self.run_inner(entry, inputs, &mut [], None)
    }

    /// Runs a decode step's `forward` with its caches carried: each of `carried` is the output
    /// of its name, passed in holding what the previous step left (zeros at first) and updated
    /// in place. Returns the other outputs.
    pub fn run_carrying(&self, inputs: &[HostTensor], carried: &mut [HostTensor]) -> Result<Vec<HostTensor>, RuntimeError> {
        self.run_inner("forward", inputs, carried, None)
    }

    /// As [`LoadedModel::run_carrying`], for a decoder: a CUDA module's caches stay on the GPU
    /// between steps, in `on_device` (empty before the first step, which uploads `carried`;
    /// `carried` is not updated after that). A CPU module ignores `on_device`.
    pub(crate) fn run_carrying_resident(
        &self,
        inputs: &[HostTensor],
        carried: &mut [HostTensor],
        on_device: &mut Vec<DeviceBuffer>,
    ) -> Result<Vec<HostTensor>, RuntimeError> {
        self.run_inner("forward", inputs, carried, Some(on_device))
    }

    fn run_inner(
        &self,
        entry: &str,
        inputs: &[HostTensor],
        carried: &mut [HostTensor],
        resident: Option<&mut Vec<DeviceBuffer>>,
    ) -> Result<Vec<HostTensor>, RuntimeError> {
        let f = self.module.entry(entry)?;
        let m = self.module.manifest();
        let bound = validate_inputs(m, inputs)?;
        let caches = m.decode.as_ref().map_or(&[][..], |d| d.caches.as_slice());
        if let Some(t) = carried.iter().find(|t| !caches.contains(&t.name)) {
            return Err(RuntimeError::invalid_argument(format!(
                "\"{}\" is not a cache of {}; its caches are: {}",
                t.name,
                m.model,
                caches.join(", ")
            )));
        }
        // Every output, in manifest order: a carried cache's buffer, or a new one.
        let mut fresh = Vec::new();
        let mut buffers: Vec<(*mut u8, Vec<usize>)> = Vec::with_capacity(m.outputs.len());
        for (spec, shape) in m.outputs.iter().zip(output_shapes(m, &bound.symbols)?) {
            match carried.iter_mut().find(|t| t.name == spec.name) {
                Some(t) => {
                    if t.dtype != spec.dtype || t.shape != shape || !t.is_consistent() {
                        return Err(RuntimeError::input(format!(
                            "cache \"{}\" is {} {:?}; this step needs {} {shape:?} (a cache of another model, batch or capacity?)",
                            t.name,
                            t.dtype.as_str(),
                            t.shape,
                            spec.dtype.as_str()
                        )));
                    }
                    buffers.push((t.bytes_mut().as_mut_ptr(), shape));
                }
                None => {
                    let mut t = HostTensor::zeros(spec.name.clone(), spec.dtype, shape.clone())?;
                    buffers.push((t.bytes_mut().as_mut_ptr(), shape));
                    fresh.push(t);
                }
            }
        }

        if m.device == lmc_abi::Device::Cuda {
            return self.run_on_device(f, &bound, fresh, carried, resident);
        }
        let mut descriptors: Vec<Vec<i64>> = Vec::with_capacity(m.arg_count());
        for (i, (shape, _)) in self.params.iter().enumerate() {
            // Entry points never write parameters, so a pointer into the read-only mapping is fine.
            descriptors.push(descriptor(self.param_bytes(i)?.as_ptr().cast_mut(), shape)?);
        }
        for t in &bound.inputs {
            // Entry points never write inputs.
            descriptors.push(descriptor(t.bytes().as_ptr().cast_mut(), &t.shape)?);
        }
        for (ptr, shape) in &buffers {
            descriptors.push(descriptor(*ptr, shape)?);
        }
        let mut args: Vec<*mut c_void> = descriptors.iter_mut().map(|d| d.as_mut_ptr().cast::<c_void>()).collect();
        // SAFETY: `f` is the module's entry point `void f(void **args)` (checked at load time
        // against the ABI version). `args` holds one descriptor per parameter, input and output,
        // in manifest order, each describing a live buffer whose dtype and shape
        // `bind_weights`/`validate_inputs`/`output_shapes` checked against the manifest; all of
        // them (descriptors, weights, inputs, outputs) outlive the call. Only output buffers are
        // written: the new ones (owned by `fresh`, whose heap buffers do not move when it grows)
        // and the carried ones, borrowed exclusively from `carried` for the whole call.
        unsafe { f(args.as_mut_ptr()) };
        Ok(fresh)
    }
}

impl LoadedModel {
    /// Parameter `i`'s bytes, as bound.
    fn param_bytes(&self, i: usize) -> Result<&[u8], RuntimeError> {
        let spec = &self.module.manifest().params[i];
        Ok(match &self.params[i].1 {
            ParamData::Mapped { file } => self.files[*file]
                .get(&spec.name)
                .ok_or_else(|| RuntimeError::internal("a bound parameter vanished"))?
                .bytes(),
            ParamData::Copied(t) => t.bytes(),
            ParamData::Packed(bytes) => bytes.as_slice(),
        })
    }

    /// Runs a CUDA module's entry point: the inputs and outputs (a carried cache with what it
    /// holds, a new output as zeros) are copied to the GPU, the entry point launches the
    /// kernels, and the outputs are copied back into `fresh` and `carried`.
    fn run_on_device(
        &self,
        f: crate::module::EntryFn,
        bound: &crate::validate::BoundInputs<'_>,
        mut fresh: Vec<HostTensor>,
        carried: &mut [HostTensor],
        resident: Option<&mut Vec<DeviceBuffer>>,
    ) -> Result<Vec<HostTensor>, RuntimeError> {
        let m = self.module.manifest();
        let mut descriptors: Vec<Vec<i64>> = Vec::with_capacity(m.arg_count());
        for ((shape, _), buffer) in self.params.iter().zip(&self.device_params) {
            descriptors.push(descriptor(buffer.as_mut_ptr(), shape)?);
        }
        let mut inputs = Vec::with_capacity(bound.inputs.len());
        for t in &bound.inputs {
            let buffer = DeviceBuffer::for_tensor(t, &format!("input \"{}\"", t.name))?;
            descriptors.push(descriptor(buffer.as_mut_ptr(), &t.shape)?);
            inputs.push(buffer);
        }
        // Resident caches (a decoder's) are uploaded at its first step, then stay on the device,
        // in `carried`'s order.
        let resident = match resident {
            Some(buffers) => {
                if buffers.len() != carried.len() {
                    *buffers = carried
                        .iter()
                        .map(|t| DeviceBuffer::upload(t.bytes(), &format!("cache \"{}\"", t.name)))
                        .collect::<Result<_, _>>()?;
                }
                Some(&*buffers)
            }
            None => None,
        };
        // Outputs in manifest order: each is a resident cache, or in `carried` or `fresh`.
        let mut outputs = Vec::with_capacity(m.outputs.len());
        for spec in &m.outputs {
            if let (Some(buffers), Some(k)) = (resident, carried.iter().position(|t| t.name == spec.name)) {
                descriptors.push(descriptor(buffers[k].as_mut_ptr(), &carried[k].shape)?);
                continue;
            }
            let host = carried
                .iter()
                .chain(fresh.iter())
                .find(|t| t.name == spec.name)
                .ok_or_else(|| RuntimeError::internal(format!("output \"{}\" has no buffer", spec.name)))?;
            let buffer = DeviceBuffer::for_tensor(host, &format!("output \"{}\"", spec.name))?;
            descriptors.push(descriptor(buffer.as_mut_ptr(), &host.shape)?);
            outputs.push((spec.name.clone(), buffer));
        }
        let mut args: Vec<*mut c_void> = descriptors.iter_mut().map(|d| d.as_mut_ptr().cast::<c_void>()).collect();
        crate::cuda::take_error()?;
        // SAFETY: as for the host call in `run_inner`, except that every descriptor describes a
        // device buffer of the checked size (owned by `self.device_params`, `inputs`, `outputs`
        // and the resident caches, which outlive the call and the
        // synchronisation in `download`), or a scalar in pinned memory the device maps; the
        // entry point launches kernels on them and reads only the scalars on the host.
        unsafe { f(args.as_mut_ptr()) };
        for (name, buffer) in &outputs {
            let host = carried
                .iter_mut()
                .chain(fresh.iter_mut())
                .find(|t| &t.name == name)
                .ok_or_else(|| RuntimeError::internal(format!("output \"{name}\" has no buffer")))?;
            buffer.download(host.bytes_mut(), &format!("output \"{name}\""))?;
        }
        Ok(fresh)
    }
}

/// A strided-memref descriptor for a contiguous row-major buffer:
/// `[allocated, aligned, offset, sizes.., strides..]`.
fn descriptor(ptr: *mut u8, shape: &[usize]) -> Result<Vec<i64>, RuntimeError> {
    let too_big = || RuntimeError::input(format!("shape {shape:?} is too large to pass to a module"));
    let mut d = Vec::with_capacity(3 + 2 * shape.len());
    let addr = ptr as usize as i64;
    d.extend([addr, addr, 0]);
    for &s in shape {
        d.push(i64::try_from(s).map_err(|_| too_big())?);
    }
    let mut strides = vec![0i64; shape.len()];
    let mut stride = 1i64;
    for (i, &s) in shape.iter().enumerate().rev() {
        strides[i] = stride;
        stride = stride.checked_mul(s as i64).ok_or_else(too_big)?;
    }
    d.extend(strides);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::tests::test_module;
    use crate::safetensors::tests::TempDir;
    use crate::safetensors::write_safetensors;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn loaded_model_is_send_and_sync() {
        assert_send_sync::<LoadedModel>();
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn table() -> Vec<u8> {
        f32_bytes(&(0..40).map(|i| i as f32).collect::<Vec<_>>())
    }

    fn write_weights(path: &Path, table_name: &str, extra: bool) {
        let table = table();
        let scale = f32_bytes(&[2.0]);
        let mut tensors: Vec<(&str, DType, &[usize], &[u8])> =
            vec![(table_name, DType::F32, &[10, 4], &table), ("scale", DType::F32, &[1], &scale)];
        if extra {
            tensors.push(("pooler.dense.bias", DType::F32, &[1], &scale));
        }
        write_safetensors(path, &tensors).unwrap();
    }

    #[test]
    fn binds_and_runs() {
        let dir = TempDir::new("model-run");
        let path = dir.path("w.safetensors");
        write_weights(&path, "embeddings.word_embeddings.weight", true);
        let model = test_module().bind_weights(WeightsSource::Path(path.clone())).unwrap();
        assert_eq!(model.unused_tensors(), vec!["pooler.dense.bias".to_string()]);
        assert_eq!(model.weight_files().collect::<Vec<_>>(), vec![path.as_path()]);

        let inputs = [
            HostTensor::from_i32("input_ids", [1, 2], vec![3, 0]).unwrap(),
            HostTensor::from_i64("token_type_ids", [1, 2], vec![0, 1]).unwrap(),
        ];
        let out = model.run(&inputs).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].name, "last_hidden_state");
        assert_eq!(out[0].shape, vec![1, 2, 4]);
        assert_eq!(out[0].as_f32().unwrap(), &[24.0, 26.0, 28.0, 30.0, 1.0, 3.0, 5.0, 7.0]);

        // Runs share the model across threads.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert_eq!(model.run(&inputs).unwrap(), out));
            }
        });

        let bad = [HostTensor::from_i64("input_ids", [1, 2], vec![3, 10]).unwrap(), inputs[1].clone()];
        let e = model.run(&bad).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Input);
        assert!(e.to_string().contains("at [0, 1] holds 10"), "{e}");
        let e = model.run_entry("backward", &inputs).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
    }

    #[test]
    fn directory_sources() {
        let dir = TempDir::new("model-dir");
        write_weights(&dir.path(SINGLE_FILE_NAME), "embeddings.word_embeddings.weight", false);
        let model = test_module().bind_weights(WeightsSource::from(dir.0.as_path())).unwrap();
        assert!(model.unused_tensors().is_empty());

        let other = TempDir::new("model-dir-one");
        write_weights(&other.path("anything.safetensors"), "embeddings.word_embeddings.weight", false);
        assert_eq!(weight_files(&other.0).unwrap(), vec![other.path("anything.safetensors")]);
        write_weights(&other.path("second.safetensors"), "x", false);
        let e = weight_files(&other.0).unwrap_err().to_string();
        assert!(
            e.contains("several .safetensors files (anything.safetensors, second.safetensors)"),
            "{e}"
        );

        let empty = TempDir::new("model-dir-empty");
        let e = weight_files(&empty.0).unwrap_err().to_string();
        assert!(e.contains("holds no .safetensors file"), "{e}");
        let e = weight_files(&empty.path("missing")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read weights path "), "{e}");
    }

    #[test]
    fn sharded_checkpoints() {
        let dir = TempDir::new("model-shards");
        let table = table();
        let scale = f32_bytes(&[2.0]);
        let s1 = "model-00001-of-00002.safetensors";
        let s2 = "model-00002-of-00002.safetensors";
        write_safetensors(
            &dir.path(s1),
            &[("embeddings.word_embeddings.weight", DType::F32, &[10, 4], &table)],
        )
        .unwrap();
        write_safetensors(&dir.path(s2), &[("scale", DType::F32, &[1], &scale)]).unwrap();
        let index = format!(
            r#"{{"metadata":{{"total_size":164}},"weight_map":{{
                "embeddings.word_embeddings.weight":"{s1}","scale":"{s2}"}}}}"#
        );
        std::fs::write(dir.path(SHARD_INDEX_NAME), &index).unwrap();
        let model = test_module().bind_weights(WeightsSource::Path(dir.0.clone())).unwrap();
        assert_eq!(model.weight_files().count(), 2);

        std::fs::write(dir.path(SHARD_INDEX_NAME), r#"{"weight_map":{"scale":"../etc/passwd"}}"#).unwrap();
        let e = weight_files(&dir.0).unwrap_err().to_string();
        assert!(e.contains("not a plain file name"), "{e}");
    }

    #[test]
    fn mismatches_name_both_sides() {
        let dir = TempDir::new("model-bad");
        let path = dir.path("w.safetensors");
        write_weights(&path, "bert.embeddings.word_embeddings.weight", false);
        let e = test_module().bind_weights(WeightsSource::Path(path.clone())).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Weights);
        assert_eq!(
            e.to_string(),
            format!(
                "parameter \"embeddings.word_embeddings.weight\" (F32 [10, 4]) is not in {}; \
                 did you mean \"bert.embeddings.word_embeddings.weight\"?",
                path.display()
            )
        );

        let half = f32_bytes(&[0.0; 20]);
        write_safetensors(
            &path,
            &[
                ("embeddings.word_embeddings.weight", DType::F32, &[5, 4], &half),
                ("scale", DType::I32, &[1], &[0u8; 4]),
            ],
        )
        .unwrap();
        let e = test_module()
            .bind_weights(WeightsSource::Path(path.clone()))
            .unwrap_err()
            .to_string();
        let p = path.display();
        assert_eq!(
            e,
            format!(
                "2 of the 2 parameters of bert-tiny do not match the weights:\n  \
                 parameter \"embeddings.word_embeddings.weight\": {p} has shape [5, 4], the \
                 model expects [10, 4]\n  \
                 parameter \"scale\": {p} has dtype I32, the model expects F32"
            )
        );

        let e = test_module().bind_weights(WeightsSource::None).unwrap_err().to_string();
        assert!(e.contains("is not in the weights (none were given)"), "{e}");
    }

    #[test]
    fn misaligned_tensors_are_copied() {
        // A hand-made file whose header length is not a multiple of 8 misaligns its data.
        let header = r#"{"embeddings.word_embeddings.weight":{"dtype":"F32","shape":[10,4],"data_offsets":[0,160]},"scale":{"dtype":"F32","shape":[1],"data_offsets":[160,164]}}"#;
        let header = format!("{header} ");
        assert_ne!(header.len() % 4, 0);
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&table());
        bytes.extend_from_slice(&f32_bytes(&[1.0]));
        let f = SafeTensorsFile::from_bytes("odd.safetensors", bytes).unwrap();
        let model = test_module().bind_weights(WeightsSource::Files(vec![f])).unwrap();
        assert!(model.params.iter().any(|(_, d)| matches!(d, ParamData::Copied(_))));
        let out = model
            .run(&[
                HostTensor::from_i64("input_ids", [1, 1], vec![1]).unwrap(),
                HostTensor::from_i64("token_type_ids", [1, 1], vec![0]).unwrap(),
            ])
            .unwrap();
        assert_eq!(out[0].as_f32().unwrap(), &[4.0, 5.0, 6.0, 7.0]);
    }

    #[test]
    fn suggestions() {
        let have = ["encoder.layer.0.attention.output.LayerNorm.gamma", "pooler.dense.weight"];
        assert_eq!(
            suggest("encoder.layer.0.attention.output.LayerNorm.weight", have.iter().copied()),
            Some("encoder.layer.0.attention.output.LayerNorm.gamma")
        );
        assert_eq!(suggest("lm_head.weight", have.iter().copied()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn descriptors() {
        let p = 64 as *mut u8;
        assert_eq!(descriptor(p, &[2, 3, 4]).unwrap(), vec![64, 64, 0, 2, 3, 4, 12, 4, 1]);
        assert_eq!(descriptor(p, &[]).unwrap(), vec![64, 64, 0]);
        assert_eq!(descriptor(p, &[0, 5]).unwrap(), vec![64, 64, 0, 0, 5, 5, 1]);
    }
}
