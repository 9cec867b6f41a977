//! Config evaluation: a `config` block's defaults, then the values of a Hugging Face
//! `config.json`, then a variant's overrides, then `--set key=value`, in declaration order, so
//! derived fields (`head_dim = hidden_size / num_attention_heads`) follow what was overridden.
//! A variant beats the checkpoint: `variant BertAlibi = Bert { position = alibi }` must stay
//! ALiBi whatever the checkpoint's config says.

use crate::suggest::did_you_mean;
use crate::value::{eval, ConfigRecord, CtValue};
use lmc_grammar::ast::{ConfigDecl, ConfigType, Expr, Ident};
use lmc_grammar::Diagnostic;
use std::rc::Rc;

/// Values that replace a config's defaults.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    /// The keys of a Hugging Face `config.json`. Keys the config does not read are ignored:
    /// such files carry many keys a given model does not use.
    pub checkpoint: Vec<(String, serde_json::Value)>,
    /// `--set key=value` from the command line. Unknown keys are errors.
    pub set: Vec<(String, String)>,
    /// `--strict`: a checkpoint key that a config assumes otherwise is an error, not a warning.
    pub strict: bool,
    /// The inputs declared `= absent` that this compile is given (`labels` for a loss): each
    /// becomes an input, and `given(name)` is true in the forward. The others are left out.
    pub given: Given,
    /// Compile the training step: `training()` is true and `dropout` drops (each call a stream
    /// of its own, seeded per step by the input `dropout_seed`). Off, dropout is the identity.
    pub training: bool,
}

/// Which inputs declared `= absent` a compile is given.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Given {
    /// None of them.
    #[default]
    None,
    /// Those named: the inputs a caller passes.
    Named(Vec<String>),
    /// All of them: the compile a backward pass is derived from.
    All,
}

impl Given {
    pub fn contains(&self, input: &str) -> bool {
        match self {
            Given::Named(names) => names.iter().any(|n| n == input),
            Given::None => false,
            Given::All => true,
        }
    }
}

impl ConfigOverrides {
    /// Reads the keys of a `config.json` file.
    pub fn with_checkpoint_json(mut self, text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("config.json is not valid JSON: {e}"))?;
        let object = value.as_object().ok_or("config.json must hold a JSON object")?;
        self.checkpoint = object.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(self)
    }
}

/// The type of a field: declared, or that of its default.
#[derive(Debug, Clone)]
enum FieldType {
    Int,
    Float,
    Bool,
    Str,
    Enum(Rc<Vec<String>>),
}

impl FieldType {
    fn describe(&self) -> String {
        match self {
            FieldType::Int => "an integer".into(),
            FieldType::Float => "a number".into(),
            FieldType::Bool => "true or false".into(),
            FieldType::Str => "a string".into(),
            FieldType::Enum(v) => format!("one of {}", v.join(" | ")),
        }
    }

