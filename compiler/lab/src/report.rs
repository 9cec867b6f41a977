//! `lmc ab`'s report files, written from the JSON report (`ab::ab` builds it; `--json` writes it
//! as it is): one CSV row per variant and size, and a self-contained HTML page whose charts are
//! inline SVG (no scripts, no network), so it opens anywhere and renders headless.

use serde_json::Value;
use std::fmt::Write as _;

/// The colours of the variants A, B, C, ... (colour-blind-safe, after Okabe and Ito).
const PALETTE: &[&str] = &[
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

pub(crate) fn colour(k: usize) -> &'static str {
    PALETTE[k % PALETTE.len()]
}

/// One row per variant and size: the measurements, and the comparison with the base variant.
pub fn csv(report: &Value) -> String {
    let mut out = String::from(
        "batch,length,new_tokens,variant,label,flops_per_token,median_ms,p10_ms,p90_ms,tokens_per_s,activation_bytes,peak_rss_bytes,ratio_vs_base,ratio_low,ratio_high,max_abs_diff,cosine,loss,perplexity,skipped\n",
    );
    for cell in array(&report["cells"]) {
        for row in array(&cell["variants"]) {
            let name = row["name"].as_str().unwrap_or("");
            let comparison = array(&cell["comparisons"]).find(|c| c["name"].as_str() == Some(name));
            let field = |v: &Value| match v {
                Value::Null => String::new(),
                Value::String(s) => quote(s),
                other => other.to_string(),
            };
            let c = |key: &str| comparison.map_or(String::new(), |c| field(&c[key]));
            let d = |key: &str| comparison.map_or(String::new(), |c| field(&c["divergence"][key]));
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                field(&cell["batch"]),
                field(&cell["length"]),
                field(&cell["decode"]),
                name,
                field(&row["label"]),
                field(&row["flops_per_token"]),
                field(&row["median_ms"]),
                field(&row["p10_ms"]),
                field(&row["p90_ms"]),
                field(&row["tokens_per_s"]),
                field(&row["activation_bytes"]),
                field(&row["peak_rss_bytes"]),
                c("ratio"),
                c("low"),
                c("high"),
                d("max_abs_diff"),
                d("cosine"),
                field(&row["loss"]),
                field(&row["perplexity"]),
                field(&row["skipped"]),
            );
        }
    }
    out
}

