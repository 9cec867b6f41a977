//! Checks a call against the manifest before any generated code runs.
//!
//! Entry points do no checking of their own (see `lmc_abi`): they trust that every buffer has the
//! manifest's dtype and shape and that index inputs are in range. This module is where that trust
//! is earned. It is pure (a manifest and host tensors in, bound symbols or an error out) so that
//! every message can be tested without a generated library.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use lmc_abi::{DType, Dim, InputDefault, Manifest, TensorSpec};

use crate::error::RuntimeError;
use crate::tensor::{byte_size, HostTensor};

/// Checks that a manifest is internally consistent, so that binding and running can rely on it:
/// static dimensions are non-negative, parameters have static shapes, names are unique within
/// each list, packed parameters are f32 matrices, and every symbol an output uses is bound by
/// some input.
pub fn check_manifest(m: &Manifest, source: &str) -> Result<(), RuntimeError> {
    let bad = |msg: String| RuntimeError::library(format!("{source} has an invalid manifest: {msg}"));
    for (list, what) in [(&m.params, "parameter"), (&m.inputs, "input"), (&m.outputs, "output")] {
        let mut names: HashMap<&str, &lmc_abi::TensorSpec> = HashMap::new();
        for spec in list {
            if let Some(first) = names.insert(spec.name.as_str(), spec) {
                // A checkpoint tensor may feed two parameters of its dtype and shape: one as it
                // is, one packed for the matmuls (a tied embedding with a weight format).
                let copy = what == "parameter"
                    && first.dtype == spec.dtype
                    && first.shape == spec.shape
                    && first.packing.is_some() != spec.packing.is_some();
                if !copy {
                    return Err(bad(format!("{what} \"{}\" is listed twice", spec.name)));
                }
            }
            for d in &spec.shape {
                match d {
                    Dim::Static(n) if *n < 0 => return Err(bad(format!("{what} \"{}\" has negative dimension {n}", spec.name))),
                    Dim::Symbol(s) if what == "parameter" => {
                        return Err(bad(format!(
                            "parameter \"{}\" has symbolic dimension {s}; parameters must have \
                             static shapes",
                            spec.name
                        )))
                    }
                    _ => {}
                }
            }
        }
    }
    for spec in &m.params {
        if let Some(p) = spec.packing {
            if spec.dtype != DType::F32 || spec.shape.len() != 2 || p.panel < 1 {
                return Err(bad(format!(
                    "parameter \"{}\" is packed in panels of {}, which needs an f32 matrix and a panel of at least 1",
                    spec.name, p.panel
                )));
            }
            if p.format == lmc_abi::WeightFormat::Int4 && !p.int8_dot {
                return Err(bad(format!(
                    "parameter \"{}\" is packed as int4 without the integer kernels' layout (`int8_dot`), which is the only one int4 has",
                    spec.name
                )));
            }
            let k = if p.in_by_out { spec.shape.first() } else { spec.shape.last() };
            if let Some(Dim::Static(k)) = k {
                if !p.format.fits_rows_of(usize::try_from(*k).unwrap_or(0)) {
                    return Err(bad(format!(
                        "parameter \"{}\" is packed as {} in blocks of {}, but its rows have {k} elements",
                        spec.name,
                        p.format.name(),
                        lmc_abi::INT8_BLOCK
                    )));
                }
            }
        }
    }
    let bound: HashSet<&str> = m
        .inputs
        .iter()
        .flat_map(|s| s.shape.iter())
        .filter_map(|d| match d {
            Dim::Symbol(s) => Some(s.as_str()),
            Dim::Static(_) => None,
        })
        .collect();
    for out in &m.outputs {
        for d in &out.shape {
            if let Dim::Symbol(s) = d {
                if !bound.contains(s.as_str()) {
                    return Err(bad(format!(
                        "output \"{}\" uses symbol {s}, which no input's shape binds",
                        out.name
                    )));
                }
            }
        }
    }
    if m.entries.is_empty() {
        return Err(bad("it lists no entry points".to_string()));
    }
    if let Some(d) = &m.decode {
        let input = |n: &str| m.inputs.iter().find(|s| s.name == n);
        let output = |n: &str| m.outputs.iter().find(|s| s.name == n);
        let scalar_position = input(&d.position).is_some_and(|s| s.dtype == DType::I64 && s.shape.is_empty());
        let tokens = input(&d.tokens).is_some_and(|s| s.shape.len() == 2);
        let logits = output(&d.logits).is_some_and(|s| s.shape.len() == 3);
        if !scalar_position || !tokens || !logits || d.capacity < 1 {
            return Err(bad("its decode description does not match its inputs and outputs".to_string()));
        }
        if let Some(c) = d.caches.iter().find(|c| output(c).is_none()) {
            return Err(bad(format!("its decode section names cache \"{c}\", which is not an output")));
        }
    }
    Ok(())
}

