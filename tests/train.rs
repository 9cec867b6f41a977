//! `lmc train`: AdamW's trajectory against `torch.optim.AdamW` on the fixture of
//! tests/reference/make_grad_fixtures.py, checkpoints as transformers writes them, resuming
//! exactly, Ctrl-C, a loss that becomes NaN, and the bad inputs the issue lists.

use lmc_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const GPT2: &str = "models/gpt2.model:GPT2LMHeadModel";
const FIXTURE: &str = "tests/fixtures/gpt2_grad";

/// The losses `--log-json` recorded, step by step.
fn logged(path: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()[key].as_f64())
        .collect()
}

/// As [`logged`], for a file still being written: only whole lines.
fn logged_so_far(path: &Path, key: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?[key].as_f64())
        .collect()
}

/// The fixture's data and schedule: six constant-rate steps, weight decay 0.01, no clipping.
const FIXTURE_RUN: &[&str] = &[
    "--data",
    "tests/fixtures/gpt2_grad/adamw_inputs.safetensors",
    "--max-steps",
    "6",
    "--weight-decay",
    "0.01",
    "--max-grad-norm",
    "0",
    "--lr-scheduler-type",
    "constant",
    "--no-dropout",
];

/// The six AdamW steps of the fixture at `lr` (the fixture's is 1e-2).
fn train_fixture(out: &Path, lr: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train",
        GPT2,
        "--weights",
        FIXTURE,
        "--learning-rate",
        lr,
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(FIXTURE_RUN);
    args.extend_from_slice(extra);
    lmc(&args)
}

/// A safetensors file of i64 tensors: (name, shape, values).
fn write_i64(path: &Path, tensors: &[(&str, &[usize], &[i64])]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let entries: Vec<(&str, lmc_abi::DType, &[usize], &[u8])> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| (*name, lmc_abi::DType::I64, *shape, b.as_slice()))
        .collect();
    lmc_runtime::write_safetensors(path, &entries).unwrap();
}

