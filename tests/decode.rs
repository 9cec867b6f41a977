//! Decoding with the step function the compiler derives from a forward (`lmc_core::decode`),
//! compiled: at every position its logits are the forward's, and greedy decoding reproduces
//! Hugging Face's `generate(do_sample=False)` token for token.

use lmc_runtime::{Decoder, HostTensor};
use lmc_tests::*;

/// Generative models of the zoo with a checkpoint: every position scheme they use enters
/// decoding differently (a learned table read at absolute positions, RoPE and ALiBi in index
/// functions, T5's [query, key] bucket table), the recurrent ones carry scan states, token shifts
/// and a causal convolution, and T5's decoder attends to an encoder that reads the prompt.
const CASES: &[(&str, &str, &str)] = &[
    ("models/gpt2.model", "GPT2LMHeadModel", "tests/fixtures/gpt2_tiny"),
    ("models/gpt2.model", "GPT2ALiBi", "tests/fixtures/gpt2_tiny"),
    ("models/gpt2.model", "GPT2RoPE", "tests/fixtures/gpt2_even"),
    ("models/llama.model", "LlamaForCausalLM", "tests/fixtures/llama_tiny"),
    ("models/llama.model", "LlamaForCausalLM", "tests/fixtures/qwen2_tiny"),
    ("models/llama.model", "LlamaForCausalLM", "tests/fixtures/mistral_tiny"),
    ("models/llama.model", "GemmaForCausalLM", "tests/fixtures/gemma_tiny"),
    ("models/gpt_neox.model", "GPTNeoXForCausalLM", "tests/fixtures/gpt_neox_tiny"),
    ("models/phi.model", "PhiForCausalLM", "tests/fixtures/phi_tiny"),
    ("models/llama.model", "MixtralForCausalLM", "tests/fixtures/mixtral_tiny"),
    ("models/rwkv.model", "RwkvForCausalLM", "tests/fixtures/rwkv_tiny"),
    ("models/mamba.model", "MambaForCausalLM", "tests/fixtures/mamba_tiny"),
    ("models/t5.model", "T5ForConditionalGeneration", "tests/fixtures/t5_untied"),
    ("models/t5.model", "T5ALiBi", "tests/fixtures/t5_untied"),
];

/// An encoder-decoder's: T5's decoder tokens follow an encoder input.
fn is_encoder_decoder(name: &str) -> bool {
    name.starts_with("T5")
}

/// The encoder's input and mask of an encoder-decoder, `[batch, 6]`; none for the others.
fn encoder_context(name: &str, batch: usize, vocab: usize) -> Vec<HostTensor> {
    if !is_encoder_decoder(name) {
        return Vec::new();
    }
    let ids: Vec<i64> = (0..batch * 6).map(|k| (k as i64 * 13 + 5) % vocab as i64).collect();
    vec![
        HostTensor::from_i64("input_ids", [batch, 6], ids).unwrap(),
        HostTensor::from_i64("attention_mask", [batch, 6], vec![1; batch * 6]).unwrap(),
    ]
}

