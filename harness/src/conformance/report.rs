//! What a conformance run reports, exactly as FORMAT.md specifies: each
//! case's status and lines, the totals line `N passed, N failed, N skipped`,
//! and the expected and observed matrices side by side after a failure.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::matrix::Cell;
use crate::probe::Outcome;
use crate::scenario::Expectation;

/// Result of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseStatus {
    Pass,
    /// With the printed details.
    Fail(String),
    /// With the reason.
    Skip(String),
}

/// One case's report.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The case name (the file path when the file did not parse).
    pub name: String,
    pub path: PathBuf,
    pub status: CaseStatus,
    pub duration: Duration,
}

/// Totals and per-case reports.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cases: Vec<CaseReport>,
}

impl Summary {
    /// True when nothing failed (the exit status should then be zero).
    pub fn success(&self) -> bool {
        self.failed == 0
    }
    /// The last output line: `N passed, N failed, N skipped`.
    pub fn totals_line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }

    /// Counts a finished case, prints its lines (FORMAT.md: `PASS <name>`,
    /// `FAIL <name>` with the details indented, `SKIP <name> (<reason>)`, then
    /// its notes and, when `verbose`, its duration) and keeps its report.
    pub fn record(
        &mut self,
        report: CaseReport,
        notes: &[String],
        verbose: bool,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let name = &report.name;
        match &report.status {
            CaseStatus::Pass => {
                self.passed += 1;
                writeln!(out, "PASS {name}")?;
            }
            CaseStatus::Fail(details) => {
                self.failed += 1;
                writeln!(out, "FAIL {name}")?;
                for l in details.lines() {
                    writeln!(out, "  {l}")?;
                }
            }
            CaseStatus::Skip(reason) => {
                self.skipped += 1;
                writeln!(out, "SKIP {name} ({reason})")?;
            }
        }
        for n in notes {
            writeln!(out, "  note: {n}")?;
        }
        if verbose {
            writeln!(out, "  took {:.1}s", report.duration.as_secs_f64())?;
        }
        out.flush()?;
        self.cases.push(report);
        Ok(())
    }
}

/// Expected and observed matrices side by side; differing observed cells are
/// marked with `*`. Observed cells: `.` reachable, `X` blocked, `?` not
/// checked, `-` skipped.
pub fn side_by_side(e: &Expectation, observed: &[Vec<Option<Outcome>>]) -> String {
    let m = &e.matrix;
    let w0 = m
        .rows
        .iter()
        .map(|(p, _)| p.to_string().len())
        .chain([7])
        .max()
        .unwrap_or(7);
    let widths: Vec<usize> = m
        .columns
        .iter()
        .map(|c| c.to_string().len().max(2))
        .collect();
    let header = {
        let mut s = format!("{:<w0$}", "from\\to");
        for (c, w) in m.columns.iter().zip(&widths) {
            s += &format!(" {:>w$}", c.to_string());
        }
        s
    };
    let mut left = vec![header.clone()];
    let mut right = vec![header];
    for (r, (src, cells)) in m.rows.iter().enumerate() {
        let mut l = format!("{:<w0$}", src.to_string());
        let mut o = l.clone();
        for (c, w) in widths.iter().enumerate() {
            let exp = cells[c].symbol();
            l += &format!(" {:>w$}", format!("{exp} "));
            let (sym, diff) = match observed[r][c] {
                None => ('?', false),
                Some(Outcome::Skipped) => ('-', false),
                Some(Outcome::Reachable) => ('.', cells[c] == Cell::Blocked),
                Some(Outcome::Blocked) => ('X', cells[c] == Cell::Reachable),
            };
            o += &format!(" {:>w$}", format!("{sym}{}", if diff { '*' } else { ' ' }));
        }
        left.push(l);
        right.push(o);
    }
    let lw = left.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut s = format!("  {:<lw$}    {}\n", "expected", "observed (* = differs)");
    for (l, o) in left.iter().zip(&right) {
        s += &format!("  {l:<lw$}    {}\n", o.trim_end());
    }
    s
}