/// Six steps follow PyTorch's: each step's loss within 1e-4 relative, the final weights within
/// 1e-2 of the largest update plus 1e-5, per tensor. The output is a `save_pretrained`
/// directory with the checkpoint's tensors (tied ones once), config and generation config; a run
/// resumed from the checkpoint at step 3 ends with the same bytes.
#[test]
fn adamw_follows_torch_and_a_resumed_run_ends_the_same() {
    let dir = scratch("train_adamw");
    let out = dir.join("run");
    let log = dir.join("log.jsonl");
    let r = train_fixture(&out, "1e-2", &["--save-steps", "3", "--log-json", log.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));

    let expected = read_f32_tensors(&root().join(FIXTURE).join("adamw_expected.safetensors"));
    let (_, _, want_losses) = expected.iter().find(|(n, _, _)| n == "losses").unwrap();
    let losses = logged(&log, "loss");
    assert_eq!(losses.len(), 6);
    for (step, (got, want)) in losses.iter().zip(want_losses).enumerate() {
        let rel = (got - f64::from(*want)).abs() / f64::from(*want).abs();
        assert!(rel <= 1e-4, "step {}: loss {got} vs torch {want} ({rel:e} relative)", step + 1);
    }
    assert!(logged(&log, "grad_norm").iter().all(|n| *n > 0.0));
    assert!(
        logged(&log, "activation_bytes").iter().all(|b| *b > 0.0),
        "each step's activation memory"
    );
    assert!(
        logged(&log, "cached_buffer_bytes").iter().all(|b| *b > 0.0),
        "its buffers, freed, kept"
    );
    assert!(logged(&log, "learning_rate").iter().all(|lr| (*lr - 1e-2).abs() < 1e-12));

    let initial = read_f32_tensors(&root().join(FIXTURE).join("model.safetensors"));
    let trained = read_f32_tensors(&out.join("model.safetensors"));
    let names = |t: &[(String, Vec<usize>, Vec<f32>)]| t.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect::<Vec<_>>();
    assert_eq!(names(&trained), names(&initial), "the checkpoint's tensors, tied ones once");
    for ((name, _, got), (_, _, before)) in trained.iter().zip(&initial) {
        let (_, _, want) = expected.iter().find(|(n, _, _)| *n == format!("final.{name}")).unwrap();
        let update = max_abs_diff(want, before);
        let err = max_abs_diff(got, want);
        assert!(
            err <= 1e-2 * update + 1e-5,
            "{name}: {err:e} from torch's weights (largest update {update:e})"
        );
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(FIXTURE).join("config.json")).unwrap()).unwrap();
    for (key, value) in original.as_object().unwrap() {
        if key != "dtype" && key != "transformers_version" {
            assert_eq!(&config[key], value, "config.json keeps `{key}`");
        }
    }
    assert_eq!(config["dtype"], "float32");
    assert!(out.join("generation_config.json").is_file());
    for step in [3, 6] {
        let checkpoint = out.join(format!("checkpoint-{step}"));
        for file in ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
            assert!(checkpoint.join(file).is_file(), "checkpoint-{step}/{file}");
        }
    }
    // lmc runs what it saved.
    let ran = run_outputs(
        GPT2,
        out.to_str().unwrap(),
        "tests/fixtures/gpt2_grad/inputs_grad.safetensors",
        &dir.join("outputs.safetensors"),
        &[],
    );
    assert!(ran.iter().any(|(n, _, _)| n == "loss"));

    // Resumed from step 3, in another directory: the same weights, byte for byte.
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    copy_dir(&out.join("checkpoint-3"), &resumed.join("checkpoint-3"));
    let resumed_log = dir.join("resumed.jsonl");
    let mut args = vec!["train", GPT2, "--resume", resumed.to_str().unwrap(), "--learning-rate", "1e-2"];
    args.extend_from_slice(FIXTURE_RUN);
    args.extend_from_slice(&["--log-json", resumed_log.to_str().unwrap()]);
    let r = lmc(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains("at step 3"), "{stderr}");
    assert_eq!(
        logged(&resumed_log, "loss"),
        losses[3..],
        "steps 4 to 6 as the run that was not stopped"
    );
    assert_eq!(
        std::fs::read(resumed.join("model.safetensors")).unwrap(),
        std::fs::read(out.join("model.safetensors")).unwrap()
    );

    // The same checkpoint with another model or other data is refused.
    lmc_fails(
        &[
            "train",
            GPT2,
            "--resume",
            resumed.to_str().unwrap(),
            "--data",
            "tests/fixtures/gpt2_grad/adamw_inputs.safetensors",
            "--max-steps",
            "9",
            "--set",
            "n_layer=3",
        ],
        &["that run trained another model", "config `n_layer`: 2 there, 3 now"],
    );
    let other = dir.join("other.safetensors");
    let ids: Vec<i64> = (0..2 * 2 * 9).map(|i| i % 50).collect();
    write_i64(&other, &[("input_ids", &[2, 2, 9], &ids), ("labels", &[2, 2, 9], &ids)]);
    lmc_fails(
        &[
            "train",
            GPT2,
            "--resume",
            resumed.to_str().unwrap(),
            "--data",
            other.to_str().unwrap(),
            "--max-steps",
            "9",
        ],
        &["that run read other data", "give the same --data"],
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A text of the tiny GPT-2 tokenizer's words (w0 … w29), `words` long.
fn word_text(path: &Path, words: usize, seed: u64) {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut text = String::new();
    for _ in 0..words {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push_str(&format!("w{} ", (x >> 33) % 30));
    }
    std::fs::write(path, text).unwrap();
}

/// A small GPT-2 from random weights on a text, with the tiny tokenizer.
fn text_run_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        GPT2,
        "--random-weights",
        "--set",
        "n_layer=1",
        "--set",
        "n_embd=16",
        "--set",
        "n_head=2",
        "--set",
        "vocab_size=101",
        "--set",
        "n_positions=32",
        "--tokenizer",
        "tests/fixtures/gpt2_tiny/tokenizer.json",
        "--data",
        data,
        "--seq-len",
        "16",
        "--per-device-train-batch-size",
        "4",
        "--objective",
        "causal",
        "--learning-rate",
        "3e-3",
        "-o",
        out,
    ]
}