    /// Converts a value to this type where that loses nothing (an integer may stand for a
    /// float, a string for an enum variant).
    fn coerce(&self, v: CtValue) -> Result<CtValue, String> {
        match (self, v) {
            (FieldType::Int, v @ CtValue::Int(_))
            | (FieldType::Float, v @ CtValue::Float(_))
            | (FieldType::Bool, v @ CtValue::Bool(_))
            | (FieldType::Str, v @ CtValue::Str(_)) => Ok(v),
            (FieldType::Float, CtValue::Int(i)) => Ok(CtValue::Float(i as f64)),
            (FieldType::Int, CtValue::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(CtValue::Int(f as i64)),
            (FieldType::Enum(vs), CtValue::Str(s) | CtValue::Enum { value: s, .. }) if vs.contains(&s) => Ok(CtValue::Enum {
                value: s,
                variants: vs.clone(),
            }),
            (FieldType::Str, CtValue::Enum { value, .. }) => Ok(CtValue::Str(value)),
            (t, v) => Err(format!("{v} is not {}", t.describe())),
        }
    }
}

/// The `--set` key that chooses how weight matrices are stored (`--set weights=int8`): an
/// option of the compile, not a field of the config (unless the config declares a field of
/// that name, which then takes it).
pub const WEIGHTS_KEY: &str = "weights";

/// Takes `--set weights=FORMAT` out of `overrides`: the storage format of the model's weight
/// matrices (f32 when not set), and the overrides left for the config. A value that names no
/// format is an error at `at` (the model's name).
pub fn take_weight_format(
    decl: &ConfigDecl,
    overrides: &ConfigOverrides,
    at: lmc_grammar::Span,
) -> Result<(lmc_abi::WeightFormat, ConfigOverrides), Diagnostic> {
    let declared = decl.fields.iter().any(|f| f.name.name == WEIGHTS_KEY);
    let mut rest = overrides.clone();
    let mut format = lmc_abi::WeightFormat::F32;
    if declared {
        return Ok((format, rest));
    }
    rest.set.retain(|(key, _)| key != WEIGHTS_KEY);
    for (_, value) in overrides.set.iter().filter(|(key, _)| key == WEIGHTS_KEY) {
        format = lmc_abi::WeightFormat::from_name(value.trim()).ok_or_else(|| {
            Diagnostic::error(
                "E0104",
                format!("`--set {WEIGHTS_KEY}={value}` names no weight format"),
                at,
                "the model compiled with it",
            )
            .with_help(format!(
                "the formats are {} (how the weight matrices are stored; the kernels accumulate in f32)",
                lmc_abi::WeightFormat::NAMES.join(", ")
            ))
        })?;
    }
    Ok((format, rest))
}

/// Evaluates a config block with a variant's overrides and the command line's.
/// Evaluates a config: its record, and warnings about keys of the checkpoint it assumes.
pub fn evaluate_config(
    decl: &ConfigDecl,
    variant: &[(Ident, Expr)],
    overrides: &ConfigOverrides,
) -> Result<(ConfigRecord, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let names: Vec<&str> = decl.fields.iter().map(|f| f.name.name.as_str()).collect();
    let unknown = |key: &str| match did_you_mean(key, names.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("the fields of `{}` are: {}", decl.name.name, names.join(", ")),
    };
    if let (Some(first), Some(serde_json::Value::String(found))) = (
        decl.model_types.first(),
        overrides.checkpoint.iter().find(|(k, _)| k == "model_type").map(|(_, v)| v),
    ) {
        if !decl.model_types.iter().any(|t| &t.value == found) {
            let expected: Vec<String> = decl.model_types.iter().map(|t| format!("\"{}\"", t.value)).collect();
            errors.push(
                Diagnostic::error(
                    "E0108",
                    format!(
                        "the checkpoint's config.json is for model_type \"{found}\", but config `{}` reads {} checkpoints",
                        decl.name.name,
                        expected.join(" or ")
                    ),
                    first.span,
                    "the checkpoints this config is for",
                )
                .with_help(format!(
                    "give a {} checkpoint, or a model written for \"{found}\" checkpoints",
                    expected.join(" or ")
                )),
            );
        }
    }
    for (key, _) in &overrides.set {
        if !names.contains(&key.as_str()) {
            errors.push(
                Diagnostic::error(
                    "E0103",
                    format!("`--set {key}=...` names no field of config `{}`", decl.name.name),
                    decl.name.span,
                    "this config has no such field",
                )
                .with_help(unknown(key)),
            );
        }
    }
    for (key, _) in variant {
        if !names.contains(&key.name.as_str()) {
            errors.push(
                Diagnostic::error(
                    "E0103",
                    format!("config `{}` has no field `{}` to override", decl.name.name, key.name),
                    key.span,
                    "no such field",
                )
                .with_secondary(decl.name.span, "the config is declared here")
                .with_help(unknown(&key.name)),
            );
        }
    }
    let mut record = ConfigRecord {
        name: decl.name.name.clone(),
        fields: Vec::new(),
    };
    for field in &decl.fields {
        let name = &field.name.name;
        if let Some(prev) = decl.fields.iter().find(|f| f.name.name == *name) {
            if prev.name.span != field.name.span {
                errors.push(
                    Diagnostic::error(
                        "E0101",
                        format!("config field `{name}` is defined twice"),
                        field.name.span,
                        "defined again here",
                    )
                    .with_secondary(prev.name.span, "first defined here"),
                );
                continue;
            }
        }
        let declared = match &field.ty {
            None => None,
            Some(ConfigType::Int(_)) => Some(FieldType::Int),
            Some(ConfigType::Float(_)) => Some(FieldType::Float),
            Some(ConfigType::Bool(_)) => Some(FieldType::Bool),
            Some(ConfigType::Enum(vs)) => Some(FieldType::Enum(Rc::new(vs.iter().map(|v| v.name.clone()).collect()))),
        };
        let hint = match &declared {
            Some(FieldType::Enum(vs)) => Some(vs.clone()),
            _ => None,
        };
        let lookup = |p: &lmc_grammar::ast::Path| field_value(&record, p);
        let value = match eval(&field.value, &lookup, hint.as_ref()) {
            Ok(v) => v,
            Err(d) => {
                errors.push(d);
                continue;
            }
        };
        let ty = match declared {
            Some(t) => t,
            None => match &value {
                CtValue::Int(_) => FieldType::Int,
                CtValue::Float(_) => FieldType::Float,
                CtValue::Bool(_) => FieldType::Bool,
                CtValue::Str(_) => FieldType::Str,
                CtValue::Enum { variants, .. } => FieldType::Enum(variants.clone()),
                CtValue::Config(_) => {
                    errors.push(Diagnostic::error(
                        "E0104",
                        "a config field cannot hold a config",
                        field.value.span,
                        "this is a config",
                    ));
                    continue;
                }
            },
        };
        let mut value = match ty.coerce(value) {
            Ok(v) => v,
            Err(why) => {
                errors.push(Diagnostic::error(
                    "E0104",
                    format!("the default of `{name}` does not fit its type"),
                    field.value.span,
                    why,
                ));
                continue;
            }
        };
        // The checkpoint's config.json.
        let keys: Vec<(&str, lmc_grammar::Span)> = if field.hf_keys.is_empty() {
            vec![(name.as_str(), field.name.span)]
        } else {
            field.hf_keys.iter().map(|k| (k.value.as_str(), k.span)).collect()
        };
        let found = keys
            .iter()
            .find_map(|(key, span)| checkpoint_value(&overrides.checkpoint, key).map(|j| (*key, *span, j)));
        if let Some((key, span, json)) = found {
            match json_value(json).and_then(|v| ty.coerce(v)) {
                Ok(v) => value = v,
                Err(why) => {
                    errors.push(
                        Diagnostic::error(
                            "E0104",
                            format!("config.json key `{key}` does not fit config field `{name}`"),
                            span,
                            why,
                        )
                        .with_help(format!("`{name}` must be {}", ty.describe())),
                    );
                    continue;
                }
            }
        }
        // The variant's override.
        if let Some((_, e)) = variant.iter().rev().find(|(k, _)| k.name == *name) {
            match eval(e, &lookup, hint.as_ref()).and_then(|v| {
                ty.coerce(v)
                    .map_err(|why| Diagnostic::error("E0104", format!("bad override of `{name}`"), e.span, why))
            }) {
                Ok(v) => value = v,
                Err(d) => {
                    errors.push(d.with_secondary(field.name.span, format!("`{name}` is {}", ty.describe())));
                    continue;
                }
            }
        }
        // The command line.
        if let Some((_, text)) = overrides.set.iter().rev().find(|(k, _)| k == name) {
            match ty.coerce(parse_cli_value(text)) {
                Ok(v) => value = v,
                Err(why) => {
                    errors.push(
                        Diagnostic::error(
                            "E0104",
                            format!("bad value for config field `{name}`"),
                            field.name.span,
                            format!("`--set {name}={text}`: {why}"),
                        )
                        .with_help(format!("`{name}` must be {}", ty.describe())),
                    );
                    continue;
                }
            }
        }
        record.fields.push((name.clone(), value));
    }
    let warnings = check_assumptions(decl, &record, overrides, &mut errors);
    if errors.is_empty() {
        Ok((record, warnings))
    } else {
        Err(errors)
    }
}

/// The config as a checkpoint's `config.json` states it, for a checkpoint lmc writes (`lmc
/// train`): `model_type` (the first the config is `for`), every field under the key it is read
/// from (its first `from` key, else its name; a dotted key as nested objects) with its value, and
/// every `assume`d key with the value assumed (`null` for an absent one), so that a reader of the
/// file computes what the model computed. What the checkpoint's config.json (in `overrides`)
/// already says is left out unless the variant or `--set` changed it, so that a key the
/// checkpoint leaves `null` (meaning its default) stays as the checkpoint has it.
pub fn checkpoint_json(
    decl: &ConfigDecl,
    record: &ConfigRecord,
    variant: &[(Ident, Expr)],
    overrides: &ConfigOverrides,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    if let Some(t) = decl.model_types.first() {
        out.insert("model_type".into(), serde_json::Value::String(t.value.clone()));
    }
    let in_checkpoint = |key: &str| checkpoint_entry(&overrides.checkpoint, key).is_some();
    for field in &decl.fields {
        let name = field.name.name.as_str();
        let changed = variant.iter().any(|(k, _)| k.name == name) || overrides.set.iter().any(|(k, _)| k == name);
        let keys: Vec<&str> = if field.hf_keys.is_empty() {
            vec![name]
        } else {
            field.hf_keys.iter().map(|k| k.value.as_str()).collect()
        };
        if !changed && keys.iter().any(|k| in_checkpoint(k)) {
            continue;
        }
        let Some(value) = record.get(name).and_then(ct_json) else {
            continue;
        };
        insert_dotted(&mut out, keys[0], value);
    }
    let lookup = |p: &lmc_grammar::ast::Path| field_value(record, p);
    for a in decl.assumptions.iter().filter(|a| !in_checkpoint(&a.key.value)) {
        let value = match &a.value {
            None => Some(serde_json::Value::Null),
            Some(e) => eval(e, &lookup, None).ok().as_ref().and_then(ct_json),
        };
        if let Some(value) = value {
            insert_dotted(&mut out, &a.key.value, value);
        }
    }
    out
}

fn ct_json(v: &CtValue) -> Option<serde_json::Value> {
    Some(match v {
        CtValue::Int(i) => serde_json::Value::from(*i),
        CtValue::Float(f) => serde_json::Number::from_f64(*f).map(serde_json::Value::Number)?,
        CtValue::Bool(b) => serde_json::Value::Bool(*b),
        CtValue::Str(s) | CtValue::Enum { value: s, .. } => serde_json::Value::String(s.clone()),
        CtValue::Config(_) => return None,
    })
}

fn insert_dotted(out: &mut serde_json::Map<String, serde_json::Value>, key: &str, value: serde_json::Value) {
    match key.split_once('.') {
        None => {
            out.insert(key.to_string(), value);
        }
        Some((first, rest)) => {
            let inner = out
                .entry(first.to_string())
                .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
            if !inner.is_object() {
                *inner = serde_json::Value::Object(serde_json::Map::new());
            }
            if let serde_json::Value::Object(map) = inner {
                insert_dotted(map, rest, value);
            }
        }
    }
}

/// The config's `assume "key" = value` lines against the checkpoint's config.json: a key set to
/// another value is a warning (W0101), or an error (E0109) under `strict`, since the model
/// computes as if it had the assumed value. An absent key is taken to have it.
fn check_assumptions(
    decl: &ConfigDecl,
    record: &ConfigRecord,
    overrides: &ConfigOverrides,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Diagnostic> {
    let mut warnings = Vec::new();
    let lookup = |p: &lmc_grammar::ast::Path| field_value(record, p);
    for a in &decl.assumptions {
        let key = a.key.value.as_str();
        let Some(found) = checkpoint_value(&overrides.checkpoint, key) else {
            continue;
        };
        let assumed = match &a.value {
            None => None,
            Some(e) => match eval(e, &lookup, None) {
                Ok(v) => Some(v),
                Err(d) => {
                    errors.push(d);
                    continue;
                }
            },
        };
        let holds = match (assumed.clone(), json_value(found)) {
            (None, _) | (Some(_), Err(_)) => false,
            (Some(CtValue::Int(a)), Ok(CtValue::Float(f))) | (Some(CtValue::Float(f)), Ok(CtValue::Int(a))) => a as f64 == f,
            (Some(CtValue::Enum { value, .. }), Ok(CtValue::Str(s))) => value == s,
            (Some(v), Ok(j)) => v == j,
        };
        if holds {
            continue;
        }
        let assumed_text = assumed.as_ref().map_or("null".to_string(), |v| v.to_string());
        let message = format!(
            "config.json sets `{key}` to {found}, which config `{}` does not read: the model computes as if it were {assumed_text}",
            decl.name.name
        );
        let help = "the outputs will not match transformers'; use a checkpoint without it, or a model that reads it";
        if overrides.strict {
            errors.push(Diagnostic::error("E0109", message, a.key.span, "assumed here").with_help(help));
        } else {
            warnings.push(
                Diagnostic::warning("W0101", message, a.key.span, "assumed here")
                    .with_help(format!("{help} (`--strict` makes this an error)")),
            );
        }
    }
    warnings
}

/// Which keys of a checkpoint's `config.json` a config reads (its fields' keys, and
/// `model_type` when it names the types it is `for`), which it assumes a value of (`assume`),
/// and which it ignores: what `lmc check --config` lists.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyUsage {
    pub read: Vec<String>,
    pub assumed: Vec<String>,
    pub ignored: Vec<String>,
}

/// [`KeyUsage`] of `decl` for the checkpoint's keys in `overrides`.
pub fn key_usage(decl: &ConfigDecl, overrides: &ConfigOverrides) -> KeyUsage {
    let present = |key: &str| checkpoint_entry(&overrides.checkpoint, key).is_some();
    let mut read: Vec<String> = Vec::new();
    if !decl.model_types.is_empty() && present("model_type") {
        read.push("model_type".into());
    }
    for field in &decl.fields {
        let keys: Vec<&str> = if field.hf_keys.is_empty() {
            vec![field.name.name.as_str()]
        } else {
            field.hf_keys.iter().map(|k| k.value.as_str()).collect()
        };
        if let Some(key) = keys.into_iter().find(|k| present(k)) {
            if !read.iter().any(|r| r == key) {
                read.push(key.to_string());
            }
        }
    }
    let assumed: Vec<String> = decl
        .assumptions
        .iter()
        .map(|a| a.key.value.clone())
        .filter(|k| present(k))
        .collect();
    let used = |key: &str| read.iter().chain(&assumed).any(|k| k == key || k.split('.').next() == Some(key));
    let ignored = overrides.checkpoint.iter().map(|(k, _)| k.clone()).filter(|k| !used(k)).collect();
    KeyUsage { read, assumed, ignored }
}

/// A `config.json` value by key; a dotted key walks nested objects (`rope_parameters.rope_theta`).
/// A JSON `null` counts as absent: the default stands.
fn checkpoint_value<'a>(checkpoint: &'a [(String, serde_json::Value)], key: &str) -> Option<&'a serde_json::Value> {
    checkpoint_entry(checkpoint, key).filter(|v| !v.is_null())
}