/// For a decode step: the new tokens must fit in the caches after `position`.
fn check_decode_room(m: &Manifest, inputs: &[Cow<'_, HostTensor>]) -> Result<(), RuntimeError> {
    let Some(d) = &m.decode else { return Ok(()) };
    let find = |name: &str| m.inputs.iter().position(|s| s.name == name).map(|k| &inputs[k]);
    let position = find(&d.position)
        .and_then(|t| t.as_i64())
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    let new = find(&d.tokens).map_or(0, |t| t.shape.get(1).copied().unwrap_or(0)) as i64;
    if position < 0 {
        return Err(RuntimeError::input(format!(
            "input \"{}\" holds {position}; a position is at least 0",
            d.position
        )));
    }
    if position.checked_add(new).is_none_or(|end| end > d.capacity) {
        return Err(RuntimeError::input(format!(
            "decoding past the cache capacity: {new} new token(s) at position {position} need room for {} positions, \
             but the caches hold {}; compile with a larger capacity",
            position.saturating_add(new),
            d.capacity
        )));
    }
    Ok(())
}

/// The result of a successful [`validate_inputs`]: the inputs in manifest order (converted where
/// the caller gave i32 for i64 or vice versa) and the value of every symbol.
#[derive(Debug)]
pub struct BoundInputs<'a> {
    /// One per manifest input, in manifest order.
    pub inputs: Vec<Cow<'a, HostTensor>>,
    /// Symbol name → value, e.g. `B = 1`, `T = 7`.
    pub symbols: BTreeMap<String, usize>,
}

