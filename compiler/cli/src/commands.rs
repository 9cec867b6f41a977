//! The subcommands.

use crate::{MessageFormat, Stage};
use lmc_core::CheckError;
use lmc_lab::source::{load_model, load_program, overrides, print_diagnostics, print_json_diagnostics};
use lmc_lab::{ConfigSource, Failure, Weights};
use std::path::{Path, PathBuf};

/// `lmc check FILE|DIR...`: loads each file (each `*.model` file under a directory) with its
/// imports and checks every model and variant in it, configured by its defaults.
pub fn check(files: &[PathBuf], format: MessageFormat, config: &ConfigSource) -> Result<(), Failure> {
    let files = model_files(files)?;
    let overrides = overrides(config, None)?;
    let mut failed = false;
    for path in &files {
        let (sources, diags) = match lmc_core::load_file(path) {
            Err(f) => {
                for m in &f.io {
                    lmc_lab::output::error(m);
                }
                failed = true;
                (f.sources, f.diagnostics)
            }
            Ok(program) => {
                let mut diags = Vec::new();
                for name in lmc_core::model_names(&program) {
                    match lmc_core::check_model(&program, Some(&name), &overrides) {
                        Ok(c) => {
                            if config.config.is_some() && format == MessageFormat::Human {
                                print_key_usage(&name, &c.config_keys);
                            }
                            diags.extend(c.warnings)
                        }
                        Err(CheckError::Diagnostics(d)) => diags.extend(d),
                        Err(CheckError::Selection(m)) => {
                            lmc_lab::output::error(&m);
                            failed = true;
                        }
                    }
                }
                (program.sources, diags)
            }
        };
        // Models and variants can share a faulty block: report each problem once.
        let mut unique: Vec<lmc_grammar::Diagnostic> = Vec::new();
        for d in diags {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        failed |= unique.iter().any(|d| d.severity == lmc_grammar::Severity::Error);
        match format {
            MessageFormat::Human => print_diagnostics(&unique, &sources),
            MessageFormat::Json => print_json_diagnostics(&unique, &sources),
        }
    }
    if failed {
        Err(Failure::Reported)
    } else {
        Ok(())
    }
}

/// `lmc check --config`: which of the checkpoint's config.json keys a model's config reads,
/// assumes a value of, and ignores.
fn print_key_usage(model: &str, keys: &lmc_core::config::KeyUsage) {
    let list = |keys: &[String]| if keys.is_empty() { "none".to_string() } else { keys.join(", ") };
    println!("{model}");
    println!("  reads    {}", list(&keys.read));
    println!("  assumes  {}", list(&keys.assumed));
    println!("  ignores  {}", list(&keys.ignored));
}

/// The files a list of paths stands for: a file itself, and a directory every `*.model` file
/// under it (recursively, skipping hidden entries and not following links to directories),
/// sorted so that every run takes them in the same order.
pub fn model_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let mut found = Vec::new();
        collect_model_files(path, &mut found)?;
        if found.is_empty() {
            return Err(Failure::Message(format!("{}: no `.model` files in this directory", path.display())));
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn collect_model_files(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), Failure> {
    let entries = std::fs::read_dir(dir).map_err(|e| Failure::Message(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| Failure::Message(format!("cannot list {}: {e}", dir.display())))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir {
            collect_model_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "model") && path.is_file() {
            found.push(path);
        }
    }
    Ok(())
}

/// What `lmc fmt` reads stdin as: `-`.
fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// `lmc fmt FILE|DIR...`: rewrites each file in the canonical layout, or with `--check` prints
/// a diff of what would change. `lmc fmt -` formats stdin to stdout.
pub fn fmt(files: &[PathBuf], check_only: bool) -> Result<(), Failure> {
    if files.iter().any(|p| is_stdin(p)) {
        if files.len() > 1 {
            return Err(Failure::Message("`lmc fmt -` formats stdin alone: give `-` without files".into()));
        }
        let mut text = Vec::new();
        let limit = lmc_core::program::MAX_SOURCE_BYTES;
        std::io::Read::read_to_end(&mut std::io::Read::take(std::io::stdin().lock(), limit as u64 + 1), &mut text)
            .map_err(|e| Failure::Message(format!("cannot read stdin: {e}")))?;
        let formatted = format_text("<stdin>", text)?;
        return match formatted {
            Formatted::Same(text) if !check_only => write_stdout(&text),
            Formatted::Changed { new, .. } if !check_only => write_stdout(&new),
            Formatted::Same(_) => Ok(()),
            Formatted::Changed { old, new } => {
                write_stdout(&unified_diff("<stdin>", &old, &new, lmc_lab::output::stdout_colors()))?;
                Err(Failure::Message("<stdin> is not formatted (run `lmc fmt -` on it)".into()))
            }
        };
    }
    let files = model_files(files)?;
    let mut unformatted = Vec::new();
    for path in &files {
        let text = std::fs::read(path).map_err(|e| Failure::Message(format!("cannot read {}: {e}", path.display())))?;
        let name = path.display().to_string();
        let Formatted::Changed { old, new } = format_text(&name, text)? else {
            continue;
        };
        if check_only {
            write_stdout(&unified_diff(&name, &old, &new, lmc_lab::output::stdout_colors()))?;
            unformatted.push(name);
        } else {
            std::fs::write(path, new).map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
        }
    }
    if unformatted.is_empty() {
        Ok(())
    } else {
        Err(Failure::Message(format!(
            "not formatted (run `lmc fmt` on them): {}",
            unformatted.join(", ")
        )))
    }
}

/// A model file's text, and whether formatting changes it.
enum Formatted {
    Same(String),
    Changed { old: String, new: String },
}

/// Formats the text of a model file named `name` (in diagnostics).
fn format_text(name: &str, text: Vec<u8>) -> Result<Formatted, Failure> {
    let limit = lmc_core::program::MAX_SOURCE_BYTES;
    if text.len() > limit {
        return Err(Failure::Message(format!("{name}: too large for a model file (over {limit} bytes)")));
    }
    let text = String::from_utf8(text).map_err(|_| Failure::Message(format!("{name}: not valid UTF-8")))?;
    let mut sources = lmc_grammar::SourceMap::new();
    let id = sources.add(lmc_grammar::SourceFile::new(name, text));
    let source = sources.get(id);
    let file = match lmc_grammar::parse_file(&source.text, id) {
        Ok(f) => f,
        Err(d) => {
            print_diagnostics(&[d], &sources);
            return Err(Failure::Reported);
        }
    };
    let formatted = lmc_grammar::format_file(&file, source);
    if formatted == source.text {
        Ok(Formatted::Same(formatted))
    } else {
        Ok(Formatted::Changed {
            old: source.text.clone(),
            new: formatted,
        })
    }
}

fn write_stdout(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::Message(format!("cannot write to stdout: {e}")))
}

/// A unified diff (`---`/`+++` headers, `@@ -l,n +l,n @@` hunks with three lines of context)
/// from a file's text to its formatted text; coloured as `git diff` colours it when `color`.
pub fn unified_diff(name: &str, old: &str, new: &str, color: bool) -> String {
    use lmc_lab::output::ansi;
    use similar::ChangeTag;
    let paint = |code: &str, text: &str| {
        if color {
            format!("{code}{text}{}", ansi::RESET)
        } else {
            text.to_string()
        }
    };
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = String::new();
    out.push_str(&paint(ansi::BOLD, &format!("--- {name}\n+++ {name} (formatted)")));
    out.push('\n');
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        out.push_str(&paint(ansi::CYAN, &hunk.header().to_string()));
        out.push('\n');
        for change in hunk.iter_changes() {
            let (sign, code) = match change.tag() {
                ChangeTag::Delete => ('-', ansi::RED),
                ChangeTag::Insert => ('+', ansi::GREEN),
                ChangeTag::Equal => (' ', ""),
            };
            let line = format!("{sign}{}", change.value().strip_suffix('\n').unwrap_or(change.value()));
            out.push_str(&if code.is_empty() { line } else { paint(code, &line) });
            out.push('\n');
            if change.missing_newline() {
                out.push_str("\\ No newline at end of file\n");
            }
        }
    }
    out
}

