//! The quality A/B's report as CSV and as a self-contained HTML page, both from the one JSON
//! report (`quality::run`), so that the three never disagree.

use crate::report::{category_chart, colour, escape, scatter_chart, ScatterPoint, Series, STYLE};
use serde_json::Value;
use std::fmt::Write;

fn array(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn num(v: &Value) -> String {
    v.as_f64().map_or(String::new(), |x| format!("{x}"))
}

/// One row per variant and length: the mean loss over seeds, its interval and perplexity, and
/// the training speed; then one row per seed.
pub fn csv(report: &Value) -> String {
    let mut out =
        String::from("variant,seed,length,loss,low,high,perplexity,train_tokens_per_s,accuracy,accuracy_low,accuracy_high,note\n");
    let lengths: Vec<String> = array(&report["lengths"]).map(|l| l.to_string()).collect();
    for v in array(&report["variants"]) {
        let name = quote(v["label"].as_str().unwrap_or(""));
        if let Some(e) = v["error"].as_str() {
            let _ = writeln!(out, "{name},,,,,,,,,,,{}", quote(&format!("not trained: {e}")));
            continue;
        }
        let speed = num(&v["summary"]["train_tokens_per_s"]);
        for l in &lengths {
            let s = &v["summary"][l];
            let _ = writeln!(
                out,
                "{name},all,{l},{},{},{},{},{speed},{},{},{},{}",
                num(&s["loss"]),
                num(&s["low"]),
                num(&s["high"]),
                num(&s["perplexity"]),
                num(&s["accuracy"]["mean"]),
                num(&s["accuracy"]["low"]),
                num(&s["accuracy"]["high"]),
                quote(s["error"].as_str().unwrap_or(""))
            );
        }
        for r in array(&v["runs"]) {
            for l in &lengths {
                let s = &r["lengths"][l];
                let _ = writeln!(
                    out,
                    "{name},{},{l},{},,,{},{},{},,,{}",
                    r["seed"],
                    num(&s["loss"]),
                    s["loss"].as_f64().map_or(String::new(), |x| format!("{}", x.exp())),
                    num(&r["train_tokens_per_s"]),
                    num(&s["accuracy"]),
                    quote(s["error"].as_str().unwrap_or(""))
                );
            }
        }
    }
    out
}

/// The page: what was trained and how, held-out loss against length (intervals over seeds),
/// loss by position at the longest length, the training curves, and each variant's verdict
/// against the first.
pub fn html(report: &Value) -> String {
    let title = report["title"].as_str().unwrap_or("lmc ab");
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{}</style></head><body>\n<h1>{}</h1>\n",
        escape(title),
        STYLE,
        escape(title)
    );
    let train = &report["train"];
    let own_steps = array(&report["variants"]).any(|v| v["train"]["max_steps"].is_u64());
    let steps = match train["max_steps"].as_u64() {
        Some(n) if !own_steps => format!("{n} steps"),
        _ => "the steps below".to_string(),
    };
    // A text is cut into windows of a batch size and length; a file of batches has its own.
    let batches = if train["data"]["path"].as_str().is_some_and(|p| p.ends_with(".safetensors")) {
        "the file's batches".to_string()
    } else {
        format!(
            "{} × {} tokens",
            train["per_device_train_batch_size"]
                .as_u64()
                .unwrap_or(crate::train::DEFAULT_BATCH_SIZE as u64),
            train["seq_len"]
        )
    };
    let _ = writeln!(
        h,
        "<p class=\"meta\">{} at {} · {} · {} · {} thread(s) · seeds {} · trained on <code>{}</code> (sha256 {}) for {steps} of {batches}, learning rate {} ({}) · scored on <code>{}</code> (sha256 {}) by {} · {}</p>",
        escape(report["generator"].as_str().unwrap_or("")),
        escape(report["commit"].as_str().unwrap_or("")),
        escape(report["date"].as_str().unwrap_or("")),
        escape(report["cpu"].as_str().unwrap_or("")),
        report["threads"],
        escape(&report["seeds"].to_string()),
        escape(train["data"]["path"].as_str().unwrap_or("")),
        escape(&train["data"]["sha256"].as_str().unwrap_or("").chars().take(12).collect::<String>()),
        train["learning_rate"],
        escape(train["lr_scheduler_type"].as_str().unwrap_or("")),
        escape(report["eval_text"]["path"].as_str().unwrap_or("")),
        escape(&report["eval_text"]["sha256"].as_str().unwrap_or("").chars().take(12).collect::<String>()),
        escape(report["scored_by"].as_str().unwrap_or("next-token loss")),
        escape(report["interval"].as_str().unwrap_or(""))
    );
    let variants: Vec<&Value> = array(&report["variants"]).collect();
    let lengths: Vec<String> = array(&report["lengths"]).map(|l| l.to_string()).collect();

    h.push_str("<h2>Variants</h2>\n<table><tr><th>variant</th><th>model</th><th>set</th><th>steps</th><th>trained from</th><th>final training loss (mean over seeds)</th><th>held-out accuracy</th><th>training tokens/s</th></tr>\n");
    for (k, v) in variants.iter().enumerate() {
        let swatch = format!("<span class=\"swatch\" style=\"background:{}\"></span>", colour(k));
        let name = escape(v["label"].as_str().unwrap_or(""));
        let spec = escape(v["spec"].as_str().unwrap_or(""));
        let set = escape(&array(&v["set"]).filter_map(Value::as_str).collect::<Vec<_>>().join(" "));
        if let Some(e) = v["error"].as_str() {
            let _ = writeln!(h, "<tr><td>{swatch} {name}</td><td><code>{spec}</code></td><td>{set}</td><td colspan=\"5\" class=\"warn\">not trained: {}</td></tr>", escape(e));
            continue;
        }
        let finals: Vec<f64> = array(&v["runs"]).filter_map(|r| r["final_loss"].as_f64()).collect();
        let final_loss = match finals.len() {
            0 => "trained elsewhere".to_string(),
            n => format!("{:.4}", finals.iter().sum::<f64>() / n as f64),
        };
        let speed = v["summary"]["train_tokens_per_s"]
            .as_f64()
            .map_or("-".to_string(), |s| format!("{s:.0}"));
        // The steps the runs took (a variant's own budget, the experiment's, or its epochs').
        let steps = array(&v["runs"])
            .filter_map(|r| array(&r["curve"]).last()?[0].as_u64())
            .max()
            .map_or("-".to_string(), |n| n.to_string());
        let from = v["init"]
            .as_str()
            .map_or("random weights".to_string(), |i| format!("<code>{}</code>", escape(i)));
        let accuracy = lengths
            .iter()
            .find_map(|l| {
                let a = &v["summary"][l]["accuracy"];
                Some(format!(
                    "{:.3} [{:.3}, {:.3}]",
                    a["mean"].as_f64()?,
                    a["low"].as_f64()?,
                    a["high"].as_f64()?
                ))
            })
            .unwrap_or_else(|| "-".to_string());
        let _ = writeln!(
            h,
            "<tr><td>{swatch} {name}</td><td><code>{spec}</code></td><td>{set}</td><td>{steps}</td><td>{from}</td><td>{final_loss}</td><td>{accuracy}</td><td>{speed}</td></tr>"
        );
    }
    h.push_str("</table>\n<div class=\"charts\">\n");

    // Held-out loss against length, each point the mean over seeds with its interval.
    let series: Vec<Series> = variants
        .iter()
        .enumerate()
        .map(|(k, v)| Series {
            name: v["label"].as_str().unwrap_or("").to_string(),
            colour: colour(k),
            points: lengths
                .iter()
                .map(|l| {
                    let s = &v["summary"][l];
                    (s["loss"].as_f64(), s["low"].as_f64().zip(s["high"].as_f64()))
                })
                .collect(),
        })
        .collect();
    h.push_str(&category_chart(
        "Held-out loss by length",
        "loss (nats/token)",
        "evaluation length (tokens)",
        &lengths,
        &series,
    ));

    // Loss by position at the longest length any variant ran (the extrapolation curve); a
    // variant that cannot run it has no line.
    let longest = lengths
        .iter()
        .rev()
        .find(|l| variants.iter().any(|v| v["summary"][l.as_str()]["loss"].is_f64()));
    if let Some(l) = longest {
        let buckets: Vec<String> = variants
            .iter()
            .find_map(|v| {
                v["runs"][0]["lengths"][l.as_str()]["by_position"]
                    .as_array()
                    .filter(|b| !b.is_empty())
            })
            .map(|b| b.iter().map(|x| format!("{}–{}", x["from"], x["to"])).collect())
            .unwrap_or_default();
        let series: Vec<Series> = variants
            .iter()
            .enumerate()
            .map(|(k, v)| Series {
                name: match v["summary"][l.as_str()]["loss"].is_f64() {
                    true => v["label"].as_str().unwrap_or("").to_string(),
                    false => format!("{} (cannot run {l})", v["label"].as_str().unwrap_or("")),
                },
                colour: colour(k),
                points: (0..buckets.len())
                    .map(|b| {
                        let per_seed: Vec<f64> = array(&v["runs"])
                            .filter_map(|r| r["lengths"][l.as_str()]["by_position"][b]["loss"].as_f64())
                            .collect();
                        let mean = (!per_seed.is_empty()).then(|| per_seed.iter().sum::<f64>() / per_seed.len() as f64);
                        (mean, None)
                    })
                    .collect(),
            })
            .collect();
        // Runs scored by a masked or span-corruption objective have no positions to plot.
        if !buckets.is_empty() {
            h.push_str(&category_chart(
                &format!("Loss by position in windows of {l}"),
                "loss (nats/token)",
                "positions",
                &buckets,
                &series,
            ));
        }
    }

    // Quality against speed, at the first length (the training length, usually).
    if let Some(first) = lengths.first() {
        let points: Vec<ScatterPoint> = variants
            .iter()
            .enumerate()
            .filter_map(|(k, v)| {
                let s = &v["summary"][first.as_str()];
                Some((
                    v["label"].as_str().unwrap_or("").to_string(),
                    colour(k),
                    v["summary"]["train_tokens_per_s"].as_f64()?,
                    s["loss"].as_f64()?,
                    s["low"].as_f64().zip(s["high"].as_f64()),
                ))
            })
            .collect();
        if !points.is_empty() {
            h.push_str(&scatter_chart(
                &format!("Loss at {first} against training speed"),
                "training tokens/s (right: faster)",
                "loss (nats/token; down: better)",
                &points,
            ));
        }
    }

    // Training curves: the mean over seeds at up to ten steps, of the steps any variant logged
    // (variants may train for different numbers of steps).
    let mut all: Vec<u64> = variants
        .iter()
        .flat_map(|v| array(&v["runs"][0]["curve"]).filter_map(|p| p[0].as_u64()))
        .collect();
    all.sort_unstable();
    all.dedup();
    let every = all.len().div_ceil(10).max(1);
    let steps: Vec<u64> = all
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| (i + 1) % every == 0 || *i == 0 || *i + 1 == all.len())
        .map(|(_, s)| s)
        .collect();
    let series: Vec<Series> = variants
        .iter()
        .enumerate()
        .map(|(k, v)| Series {
            name: v["label"].as_str().unwrap_or("").to_string(),
            colour: colour(k),
            points: steps
                .iter()
                .map(|&step| {
                    let at: Vec<f64> = array(&v["runs"])
                        .filter_map(|r| array(&r["curve"]).find(|p| p[0].as_u64() == Some(step)).and_then(|p| p[1].as_f64()))
                        .collect();
                    let lo = at.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = at.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mean = (!at.is_empty()).then(|| at.iter().sum::<f64>() / at.len() as f64);
                    (mean, (at.len() > 1).then_some((lo, hi)))
                })
                .collect(),
        })
        .collect();
    let step_labels: Vec<String> = steps.iter().map(u64::to_string).collect();
    h.push_str(&category_chart(
        "Training loss (bars: the seeds' range)",
        "loss (nats/token)",
        "step",
        &step_labels,
        &series,
    ));
    h.push_str("</div>\n");

    h.push_str("<h2>Against the baseline</h2>\n<table><tr><th>variant</th><th>baseline</th><th>length</th><th>loss difference (95% interval)</th><th>accuracy difference</th><th>verdict</th><th>training time</th></tr>\n");
    for d in array(&report["verdicts"]) {
        let interval = |v: &Value, mean: &str| match v[mean].as_f64() {
            Some(m) => format!(
                "{m:+.4} [{:+.4}, {:+.4}]",
                v["low"].as_f64().unwrap_or(f64::NAN),
                v["high"].as_f64().unwrap_or(f64::NAN)
            ),
            None => "-".to_string(),
        };
        let (loss, accuracy) = (interval(d, "loss_difference"), interval(&d["accuracy_difference"], "difference"));
        let time = d["train_time_ratio"].as_f64().map_or("-".to_string(), |r| format!("{r:.2}×"));
        let baseline = match d["baseline_replaces"].as_str() {
            Some(r) => format!(
                "{} <span class=\"warn\">(instead of {})</span>",
                escape(d["baseline"].as_str().unwrap_or("")),
                escape(r)
            ),
            None => escape(d["baseline"].as_str().unwrap_or("")),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{baseline}</td><td>{}</td><td>{loss}</td><td>{accuracy}</td><td>{}</td><td>{time}</td></tr>",
            escape(d["variant"].as_str().unwrap_or("")),
            d["length"],
            escape(d["verdict"].as_str().unwrap_or(""))
        );
    }
    h.push_str("</table>\n</body></html>\n");
    h
}