/// Checks `inputs` against the manifest's inputs and binds the symbolic dimensions.
///
/// Inputs may come in any order; each manifest input must be given exactly once, except that an
/// input with a default may be left out (it is then made as its default says, in the sizes the
/// given inputs bind). Dtypes must
/// match, except that i32 is accepted for i64 (widened) and i64 for i32 (range-checked). Static
/// dimensions must match; a symbol takes its value from its first occurrence (in manifest order)
/// and every later occurrence must agree; every symbol must be at least 1 and within its `max`.
/// Inputs with an `index_bound` must hold only values in `0..limit`.
pub fn validate_inputs<'a>(m: &Manifest, inputs: &'a [HostTensor]) -> Result<BoundInputs<'a>, RuntimeError> {
    let expected = || m.inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    let mut given: HashMap<&str, &'a HostTensor> = HashMap::new();
    for t in inputs {
        if !m.inputs.iter().any(|s| s.name == t.name) {
            return Err(RuntimeError::input(format!(
                "unknown input \"{}\"; the model's inputs are: {}",
                t.name,
                expected()
            )));
        }
        if given.insert(t.name.as_str(), t).is_some() {
            return Err(RuntimeError::input(format!("input \"{}\" is given twice", t.name)));
        }
    }
    let missing: Vec<String> = m
        .inputs
        .iter()
        .filter(|s| !given.contains_key(s.name.as_str()) && s.default.is_none())
        .map(|s| format!("\"{}\" ({} {})", s.name, s.dtype.as_str(), shape_str(&s.shape)))
        .collect();
    if !missing.is_empty() {
        let s = if missing.len() == 1 { "" } else { "s" };
        return Err(RuntimeError::input(format!(
            "missing input{s} {}; the model's inputs are: {}",
            missing.join(", "),
            expected()
        )));
    }

    let mut symbols: BTreeMap<String, usize> = BTreeMap::new();
    // Symbol → the input that bound it, for disagreement messages.
    let mut bound_by: HashMap<&str, &str> = HashMap::new();
    let mut converted: Vec<Option<Cow<'a, HostTensor>>> = Vec::with_capacity(m.inputs.len());
    for spec in &m.inputs {
        let Some(&t) = given.get(spec.name.as_str()) else {
            // Left out, with a default: made below, once the given inputs have bound the sizes.
            converted.push(None);
            continue;
        };
        if !t.is_consistent() {
            return Err(RuntimeError::invalid_argument(format!(
                "input \"{}\": shape {:?} of {} needs {} bytes, but the tensor holds {}",
                t.name,
                t.shape,
                t.dtype.as_str(),
                byte_size(t.dtype, &t.shape).map_or("too many".to_string(), |n| n.to_string()),
                t.bytes().len()
            )));
        }
        let t = convert_dtype(spec, t)?;
        if t.shape.len() != spec.shape.len() {
            return Err(RuntimeError::input(format!(
                "input \"{}\" has rank {} (shape {:?}); the model expects rank {} ({})",
                t.name,
                t.shape.len(),
                t.shape,
                spec.shape.len(),
                shape_str(&spec.shape)
            )));
        }
        for (axis, (dim, &actual)) in spec.shape.iter().zip(&t.shape).enumerate() {
            match dim {
                Dim::Static(n) => {
                    if *n as u64 != actual as u64 {
                        return Err(RuntimeError::input(format!(
                            "input \"{}\" has size {actual} in dimension {axis} (shape {:?}); \
                             the model expects {n} ({})",
                            t.name,
                            t.shape,
                            shape_str(&spec.shape)
                        )));
                    }
                }
                Dim::Symbol(sym) => match symbols.get(sym) {
                    Some(&v) if v != actual => {
                        return Err(RuntimeError::input(format!(
                            "input \"{}\" has {sym} = {actual} (dimension {axis} of {}), but \
                             input \"{}\" set {sym} = {v}",
                            t.name,
                            shape_str(&spec.shape),
                            bound_by[sym.as_str()]
                        )));
                    }
                    Some(_) => {}
                    None => {
                        check_symbol(m, sym, actual, &t.name, axis)?;
                        symbols.insert(sym.clone(), actual);
                        bound_by.insert(sym, &spec.name);
                    }
                },
            }
        }
        if let Some(bound) = &spec.index_bound {
            check_indices(spec, &t, bound.limit, &bound.reason)?;
        }
        converted.push(Some(t));
    }
    let mut inputs = Vec::with_capacity(m.inputs.len());
    for (spec, t) in m.inputs.iter().zip(converted) {
        let t = match (t, spec.default) {
            (Some(t), _) => t,
            (None, Some(default)) => Cow::Owned(default_input(spec, default, &symbols)?),
            (None, None) => {
                return Err(RuntimeError::internal(format!(
                    "input \"{}\" is neither given nor defaulted, yet was not reported missing",
                    spec.name
                )))
            }
        };
        if let (Some(bound), Some(_)) = (&spec.index_bound, spec.default) {
            check_indices(spec, &t, bound.limit, &bound.reason)?;
        }
        inputs.push(t);
    }
    let converted = inputs;
    check_decode_room(m, &converted)?;
    Ok(BoundInputs {
        inputs: converted,
        symbols,
    })
}