/// A CSV field, quoted when it has to be.
fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn array(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().map(|a| a.iter()).into_iter().flatten()
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The self-contained HTML report.
pub fn html(report: &Value) -> String {
    let title = report["title"].as_str().unwrap_or("lmc ab");
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{}</style></head><body>\n",
        escape(title),
        STYLE
    );
    let _ = writeln!(h, "<h1>{}</h1>", escape(title));
    let _ = writeln!(
        h,
        "<p class=\"meta\">{} at {} · {} · {} · {} thread(s) · {} timed rounds per size after {} warm-up, variants interleaved · ratios are medians of paired per-round ratios with 95% bootstrap intervals</p>",
        escape(report["generator"].as_str().unwrap_or("")),
        escape(report["commit"].as_str().unwrap_or("")),
        escape(report["date"].as_str().unwrap_or("")),
        escape(report["cpu"].as_str().unwrap_or("")),
        report["threads"],
        report["runs"],
        report["warmup"]
    );
    if report["interrupted"].as_bool() == Some(true) {
        let _ = writeln!(h, "<p class=\"warn\">Interrupted: only the sizes below were measured.</p>");
    }
    let variants: Vec<&Value> = array(&report["variants"]).collect();
    h.push_str("<h2>Variants</h2>\n<table><tr><th></th><th>variant</th><th>model</th><th>parameters</th><th>embedding</th><th>other</th><th>compile</th></tr>\n");
    for (k, v) in variants.iter().enumerate() {
        let swatch = format!("<span class=\"swatch\" style=\"background:{}\"></span>", colour(k));
        let name = escape(v["name"].as_str().unwrap_or(""));
        let label = escape(v["label"].as_str().unwrap_or(""));
        let spec = escape(v["spec"].as_str().unwrap_or(""));
        match v["error"].as_str() {
            Some(e) => {
                let _ = writeln!(
                    h,
                    "<tr><td>{swatch} {name}</td><td>{label}</td><td><code>{spec}</code></td><td colspan=\"4\" class=\"warn\">not compiled: {}</td></tr>",
                    escape(e)
                );
            }
            None => {
                let total = v["params"].as_u64().unwrap_or(0);
                let embedding = v["embedding_params"].as_u64().unwrap_or(0);
                let _ = writeln!(
                    h,
                    "<tr><td>{swatch} {name}</td><td>{label}</td><td><code>{spec}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{:.2} s</td></tr>",
                    crate::units::fmt_count(total),
                    crate::units::fmt_count(embedding),
                    crate::units::fmt_count(total.saturating_sub(embedding)),
                    v["compile_ms"].as_f64().unwrap_or(0.0) / 1e3
                );
            }
        }
    }
    h.push_str("</table>\n");

    let cells: Vec<&Value> = array(&report["cells"]).collect();
    let mut batches: Vec<u64> = cells.iter().filter_map(|c| c["batch"].as_u64()).collect();
    batches.dedup();
    for batch in batches {
        let of_batch: Vec<&Value> = cells.iter().copied().filter(|c| c["batch"].as_u64() == Some(batch)).collect();
        let lengths: Vec<u64> = of_batch.iter().filter_map(|c| c["length"].as_u64()).collect();
        let _ = writeln!(h, "<h2>Batch {batch}</h2>");
        // A decode workload times whole generations: a prompt of each length, then new tokens.
        let decode = of_batch.iter().find_map(|c| c["decode"].as_u64());
        if let Some(new) = decode {
            let _ = writeln!(
                h,
                "<p>Generation: a prompt of each length (an encoder-decoder's encoder input), then {new} new tokens decoded one at a time.</p>"
            );
        }
        h.push_str("<div class=\"charts\">\n");
        let series = |key: &str| -> Vec<Series> {
            variants
                .iter()
                .enumerate()
                .map(|(k, v)| Series {
                    name: format!("{} {}", v["name"].as_str().unwrap_or(""), v["label"].as_str().unwrap_or("")),
                    colour: colour(k),
                    points: of_batch
                        .iter()
                        .map(|c| {
                            let row = array(&c["variants"]).find(|r| r["name"] == v["name"]);
                            let value = match key {
                                "activation_mib" => row.and_then(|r| r["activation_bytes"].as_f64()).map(|b| b / 1048576.0),
                                _ => row.and_then(|r| r[key].as_f64()),
                            };
                            let band = row.and_then(|r| Some((r["p10_ms"].as_f64()?, r["p90_ms"].as_f64()?)));
                            (value, if key == "median_ms" { band } else { None })
                        })
                        .collect(),
                })
                .collect()
        };
        let (latency, throughput) = match decode {
            Some(_) => ("Generation time (median, p10–p90)", "New tokens per second"),
            None => ("Latency (median, p10–p90)", "Throughput"),
        };
        h.push_str(&line_chart(latency, "ms", &lengths, &series("median_ms")));
        h.push_str(&line_chart(throughput, "tokens/s", &lengths, &series("tokens_per_s")));
        h.push_str(&line_chart(
            "Activations (peak held at once)",
            "MiB",
            &lengths,
            &series("activation_mib"),
        ));
        if of_batch.iter().any(|c| array(&c["variants"]).any(|r| r["perplexity"].is_number())) {
            h.push_str(&line_chart("Perplexity on the text", "perplexity", &lengths, &series("perplexity")));
        }
        h.push_str(&forest_chart(&of_batch, &variants));
        h.push_str("</div>\n");
        for c in &of_batch {
            h.push_str(&cell_table(c));
        }
    }
    h.push_str("</body></html>\n");
    h
}