/// `lmc emit --stage S FILE[:MODEL]`.
/// Which function of a model a command compiles: its forward, or one derived from it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Derived {
    Forward,
    /// The decode step, with caches for this many positions.
    Decode(i64),
    /// The backward pass: the loss and every parameter's gradient.
    Grad,
    /// The backward pass with dropout, as `lmc train` compiles it.
    TrainingStep,
}

pub fn emit(
    stage: Stage,
    spec: &str,
    lanes: Option<i64>,
    device: lmc_codegen::Device,
    derived: Derived,
    config: &ConfigSource,
) -> Result<(), Failure> {
    if let Stage::Ast = stage {
        let (path, _) = lmc_lab::source::split_model_ref(spec);
        let program = load_program(&path)?;
        let module = &program.modules[0];
        print!("{}", lmc_grammar::print_ast(&module.ast, program.sources.get(module.file)));
        return Ok(());
    }
    let overrides = overrides(config, None)?;
    let graph = match derived {
        Derived::Forward => load_model(spec, &overrides)?,
        Derived::Decode(capacity) => decode_step(load_model(spec, &overrides)?, Some(capacity))?.0,
        Derived::Grad => lmc_lab::source::load_grad_model(spec, &overrides)?,
        Derived::TrainingStep => {
            let training = lmc_core::ConfigOverrides {
                training: true,
                ..overrides
            };
            lmc_lab::source::load_training_model(spec, &training)?.grad
        }
    };
    let mut target = lmc_codegen::Target::for_device(device);
    if let Some(lanes) = lanes {
        target.lanes = lanes;
    }
    match stage {
        Stage::Ast => unreachable!(),
        Stage::Ir => print!("{}", graph.print()),
        Stage::Mlir => {
            lmc_codegen::check_target(&graph, &target)?;
            print!("{}", lmc_codegen::emit_mlir(&graph, &target))
        }
        Stage::Buffers => print!("{}", lmc_codegen::emit_buffers(&graph, &target)?),
        Stage::Llvm => print!("{}", lmc_codegen::emit_llvm_ir(&graph, &target)?),
        Stage::Ptx if !target.is_gpu() => {
            return Err(Failure::Message("--stage ptx needs --target cuda: CPU code has no PTX".into()));
        }
        Stage::Loops if !target.is_gpu() => {
            return Err(Failure::Message(
                "--stage loops needs --target cuda: it shows the GPU kernels' loop nests (for the CPU's, see --stage buffers)".into(),
            ));
        }
        Stage::Loops => print!("{}", lmc_codegen::emit_fused_loops(&graph)?),
        Stage::Ptx => {
            for (name, ptx) in lmc_codegen::emit_ptx(&graph)? {
                println!("// kernel module {name}\n{ptx}");
            }
        }
        Stage::Manifest => println!("{}", lmc_codegen::manifest(&graph, &target).to_json()),
    }
    Ok(())
}