/// The input a caller left out, as its default makes it, in the sizes the given inputs bound.
fn default_input(spec: &TensorSpec, default: InputDefault, symbols: &BTreeMap<String, usize>) -> Result<HostTensor, RuntimeError> {
    let shape = spec
        .shape
        .iter()
        .map(|d| match d {
            Dim::Static(n) => Ok(*n as usize),
            Dim::Symbol(s) => symbols.get(s).copied().ok_or_else(|| {
                RuntimeError::input(format!(
                    "input \"{}\" was left out, and no given input sets its size {s}: give \"{}\" ({})",
                    spec.name,
                    spec.name,
                    shape_str(&spec.shape)
                ))
            }),
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let count: usize = shape.iter().product();
    let last = shape.last().copied().unwrap_or(1);
    let values = (0..count).map(|flat| default.value(flat, last));
    match spec.dtype {
        DType::I64 => HostTensor::from_i64(spec.name.clone(), shape, values.collect()),
        DType::I32 => HostTensor::from_i32(spec.name.clone(), shape, values.map(|v| v as i32).collect()),
        DType::F32 => HostTensor::from_f32(spec.name.clone(), shape, values.map(|v| v as f32).collect()),
    }
}

fn check_symbol(m: &Manifest, sym: &str, value: usize, input: &str, axis: usize) -> Result<(), RuntimeError> {
    if value < 1 {
        return Err(RuntimeError::input(format!(
            "input \"{input}\" has {sym} = 0 (dimension {axis}); symbolic dimensions must be \
             at least 1"
        )));
    }
    let max = m.symbols.iter().find(|s| s.name == sym).and_then(|s| s.max.as_ref());
    if let Some(max) = max {
        if value as u64 > max.limit.max(0) as u64 {
            return Err(RuntimeError::input(format!(
                "{sym} = {value} (dimension {axis} of input \"{input}\") exceeds the model's \
                 limit of {} ({})",
                max.limit, max.reason
            )));
        }
    }
    Ok(())
}

/// A tensor whose bytes do not hold its declared dtype and shape (its fields are public).
fn inconsistent(t: &HostTensor) -> RuntimeError {
    RuntimeError::input(format!("input {}: its data does not match its dtype and shape", t.name))
}

/// Returns `t` as the dtype `spec` declares, converting between i32 and i64 when needed.
fn convert_dtype<'a>(spec: &TensorSpec, t: &'a HostTensor) -> Result<Cow<'a, HostTensor>, RuntimeError> {
    match (spec.dtype, t.dtype) {
        (want, have) if want == have => Ok(Cow::Borrowed(t)),
        (DType::I64, DType::I32) => {
            let values = t.as_i32().ok_or_else(|| inconsistent(t))?.iter().map(|&v| i64::from(v)).collect();
            Ok(Cow::Owned(HostTensor::from_i64(t.name.clone(), t.shape.clone(), values)?))
        }
        (DType::I32, DType::I64) => {
            let src = t.as_i64().ok_or_else(|| inconsistent(t))?;
            let mut values = Vec::with_capacity(src.len());
            for (flat, &v) in src.iter().enumerate() {
                let v = i32::try_from(v).map_err(|_| {
                    RuntimeError::input(format!(
                        "input \"{}\" at {} holds {v}, which does not fit the model's i32 input",
                        t.name,
                        multi_index(flat, &t.shape)
                    ))
                })?;
                values.push(v);
            }
            Ok(Cow::Owned(HostTensor::from_i32(t.name.clone(), t.shape.clone(), values)?))
        }
        (want, have) => Err(RuntimeError::input(format!(
            "input \"{}\" has dtype {}; the model expects {}",
            t.name,
            have.as_str(),
            want.as_str()
        ))),
    }
}

fn check_indices(spec: &TensorSpec, t: &HostTensor, limit: i64, reason: &str) -> Result<(), RuntimeError> {
    let bad = |flat: usize, v: i64| {
        RuntimeError::input(format!(
            "input \"{}\" at {} holds {v}, outside the valid range 0..{limit} ({reason})",
            spec.name,
            multi_index(flat, &t.shape)
        ))
    };
    match t.dtype {
        DType::I64 => {
            let values = t.as_i64().unwrap_or(&[]);
            if let Some(flat) = values.iter().position(|&v| v < 0 || v >= limit) {
                return Err(bad(flat, values[flat]));
            }
        }
        DType::I32 => {
            let values = t.as_i32().unwrap_or(&[]);
            if let Some(flat) = values.iter().position(|&v| v < 0 || i64::from(v) >= limit) {
                return Err(bad(flat, i64::from(values[flat])));
            }
        }
        // Float inputs are never indices; a bound on one is meaningless and ignored.
        DType::F32 => {}
    }
    Ok(())
}

/// The shapes of the manifest's outputs with `symbols` substituted.
pub fn output_shapes(m: &Manifest, symbols: &BTreeMap<String, usize>) -> Result<Vec<Vec<usize>>, RuntimeError> {
    m.outputs
        .iter()
        .map(|spec| {
            let shape =
                spec.shape
                    .iter()
                    .map(|d| match d {
                        Dim::Static(n) => usize::try_from(*n).map_err(|_| {
                            RuntimeError::internal(format!("output \"{}\" has dimension {n}, which does not fit in memory", spec.name))
                        }),
                        Dim::Symbol(s) => symbols.get(s).copied().ok_or_else(|| {
                            RuntimeError::internal(format!("output \"{}\" uses symbol {s}, which no input bound", spec.name))
                        }),
                    })
                    .collect::<Result<Vec<usize>, _>>()?;
            if byte_size(spec.dtype, &shape).is_none() {
                return Err(RuntimeError::input(format!(
                    "output \"{}\" would have shape {shape:?} ({}), too large to allocate",
                    spec.name,
                    shape_str(&spec.shape)
                )));
            }
            Ok(shape)
        })
        .collect()
}

