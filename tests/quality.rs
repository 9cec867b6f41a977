//! The quality A/B: an experiment file with a `train` section trains every variant per seed,
//! scores them on a held-out text per length, and reports intervals over seeds; a sweep split
//! into shards trains each run once.

use lmc_tests::*;
use std::path::Path;

/// A text of the tiny GPT-2 tokenizer's words, `words` long.
fn word_text(path: &Path, words: usize, seed: u64) {
    let mut x = seed;
    let mut text = String::new();
    for _ in 0..words {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        text.push_str(&format!("w{} ", (x >> 33) % 30));
    }
    std::fs::write(path, text).unwrap();
}

fn experiment(dir: &Path, extra: &str) -> std::path::PathBuf {
    word_text(&dir.join("train.txt"), 3000, 1);
    word_text(&dir.join("held_out.txt"), 600, 2);
    let root = root();
    let yaml = format!(
        "title: Positions, trained\n\
         variants:\n  - model: {gpt2}:GPT2LMHeadModel\n    label: learned\n  - model: GPT2ALiBi\n    label: ALiBi\n\
         set: {{ vocab_size: 101, n_positions: 32, n_embd: 16, n_layer: 1, n_head: 2 }}\n\
         seeds: [1, 2]\n\
         train:\n  data: train.txt\n  tokenizer: {tok}\n  objective: causal\n  seq_len: 32\n  per_device_train_batch_size: 4\n  max_steps: 25\n  learning_rate: 3.0e-3\n  no_dropout: true\n\
         eval_text: held_out.txt\n\
         lengths: [32, 64]\n{extra}",
        gpt2 = root.join("models/gpt2.model").display(),
        tok = root.join("tests/fixtures/gpt2_tiny/tokenizer.json").display(),
    );
    let path = dir.join("experiment.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// `lmc ab FILE --out OUT --json JSON` and `extra`, which must succeed: the report, and what
/// it printed on stderr.
fn ab_report(file: &Path, out: &Path, json: &Path, extra: &[&str]) -> (serde_json::Value, String) {
    let mut args = vec![
        "ab",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend(extra);
    let r = lmc(&args);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(r.status.success(), "{stderr}");
    (serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap(), stderr)
}

/// Two shards train two runs each; the call without `--shard` reuses all four and reports:
/// the loss per variant and length with an interval over the two seeds, the learned table's
/// limit said at 64, the verdict against the first variant, and a self-describing JSON report.
#[test]
fn a_sharded_sweep_trains_each_run_once_and_reports_with_intervals() {
    let dir = scratch("quality_sweep");
    let file = experiment(&dir, "");
    let out = dir.join("out");
    let (f, o) = (file.to_str().unwrap(), out.to_str().unwrap());
    for shard in ["0/2", "1/2"] {
        let r = lmc(&["ab", f, "--out", o, "--shard", shard]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "shard {shard}: {stderr}");
        assert_eq!(stderr.matches(" with seed ").count(), 2, "shard {shard} trains two runs: {stderr}");
    }
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    let csv = dir.join("report.csv");
    let (report, stderr) = ab_report(
        &file,
        &out,
        &json,
        &["--html", html.to_str().unwrap(), "--csv", csv.to_str().unwrap()],
    );
    assert_eq!(stderr.matches("trained already").count(), 4, "{stderr}");
    assert_eq!(report["schema_version"], 1);
    assert_eq!(report["seeds"], serde_json::json!([1, 2]));
    for key in ["commit", "cpu", "date", "generator"] {
        assert!(report[key].as_str().is_some_and(|s| !s.is_empty()), "{key}");
    }
    assert_eq!(report["train"]["data"]["sha256"].as_str().unwrap().len(), 64);
    let variants = report["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2);
    for v in variants {
        let s = &v["summary"]["32"];
        let (loss, lo, hi) = (s["loss"].as_f64().unwrap(), s["low"].as_f64().unwrap(), s["high"].as_f64().unwrap());
        assert!(lo <= loss && loss <= hi, "{s}");
        // Trained: below the uniform guess over 101 tokens.
        assert!(loss < 101f64.ln() - 0.3, "{}: {loss}", v["label"]);
        assert_eq!(v["runs"].as_array().unwrap().len(), 2);
        let seed_losses: Vec<f64> = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["lengths"]["32"]["loss"].as_f64().unwrap())
            .collect();
        assert!((seed_losses.iter().sum::<f64>() / 2.0 - loss).abs() < 1e-12, "the mean over seeds");
        assert_eq!(v["runs"][0]["lengths"]["32"]["by_position"].as_array().unwrap().len(), 8);
        assert_eq!(v["runs"][0]["curve"].as_array().unwrap().len(), 25);
    }
    assert!(variants[0]["summary"]["64"]["error"]
        .as_str()
        .unwrap()
        .contains("cannot run past 32"));
    assert!(variants[1]["summary"]["64"]["loss"].is_f64(), "ALiBi runs past its training length");
    let verdicts = report["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 1, "ALiBi against learned at 32; at 64 no other variant runs");
    assert_eq!(verdicts[0]["variant"], "ALiBi");
    assert_eq!(verdicts[0]["length"], 32);
    // Runs trained otherwise than the file now says are not reused silently.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("learning_rate: 3.0e-3", "learning_rate: 1.0e-3")).unwrap();
    lmc_fails(
        &["ab", f, "--out", o],
        &["was trained otherwise", "learning_rate: 0.003 there, 0.001 now"],
    );
    std::fs::write(&file, text.replace("n_embd: 16", "n_embd: 18")).unwrap();
    lmc_fails(
        &["ab", f, "--out", o],
        &["was trained otherwise", "config `n_embd`: 16 there, 18 now"],
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(
        page.matches("<svg").count(),
        4,
        "loss by length, by position, against speed, training curves"
    );
    assert!(std::fs::read_to_string(&csv).unwrap().starts_with("variant,seed,length,loss"));
}

/// Variants pretrained by T5's span corruption are scored as they were trained: their own loss
/// on the held-out text with labels the objective makes, the same masks for every variant
/// (so a variant scored twice, under two labels, scores the same), at each input length.
#[test]
fn span_corruption_runs_are_scored_by_their_objective() {
    let dir = scratch("quality_span_corruption");
    word_text(&dir.join("train.txt"), 3000, 1);
    word_text(&dir.join("held_out.txt"), 600, 2);
    let root = root();
    let yaml = format!(
        "variants:\n  - model: {t5}:T5ForConditionalGeneration\n    label: relative\n  - model: T5ForConditionalGeneration\n    label: again\n  - model: T5NoPositions\n    label: none\n\
         set: {{ vocab_size: 384, d_model: 16, d_kv: 4, num_heads: 4, d_ff: 32, num_layers: 1, num_decoder_layers: 1 }}\n\
         seeds: [1]\n\
         train:\n  data: train.txt\n  tokenizer: {tok}\n  objective: span-corruption\n  seq_len: 32\n  per_device_train_batch_size: 4\n  max_steps: 20\n  learning_rate: 3.0e-3\n  no_dropout: true\n\
         eval_text: held_out.txt\n\
         lengths: [32, 64]\n",
        t5 = root.join("models/t5.model").display(),
        tok = root.join("data/bytes_t5/tokenizer.json").display(),
    );
    let file = dir.join("experiment.yaml");
    std::fs::write(&file, yaml).unwrap();
    let json = dir.join("report.json");
    let html = dir.join("report.html");
    let (report, _) = ab_report(&file, &dir.join("out"), &json, &["--html", html.to_str().unwrap()]);
    let variants = report["variants"].as_array().unwrap();
    let loss = |v: usize, l: &str| variants[v]["runs"][0]["lengths"][l]["loss"].as_f64().unwrap();
    for l in ["32", "64"] {
        for (v, variant) in variants.iter().enumerate() {
            assert!(loss(v, l) > 0.5 && loss(v, l) < 384f64.ln() + 1.0, "{l}: {}", loss(v, l));
            assert_eq!(variant["runs"][0]["lengths"][l]["by_position"], serde_json::json!([]));
        }
        assert_eq!(loss(0, l), loss(1, l), "the same model under the same masks");
        assert_ne!(loss(0, l), loss(2, l), "another model");
    }
    assert_eq!(
        variants[0]["runs"][0]["lengths"]["32"]["windows"], 32,
        "as many windows as a causal run scores"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("Loss by position"), "no positions to plot");
}

/// What is wrong with a quality experiment is said before anything trains.
#[test]
fn bad_quality_experiments_are_clear_errors() {
    let dir = scratch("quality_errors");
    let file = experiment(&dir, "");
    let f = file.to_str().unwrap();
    lmc_fails(&["ab", f, "--shard", "2/2"], &["--shard 2/2: expected I/N"]);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("eval_text: held_out.txt\n", "")).unwrap();
    lmc_fails(&["ab", f], &["`train` needs `eval_text`"]);
    let no_train: String = text
        .lines()
        .take_while(|l| !l.starts_with("train:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, format!("{no_train}lengths: [32]\n")).unwrap();
    lmc_fails(&["ab", f], &["`seeds` are for training"]);
    lmc_fails(
        &[
            "ab",
            "models/gpt2.model:GPT2LMHeadModel",
            "GPT2ALiBi",
            "--random-weights",
            "--shard",
            "0/2",
        ],
        &["--out and --shard are for an experiment file"],
    );
}

/// `lmc ab` with `--shard` and a process per part (as an array job runs them, the index from
/// the scheduler's variable), each with its own `--out`: `lmc ab merge` gathers the parts and
/// reports the same losses as the sweep run in one process. Parts of another experiment, and a
/// missing part, are refused.
#[test]
fn three_shards_merged_report_as_the_unsharded_sweep() {
    let dir = scratch("quality_merge");
    let file = experiment(&dir, "");
    let f = file.to_str().unwrap();
    let whole = dir.join("whole");
    let (a, _) = ab_report(&file, &whole, &dir.join("whole.json"), &[]);

    let parts: Vec<_> = (0..3).map(|k| dir.join(format!("part{k}"))).collect();
    let envs = [None, Some(("SLURM_ARRAY_TASK_ID", "1")), Some(("JOB_COMPLETION_INDEX", "2"))];
    for (k, (part, env)) in parts.iter().zip(envs).enumerate() {
        let shard = if env.is_some() { "3".to_string() } else { format!("{k}/3") };
        let mut command = std::process::Command::new(lmc_bin());
        command
            .current_dir(root())
            .args(["ab", f, "--out", part.to_str().unwrap(), "--shard", &shard])
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("JOB_COMPLETION_INDEX");
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let r = command.output().unwrap();
        assert!(r.status.success(), "part {k}: {}", String::from_utf8_lossy(&r.stderr));
    }
    let merged = dir.join("merged");
    let merged_json = dir.join("merged.json");
    let part_args: Vec<&str> = parts.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["ab", "merge"];
    args.extend(&part_args);
    args.extend(["--out", merged.to_str().unwrap(), "--json", merged_json.to_str().unwrap()]);
    let r = lmc(&args);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert_eq!(stderr.matches("trained already").count(), 4, "nothing is trained again: {stderr}");

    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&merged_json).unwrap()).unwrap();
    for (va, vb) in a["variants"].as_array().unwrap().iter().zip(b["variants"].as_array().unwrap()) {
        assert_eq!(va["label"], vb["label"]);
        for (ra, rb) in va["runs"].as_array().unwrap().iter().zip(vb["runs"].as_array().unwrap()) {
            assert_eq!(ra["seed"], rb["seed"]);
            assert_eq!(ra["curve"], rb["curve"], "the same training");
            assert_eq!(ra["lengths"], rb["lengths"], "the same scores");
        }
        assert_eq!(va["summary"]["32"], vb["summary"]["32"]);
    }
    let verdict = |r: &serde_json::Value| r["verdicts"][0]["loss_difference"].as_f64().unwrap();
    assert_eq!(verdict(&a), verdict(&b));

    // A variant trained elsewhere (here: the checkpoints the sweep wrote) is scored, not
    // trained: the same model as `learned` scores the same, seed for seed.
    let elsewhere = dir.join("elsewhere.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "  - model: GPT2ALiBi\n    label: ALiBi\n",
        &format!(
            "  - model: GPT2LMHeadModel\n    label: elsewhere\n    weights: {}/seed-{{seed}}\n",
            whole.join("runs/learned").display()
        ),
    );
    std::fs::write(&elsewhere, text).unwrap();
    let (c, stderr) = ab_report(&elsewhere, &whole, &dir.join("elsewhere.json"), &[]);
    assert!(!stderr.contains("training "), "nothing is trained: {stderr}");
    assert_eq!(c["variants"][1]["runs"][0]["lengths"], a["variants"][0]["runs"][0]["lengths"]);
    assert_eq!(c["variants"][1]["runs"][1]["lengths"], a["variants"][0]["runs"][1]["lengths"]);
    assert_eq!(c["verdicts"][0]["loss_difference"], 0.0);
    assert!(c["variants"][1]["trained_elsewhere"].as_str().unwrap().ends_with("seed-{seed}"));
    let one = std::fs::read_to_string(&elsewhere).unwrap().replace("/seed-{seed}", "/seed-1");
    std::fs::write(&elsewhere, one).unwrap();
    lmc_fails(&["ab", elsewhere.to_str().unwrap()], &["one checkpoint for 2 seeds", "{seed}"]);

    // A missing part: its runs were trained by none of the others.
    lmc_fails(
        &[
            "ab",
            "merge",
            part_args[0],
            part_args[1],
            "--out",
            dir.join("incomplete").to_str().unwrap(),
        ],
        &["was trained by none of the parts"],
    );
    // A part of another experiment.
    let record = parts[2].join("sweep.json");
    let text = std::fs::read_to_string(&record).unwrap();
    let mut other: serde_json::Value = serde_json::from_str(&text).unwrap();
    other["experiment_sha256"] = serde_json::json!("0".repeat(64));
    std::fs::write(&record, other.to_string()).unwrap();
    lmc_fails(&args, &["are parts of different sweeps", "experiment"]);
    std::fs::write(&record, text).unwrap();
    // An array job's index that is missing or out of range.
    let r = std::process::Command::new(lmc_bin())
        .current_dir(root())
        .args(["ab", f, "--out", parts[0].to_str().unwrap(), "--shard", "3"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap();
    expect_error(
        r.status.code().unwrap_or(-1),
        &String::from_utf8_lossy(&r.stderr),
        &["neither is set", "--shard I/3"],
    );
    let r = std::process::Command::new(lmc_bin())
        .current_dir(root())
        .args(["ab", f, "--out", parts[0].to_str().unwrap(), "--shard", "3"])
        .env("SLURM_ARRAY_TASK_ID", "3")
        .output()
        .unwrap();
    expect_error(
        r.status.code().unwrap_or(-1),
        &String::from_utf8_lossy(&r.stderr),
        &["part 3 of 3 is not one"],
    );
}

/// A text of bytes_bert's letters for the masked-LM objective, `chars` long.
fn letter_text(path: &Path, chars: usize, seed: u64) {
    let mut x = seed;
    let text: String = (0..chars)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (b'a' + ((x >> 33) % 12) as u8) as char
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Classification batches as `--data` takes them: `input_ids` and `attention_mask`
/// [steps, 4, 16] ([CLS] then letters, the last 3 positions of every other row padded) and
/// `labels` [steps, 4], 1 where the first letter is past the middle of the alphabet.
fn classification_batches(path: &Path, steps: usize, seed: u64) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let (batch, seq) = (4, 16);
    let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    let mut x = seed;
    for row in 0..steps * batch {
        let real = if row % 2 == 0 { seq } else { seq - 3 };
        for t in 0..seq {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let id = if t == 0 { 2 } else { 5 + i64::from(b'a') + ((x >> 33) % 12) as i64 };
            ids.push(if t < real { id } else { 0 });
            mask.push(i64::from(t < real));
        }
        labels.push(i64::from(ids[row * seq + 1] >= 5 + i64::from(b'g')));
    }
    let bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let shape = [steps, batch, seq];
    lmc_runtime::write_safetensors(
        path,
        &[
            ("input_ids", lmc_abi::DType::I64, &shape, &bytes(&ids)),
            ("attention_mask", lmc_abi::DType::I64, &shape, &bytes(&mask)),
            ("labels", lmc_abi::DType::I64, &shape[..2], &bytes(&labels)),
        ],
    )
    .unwrap();
    (ids, mask, labels)
}

/// The ELECTRA experiment's two parts on a tiny encoder. Pre-training: the joint generator and
/// discriminator and a masked LM train with their own step budgets, and their losses (each the
/// model's own) are not compared. Fine-tuning: sequence classifiers start from each
/// pre-trained run of the same seed (its head newly initialised, the pre-training heads left),
/// or from random weights, train on batches and are scored on held-out batches by loss and
/// accuracy, which `lmc run` of the fine-tuned checkpoint reproduces; a learning rate of 0
/// leaves the pre-trained encoder exactly as it was.
#[test]
fn pre_trained_runs_are_fine_tuned_seed_by_seed_and_scored_by_accuracy() {
    let dir = scratch("quality_fine_tune");
    letter_text(&dir.join("train.txt"), 6000, 1);
    letter_text(&dir.join("held_out.txt"), 1200, 2);
    let root = root();
    let electra = root.join("models/electra.model");
    let set = "set: { model_type: electra, vocab_size: 261, hidden_size: 16, embedding_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32, max_position_embeddings: 32 }\n";
    let pretrain = dir.join("pretrain.yaml");
    std::fs::write(
        &pretrain,
        format!(
            "variants:\n  - model: {e}:ElectraForJointPreTraining\n    label: electra\n    train: {{ max_steps: 6 }}\n  \
             - model: ElectraForMaskedLM\n    label: mlm\n    train: {{ max_steps: 8 }}\n{set}\
             seeds: [1, 2]\n\
             train:\n  data: train.txt\n  tokenizer: {tok}\n  objective: masked\n  seq_len: 32\n  per_device_train_batch_size: 4\n  max_steps: 3\n  learning_rate: 3.0e-3\n  no_dropout: true\n\
             eval_text: held_out.txt\nlengths: [32]\n",
            e = electra.display(),
            tok = root.join("data/bytes_bert/tokenizer.json").display(),
        ),
    )
    .unwrap();
    let (report, _) = ab_report(&pretrain, &dir.join("out"), &dir.join("pretrain.json"), &[]);
    let steps: Vec<usize> = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["runs"][0]["curve"].as_array().unwrap().last().unwrap()[0].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(steps, vec![6, 8], "each variant trains its own number of steps");
    assert_eq!(report["variants"][1]["train"]["max_steps"], 8);
    let verdict = &report["verdicts"][0];
    assert_eq!(verdict["verdict"], "not compared: each model scores its own loss", "{verdict}");
    assert!(verdict["loss_difference"].is_null());

    classification_batches(&dir.join("train.safetensors"), 6, 3);
    let (ids, mask, labels) = classification_batches(&dir.join("held_out.safetensors"), 2, 4);
    let finetune = dir.join("finetune.yaml");
    let runs = dir.join("out/runs");
    std::fs::write(
        &finetune,
        format!(
            "variants:\n  - model: {e}:ElectraForSequenceClassification\n    label: from mlm\n    init: {runs}/mlm/seed-{{seed}}\n  \
             - model: ElectraForSequenceClassification\n    label: from electra\n    init: {runs}/electra/seed-{{seed}}\n  \
             - model: ElectraForSequenceClassification\n    label: frozen\n    init: {runs}/mlm/seed-{{seed}}\n    train: {{ learning_rate: 0.0 }}\n  \
             - model: ElectraForSequenceClassification\n    label: from scratch\n{set}\
             seeds: [1, 2]\n\
             train:\n  data: train.safetensors\n  max_steps: 5\n  learning_rate: 3.0e-3\n  no_dropout: true\n\
             eval_text: held_out.safetensors\nlengths: [16, 32]\n",
            e = electra.display(),
            runs = runs.display(),
        ),
    )
    .unwrap();
    let out = dir.join("fine_tuned");
    let csv = dir.join("finetune.csv");
    let (report, stderr) = ab_report(&finetune, &out, &dir.join("finetune.json"), &["--csv", csv.to_str().unwrap()]);
    assert_eq!(
        stderr.matches("newly initialised").count(),
        6,
        "three variants from a checkpoint, two seeds: {stderr}"
    );
    assert!(stderr.contains("classifier.out_proj.bias"), "{stderr}");
    assert!(
        stderr.contains("are not parameters of this model and are left: generator_"),
        "{stderr}"
    );
    let variants = report["variants"].as_array().unwrap();
    for v in variants {
        let at16 = &v["summary"]["16"];
        let accuracy = at16["accuracy"]["mean"].as_f64().unwrap_or_else(|| panic!("{v}"));
        assert!((0.0..=1.0).contains(&accuracy), "{v}");
        assert_eq!(v["summary"]["32"]["error"], "the held-out batches are 16 tokens long");
        // Each run's accuracy is what its checkpoint's logits give on the held-out batches.
        for r in v["runs"].as_array().unwrap() {
            let run_dir = r["dir"].as_str().unwrap();
            let inputs = dir.join("held_out_inputs.safetensors");
            let bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
            lmc_runtime::write_safetensors(
                &inputs,
                &[
                    ("input_ids", lmc_abi::DType::I64, &[8, 16], &bytes(&ids)),
                    ("attention_mask", lmc_abi::DType::I64, &[8, 16], &bytes(&mask)),
                ],
            )
            .unwrap();
            let outputs = run_outputs(
                "models/electra.model:ElectraForSequenceClassification",
                run_dir,
                inputs.to_str().unwrap(),
                &dir.join("logits.safetensors"),
                &[],
            );
            let logits = &outputs.iter().find(|(n, _, _)| n == "logits").unwrap().2;
            let right = logits
                .chunks(2)
                .zip(&labels)
                .filter(|(row, &label)| i64::from(row[1] > row[0]) == label)
                .count();
            let scored = r["lengths"]["16"]["accuracy"].as_f64().unwrap();
            assert!((scored - right as f64 / 8.0).abs() < 1e-12, "{run_dir}: {scored} vs {right}/8");
        }
    }
    // A learning rate of 0 keeps the pre-trained encoder as it was, tensor for tensor.
    let frozen = read_f32_tensors(&out.join("runs/frozen/seed-2/model.safetensors"));
    let pretrained = read_f32_tensors(&runs.join("mlm/seed-2/model.safetensors"));
    let shared: Vec<_> = frozen.iter().filter(|(n, _, _)| n.starts_with("electra.")).collect();
    assert!(!shared.is_empty());
    for (name, _, values) in shared {
        let before = pretrained.iter().find(|(n, _, _)| n == name).unwrap();
        assert_eq!(&before.2, values, "{name}");
    }
    let verdicts = report["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 3, "{verdicts:?}");
    assert!(
        verdicts.iter().all(|d| d["accuracy_difference"]["difference"].is_f64()),
        "{verdicts:?}"
    );
    assert!(std::fs::read_to_string(&csv)
        .unwrap()
        .contains(",accuracy,accuracy_low,accuracy_high,"));

    // Bad input: a checkpoint of another model to start from, a missing `init` checkpoint, an
    // unknown key in a variant's `train`.
    lmc_fails(
        &[
            "train",
            "models/electra.model:ElectraForSequenceClassification",
            "--weights",
            "tests/fixtures/bert_tiny",
            "--data",
            dir.join("train.safetensors").to_str().unwrap(),
            "--max-steps",
            "1",
            "-o",
            dir.join("wrong").to_str().unwrap(),
        ],
        &[
            "tests/fixtures/bert_tiny holds none of the",
            "parameters of this model",
            "is it this model's checkpoint?",
        ],
    );
    let broken = dir.join("broken.yaml");
    let text = std::fs::read_to_string(&finetune).unwrap();
    std::fs::write(&broken, text.replace("/mlm/seed-{seed}\n  - model", "/nope/seed-{seed}\n  - model")).unwrap();
    lmc_fails(
        &["ab", broken.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &[
            "`init`:",
            "nope/seed-1 is not a checkpoint directory",
            "train the experiment that makes it first",
        ],
    );
    std::fs::write(&broken, text.replace("learning_rate: 0.0", "learning_rat: 0.0")).unwrap();
    lmc_fails(
        &["ab", broken.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &["unknown key `learning_rat`", "did you mean `learning_rate`?"],
    );
    // A pre-trained run that changes (trained again) makes the fine-tuned runs from it stale:
    // they are not reused silently.
    std::fs::copy(runs.join("mlm/seed-2/model.safetensors"), runs.join("mlm/seed-1/model.safetensors")).unwrap();
    lmc_fails(
        &["ab", finetune.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &[
            "from-mlm/seed-1 was trained otherwise",
            "the init checkpoint",
            "other weights there",
        ],
    );
}
