//! The subcommands.

use crate::{MessageFormat, Stage};
use lmc_core::{CheckError, ConfigOverrides};
use lmc_lab::source::{load_model, load_program, overrides, print_diagnostics};
use lmc_lab::{ConfigSource, Failure, Weights};
use std::path::{Path, PathBuf};

/// `lmc check FILE...`: loads each file with its imports and checks every model and variant in
/// it, configured by its defaults.
pub fn check(files: &[PathBuf], format: MessageFormat) -> Result<(), Failure> {
    let mut failed = false;
    for path in files {
        let (sources, diags) = match lmc_core::load_file(path) {
            Err(f) => {
                for m in &f.io {
                    eprintln!("error: {m}");
                }
                failed = true;
                (f.sources, f.diagnostics)
            }
            Ok(program) => {
                let mut diags = Vec::new();
                for name in lmc_core::model_names(&program) {
                    match lmc_core::check_model(&program, Some(&name), &ConfigOverrides::default()) {
                        Ok(c) => diags.extend(c.warnings),
                        Err(CheckError::Diagnostics(d)) => diags.extend(d),
                        Err(CheckError::Selection(m)) => {
                            eprintln!("error: {m}");
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
            MessageFormat::Json => {
                for d in &unique {
                    println!("{}", d.to_json(&sources));
                }
            }
        }
    }
    if failed {
        Err(Failure::Reported)
    } else {
        Ok(())
    }
}

/// `lmc fmt FILE...`: rewrites each file in the canonical layout, or with `--check` only says
/// which are not.
pub fn fmt(files: &[PathBuf], check_only: bool) -> Result<(), Failure> {
    let mut unformatted = Vec::new();
    for path in files {
        let text = std::fs::read(path).map_err(|e| Failure::Message(format!("cannot read {}: {e}", path.display())))?;
        let text = String::from_utf8(text).map_err(|_| Failure::Message(format!("{}: not valid UTF-8", path.display())))?;
        if text.len() > lmc_core::program::MAX_SOURCE_BYTES {
            return Err(Failure::Message(format!(
                "{}: too large for a model file ({} bytes; the limit is {})",
                path.display(),
                text.len(),
                lmc_core::program::MAX_SOURCE_BYTES
            )));
        }
        let mut sources = lmc_grammar::SourceMap::new();
        let id = sources.add(lmc_grammar::SourceFile::new(path.display().to_string(), text));
        let source = sources.get(id);
        let file = match lmc_grammar::parse_file(&source.text, id) {
            Ok(f) => f,
            Err(d) => {
                print_diagnostics(&[d], &sources);
                return Err(Failure::Reported);
            }
        };
        let formatted = lmc_grammar::format_file(&file, source);
        if formatted != source.text {
            if check_only {
                unformatted.push(path.display().to_string());
            } else {
                std::fs::write(path, formatted).map_err(|e| Failure::Message(format!("cannot write {}: {e}", path.display())))?;
            }
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

/// `lmc emit --stage S FILE[:MODEL]`.
pub fn emit(
    stage: Stage,
    spec: &str,
    lanes: Option<i64>,
    device: lmc_codegen::Device,
    decode: Option<i64>,
    config: &ConfigSource,
) -> Result<(), Failure> {
    if let Stage::Ast = stage {
        let (path, _) = lmc_lab::source::split_model_ref(spec);
        let program = load_program(&path)?;
        let module = &program.modules[0];
        print!("{}", lmc_grammar::print_ast(&module.ast, program.sources.get(module.file)));
        return Ok(());
    }
    let (graph, _) = decode_step(load_model(spec, &overrides(config, None)?)?, decode)?;
    let mut target = lmc_codegen::Target::for_device(device);
    if let Some(lanes) = lanes {
        target.lanes = lanes;
    }
    match stage {
        Stage::Ast => unreachable!(),
        Stage::Ir => print!("{}", graph.print()),
        Stage::Mlir => print!("{}", lmc_codegen::emit_mlir(&graph, &target)),
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

/// `lmc run FILE[:MODEL] --weights W --inputs IN -o OUT`.
pub fn run(
    spec: &str,
    weights: &Weights,
    inputs: &Path,
    output: &Path,
    library: Option<&Path>,
    device: lmc_codegen::Device,
    config: &ConfigSource,
) -> Result<(), Failure> {
    let (checkpoint, seed) = match weights {
        Weights::Checkpoint(p) => (Some(p.as_path()), None),
        Weights::Random(s) => (None, Some(*s)),
    };
    let module = match library {
        Some(lib) => lmc_runtime::Module::open_library(lib)?,
        None => {
            let checkpoint_dir = checkpoint.filter(|w| w.is_dir());
            let graph = load_model(spec, &overrides(config, checkpoint_dir)?)?;
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
        eprintln!("warning: {w}");
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
    let file = lmc_runtime::safetensors::SafeTensorsFile::open(inputs)?;
    let mut host = Vec::new();
    for info in file.tensors() {
        host.push(file.get(&info.name).expect("listed tensor exists").to_host()?);
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
