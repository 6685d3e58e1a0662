//! The reachability vocabulary every part of the harness shares: the peers a
//! probe runs between (pods, nodes, external hosts), how a probe reaches a
//! pod, a probe itself, and the matrix of expected or observed outcomes in
//! the text form of tests/conformance/FORMAT.md.
//!
//! Scenario files, both cluster backends and the conformance runner speak in
//! these terms, so they live apart from all of them.

use std::fmt;

use anyhow::{anyhow, bail, Context, Result};

use crate::model::Transport;

/// A probe source or destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// `namespace/name`.
    Pod(String),
    /// 1-based node index (`node/1`).
    Node(usize),
    /// External host name without the `@`.
    External(String),
}

impl Peer {
    /// Parses `ns/pod`, `node/N` or `@name` (a `node/N` is a node, not a pod).
    pub fn parse(s: &str) -> Result<Peer> {
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                bail!("empty external name in {s:?}");
            }
            return Ok(Peer::External(name.to_string()));
        }
        if let Some(n) = s.strip_prefix("node/") {
            if let Ok(i) = n.parse::<usize>() {
                return Ok(Peer::Node(i));
            }
        }
        match s.split_once('/') {
            Some((ns, p)) if !ns.is_empty() && !p.is_empty() && !p.contains('/') => {
                Ok(Peer::Pod(s.to_string()))
            }
            _ => bail!("{s:?} is not a pod (ns/name), node (node/N) or external (@name)"),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pod(k) => f.write_str(k),
            Peer::Node(i) => write!(f, "node/{i}"),
            Peer::External(n) => write!(f, "@{n}"),
        }
    }
}

/// How a probe reaches a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// The ClusterIP of the pod's Service `s-<ns>-<pod>` (at the service port
    /// mapping to the container port).
    Service,
    /// The pod's IP.
    Pod,
}

impl Via {
    /// The scenario file's spelling: `service` or `pod`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Service => "service",
            Via::Pod => "pod",
        }
    }
}

/// A probe in cluster terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub from: Peer,
    pub to: Peer,
    /// Container port on the destination.
    pub port: u16,
    pub protocol: Transport,
    /// Ignored (treated as [`Via::Pod`]) when either end is an external or
    /// the destination is a node.
    pub via: Via,
}

/// A matrix cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// `.`
    Reachable,
    /// `X`
    Blocked,
    /// `?`
    Unchecked,
}

impl Cell {
    pub fn symbol(self) -> char {
        match self {
            Cell::Reachable => '.',
            Cell::Blocked => 'X',
            Cell::Unchecked => '?',
        }
    }
}

/// A reachability matrix: sources (rows) × destinations (columns).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub columns: Vec<Peer>,
    pub rows: Vec<(Peer, Vec<Cell>)>,
}

impl Matrix {
    /// Parses the text form (first line `from\to` + destinations, then one
    /// line per source). Entity existence is checked separately.
    pub fn parse(text: &str) -> Result<Matrix> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty());
        let (hl, header) = lines.next().ok_or_else(|| anyhow!("matrix is empty"))?;
        let mut head = header.split_whitespace();
        if head.next() != Some("from\\to") {
            bail!("matrix line {hl}: must start with the literal `from\\to`, found {header:?}");
        }
        let mut columns = Vec::new();
        for tok in head {
            let p =
                Peer::parse(tok).with_context(|| format!("matrix line {hl}: column {tok:?}"))?;
            if columns.contains(&p) {
                bail!("matrix line {hl}: destination {tok} listed twice");
            }
            columns.push(p);
        }
        if columns.is_empty() {
            bail!("matrix line {hl}: no destinations after `from\\to`");
        }
        let mut rows: Vec<(Peer, Vec<Cell>)> = Vec::new();
        for (ln, line) in lines {
            let mut toks = line.split_whitespace();
            let src = toks.next().unwrap_or_default();
            let p = Peer::parse(src).with_context(|| format!("matrix line {ln}: row {src:?}"))?;
            if rows.iter().any(|(r, _)| *r == p) {
                bail!("matrix line {ln}: source {src} listed twice");
            }
            let mut cells = Vec::new();
            for t in toks {
                cells.push(match t {
                    "." => Cell::Reachable,
                    "X" => Cell::Blocked,
                    "?" => Cell::Unchecked,
                    _ => bail!("matrix line {ln}: cell {t:?} is not one of `.`, `X`, `?`"),
                });
            }
            if cells.len() != columns.len() {
                bail!(
                    "matrix line {ln}: {} cells for {} destinations (row {src})",
                    cells.len(),
                    columns.len()
                );
            }
            rows.push((p, cells));
        }
        if rows.is_empty() {
            bail!("matrix has a header but no source rows");
        }
        Ok(Matrix { columns, rows })
    }

    /// Whether a cell is checked: not `?`, and not the diagonal when loopback
    /// is ignored.
    pub fn checked(&self, ignore_loopback: bool, r: usize, c: usize) -> bool {
        let (src, cells) = &self.rows[r];
        cells[c] != Cell::Unchecked && !(ignore_loopback && *src == self.columns[c])
    }

    /// The matrix in FORMAT.md syntax with aligned columns (for humans).
    pub fn to_aligned_string(&self) -> String {
        let w0 = self
            .rows
            .iter()
            .map(|(p, _)| p.to_string().len())
            .chain([7])
            .max()
            .unwrap_or(7);
        let widths: Vec<usize> = self.columns.iter().map(|c| c.to_string().len()).collect();
        let mut s = format!("{:<w0$}", "from\\to");
        for (c, w) in self.columns.iter().zip(&widths) {
            s += &format!(" {:>w$}", c.to_string());
        }
        for (r, cells) in &self.rows {
            s += &format!("\n{:<w0$}", r.to_string());
            for (cell, w) in cells.iter().zip(&widths) {
                s += &format!(" {:>w$}", cell.symbol());
            }
        }
        s
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "from\\to")?;
        for c in &self.columns {
            write!(f, " {c}")?;
        }
        for (r, cells) in &self.rows {
            write!(f, "\n{r}")?;
            for c in cells {
                write!(f, " {}", c.symbol())?;
            }
        }
        Ok(())
    }
}
