//! The conformance runner: every scenario file runs on its own freshly built
//! cluster (sanity check, agents, steps, probes), and the results are printed
//! exactly as FORMAT.md specifies — `PASS <name>` / `FAIL <name>` /
//! `SKIP <name> (<reason>)` per case, details after a failure, and a last line
//! `N passed, N failed, N skipped`.
//!
//! Files: `runner` runs the cases, `backend` is what a cluster must offer the
//! runner ([`CaseCluster`]), `offline` a backend that judges probes from the
//! objects alone ([`OfflineCluster`]), `report` is what the run prints.

mod backend;
mod offline;
mod report;
mod runner;

pub use self::backend::{Built, CaseCluster};
pub use self::offline::{Judge, OfflineCluster, OfflineConnection};
pub use self::report::{side_by_side, CaseReport, CaseStatus, Summary};
pub use self::runner::{
    run_conformance, run_conformance_to, run_scenarios, ConformanceOptions, RunSettings,
};