/// `lmc compile FILE[:MODEL] -o libx.so`.
pub fn compile(
    spec: &str,
    output: &Path,
    device: lmc_codegen::Device,
    cpu: lmc_codegen::Cpu,
    decode: Option<i64>,
    config: &ConfigSource,
) -> Result<(), Failure> {
    if output.extension().is_none_or(|e| e != "so") {
        return Err(Failure::Message(format!(
            "{}: the output must be a shared library named *.so",
            output.display()
        )));
    }
    let (graph, context) = decode_step(load_model(spec, &overrides(config, None)?)?, decode)?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Failure::Message(format!("cannot create {}: {e}", dir.display())))?;
    }
    let target = match device {
        lmc_codegen::Device::Cpu => lmc_codegen::Target::for_cpu(cpu),
        lmc_codegen::Device::Cuda => lmc_codegen::Target {
            cpu,
            ..lmc_codegen::Target::CUDA
        },
    };
    let header = lmc_codegen::compile_shared_library(&graph, &target, output)?;
    eprintln!("wrote {} and {}", output.display(), header.display());
    if let Some(context) = context {
        // `libx.so` → `libx.context.so`: what the step's context inputs are computed by.
        let path = output.with_extension("context.so");
        let header = lmc_codegen::compile_shared_library(&context, &target, &path)?;
        eprintln!(
            "wrote {} and {} (its context function: run it once per prompt)",
            path.display(),
            header.display()
        );
    }
    Ok(())
}

/// The forward itself, or with a capacity the decode step derived from it (and, for an
/// encoder-decoder, the context function that computes the step's encoder values).
pub fn decode_step(
    forward: lmc_core::ir::Graph,
    capacity: Option<i64>,
) -> Result<(lmc_core::ir::Graph, Option<lmc_core::ir::Graph>), Failure> {
    match capacity {
        None => Ok((forward, None)),
        Some(c) => lmc_core::decode::derive_decode(&forward, c)
            .map(|d| (d.step, d.context))
            .map_err(|e| Failure::Message(format!("cannot derive decoding for {}: {e}", forward.model))),
    }
}