pub(crate) const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{padding:0.25em 0.8em;border-bottom:1px solid #ddd;text-align:left}\
th{background:#f4f4f4}.meta{color:#666}.warn{color:#b00}.swatch{display:inline-block;width:0.8em;height:0.8em;border-radius:2px}\
.charts{display:flex;flex-wrap:wrap;gap:1em}svg{background:#fff;border:1px solid #eee}code{font-size:90%}td code{overflow-wrap:anywhere}";

/// A value at one length (`None` where the variant did not run), with an optional p10–p90 band.
pub(crate) type Point = (Option<f64>, Option<(f64, f64)>);

/// One variant's values over the lengths.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) colour: &'static str,
    pub(crate) points: Vec<Point>,
}

const W: f64 = 520.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 80.0;

/// A value axis: linear from 0, or logarithmic when the values span more than 20×.
struct Axis {
    log: bool,
    lo: f64,
    hi: f64,
    /// A linear axis's tick step (1, 2 or 5 times a power of ten).
    step: f64,
}

impl Axis {
    fn fit(values: impl Iterator<Item = f64>) -> Axis {
        let v: Vec<f64> = values.filter(|x| x.is_finite() && *x > 0.0).collect();
        let (min, max) = v.iter().fold((f64::INFINITY, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        if v.is_empty() {
            return Axis {
                log: false,
                lo: 0.0,
                hi: 1.0,
                step: 0.25,
            };
        }
        if max / min > 20.0 {
            return Axis {
                log: true,
                lo: 10f64.powf(min.log10().floor()),
                hi: 10f64.powf(max.log10().ceil()),
                step: 0.0,
            };
        }
        // From zero when the values come near it; otherwise around them, so that differences
        // between close values (losses, perplexities) show.
        let floor = if min < 0.3 * max {
            0.0
        } else {
            min - 0.1 * (max - min).max(max * 0.01)
        };
        let step = nice_ceiling((max * 1.05 - floor) / 4.0);
        let lo = (floor / step).floor() * step;
        let hi = lo + step * ((max * 1.02 - lo) / step).ceil().max(1.0);
        Axis {
            log: false,
            lo: lo.max(0.0),
            hi,
            step,
        }
    }

    /// Where `v` lies between the axis's ends, 0 to 1.
    fn fraction(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        f.clamp(0.0, 1.0)
    }

    /// The y pixel of `v`.
    fn y(&self, v: f64) -> f64 {
        TOP + (H - TOP - BOTTOM) * (1.0 - self.fraction(v))
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let (a, b) = (self.lo.log10().round() as i32, self.hi.log10().round() as i32);
            (a..=b).map(|e| 10f64.powi(e)).collect()
        } else {
            let n = ((self.hi - self.lo) / self.step).round() as usize;
            (0..=n).map(|i| self.lo + self.step * i as f64).collect()
        }
    }

    /// A tick's label, with as many decimals as the step needs (0.05 → two).
    fn label(&self, v: f64) -> String {
        if self.log || self.step >= 1.0 || v >= 1e3 {
            return fmt_tick(v);
        }
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// 1, 2 or 5 times a power of ten, at least `x`.
fn nice_ceiling(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|v| *v >= x).unwrap_or(10.0 * p)
}

/// An axis label: at most two decimals, none trailing, with k or M for thousands and millions.
fn fmt_tick(v: f64) -> String {
    let (value, suffix) = match v {
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    let digits = format!("{value:.2}");
    format!("{}{suffix}", digits.trim_end_matches('0').trim_end_matches('.'))
}

fn svg_open(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-size=\"12\">\
<text x=\"{}\" y=\"22\" font-size=\"14\" font-weight=\"600\">{}</text>\n",
        LEFT,
        escape(title)
    )
}

/// Values against sequence length, one line per variant; lengths are equally spaced categories
/// (a log scale for lengths that double).
fn line_chart(title: &str, unit: &str, lengths: &[u64], series: &[Series]) -> String {
    let categories: Vec<String> = lengths.iter().map(u64::to_string).collect();
    category_chart(title, unit, "sequence length", &categories, series)
}

/// Values against equally spaced categories (lengths, position ranges, steps), one line per
/// series, with an interval drawn where a point has one.
pub(crate) fn category_chart(title: &str, unit: &str, x_label: &str, lengths: &[String], series: &[Series]) -> String {
    let axis = Axis::fit(series.iter().flat_map(|s| {
        s.points
            .iter()
            .flat_map(|(v, band)| v.iter().copied().chain(band.iter().flat_map(|(a, b)| [*a, *b])))
    }));
    let mut s = svg_open(&format!("{title}{}", if axis.log { " (log scale)" } else { "" }));
    let plot_w = W - LEFT - RIGHT;
    let x = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / lengths.len().max(1) as f64;
    for t in axis.ticks() {
        let y = axis.y(t);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            axis.label(t)
        );
    }
    let base = H - BOTTOM;
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{base}\" y2=\"{base}\" stroke=\"#444\"/>",
        W - RIGHT
    );
    for (i, l) in lengths.iter().enumerate() {
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{l}</text>", x(i), base + 16.0);
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
        LEFT + plot_w / 2.0,
        base + 32.0,
        escape(x_label),
        TOP + (base - TOP) / 2.0,
        TOP + (base - TOP) / 2.0,
        escape(unit)
    );
    for (k, series) in series.iter().enumerate() {
        let mut path = String::new();
        for (i, (v, band)) in series.points.iter().enumerate() {
            let Some(v) = v else { continue };
            let (px, py) = (x(i) + (k as f64 - 1.0) * 3.0, axis.y(*v));
            let _ = write!(path, "{}{px:.1},{py:.1} ", if path.is_empty() { "M" } else { "L" });
            if let Some((lo, hi)) = band {
                let _ = writeln!(
                    s,
                    "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"2\" opacity=\"0.5\"/>",
                    axis.y(*lo),
                    axis.y(*hi),
                    series.colour
                );
            }
            let _ = writeln!(s, "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3.5\" fill=\"{}\"/>", series.colour);
        }
        if !path.is_empty() {
            let _ = writeln!(
                s,
                "<path d=\"{path}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                series.colour
            );
        }
        // Two legend entries a row, wide enough for a long label.
        let ly = base + 50.0 + (k / 2) as f64 * 14.0;
        let lx = LEFT + (k % 2) as f64 * 220.0;
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{ly:.1}\">{}</text>",
            ly - 9.0,
            series.colour,
            lx + 14.0,
            escape(&shorten(&series.name, 34))
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A labelled point of [`scatter_chart`]: its name, colour, x, y and y's interval.
pub(crate) type ScatterPoint = (String, &'static str, f64, f64, Option<(f64, f64)>);

/// One labelled point per variant: `x` against `y`, with `y`'s interval as a bar (quality
/// against speed: the variants on the lower right of the cloud are the Pareto front).
pub(crate) fn scatter_chart(title: &str, x_unit: &str, y_unit: &str, points: &[ScatterPoint]) -> String {
    let x_axis = Axis::fit(points.iter().map(|p| p.2));
    let y_axis = Axis::fit(
        points
            .iter()
            .flat_map(|p| [p.3].into_iter().chain(p.4.iter().flat_map(|(a, b)| [*a, *b]))),
    );
    let mut s = svg_open(title);
    let plot_w = W - LEFT - RIGHT;
    let x = |v: f64| LEFT + plot_w * x_axis.fraction(v);
    let base = H - BOTTOM;
    for t in y_axis.ticks() {
        let y = y_axis.y(t);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            y_axis.label(t)
        );
    }
    for t in x_axis.ticks() {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            x(t),
            base + 16.0,
            x_axis.label(t)
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{base}\" y2=\"{base}\" stroke=\"#444\"/><text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">{}</text>",
        W - RIGHT,
        LEFT + plot_w / 2.0,
        base + 32.0,
        escape(x_unit),
        TOP + (base - TOP) / 2.0,
        TOP + (base - TOP) / 2.0,
        escape(y_unit)
    );
    for (name, colour, px, py, band) in points {
        let (cx, cy) = (x(*px), y_axis.y(*py));
        if let Some((lo, hi)) = band {
            let _ = writeln!(
                s,
                "<line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-width=\"2\" opacity=\"0.5\"/>",
                y_axis.y(*lo),
                y_axis.y(*hi)
            );
        }
        let _ = writeln!(
            s,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"4.5\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            cx + 7.0,
            cy - 6.0,
            escape(&shorten(name, 24))
        );
    }
    s.push_str("</svg>\n");
    s
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// Each comparison's latency ratio with its 95% interval, one row per variant and length, with
/// the line of no difference at 1 (log scale: 0.5× and 2× are equally far from it).
fn forest_chart(cells: &[&Value], variants: &[&Value]) -> String {
    let mut rows = Vec::new();
    for c in cells {
        for cmp in array(&c["comparisons"]) {
            let (Some(r), Some(lo), Some(hi)) = (cmp["ratio"].as_f64(), cmp["low"].as_f64(), cmp["high"].as_f64()) else {
                continue;
            };
            let k = variants.iter().position(|v| v["name"] == cmp["name"]).unwrap_or(0);
            rows.push((
                format!(
                    "{} vs {} @ {}",
                    cmp["name"].as_str().unwrap_or(""),
                    cmp["against"].as_str().unwrap_or(""),
                    c["length"]
                ),
                r,
                lo,
                hi,
                k,
            ));
        }
    }
    let mut s = svg_open("Latency ratio to the base (95% interval)");
    if rows.is_empty() {
        s.push_str("<text x=\"70\" y=\"80\">no comparisons</text></svg>\n");
        return s;
    }
    let extreme = rows
        .iter()
        .flat_map(|(_, r, lo, hi, _)| [*r, *lo, *hi])
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(1.25f64, |m, v| m.max(v).max(1.0 / v));
    let span = extreme.log2().abs() * 1.1;
    let left = LEFT + 60.0;
    let plot_w = W - left - RIGHT;
    let x = |v: f64| left + plot_w * ((v.max(1e-9).log2() + span) / (2.0 * span)).clamp(0.0, 1.0);
    let row_h = ((H - TOP - 50.0) / rows.len() as f64).min(24.0);
    let bottom = TOP + row_h * rows.len() as f64;
    for t in [0.5f64, 0.8, 1.0, 1.25, 2.0] {
        if t.log2().abs() <= span {
            let tx = x(t);
            let _ = writeln!(
                s,
                "<line x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{TOP}\" y2=\"{bottom:.1}\" stroke=\"{}\"/><text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t}×</text>",
                if t == 1.0 { "#444" } else { "#eee" },
                bottom + 16.0
            );
        }
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">latency ÷ base latency (left of 1×: faster)</text>",
        left + plot_w / 2.0,
        bottom + 34.0
    );
    for (i, (label, r, lo, hi, k)) in rows.iter().enumerate() {
        let y = TOP + row_h * (i as f64 + 0.5);
        let c = colour(*k);
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{c}\" stroke-width=\"2\"/><circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{c}\"/>",
            left - 6.0,
            y + 4.0,
            escape(label),
            x(*lo),
            x(*hi),
            x(*r)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One size's numbers as a table.
fn cell_table(c: &Value) -> String {
    // A perplexity column only where a text was scored.
    let scored = array(&c["variants"]).any(|r| r["perplexity"].is_number() || r["eval_skipped"].is_string());
    let mut t = String::new();
    let _ = writeln!(
        t,
        "<h3>Batch {}, length {}{}</h3>\n<table><tr><th>variant</th><th>FLOPs/token</th><th>median</th><th>p10 – p90</th><th>tokens/s</th><th>activations</th><th>peak RSS</th><th>against the base</th><th>output divergence</th>{}</tr>",
        c["batch"],
        c["length"],
        c["decode"].as_u64().map_or(String::new(), |n| format!(", then {n} new tokens")),
        if scored { "<th>perplexity</th>" } else { "" }
    );
    for row in array(&c["variants"]) {
        let name = row["name"].as_str().unwrap_or("");
        let label = format!("{name} {}", escape(row["label"].as_str().unwrap_or("")));
        if let Some(why) = row["skipped"].as_str() {
            let _ = writeln!(
                t,
                "<tr><td>{label}</td><td colspan=\"{}\" class=\"warn\">{}</td></tr>",
                if scored { 9 } else { 8 },
                escape(why)
            );
            continue;
        }
        let cmp = array(&c["comparisons"]).find(|x| x["name"].as_str() == Some(name));
        let verdict = cmp.and_then(|x| x["verdict"].as_str()).map_or("base".to_string(), escape);
        let divergence = cmp
            .and_then(|x| {
                let d = &x["divergence"];
                Some(format!(
                    "max |Δ| {:.3e}, cosine {:.4}",
                    d["max_abs_diff"].as_f64()?,
                    d["cosine"].as_f64()?
                ))
            })
            .unwrap_or_default();
        let perplexity = match (scored, row["perplexity"].as_f64(), row["eval_skipped"].as_str()) {
            (false, _, _) => String::new(),
            (true, Some(p), _) => format!("<td>{p:.2}</td>"),
            (true, None, why) => format!("<td>{}</td>", escape(why.unwrap_or(""))),
        };
        let ms = |k: &str| row[k].as_f64().map_or(String::new(), crate::units::fmt_ms);
        let _ = writeln!(
            t,
            "<tr><td>{label}</td><td>{}</td><td>{}</td><td>{} – {}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{verdict}</td><td>{divergence}</td>{perplexity}</tr>",
            crate::units::fmt_count(row["flops_per_token"].as_f64().unwrap_or(0.0) as u64),
            ms("median_ms"),
            ms("p10_ms"),
            ms("p90_ms"),
            row["tokens_per_s"].as_f64().unwrap_or(0.0),
            row["activation_bytes"].as_u64().map_or(String::new(), |b| crate::units::fmt_bytes(b as usize)),
            row["peak_rss_bytes"].as_u64().map_or(String::new(), |b| crate::units::fmt_bytes(b as usize)),
        );
    }
    t.push_str("</table>\n");
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Value {
        json!({
            "title": "t <x>", "generator": "lmc test", "runs": 5, "warmup": 1, "interrupted": false,
            "variants": [
                {"name": "A", "label": "base", "spec": "m.model:A", "params": 1000, "embedding_params": 100, "compile_ms": 1200.0},
                {"name": "B", "label": "other, quoted", "spec": "m.model:B", "params": 1000, "embedding_params": 100, "compile_ms": 900.0},
                {"name": "C", "label": "broken", "spec": "m.model:C", "error": "does not check"},
            ],
            "cells": [
                {"batch": 1, "length": 64, "variants": [
                    {"name": "A", "label": "base", "flops_per_token": 2e6, "median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.2, "tokens_per_s": 64000.0, "activation_bytes": 1048576},
                    {"name": "B", "label": "other, quoted", "flops_per_token": 2e6, "median_ms": 1.5, "p10_ms": 1.4, "p90_ms": 1.7, "tokens_per_s": 42000.0, "activation_bytes": 2097152},
                    {"name": "C", "label": "broken", "skipped": "not compiled"},
                ], "comparisons": [
                    {"name": "B", "against": "A", "ratio": 1.5, "low": 1.4, "high": 1.6, "verdict": "B is 1.50× slower [1.40, 1.60]",
                     "divergence": {"output": "y", "max_abs_diff": 0.5, "cosine": 0.9}},
                ]},
                {"batch": 1, "length": 512, "variants": [
                    {"name": "A", "label": "base", "skipped": "cannot run past 128"},
                    {"name": "B", "label": "other, quoted", "flops_per_token": 3e6, "median_ms": 30.0, "p10_ms": 29.0, "p90_ms": 33.0, "tokens_per_s": 17000.0, "activation_bytes": 8388608},
                ], "comparisons": []},
            ],
        })
    }

    #[test]
    fn csv_has_a_row_per_variant_and_size_with_the_comparison() {
        let text = csv(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 5);
        // No decode workload (an empty new_tokens), no peak RSS, no text scored.
        assert!(lines[2].starts_with("1,64,,B,\"other, quoted\",2000000.0,1.5,"), "{}", lines[2]);
        assert!(lines[2].contains(",42000.0,2097152,,1.5,1.4,1.6,0.5,0.9,,,"), "{}", lines[2]);
        assert!(lines[4].ends_with("cannot run past 128"), "{}", lines[4]);
    }

    #[test]
    fn html_is_self_contained_and_escaped_with_a_chart_per_measure() {
        let page = html(&report());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("<title>t &lt;x&gt;</title>"));
        // No scripts, and nothing fetched: the only address is the SVG namespace.
        assert!(!page.contains("<script"));
        assert_eq!(page.matches("http").count(), page.matches("http://www.w3.org/2000/svg").count());
        assert_eq!(page.matches("<svg").count(), 4, "latency, throughput, memory and ratio charts");
        assert!(page.contains("<td>2.0 MiB</td>"), "activations in the table");
        assert!(page.contains("B vs A @ 64"));
        assert!(page.contains("not compiled: does not check"));
        assert!(page.contains("cannot run past 128"));
        // Latencies 1 ms to 33 ms span more than 20x: a log axis.
        assert!(page.contains("Latency (median, p10–p90) (log scale)"));
    }

    #[test]
    fn tick_labels_are_short() {
        let labels: Vec<String> = [0.0, 0.25, 2.5, 12.0, 37500.0, 50000.0, 1.5e6].map(fmt_tick).to_vec();
        assert_eq!(labels, ["0", "0.25", "2.5", "12", "37.5k", "50k", "1.5M"]);
    }

    #[test]
    fn axes_are_round_and_log_only_for_wide_ranges() {
        assert_eq!(nice_ceiling(7.3), 10.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        // Values that come near zero: from zero, in round steps.
        let linear = Axis::fit([1.0, 5.0].into_iter());
        assert!(!linear.log && linear.lo == 0.0 && linear.hi == 6.0, "{}..{}", linear.lo, linear.hi);
        assert_eq!(linear.ticks(), [0.0, 2.0, 4.0, 6.0]);
        // Close values (losses): around them, labelled to the step's digit.
        let close = Axis::fit([2.31, 2.62].into_iter());
        assert!(
            close.lo > 2.0 && close.lo <= 2.31 && close.hi >= 2.62 && close.hi < 3.0,
            "{}..{}",
            close.lo,
            close.hi
        );
        let labels: Vec<String> = close.ticks().iter().map(|t| close.label(*t)).collect();
        assert_eq!(labels, ["2.2", "2.4", "2.6", "2.8"]);
        let log = Axis::fit([0.5, 300.0].into_iter());
        assert!(log.log && log.lo == 0.1 && log.hi == 1000.0);
        assert!(log.y(log.hi) < log.y(log.lo));
    }
}
