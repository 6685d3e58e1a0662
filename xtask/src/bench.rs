//! `cargo xtask bench` and `cargo xtask soak`: the benchmark examples of the
//! agent, policy and harness crates run in release mode (the harness ones
//! against the release agent), and the soak followed by the packet fuzz.
use anyhow::{bail, Result};

use crate::{build_agent, cargo, run, step};

/// `cargo xtask soak`: the soak on a namespace cluster, then the packet fuzz.
pub fn soak(quick: bool) -> Result<()> {
    let agent = build_agent()?;
    step("soak: restarts and changes under traffic");
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "palisade-harness",
        "--example",
        "soak",
        "--",
    ]);
    if quick {
        cmd.arg("--quick");
    }
    cmd.env("PALISADE_AGENT", &agent);
    run(&mut cmd, "soak", "See the table above.")?;
    let frames = if quick { 20_000 } else { 1_000_000 };
    step(&format!("soak: packet fuzz, {frames} frames"));
    run(
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "palisade-agent",
                "--test",
                "fuzz",
                "--",
                "--include-ignored",
                "--nocapture",
            ])
            .env("PALISADE_FUZZ_FRAMES", frames.to_string()),
        "packet fuzz",
        "See the mismatches above (PALISADE_FUZZ_SEED reproduces a run).",
    )
}

pub fn bench(part: &str, quick: bool, rounds: Option<u32>) -> Result<()> {
    const PARTS: &[(&str, &str, &str)] = &[
        ("datapath", "palisade-agent", "bench_datapath"),
        ("conntrack", "palisade-agent", "bench_conntrack"),
        ("policy", "palisade-policy", "bench"),
        ("e2e", "palisade-harness", "bench_e2e"),
        ("control", "palisade-harness", "bench_control"),
        ("events", "palisade-harness", "bench_events"),
    ];
    let parts: Vec<&(&str, &str, &str)> = if part == "all" {
        PARTS.iter().collect()
    } else {
        match PARTS.iter().find(|(name, _, _)| *name == part) {
            Some(p) => vec![p],
            None => bail!(
                "unknown benchmark part {part:?}; available: datapath, conntrack, policy, e2e, control, events, all"
            ),
        }
    };
    // The harness parts run the real agent (release build).
    let mut agent = None;
    for (name, pkg, example) in parts {
        step(&format!("bench: {name}"));
        let mut cmd = cargo();
        cmd.args(["run", "--release", "-p", pkg, "--example", example, "--"]);
        if quick {
            cmd.arg("--quick");
        }
        if let (Some(n), "e2e") = (rounds, *name) {
            cmd.args(["--rounds", &n.to_string()]);
        }
        if *pkg == "palisade-harness" {
            if agent.is_none() {
                agent = Some(build_agent()?);
            }
            if let Some(a) = &agent {
                cmd.env("PALISADE_AGENT", a);
            }
        }
        run(
            &mut cmd,
            &format!("{name} benchmark"),
            "See the error above.",
        )?;
    }
    Ok(())
}
