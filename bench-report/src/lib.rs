//! What every benchmark writes: aligned tables on stdout, `results/bench-<part>.json`
//! and a hand-written SVG bar chart `results/bench-<part>.svg` (no plotting stack).
//! `--quick` runs write `bench-<part>-quick.*`, so the quick runs of
//! `cargo xtask test` never overwrite real numbers.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// `<workspace>/results`, created.
pub fn results_dir() -> Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = here.parent().unwrap_or(here).join("results");
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    Ok(d)
}

/// `bench-<part>`, or `bench-<part>-quick` in `--quick` mode, so that the
/// quick runs of `cargo xtask test` do not overwrite the real numbers.
fn file_stem(part: &str) -> String {
    if std::env::args().any(|a| a == "--quick") {
        format!("bench-{part}-quick")
    } else {
        format!("bench-{part}")
    }
}

/// Writes `results/bench-<part>[-quick].json` and returns its path.
pub fn write_json(part: &str, v: &Value) -> Result<PathBuf> {
    let p = results_dir()?.join(format!("{}.json", file_stem(part)));
    std::fs::write(&p, serde_json::to_string_pretty(v)?)
        .with_context(|| format!("write {}", p.display()))?;
    Ok(p)
}

/// Prints an aligned text table.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = w.get(i).copied().unwrap_or(0);
                if i == 0 {
                    format!("{c:<pad$}")
                } else {
                    format!("{c:>pad$}")
                }
            })
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    line(w.iter().map(|n| "-".repeat(*n)).collect());
    for r in rows {
        line(r.clone());
    }
}

/// One panel of a bar chart: bars scaled to the panel's largest value.
pub struct Panel {
    pub title: String,
    /// (label, value, text printed after the bar)
    pub bars: Vec<(String, f64, String)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `results/bench-<part>[-quick].svg`: panels of horizontal bars, one under the
/// other. Hand-written SVG keeps the benchmark free of a plotting stack.
pub fn write_svg(part: &str, title: &str, panels: &[Panel]) -> Result<PathBuf> {
    const W: f64 = 900.0;
    const LABEL_W: f64 = 300.0;
    const BAR_W: f64 = 420.0;
    const ROW: f64 = 22.0;
    let mut y = 40.0;
    let mut body = String::new();
    for p in panels {
        body += &format!(
            "<text x=\"10\" y=\"{:.0}\" font-weight=\"bold\">{}</text>\n",
            y + 14.0,
            esc(&p.title)
        );
        y += 24.0;
        let max = p
            .bars
            .iter()
            .map(|b| b.1)
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        for (label, v, text) in &p.bars {
            let len = if max > 0.0 && v.is_finite() {
                (v / max * BAR_W).max(1.0)
            } else {
                0.0
            };
            body += &format!(
                "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>\n\
                 <rect x=\"{:.0}\" y=\"{:.0}\" width=\"{len:.1}\" height=\"{:.0}\" fill=\"#4a7ab5\"/>\n\
                 <text x=\"{:.1}\" y=\"{:.0}\">{}</text>\n",
                LABEL_W - 8.0,
                y + 15.0,
                esc(label),
                LABEL_W,
                y + 3.0,
                ROW - 6.0,
                LABEL_W + len + 6.0,
                y + 15.0,
                esc(text)
            );
            y += ROW;
        }
        y += 12.0;
    }
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W:.0}\" height=\"{:.0}\" \
         font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>\n{body}</svg>\n",
        y + 10.0,
        esc(title)
    );
    let path = results_dir()?.join(format!("{}.svg", file_stem(part)));
    std::fs::write(&path, svg).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// Machine description for the JSON (kernel, CPUs).
pub fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    serde_json::json!({"kernel": kernel, "cpus": cpus, "cpu_model": model})
}
