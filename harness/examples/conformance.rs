//! Runs conformance scenarios without xtask (handy while developing the
//! harness): `cargo run -p palisade-harness --example conformance --
//! [--family ipv4|ipv6] [--agent PATH | --no-agent] [-v] PATH...`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use palisade_harness::{default_agent_path, run_conformance, ConformanceOptions, Family};

fn main() -> Result<()> {
    let mut opts = ConformanceOptions {
        paths: Vec::new(),
        family: Family::Ipv4,
        agent: Some(default_agent_path()),
        verbose: false,
        topology: Default::default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--family" => match args.next() {
                Some(f) => opts.family = f.parse()?,
                None => bail!("--family needs a value"),
            },
            "--agent" => match args.next() {
                Some(p) => opts.agent = Some(PathBuf::from(p)),
                None => bail!("--agent needs a value"),
            },
            "--no-agent" => opts.agent = None,
            "-v" | "--verbose" => opts.verbose = true,
            _ => opts.paths.push(PathBuf::from(a)),
        }
    }
    if opts.paths.is_empty() {
        bail!("usage: conformance [--family ipv4|ipv6] [--agent PATH | --no-agent] [-v] PATH...");
    }
    let summary = run_conformance(opts)?;
    std::process::exit(if summary.success() { 0 } else { 1 });
}