#[test]
fn decode_steps_give_the_forward_logits_at_every_position() {
    let (batch, length) = (2usize, 16usize);
    for &(file, name, fixture) in CASES {
        let weights = root().join(fixture);
        let forward = checked_model(file, name, &weights);
        let decoding = lmc_core::decode::derive_decode(&forward, length as i64).unwrap_or_else(|e| panic!("{name}: {e}"));
        let step = decoding.step;
        let vocab = match forward.outputs[0].0.ty.dims[2] {
            lmc_core::ir::Dim::Static(v) => v as usize,
            _ => unreachable!(),
        };
        let ids: Vec<i64> = (0..batch * length).map(|k| (k as i64 * 37 + 11) % vocab as i64).collect();
        let full_model = jit_model(&forward, &weights);
        let context = encoder_context(name, batch, vocab);
        let tokens = &step.inputs[step.decode.as_ref().unwrap().tokens].name;
        let mut inputs = context.clone();
        inputs.push(HostTensor::from_i64(tokens.clone(), [batch, length], ids.clone()).unwrap());
        if !is_encoder_decoder(name) && forward.inputs.iter().any(|i| i.name == "attention_mask") {
            inputs.push(HostTensor::from_i64("attention_mask", [batch, length], vec![1; batch * length]).unwrap());
        }
        let full = full_model.run(&inputs).unwrap();
        let full = full[0].as_f32().unwrap();

        // An encoder-decoder's step reads its encoder's keys and values, computed once.
        assert_eq!(decoding.context.is_some(), is_encoder_decoder(name), "{name}: a context function");
        let context = match &decoding.context {
            Some(graph) => {
                let mut values = jit_model(graph, &weights).run(&context).unwrap();
                assert_eq!(values.len(), 4, "{name}: keys and values of two decoder layers");
                values.extend(context);
                values
            }
            None => context,
        };
        let step_model = jit_model(&step, &weights);
        let mut decoder = Decoder::new(&step_model, batch).unwrap().with_context(context);
        let mut worst = 0.0f32;
        // A prompt (of 8 rows or more: attention computes its scores keys by queries), a chunk
        // of two (queries by keys), then one token at a time.
        for n in [9usize, 2, 1, 1, 1, 1, 1] {
            let at = decoder.position() as usize;
            let tokens: Vec<i64> = (0..batch)
                .flat_map(|b| ids[b * length + at..b * length + at + n].to_vec())
                .collect();
            let logits = decoder.step(&step_model, &tokens, n).unwrap();
            assert_eq!(logits.shape, [batch, n, vocab]);
            let got = logits.as_f32().unwrap();
            for b in 0..batch {
                for t in 0..n {
                    let row = |v: &[f32], stride: usize, pos: usize| v[(b * stride + pos) * vocab..(b * stride + pos + 1) * vocab].to_vec();
                    worst = worst.max(max_abs_diff(&row(got, n, t), &row(full, length, at + t)));
                }
            }
        }
        assert_eq!(decoder.position() as usize, length);
        assert!(worst <= 1e-4, "{name}: decode logits differ from the forward's by {worst}");
        // The caches are full: one more token is an error, and the decoder stays usable.
        let e = decoder.step(&step_model, &[1, 1], 1).unwrap_err();
        assert!(e.message().contains("decoding past the cache capacity"), "{name}: {e}");
        assert_eq!(decoder.position() as usize, length);
    }
}

fn read_i64(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<i64>) {
    let file = lmc_runtime::SafeTensorsFile::open(path).unwrap_or_else(|e| panic!("{e}"));
    let t = file
        .get(name)
        .unwrap_or_else(|| panic!("{} has no {name}", path.display()))
        .to_host()
        .unwrap();
    (t.shape.clone(), t.as_i64().expect("i64").to_vec())
}

