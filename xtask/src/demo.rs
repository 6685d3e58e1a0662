//! `cargo xtask demo`: a three-tier app on a 2-node namespace cluster, policies
//! applied step by step, the connectivity matrix after each, and the agents' deny
//! log lines as blocked attempts happen.
use std::path::Path;

use anyhow::Result;

pub fn run(_agent: &Path) -> Result<()> {
    anyhow::bail!("demo not written yet")
}