/// `lmc run FILE[:MODEL] --weights W --inputs IN -o OUT`, and `lmc grad` (`derived`: the
/// backward pass).
#[allow(clippy::too_many_arguments)]
pub fn run(
    spec: &str,
    weights: &Weights,
    inputs: &Path,
    output: &Path,
    library: Option<&Path>,
    device: lmc_codegen::Device,
    config: &ConfigSource,
    derived: Derived,
) -> Result<(), Failure> {
    // What is missing is said before anything is compiled.
    weights.check("--weights")?;
    lmc_lab::check_input_file("--inputs", inputs)?;
    if let Some(lib) = library {
        lmc_lab::check_input_file("--library", lib)?;
    }
    let input_file = lmc_runtime::safetensors::SafeTensorsFile::open(inputs)?;
    let (checkpoint, seed) = match weights {
        Weights::Checkpoint(p) => (Some(p.as_path()), None),
        Weights::Random(s) => (None, Some(*s)),
    };
    let module = match library {
        Some(lib) => lmc_runtime::Module::open_library(lib)?,
        None => {
            let checkpoint_dir = checkpoint.filter(|w| w.is_dir());
            let mut overrides = overrides(config, checkpoint_dir)?;
            // Inputs the model may be left without (`labels`) are compiled in when given.
            overrides.given = lmc_core::Given::Named(input_file.tensors().map(|t| t.name.clone()).collect());
            let graph = if derived == Derived::Grad {
                lmc_lab::source::load_grad_model(spec, &overrides)?
            } else {
                load_model(spec, &overrides)?
            };
            let started = std::time::Instant::now();
            let jit = std::sync::Arc::new(lmc_codegen::jit_for(&graph, &lmc_codegen::Target::for_device(device))?);
            eprintln!("compiled {} in {:.0} ms", graph.model, started.elapsed().as_secs_f64() * 1e3);
            let in_jit = jit.clone();
            let lookup = move |name: &str| in_jit.lookup(name);
            // SAFETY: the symbols come from a module lmc just generated for this ABI, and the
            // JIT that holds their code is handed over as the keep-alive.
            unsafe { lmc_runtime::Module::from_symbols(&lookup, Box::new(jit))? }
        }
    };
    let source = match (checkpoint, seed) {
        (Some(path), _) => lmc_runtime::WeightsSource::Path(path.to_path_buf()),
        (None, seed) => lmc_runtime::WeightsSource::Files(vec![lmc_runtime::random_weights(module.manifest(), seed.unwrap_or(0))?]),
    };
    let configured_from_defaults = library.is_none() && checkpoint.is_some_and(|w| !w.is_dir()) && config.config.is_none();
    let model = module.bind_weights(source).map_err(|e| {
        if configured_from_defaults {
            Failure::Message(format!(
                "{e}\nhelp: the model was configured from its defaults; pass the checkpoint's directory as --weights, or its config.json with --config"
            ))
        } else {
            Failure::Message(e.to_string())
        }
    })?;
    for w in model.non_finite_parameters() {
        lmc_lab::output::warning(w);
    }
    if let (Some(dtype), Some(weights)) = (model.weights_dtype(), checkpoint) {
        eprintln!("weights: {} in {dtype}{}", weights.display(), lmc_lab::widened(dtype));
    }
    if let Some(storage) = model.weight_storage() {
        eprintln!("weights stored as {storage}");
    }
    let unused = model.unused_tensors();
    if let (false, Some(weights)) = (unused.is_empty(), checkpoint) {
        eprintln!(
            "note: {} tensor(s) in {} are not used by {} (e.g. {})",
            unused.len(),
            weights.display(),
            model.manifest().model,
            unused[0]
        );
    }
    let mut host = Vec::new();
    for info in input_file.tensors() {
        let t = input_file
            .get(&info.name)
            .ok_or_else(|| Failure::Message(format!("{}: cannot read tensor \"{}\"", inputs.display(), info.name)))?;
        host.push(t.to_host()?);
    }
    let started = std::time::Instant::now();
    let outputs = model.run(&host)?;
    let elapsed = started.elapsed();
    for t in &outputs {
        let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        eprintln!("{}: {}[{}]", t.name, t.dtype.as_str(), dims.join(", "));
    }
    eprintln!("ran {} in {:.3} ms", model.manifest().model, elapsed.as_secs_f64() * 1e3);
    let entries: Vec<(&str, lmc_abi::DType, &[usize], &[u8])> = outputs
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.bytes()))
        .collect();
    lmc_runtime::safetensors::write_safetensors(output, &entries)
        .map_err(|e| Failure::Message(format!("cannot write {}: {e}", output.display())))?;
    Ok(())
}