#[test]
fn greedy_decoding_matches_transformers_token_for_token() {
    for &(file, name, fixture) in CASES.iter().filter(|c| !c.1.contains("ALiBi") && !c.1.contains("RoPE")) {
        // An encoder-decoder's sequences start with the decoder's start token, not the prompt.
        let decoder_prompt = |prompt: usize| if is_encoder_decoder(name) { 1 } else { prompt };
        let dir = scratch(&format!("generate_{name}_{}", fixture.rsplit('/').next().unwrap_or(fixture)));
        let out = dir.join("sequences.safetensors");
        let inputs = format!("{fixture}/generate_inputs.safetensors");
        let (shape, want) = read_i64(&root().join(fixture).join("generate_expected.safetensors"), "sequences");
        let (_, prompts) = read_i64(&root().join(&inputs), "input_ids");
        let new = (shape[1] - decoder_prompt(prompts.len() / shape[0])).to_string();
        let spec = format!("{file}:{name}");
        let r = lmc(&[
            "generate",
            &spec,
            "--weights",
            fixture,
            "--inputs",
            &inputs,
            "--max-new-tokens",
            &new,
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
        let (got_shape, got) = read_i64(&out, "sequences");
        assert_eq!((got_shape, got), (shape, want.clone()), "{name}: lmc generate vs transformers");
    }
    // One prompt on the command line prints the new tokens.
    let (_, want) = read_i64(&root().join("tests/fixtures/llama_tiny/generate_expected.safetensors"), "sequences");
    let r = lmc(&[
        "generate",
        "models/llama.model",
        "--weights",
        "tests/fixtures/llama_tiny",
        "--input-ids",
        &want[..5].iter().map(i64::to_string).collect::<Vec<_>>().join(","),
        "--max-new-tokens",
        "12",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let printed: Vec<i64> = String::from_utf8_lossy(&r.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(printed, want[5..17]);
}

/// Prompts of different lengths, left-padded with their attention mask as a tokenizer pads them
/// for generation: the padding is masked and each row's position ids count its own tokens, so
/// every row continues as transformers' `generate` continues it (learned positions, rotary,
/// partial rotary, experts). A model that cannot be padded says why.
#[test]
fn left_padded_prompts_decode_as_transformers_does() {
    for (spec, fixture) in [
        ("models/gpt2.model", "gpt2_tiny"),
        ("models/llama.model", "llama_tiny"),
        ("models/llama.model:GemmaForCausalLM", "gemma_tiny"),
        ("models/gpt_neox.model", "gpt_neox_tiny"),
        ("models/phi.model", "phi_tiny"),
        ("models/llama.model:MixtralForCausalLM", "mixtral_tiny"),
    ] {
        let dir = format!("tests/fixtures/{fixture}");
        let out = scratch(&format!("padded_{fixture}")).join("sequences.safetensors");
        let inputs = format!("{dir}/generate_padded_inputs.safetensors");
        let (shape, want) = read_i64(&root().join(&dir).join("generate_padded_expected.safetensors"), "sequences");
        let (_, mask) = read_i64(&root().join(&inputs), "attention_mask");
        assert!(mask.contains(&0), "{fixture}: the fixture pads a row");
        let r = lmc(&[
            "generate",
            spec,
            "--weights",
            &dir,
            "--inputs",
            &inputs,
            "--max-new-tokens",
            "12",
            "-o",
            out.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{spec}: {}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(
            read_i64(&out, "sequences"),
            (shape, want),
            "{spec}: lmc generate vs transformers, left-padded"
        );
    }
    // Texts of different lengths in one batch continue as each does alone.
    let prompts = ["w5 w17 w42 w8 w61", "w3 w9"];
    let text = |args: &[&str]| {
        let mut all = vec![
            "generate",
            "models/gpt2.model",
            "--weights",
            "tests/fixtures/gpt2_tiny",
            "--max-new-tokens",
            "6",
        ];
        all.extend_from_slice(args);
        let r = lmc(&all);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).lines().map(str::to_string).collect::<Vec<_>>()
    };
    let alone: Vec<String> = prompts.iter().flat_map(|p| text(&["--prompt", p])).collect();
    assert_eq!(text(&["--prompt", prompts[0], "--prompt", prompts[1]]), alone);
    let padded = "tests/fixtures/gpt2_tiny/generate_padded_inputs.safetensors";
    for (spec, weights, why) in [
        ("models/rwkv.model", "tests/fixtures/rwkv_tiny", "takes no attention mask"),
        ("models/mamba.model", "tests/fixtures/mamba_tiny", "takes no position_ids"),
    ] {
        lmc_fails(
            &["generate", spec, "--weights", weights, "--inputs", padded, "--max-new-tokens", "2"],
            &[why],
        );
    }
    // Padding on the right would leave a row's last token before its padding.
    let dir = scratch("right_padded");
    let right = dir.join("inputs.safetensors");
    let ids: Vec<u8> = [5i64, 6, 7, 8, 9, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mask: Vec<u8> = [1i64, 1, 1, 1, 1, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    lmc_runtime::write_safetensors(
        &right,
        &[
            ("input_ids", lmc_abi::DType::I64, &[2, 3], &ids),
            ("attention_mask", lmc_abi::DType::I64, &[2, 3], &mask),
        ],
    )
    .unwrap();
    lmc_fails(
        &[
            "generate",
            "models/llama.model",
            "--weights",
            "tests/fixtures/llama_tiny",
            "--inputs",
            right.to_str().unwrap(),
            "--max-new-tokens",
            "2",
        ],
        &["row 1 of \"attention_mask\"", "padding_side=\"left\""],
    );
}

#[test]
fn what_cannot_be_generated_is_a_clear_error() {
    let gpt2 = [
        "generate",
        "models/gpt2.model:GPT2LMHeadModel",
        "--weights",
        "tests/fixtures/gpt2_tiny",
        "--input-ids",
        "5,17,42",
    ];
    let with = |extra: &[&str]| {
        let mut a = gpt2.to_vec();
        a.extend_from_slice(extra);
        let r = lmc(&a);
        (r.status.code().unwrap_or(-1), String::from_utf8_lossy(&r.stderr).to_string())
    };
    let (code, err) = with(&["--max-new-tokens", "0"]);
    expect_error(code, &err, &["--max-new-tokens` must be at least 1"]);
    // Three prompt tokens and 30 new ones need 32 positions; GPT-2's table has 24.
    let (code, err) = with(&["--max-new-tokens", "30"]);
    expect_error(
        code,
        &err,
        &["32 positions do not fit: the model runs at most 24 (rows of transformer.wpe.weight)"],
    );
    let (code, err) = with(&["--max-new-tokens", "99999999999999"]);
    expect_error(code, &err, &["do not fit"]);

    // LLaMA's RoPE has no table: a billion positions are refused for the caches they need.
    lmc_fails(
        &[
            "generate",
            "models/llama.model",
            "--weights",
            "tests/fixtures/llama_tiny",
            "--input-ids",
            "5",
            "--max-new-tokens",
            "1000000000",
        ],
        &[
            "the caches for 1000000000 positions of 1 sequence(s) need",
            "GiB, more than this machine's",
        ],
    );
    // No learned table bounds Mamba, and its caches keep a few rows: absurd lengths are refused
    // for the memory their tokens need.
    lmc_fails(
        &[
            "generate",
            "models/mamba.model",
            "--weights",
            "tests/fixtures/mamba_tiny",
            "--input-ids",
            "5",
            "--max-new-tokens",
            "99999999999999",
        ],
        &[
            "new tokens for 1 sequence(s) would need",
            "GiB for the tokens alone, more than this machine's",
        ],
    );

    lmc_fails(
        &[
            "generate",
            "models/bert.model:BertModel",
            "--random-weights",
            "--input-ids",
            "5,6",
            "--max-new-tokens",
            "2",
        ],
        &[
            "cannot derive decoding for BertModel: the attention at models/bert.model:",
            "is not causal",
        ],
    );
    // An encoder-decoder needs its decoder's start token: the checkpoint's, or given.
    let dir = scratch("t5_without_start");
    std::fs::copy(
        root().join("tests/fixtures/t5_tiny/model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(root().join("tests/fixtures/t5_tiny/config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"decoder_start_token_id\"", "\"unused_start\""),
    )
    .unwrap();
    lmc_fails(
        &[
            "generate",
            "models/t5.model",
            "--weights",
            dir.to_str().unwrap(),
            "--input-ids",
            "5,6",
            "--max-new-tokens",
            "2",
        ],
        &["give its first decoder token with --decoder-start-token-id"],
    );
}

/// Caches are carried in place; one of another model, or of another size, is refused by name
/// before any code runs.
#[test]
fn a_step_checks_its_caches() {
    let weights = root().join("tests/fixtures/gpt2_tiny");
    let forward = checked_model("models/gpt2.model", "GPT2LMHeadModel", &weights);
    let step = lmc_core::decode::derive_decode(&forward, 6).unwrap().step;
    let model = jit_model(&step, &weights);
    let m = model.manifest();
    let decode = m.decode.clone().expect("a decode section in the manifest");
    assert_eq!(
        (decode.capacity, decode.tokens.as_str(), decode.position.as_str()),
        (6, "input_ids", "position")
    );
    let mut inputs = vec![
        HostTensor::from_i64("input_ids", [1, 1], vec![3]).unwrap(),
        HostTensor::from_i64("attention_mask", [1, 1], vec![1]).unwrap(),
        HostTensor::from_i64("position_ids", [1, 1], vec![0]).unwrap(),
        HostTensor::from_i64("position", Vec::<usize>::new(), vec![0]).unwrap(),
    ];
    let mut caches: Vec<HostTensor> = decode
        .caches
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let spec = m.outputs.iter().find(|s| &s.name == name).unwrap();
            let mut shape: Vec<usize> = spec
                .shape
                .iter()
                .map(|d| if let lmc_runtime::Dim::Static(n) = d { *n as usize } else { 1 })
                .collect();
            if k == 0 {
                // A cache with room for 8 positions: another model's, or another capacity's.
                *shape.iter_mut().find(|d| **d == 6).unwrap() = 8;
            }
            HostTensor::zeros(name.clone(), spec.dtype, shape).unwrap()
        })
        .collect();
    let e = model.run_carrying(&inputs, &mut caches).unwrap_err();
    assert!(
        e.message().contains(&format!(
            "cache \"{}\" is f32 [1, 5, 8, 7]; this step needs f32 [1, 5, 6, 7]",
            decode.caches[0]
        )),
        "{e}"
    );
    let mut shape = caches[0].shape.clone();
    *shape.iter_mut().find(|d| **d == 8).unwrap() = 6;
    caches[0] = HostTensor::zeros(decode.caches[0].clone(), caches[0].dtype, shape).unwrap();
    // The step writes its key and value rows into the caches it was given, and returns the rest.
    let outputs = model.run_carrying(&inputs, &mut caches).unwrap();
    assert_eq!(outputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["logits"]);
    assert!(
        caches[0].as_f32().unwrap().iter().any(|&x| x != 0.0),
        "the first key row is written in place"
    );
    let e = model
        .run_carrying(
            &inputs,
            &mut [HostTensor::zeros("logits", lmc_runtime::DType::F32, [1, 1, 101]).unwrap()],
        )
        .unwrap_err();
    assert!(e.message().contains("\"logits\" is not a cache of GPT2LMHeadModel"), "{e}");
    let position = inputs.iter().position(|t| t.name == "position").unwrap();
    inputs[position] = HostTensor::from_i64("position", Vec::<usize>::new(), vec![6]).unwrap();
    let e = model.run_carrying(&inputs, &mut caches).unwrap_err();
    assert!(
        e.message()
            .contains("1 new token(s) at position 6 need room for 7 positions, but the caches hold 6"),
        "{e}"
    );
    inputs[position] = HostTensor::from_i64("position", Vec::<usize>::new(), vec![-1]).unwrap();
    let e = model.run_carrying(&inputs, &mut caches).unwrap_err();
    assert!(e.message().contains("holds -1; a position is at least 0"), "{e}");

    // A decoder's caches go with the module that made them; a forward makes no decoder.
    let other = jit_model(&lmc_core::decode::derive_decode(&forward, 7).unwrap().step, &weights);
    let mut decoder = Decoder::new(&other, 1).unwrap();
    let e = decoder.step(&model, &[3], 1).unwrap_err();
    assert!(
        e.message()
            .contains("this decoder's caches belong to another module (GPT2LMHeadModel)"),
        "{e}"
    );
    decoder.step(&other, &[3], 1).unwrap();
    let e = Decoder::new(&jit_model(&forward, &weights), 1).err().unwrap();
    assert!(e.message().contains("is a forward, not a decode step"), "{e}");
}

/// The derived steps of GPT-2 and T5 (and T5's context function), as `lmc emit --stage ir
/// --decode 6` prints a step: a change in what the derivation caches, computes once or how it
/// rewrites positions shows up as a diff.
#[test]
fn derived_step_ir() {
    let forward = checked_model("models/gpt2.model", "GPT2LMHeadModel", &root().join("tests/fixtures/gpt2_tiny"));
    let step = lmc_core::decode::derive_decode(&forward, 6).unwrap().step;
    insta::assert_snapshot!("gpt2_decode_ir", step.print());
    let forward = checked_model(
        "models/t5.model",
        "T5ForConditionalGeneration",
        &root().join("tests/fixtures/t5_untied"),
    );
    let decoding = lmc_core::decode::derive_decode(&forward, 6).unwrap();
    insta::assert_snapshot!("t5_decode_ir", decoding.step.print());
    insta::assert_snapshot!("t5_context_ir", decoding.context.unwrap().print());
}

/// A C program decodes greedily through the runtime's C API with a library from `lmc compile
/// --decode`, and gets Hugging Face's tokens; past the capacity it gets an error, not a crash.
#[test]
fn c_host_decodes_with_the_compiled_step() {
    let dir = scratch("c_host_generate");
    let lib = dir.join("libgpt2_step.so");
    let fixture = "tests/fixtures/gpt2_tiny";
    let (shape, want) = read_i64(&root().join(fixture).join("generate_expected.safetensors"), "sequences");
    let (_, prompts) = read_i64(&root().join(fixture).join("generate_inputs.safetensors"), "input_ids");
    let length = prompts.len() / shape[0];
    let new = shape[1] - length;
    let capacity = (length + new - 1).to_string();
    let r = lmc(&[
        "compile",
        "models/gpt2.model:GPT2LMHeadModel",
        "--config",
        fixture,
        "--decode",
        &capacity,
        "-o",
        lib.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let header = std::fs::read_to_string(dir.join("libgpt2_step.h")).unwrap();
    assert!(header.contains("cache.0"), "the header lists the caches:\n{header}");

    let host = dir.join("generate");
    build_c_host("generate.c", &host, &lib, &[]);
    let mut args = vec![
        lib.to_str().unwrap().to_string(),
        root().join(fixture).to_str().unwrap().to_string(),
        new.to_string(),
    ];
    args.extend(prompts[..length].iter().map(i64::to_string));
    let out = std::process::Command::new(&host).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "host failed: {stderr}");
    let printed: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(printed, want[length..length + new], "C host vs transformers");
    assert!(
        stderr.contains(&format!(
            "past the capacity at position {capacity}: 5: decoding past the cache capacity"
        )),
        "{stderr}"
    );
}

/// `lmc ab --decode N` times whole generations (prompt, then N new tokens through the derived
/// step); a prompt past a learned table's room is skipped with the reason, and an encoder that
/// cannot decode says why.
#[test]
fn ab_times_generation() {
    let dir = scratch("ab_decode");
    let json = dir.join("r.json");
    let small = ["n_embd=32", "n_layer=1", "n_head=2", "n_positions=24", "vocab_size=50"];
    let mut args = vec!["ab", "models/gpt2.model:GPT2LMHeadModel", "GPT2ALiBi", "--random-weights"];
    for s in &small {
        args.extend(["--set", s]);
    }
    args.extend([
        "--decode",
        "4",
        "--lengths",
        "4,30",
        "--runs",
        "3",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    let r = lmc(&args);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.contains("prompt of 4, then 4 new tokens"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells[0]["decode"], 4);
    for row in cells[0]["variants"].as_array().unwrap() {
        assert!(row["median_ms"].as_f64().unwrap() > 0.0, "{row}");
    }
    // 30 prompt tokens and 3 fed back need 33 positions; the learned table has 24.
    assert!(
        cells[1]["variants"][0]["skipped"]
            .as_str()
            .unwrap()
            .contains("cannot decode past 24 positions"),
        "{}",
        cells[1]
    );
    assert!(
        cells[1]["variants"][1]["median_ms"].as_f64().is_some(),
        "ALiBi has no table: {}",
        cells[1]
    );
    // Same weights, different positions: the last logits diverge.
    assert!(cells[0]["comparisons"][0]["divergence"]["max_abs_diff"].as_f64().unwrap() > 0.0);

    let r = lmc(&[
        "ab",
        "models/bert.model:BertModel",
        "BertALiBi",
        "--random-weights",
        "--set",
        "num_hidden_layers=1",
        "--decode",
        "2",
        "--lengths",
        "4",
        "--runs",
        "3",
        "--warmup",
        "0",
    ]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&r.stderr));
    assert!(stdout.contains("cannot decode: the attention at models/bert.model:"), "{stdout}");
}

/// `--prompt` takes text through the checkpoint's tokenizer and prints text: the words of the
/// tiny GPT-2's word-level tokenizer are `w0` … `w100`, ids 0 … 100, so transformers' greedy
/// sequences of the generate fixture, written as words, are what lmc must print.
#[test]
fn text_prompts_generate_text_as_transformers_does() {
    let fixture = "tests/fixtures/gpt2_tiny";
    let (shape, want) = read_i64(&root().join(fixture).join("generate_expected.safetensors"), "sequences");
    let (_, prompts) = read_i64(&root().join(fixture).join("generate_inputs.safetensors"), "input_ids");
    let length = prompts.len() / shape[0];
    let words = |ids: &[i64]| ids.iter().map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let new = (shape[1] - length).to_string();
    let r = lmc(&[
        "generate",
        "models/gpt2.model",
        "--weights",
        fixture,
        "--prompt",
        &words(&prompts[..length]),
        "--max-new-tokens",
        &new,
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), words(&want[..shape[1]]));

    // Sampling: the same seed draws the same text, top-k 1 is the argmax, and a checkpoint's
    // generation_config.json ends a sequence at its eos_token_id.
    let prompt = words(&prompts[..length]);
    let sample = |seed: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "models/gpt2.model",
            "--weights",
            fixture,
            "--prompt",
            &prompt,
            "--max-new-tokens",
            "12",
            "--do-sample",
            "--seed",
            seed,
        ];
        args.extend_from_slice(extra);
        let r = lmc(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).trim().to_string()
    };
    assert_eq!(sample("7", &["--temperature", "2"]), sample("7", &["--temperature", "2"]));
    assert_ne!(
        sample("7", &["--temperature", "2"]),
        sample("8", &["--temperature", "2"]),
        "another seed, another draw"
    );
    assert_eq!(shape[1] - length, 12, "the fixture's 12 new tokens");
    assert_eq!(sample("7", &["--top-k", "1"]), words(&want[..shape[1]]), "top-k 1 is the argmax");

    let dir = scratch("generate_eos");
    for entry in std::fs::read_dir(root().join(fixture)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let first_new = want[length];
    std::fs::write(
        dir.join("generation_config.json"),
        format!("{{\"eos_token_id\": [50256, {first_new}], \"pad_token_id\": 0}}"),
    )
    .unwrap();
    let r = lmc(&[
        "generate",
        "models/gpt2.model",
        "--weights",
        dir.to_str().unwrap(),
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "12",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        words(&want[..length + 1]),
        "stopped at the checkpoint's eos"
    );
}

/// Sampling options without sampling, and a text prompt without a tokenizer, are errors.
#[test]
fn generation_options_that_change_nothing_are_refused() {
    let fixture = "tests/fixtures/gpt2_tiny";
    lmc_fails(
        &[
            "generate",
            "models/gpt2.model",
            "--weights",
            fixture,
            "--prompt",
            "w1 w2",
            "--max-new-tokens",
            "2",
            "--temperature",
            "0.5",
        ],
        &["are for sampling: add --do-sample"],
    );
    lmc_fails(
        &[
            "generate",
            "models/gpt2.model",
            "--weights",
            fixture,
            "--input-ids",
            "1,2",
            "--max-new-tokens",
            "2",
            "--seed",
            "3",
        ],
        &["--seed seeds sampling"],
    );
    lmc_fails(
        &[
            "generate",
            "models/gpt2.model",
            "--random-weights",
            "--config",
            fixture,
            "--prompt",
            "w1",
            "--max-new-tokens",
            "2",
        ],
        &["give its tokenizer with --tokenizer"],
    );
}