/// A `config.json` entry by key, `null` included; a dotted key walks nested objects.
fn checkpoint_entry<'a>(checkpoint: &'a [(String, serde_json::Value)], key: &str) -> Option<&'a serde_json::Value> {
    let mut parts = key.split('.');
    let first = parts.next()?;
    let mut value = checkpoint.iter().find(|(k, _)| k == first).map(|(_, v)| v)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A config field by name, as config expressions read earlier fields.
fn field_value(record: &ConfigRecord, path: &lmc_grammar::ast::Path) -> Option<CtValue> {
    match path.segments.as_slice() {
        [one] => record.get(&one.name).cloned(),
        _ => None,
    }
}

fn parse_cli_value(text: &str) -> CtValue {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return CtValue::Int(i);
    }
    if let Ok(f) = t.parse::<f64>() {
        if f.is_finite() {
            return CtValue::Float(f);
        }
    }
    match t {
        "true" => CtValue::Bool(true),
        "false" => CtValue::Bool(false),
        _ => CtValue::Str(t.to_string()),
    }
}

fn json_value(v: &serde_json::Value) -> Result<CtValue, String> {
    match v {
        serde_json::Value::Bool(b) => Ok(CtValue::Bool(*b)),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Ok(CtValue::Int(i)),
            None => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(CtValue::Float)
                .ok_or_else(|| "number out of range".into()),
        },
        serde_json::Value::String(s) => Ok(CtValue::Str(s.clone())),
        other => Err(format!("expected a number, a boolean or a string, found {other}")),
    }
}