/// `[B, T, 768]`.
pub fn shape_str(shape: &[Dim]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

/// The row-major multi-index of flat position `flat` in `shape`, as `[0, 5]`.
fn multi_index(mut flat: usize, shape: &[usize]) -> String {
    let mut idx = vec![0usize; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    format!("{idx:?}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lmc_abi::{Bound, Entry, SymbolSpec, ABI_VERSION};

    fn spec(name: &str, dtype: DType, shape: &[Dim]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            index_bound: None,
            packing: None,
            default: None,
        }
    }

    fn sym(s: &str) -> Dim {
        Dim::Symbol(s.into())
    }

    /// A BERT-like manifest: ids and token types `[B, T]`, hidden states `[B, T, 4]` out.
    pub(crate) fn bert_like() -> Manifest {
        let mut ids = spec("input_ids", DType::I64, &[sym("B"), sym("T")]);
        ids.index_bound = Some(Bound {
            limit: 10,
            reason: "rows of embeddings.word_embeddings.weight".into(),
        });
        Manifest {
            abi_version: ABI_VERSION,
            generator: "lmc test".into(),
            model: "bert-tiny".into(),
            config: vec![],
            symbols: vec![
                SymbolSpec {
                    name: "B".into(),
                    max: None,
                },
                SymbolSpec {
                    name: "T".into(),
                    max: Some(Bound {
                        limit: 8,
                        reason: "rows of embeddings.position_embeddings.weight".into(),
                    }),
                },
            ],
            params: vec![spec(
                "embeddings.word_embeddings.weight",
                DType::F32,
                &[Dim::Static(10), Dim::Static(4)],
            )],
            inputs: vec![ids, spec("token_type_ids", DType::I64, &[sym("B"), sym("T")])],
            outputs: vec![spec("last_hidden_state", DType::F32, &[sym("B"), sym("T"), Dim::Static(4)])],
            entries: vec![Entry {
                name: "forward".into(),
                symbol: "lmc_forward".into(),
            }],
            decode: None,
            device: Default::default(),
        }
    }

    fn ids(name: &str, shape: &[usize], v: Vec<i64>) -> HostTensor {
        HostTensor::from_i64(name, shape, v).unwrap()
    }

    fn err(m: &Manifest, inputs: &[HostTensor]) -> String {
        validate_inputs(m, inputs).unwrap_err().to_string()
    }

    #[test]
    fn binds_symbols_in_any_order() {
        let m = bert_like();
        let inputs = [
            ids("token_type_ids", &[1, 3], vec![0, 0, 1]),
            ids("input_ids", &[1, 3], vec![1, 2, 9]),
        ];
        let b = validate_inputs(&m, &inputs).unwrap();
        assert_eq!(b.symbols.get("B"), Some(&1));
        assert_eq!(b.symbols.get("T"), Some(&3));
        assert_eq!(b.inputs[0].name, "input_ids");
        assert!(matches!(b.inputs[0], Cow::Borrowed(_)));
        let shapes = output_shapes(&m, &b.symbols).unwrap();
        assert_eq!(shapes, vec![vec![1, 3, 4]]);
    }

    #[test]
    fn names_missing_unknown_and_duplicate_inputs() {
        let m = bert_like();
        let e = err(&m, &[ids("input_ids", &[1, 3], vec![0; 3])]);
        assert_eq!(
            e,
            "missing input \"token_type_ids\" (i64 [B, T]); the model's inputs are: \
             input_ids, token_type_ids"
        );
        let e = err(&m, &[ids("input_idz", &[1, 3], vec![0; 3])]);
        assert_eq!(e, "unknown input \"input_idz\"; the model's inputs are: input_ids, token_type_ids");
        let e = err(&m, &[ids("input_ids", &[1, 3], vec![0; 3]), ids("input_ids", &[1, 3], vec![0; 3])]);
        assert_eq!(e, "input \"input_ids\" is given twice");
    }

    #[test]
    fn inputs_left_out_take_their_defaults() -> Result<(), RuntimeError> {
        let mut m = bert_like();
        m.inputs[1].default = Some(InputDefault::Zeros);
        let mut mask = spec("attention_mask", DType::I64, &[sym("B"), sym("T")]);
        mask.default = Some(InputDefault::Ones);
        let mut positions = spec("position_ids", DType::I32, &[sym("B"), sym("T")]);
        positions.default = Some(InputDefault::Arange);
        positions.index_bound = Some(Bound {
            limit: 8,
            reason: "rows of embeddings.position_embeddings.weight".into(),
        });
        m.inputs.push(mask);
        m.inputs.push(positions);
        let given = [ids("input_ids", &[2, 3], vec![1, 2, 3, 4, 5, 6])];
        let bound = validate_inputs(&m, &given)?;
        let names: Vec<&str> = bound.inputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["input_ids", "token_type_ids", "attention_mask", "position_ids"]);
        assert_eq!(bound.inputs[1].as_i64(), Some(&[0i64; 6][..]));
        assert_eq!(bound.inputs[2].as_i64(), Some(&[1i64; 6][..]));
        assert_eq!(bound.inputs[3].as_i32(), Some(&[0, 1, 2, 0, 1, 2][..]));
        assert_eq!(bound.inputs[3].shape, [2, 3]);
        // Given, a defaulted input is taken as it is.
        let given = [ids("input_ids", &[1, 2], vec![1, 2]), ids("attention_mask", &[1, 2], vec![1, 0])];
        assert_eq!(validate_inputs(&m, &given)?.inputs[2].as_i64(), Some(&[1i64, 0][..]));
        // A size that only a left-out input would give cannot be made up.
        let mut m = bert_like();
        m.inputs[1].shape = vec![sym("B"), sym("S")];
        m.inputs[1].default = Some(InputDefault::Zeros);
        assert_eq!(
            err(&m, &[ids("input_ids", &[1, 2], vec![1, 2])]),
            "input \"token_type_ids\" was left out, and no given input sets its size S: give \"token_type_ids\" ([B, S])"
        );
        Ok(())
    }

    #[test]
    fn symbols_must_agree() {
        let m = bert_like();
        let e = err(
            &m,
            &[ids("input_ids", &[1, 7], vec![0; 7]), ids("token_type_ids", &[1, 6], vec![0; 6])],
        );
        assert_eq!(
            e,
            "input \"token_type_ids\" has T = 6 (dimension 1 of [B, T]), but input \
             \"input_ids\" set T = 7"
        );
    }

    #[test]
    fn symbol_limits() {
        let m = bert_like();
        let e = err(
            &m,
            &[ids("input_ids", &[1, 9], vec![0; 9]), ids("token_type_ids", &[1, 9], vec![0; 9])],
        );
        assert_eq!(
            e,
            "T = 9 (dimension 1 of input \"input_ids\") exceeds the model's limit of 8 \
             (rows of embeddings.position_embeddings.weight)"
        );
        let e = err(&m, &[ids("input_ids", &[1, 0], vec![]), ids("token_type_ids", &[1, 0], vec![])]);
        assert!(e.contains("has T = 0 (dimension 1); symbolic dimensions must be at least 1"), "{e}");
    }

    #[test]
    fn rank_and_static_dims() {
        let mut m = bert_like();
        let e = err(
            &m,
            &[ids("input_ids", &[3], vec![0; 3]), ids("token_type_ids", &[1, 3], vec![0; 3])],
        );
        assert_eq!(e, "input \"input_ids\" has rank 1 (shape [3]); the model expects rank 2 ([B, T])");
        m.inputs[1].shape[0] = Dim::Static(2);
        let e = err(
            &m,
            &[ids("input_ids", &[1, 3], vec![0; 3]), ids("token_type_ids", &[1, 3], vec![0; 3])],
        );
        assert_eq!(
            e,
            "input \"token_type_ids\" has size 1 in dimension 0 (shape [1, 3]); the model \
             expects 2 ([2, T])"
        );
    }

    #[test]
    fn index_bounds_name_the_position() {
        let m = bert_like();
        let e = err(
            &m,
            &[
                ids("input_ids", &[2, 3], vec![0, 1, 2, 3, 10, 5]),
                ids("token_type_ids", &[2, 3], vec![0; 6]),
            ],
        );
        assert_eq!(
            e,
            "input \"input_ids\" at [1, 1] holds 10, outside the valid range 0..10 \
             (rows of embeddings.word_embeddings.weight)"
        );
        let neg = [
            HostTensor::from_i32("input_ids", [1, 2], vec![0, -1]).unwrap(),
            ids("token_type_ids", &[1, 2], vec![0; 2]),
        ];
        assert!(err(&m, &neg).contains("at [0, 1] holds -1, outside"));
    }

    #[test]
    fn integer_widths_convert() {
        let mut m = bert_like();
        let inputs = [
            HostTensor::from_i32("input_ids", [1, 2], vec![3, 4]).unwrap(),
            ids("token_type_ids", &[1, 2], vec![0, 1]),
        ];
        let b = validate_inputs(&m, &inputs).unwrap();
        assert_eq!(b.inputs[0].as_i64().unwrap(), &[3, 4]);

        m.inputs[1].dtype = DType::I32;
        let b = validate_inputs(&m, &inputs).unwrap();
        assert_eq!(b.inputs[1].as_i32().unwrap(), &[0, 1]);
        let too_big = [inputs[0].clone(), ids("token_type_ids", &[1, 2], vec![0, 1 << 40])];
        assert_eq!(
            err(&m, &too_big),
            "input \"token_type_ids\" at [0, 1] holds 1099511627776, which does not fit the \
             model's i32 input"
        );
        let floats = [
            inputs[0].clone(),
            HostTensor::from_f32("token_type_ids", [1, 2], vec![0.0; 2]).unwrap(),
        ];
        assert_eq!(err(&m, &floats), "input \"token_type_ids\" has dtype f32; the model expects i32");
    }

    #[test]
    fn inconsistent_tensors_are_caught() {
        let m = bert_like();
        let mut t = ids("input_ids", &[1, 3], vec![0; 3]);
        t.shape = vec![1, 4];
        let e = validate_inputs(&m, &[t, ids("token_type_ids", &[1, 4], vec![0; 4])]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("needs 32 bytes, but the tensor holds 24"), "{e}");
    }

    #[test]
    fn manifest_checks() {
        let m = bert_like();
        check_manifest(&m, "m.so").unwrap();
        let mut bad = m.clone();
        bad.params[0].shape[0] = sym("V");
        assert!(check_manifest(&bad, "m.so")
            .unwrap_err()
            .to_string()
            .contains("parameter \"embeddings.word_embeddings.weight\" has symbolic dimension V"));
        let mut bad = m.clone();
        bad.outputs[0].shape[2] = sym("H");
        assert_eq!(
            check_manifest(&bad, "m.so").unwrap_err().to_string(),
            "m.so has an invalid manifest: output \"last_hidden_state\" uses symbol H, which \
             no input's shape binds"
        );
        let mut bad = m.clone();
        bad.inputs[1].name = "input_ids".into();
        assert!(check_manifest(&bad, "m.so").unwrap_err().to_string().contains("listed twice"));
        // A parameter may be listed twice when one of the two is a packed copy.
        let mut copied = m.clone();
        let mut copy = copied.params[0].clone();
        copied.params.push(copy.clone());
        assert!(check_manifest(&copied, "m.so").unwrap_err().to_string().contains("listed twice"));
        copy.packing = Some(lmc_abi::Packing::f32(32));
        copied.params.pop();
        copied.params.push(copy);
        assert!(check_manifest(&copied, "m.so").is_ok());
        let mut packed = m;
        packed.params[0].packing = Some(lmc_abi::Packing::f32(32));
        assert!(check_manifest(&packed, "m.so").is_ok());
        packed.params[0].packing = Some(lmc_abi::Packing::f32(0));
        assert!(check_manifest(&packed, "m.so")
            .unwrap_err()
            .to_string()
            .contains("\"embeddings.word_embeddings.weight\" is packed in panels of 0"));
        let int4 = lmc_abi::Packing {
            format: lmc_abi::WeightFormat::Int4,
            ..lmc_abi::Packing::f32(32)
        };
        packed.params[0].packing = Some(lmc_abi::Packing { int8_dot: true, ..int4 });
        let dot = check_manifest(&packed, "m.so").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!dot.contains("is packed as int4 without"), "{dot}");
        packed.params[0].packing = Some(int4);
        assert!(check_manifest(&packed, "m.so")
            .unwrap_err()
            .to_string()
            .contains("is packed as int4 without"));
    }

    #[test]
    fn multi_indices() {
        assert_eq!(multi_index(5, &[2, 3]), "[1, 2]");
        assert_eq!(multi_index(0, &[]), "[]");
        assert_eq!(multi_index(7, &[2, 2, 2]), "[1, 1, 1]");
    }
}