/// A text trains a model from random weights (the loss falls towards the text's entropy,
/// ln 30), evaluation runs, and Ctrl-C saves a checkpoint that `--resume` continues.
#[test]
fn a_text_trains_and_ctrl_c_saves_a_checkpoint() {
    let dir = scratch("train_text");
    let data = dir.join("train.txt");
    let eval = dir.join("eval.txt");
    word_text(&data, 4000, 1);
    word_text(&eval, 400, 2);
    let out = dir.join("run");
    let log = dir.join("log.jsonl");
    let mut args = text_run_args(data.to_str().unwrap(), out.to_str().unwrap());
    args.extend_from_slice(&[
        "--max-steps",
        "100000",
        "--save-steps",
        "0",
        "--eval-data",
        eval.to_str().unwrap(),
        "--eval-steps",
        "40",
        "--log-json",
        log.to_str().unwrap(),
    ]);
    let mut child = Command::new(lmc_bin())
        .args(&args)
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupted once it has evaluated twice.
    let started = std::time::Instant::now();
    while logged_so_far(&log, "eval_loss").len() < 2 {
        assert!(started.elapsed().as_secs() < 300, "no progress logged");
        assert!(child.try_wait().unwrap().is_none(), "lmc train ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    expect_error(
        output.status.code().unwrap_or(-1),
        &stderr,
        &["interrupted at step", "continue with --resume"],
    );
    let losses = logged(&log, "loss");
    let evals = logged(&log, "eval_loss");
    let first = losses[0];
    assert!((first - 101f64.ln()).abs() < 0.3, "random weights start near ln 101: {first}");
    assert!(evals[1] < evals[0] && evals[1] < 3.9, "the held-out loss falls: {evals:?}");
    let (step, checkpoint) = checkpoints(&out).pop().expect("a checkpoint saved on Ctrl-C");
    assert!(
        step as usize >= losses.len() - 1,
        "saved at step {step} after {} logged",
        losses.len()
    );
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(checkpoint.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["global_step"], step);
    assert!(
        checkpoint.join("tokenizer.json").is_file(),
        "the tokenizer travels with the checkpoint"
    );

    // Continued for two more steps from the output directory.
    let more = (step + 2).to_string();
    let r = lmc(&[
        "train",
        GPT2,
        "--resume",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--seq-len",
        "16",
        "--per-device-train-batch-size",
        "4",
        "--objective",
        "causal",
        "--learning-rate",
        "3e-3",
        "--max-steps",
        &more,
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("at step {step}")), "{stderr}");
    assert!(out.join("model.safetensors").is_file() && out.join("tokenizer.json").is_file());
}

fn checkpoints(out: &Path) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let step = e.file_name().to_str()?.strip_prefix("checkpoint-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// A loss that becomes NaN or infinite stops the run at that step, before the weights are
/// updated, and names the checkpoint that stays.
#[test]
fn a_diverging_run_stops_and_keeps_its_last_checkpoint() {
    let dir = scratch("train_nan");
    let out = dir.join("run");
    let r = train_fixture(&out, "1e30", &["--save-steps", "1"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    expect_error(
        r.status.code().unwrap_or(-1),
        &stderr,
        &["stopped before updating the weights", "is intact"],
    );
    assert!(
        stderr.contains("step 2: the loss is") || stderr.contains("step 2: the gradients' norm is"),
        "{stderr}"
    );
    assert!(out.join("checkpoint-1").join("trainer_state.json").is_file());
    assert!(!out.join("checkpoint-2").exists());
}

/// What is wrong with the data, the tokenizer or the options is one clear error, exit 1.
#[test]
fn bad_training_input_is_a_clear_error() {
    let dir = scratch("train_errors");
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    lmc_fails(
        &["train", GPT2, "--weights", FIXTURE, "--data", "no/such.txt", "-o", o],
        &["--data no/such.txt: no such file"],
    );
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "  \n").unwrap();
    lmc_fails(&text_run_args(empty.to_str().unwrap(), o), &["is empty"]);
    let short = dir.join("short.txt");
    word_text(&short, 40, 3);
    lmc_fails(&text_run_args(short.to_str().unwrap(), o), &["fewer than one batch"]);
    // A tokenizer with more tokens than the model's vocabulary.
    let text = dir.join("text.txt");
    word_text(&text, 400, 4);
    let mut args = text_run_args(text.to_str().unwrap(), o);
    let vocab = args.iter().position(|a| *a == "vocab_size=101").unwrap();
    args[vocab] = "vocab_size=50";
    lmc_fails(&args, &["has 101 tokens", "do not belong together"]);
    // Token ids past the vocabulary, in the third batch.
    let ids: Vec<i64> = (0..3 * 2 * 9).map(|i| if i == 40 { 500 } else { i % 90 }).collect();
    let batches = dir.join("batches.safetensors");
    write_i64(&batches, &[("input_ids", &[3, 2, 9], &ids)]);
    lmc_fails(
        &[
            "train",
            GPT2,
            "--weights",
            FIXTURE,
            "--data",
            batches.to_str().unwrap(),
            "--objective",
            "causal",
            "-o",
            o,
        ],
        &["batch 3", "input_ids", "500"],
    );
    // Batches without labels and no objective to make them.
    lmc_fails(
        &["train", GPT2, "--weights", FIXTURE, "--data", batches.to_str().unwrap(), "-o", o],
        &["has no `labels`", "--objective causal"],
    );
    // A column the model does not take.
    let typo = dir.join("typo.safetensors");
    write_i64(&typo, &[("input_ids", &[3, 2, 9], &ids), ("lables", &[3, 2, 9], &ids)]);
    lmc_fails(
        &["train", GPT2, "--weights", FIXTURE, "--data", typo.to_str().unwrap(), "-o", o],
        &["holds lables, which GPT2LMHeadModel does not take"],
    );
    lmc_fails(
        &[
            "train",
            GPT2,
            "--resume",
            dir.to_str().unwrap(),
            "--data",
            "tests/fixtures/gpt2_grad/adamw_inputs.safetensors",
        ],
        &["holds no checkpoint"],
    );
}

/// A masked LM trains on a text with `--objective masked`: tokens are masked as transformers'
/// collator masks them and the loss falls.
#[test]
fn a_masked_lm_trains_on_a_text() {
    let dir = scratch("train_mlm");
    // A word-level tokenizer with a mask token.
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["[PAD]", "[UNK]", "[MASK]"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for i in 0..30 {
        vocab.insert(format!("w{i}"), (i + 3).into());
    }
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 2, "content": "[MASK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let tokenizer_path = dir.join("tokenizer.json");
    std::fs::write(&tokenizer_path, tokenizer.to_string()).unwrap();
    // Pairs of words: each even word is followed by the next one, so a masked word is predictable.
    let mut text = String::new();
    for i in 0..1500 {
        let w = (i * 7 % 15) * 2;
        text.push_str(&format!("w{w} w{} ", w + 1));
    }
    let data = dir.join("pairs.txt");
    std::fs::write(&data, text).unwrap();
    let log = dir.join("log.jsonl");
    let r = lmc(&[
        "train",
        "models/bert.model:BertForMaskedLM",
        "--random-weights",
        "--set",
        "vocab_size=33",
        "--set",
        "hidden_size=32",
        "--set",
        "num_hidden_layers=1",
        "--set",
        "num_attention_heads=2",
        "--set",
        "intermediate_size=64",
        "--set",
        "max_position_embeddings=32",
        "--tokenizer",
        tokenizer_path.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--seq-len",
        "16",
        "--per-device-train-batch-size",
        "8",
        "--objective",
        "masked",
        "--learning-rate",
        "5e-3",
        "--max-steps",
        "150",
        "--log-json",
        log.to_str().unwrap(),
        "-o",
        dir.join("run").to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let losses = logged(&log, "loss");
    let early: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let late: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(late < early - 0.5, "the masked-LM loss falls: {early:.3} → {late:.3}");
}

/// T5 trains on a text with `--objective span-corruption`: spans become sentinels as
/// transformers' T5 collator makes them, the decoder reads the labels shifted right (no
/// `decoder_input_ids` in the data), and the loss falls. A tokenizer without sentinels is a
/// clear error.
#[test]
fn t5_trains_by_span_corruption_on_a_text() {
    let dir = scratch("train_span_corruption");
    // A word-level tokenizer laid out as T5's: <pad>, </s>, <unk>, words, then the sentinels
    // with <extra_id_0> last.
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in ["<pad>", "</s>", "<unk>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
        added.push((t.to_string(), i));
    }
    for i in 0..30 {
        vocab.insert(format!("w{i}"), (i + 3).into());
    }
    for k in 0..10 {
        vocab.insert(format!("<extra_id_{k}>"), (42 - k).into());
        added.push((format!("<extra_id_{k}>"), 42 - k));
    }
    let added: Vec<serde_json::Value> = added
        .iter()
        .map(|(t, i)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let tokenizer_path = dir.join("tokenizer.json");
    std::fs::write(&tokenizer_path, tokenizer.to_string()).unwrap();
    // Counting: a hidden span is given by the words around it.
    let text: String = (0..3000).map(|i| format!("w{} ", i % 30)).collect();
    let data = dir.join("counting.txt");
    std::fs::write(&data, text).unwrap();
    let log = dir.join("log.jsonl");
    let out = dir.join("run");
    let args = |tokenizer: &str| -> Vec<String> {
        [
            "train",
            "models/t5.model",
            "--random-weights",
            "--set",
            "vocab_size=43",
            "--set",
            "d_model=32",
            "--set",
            "d_kv=8",
            "--set",
            "d_ff=64",
            "--set",
            "num_layers=1",
            "--set",
            "num_decoder_layers=1",
            "--set",
            "num_heads=4",
            "--tokenizer",
            tokenizer,
            "--data",
            data.to_str().unwrap(),
            "--seq-len",
            "32",
            "--per-device-train-batch-size",
            "8",
            "--objective",
            "span-corruption",
            "--learning-rate",
            "1e-2",
            "--max-steps",
            "120",
            "--no-dropout",
            "--log-json",
            log.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(tokenizer_path.to_str().unwrap());
    let r = lmc(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        stderr.contains("windows of 34"),
        "inputs of 32 are made from windows of 34 words: {stderr}"
    );
    let losses = logged(&log, "loss");
    let early: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let late: f64 = losses[losses.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(late < early - 1.0, "the span-corruption loss falls: {early:.3} → {late:.3}");
    assert!(out.join("model.safetensors").is_file() && out.join("tokenizer.json").is_file());

    // Without sentinels, spans cannot be hidden.
    let _ = std::fs::remove_dir_all(&out);
    let mut plain = tokenizer.clone();
    plain["added_tokens"] = serde_json::json!([]);
    let vocab = plain["model"]["vocab"].as_object_mut().unwrap();
    vocab.retain(|t, _| !t.starts_with("<extra_id"));
    let plain_path = dir.join("no_sentinels.json");
    std::fs::write(&plain_path, plain.to_string()).unwrap();
    let a = args(plain_path.to_str().unwrap());
    lmc_fails(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        &["has no <extra_id_0>", "span corruption"],
    );
}

/// The fixture's run with GPT-2's three dropouts at 0.1 (`--no-dropout` left out), after
/// `first` (where the weights come from and go).
fn dropping_run(first: &[&str]) -> std::process::Output {
    let mut args = vec!["train", GPT2, "--learning-rate", "1e-2"];
    args.extend_from_slice(first);
    args.extend(["--set", "embd_pdrop=0.1", "--set", "attn_pdrop=0.1", "--set", "resid_pdrop=0.1"]);
    args.extend(FIXTURE_RUN.iter().filter(|a| **a != "--no-dropout"));
    lmc(&args)
}

/// Dropout as the config asks (GPT-2's embedding, attention and residual dropout): the losses
/// leave the run without dropout's (PyTorch's, on the fixture), another `--seed` drops other
/// elements, and a run resumed from its checkpoint at step 3 ends with the same bytes, since
/// the masks are a function of the seed and the step.
#[test]
fn dropout_is_applied_as_the_config_asks_and_a_resumed_run_ends_the_same() {
    let dir = scratch("train_dropout");
    let (out, log) = (dir.join("run"), dir.join("run.jsonl"));
    let r = dropping_run(&[
        "--weights",
        FIXTURE,
        "-o",
        out.to_str().unwrap(),
        "--log-json",
        log.to_str().unwrap(),
        "--save-steps",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(
        !stderr.contains("does not read"),
        "every dropout key of the config is read: {stderr}"
    );
    let losses = logged(&log, "loss");
    assert_eq!(losses.len(), 6);
    assert!(losses.iter().all(|l| l.is_finite()));
    let expected = read_f32_tensors(&root().join(FIXTURE).join("adamw_expected.safetensors"));
    let (_, _, without) = expected.iter().find(|(n, _, _)| n == "losses").unwrap();
    let rel = (losses[0] - f64::from(without[0])).abs() / f64::from(without[0]);
    // Without dropout the two agree to 1e-7 (the test above).
    assert!(
        rel > 1e-5,
        "step 1 drops: loss {} against {} without dropout",
        losses[0],
        without[0]
    );

    let (other, other_log) = (dir.join("other"), dir.join("other.jsonl"));
    let r = dropping_run(&[
        "--weights",
        FIXTURE,
        "-o",
        other.to_str().unwrap(),
        "--log-json",
        other_log.to_str().unwrap(),
        "--seed",
        "7",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_ne!(logged(&other_log, "loss")[0], losses[0], "another seed, other masks");

    let resumed = dir.join("resumed");
    std::fs::create_dir_all(&resumed).unwrap();
    copy_dir(&out.join("checkpoint-3"), &resumed.join("checkpoint-3"));
    let r = dropping_run(&["--resume", resumed.to_str().unwrap()]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        std::fs::read(resumed.join("model.safetensors")).unwrap(),
        std::fs::read(out.join("model.safetensors")).unwrap(),
        "the resumed run drops what the uninterrupted one dropped"
    );
}

/// Every model whose config asks for dropout trains with it: one step on its gradient
/// fixture's batch with each dropout key at 0.3 scores a finite loss other than PyTorch's
/// without dropout, and warns of no key left unread.
#[test]
fn every_model_trains_with_the_dropout_its_config_asks_for() {
    let dir = scratch("train_dropout_zoo");
    let models: &[(&str, &str, &[&str])] = &[
        (
            "models/bert.model:BertForMaskedLM",
            "bert_mlm",
            &["hidden_dropout_prob", "attention_probs_dropout_prob"],
        ),
        (
            "models/roberta.model:RobertaForMaskedLM",
            "roberta_mlm",
            &["hidden_dropout_prob", "attention_probs_dropout_prob"],
        ),
        (
            "models/albert.model:AlbertForMaskedLM",
            "albert_mlm",
            &["hidden_dropout_prob", "attention_probs_dropout_prob"],
        ),
        (
            "models/distilbert.model:DistilBertForMaskedLM",
            "distilbert_mlm",
            &["dropout", "attention_dropout"],
        ),
        ("models/t5.model", "t5_grad", &["dropout_rate"]),
        ("models/llama.model", "llama_grad", &["attention_dropout"]),
        ("models/gpt_neox.model", "gpt_neox_grad", &["hidden_dropout", "attention_dropout"]),
        ("models/phi.model", "phi_grad", &["embd_pdrop", "resid_pdrop", "attention_dropout"]),
    ];
    for (spec, fixture, keys) in models {
        let fixture_dir = root().join("tests/fixtures").join(fixture);
        // The fixture's batch as a file of one step's batches.
        let batches = dir.join(format!("{fixture}.safetensors"));
        let tensors: Vec<(String, String, Vec<usize>, Vec<u8>)> = read_host_tensors(&fixture_dir.join("inputs_grad.safetensors"))
            .iter()
            .map(|t| {
                let mut shape = vec![1];
                shape.extend(&t.shape);
                (t.name.clone(), "I64".to_string(), shape, t.bytes().to_vec())
            })
            .collect();
        write_raw(&batches, &tensors);
        let (out, log) = (dir.join(fixture), dir.join(format!("{fixture}.jsonl")));
        let sets: Vec<String> = keys.iter().map(|k| format!("{k}=0.3")).collect();
        let mut args = vec![
            "train",
            spec,
            "--weights",
            fixture_dir.to_str().unwrap(),
            "--data",
            batches.to_str().unwrap(),
            "--max-steps",
            "1",
            "-o",
            out.to_str().unwrap(),
            "--log-json",
            log.to_str().unwrap(),
        ];
        for s in &sets {
            args.extend(["--set", s.as_str()]);
        }
        let r = lmc(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "{spec}: {stderr}");
        assert!(!stderr.contains("does not read"), "{spec}: {stderr}");
        let loss = logged(&log, "loss")[0];
        let expected = read_f32_tensors(&fixture_dir.join("expected_grad.safetensors"));
        let (_, _, without) = expected.iter().find(|(n, _, _)| n == "loss").unwrap();
        assert!(loss.is_finite(), "{spec}: loss {loss}");
        assert!(
            (loss - f64::from(without[0])).abs() > 1e-5 * f64::from(without[0]).abs(),
            "{spec}: loss {loss} as without dropout"
        );
    }
}
