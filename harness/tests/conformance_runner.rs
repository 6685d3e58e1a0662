//! The conformance runner end to end on the harness's own scenario files,
//! without an agent (no policy is enforced, so only cases that expect full
//! reachability pass). Checks the output format exactly. Needs root:
//! `#[ignore]`d for plain `cargo test`, run by `cargo xtask test`.

use std::path::PathBuf;

use palisade_harness::*;

mod common;

fn run(family: Family, files: &[&str]) -> (Summary, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let opts = ConformanceOptions {
        paths: files.iter().map(|f| dir.join(f)).collect(),
        family,
        agent: None,
        verbose: false,
        topology: Default::default(),
    };
    let mut out = Vec::new();
    let s = run_conformance_to(&opts, &mut out).expect("runner");
    (s, String::from_utf8_lossy(&out).into_owned())
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn runner_ipv4() {
    common::require_root();
    let (s, out) = run(
        Family::Ipv4,
        &[
            "default-open.yaml",
            "custom-cluster.yaml",
            "expect-blocked.yaml",
            "ipv6-only.yaml",
        ],
    );
    println!("{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.last().copied(), Some("2 passed, 1 failed, 1 skipped"));
    assert!(lines.contains(&"PASS harness self-check, default model, no policy"));
    assert!(lines.contains(&"PASS harness self-check, custom cluster with externals and nodes"));
    assert!(lines.contains(&"FAIL harness self-check, wrong expectation must fail"));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("SKIP harness self-check, ipv6 only (")));
    assert!(out.contains("step 1 of 1: port 80 TCP via service"));
    assert!(
        out.contains("X*") || out.contains(".*"),
        "differing cell marked"
    );
    // The note on skipped SCTP cells is there exactly when the kernel has no SCTP.
    assert_eq!(
        out.contains("note: 1 of 3 expectations skipped: SCTP"),
        !sctp_supported(),
        "{out}"
    );
    assert_eq!((s.passed, s.failed, s.skipped), (2, 1, 1));
    assert!(!s.success());
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn runner_ipv6_and_directory_order() {
    common::require_root();
    let (s, out) = run(Family::Ipv6, &[""]);
    println!("{out}");
    let names: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("PASS ") || l.starts_with("FAIL ") || l.starts_with("SKIP "))
        .collect();
    // Sorted by path: custom-cluster, default-open, expect-blocked, ipv6-only.
    assert!(names[0].contains("custom cluster"), "{names:?}");
    assert!(names[1].contains("default model"), "{names:?}");
    assert!(
        names[2].starts_with("SKIP") && names[2].contains("not valid for ipv6"),
        "{names:?}"
    );
    assert!(
        names[3].starts_with("PASS") && names[3].contains("ipv6 only"),
        "{names:?}"
    );
    assert_eq!((s.passed, s.failed, s.skipped), (3, 0, 1));
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn invalid_files_fail_with_their_path() {
    common::require_root();
    let dir = std::env::temp_dir().join(format!("palisade-runner-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("bad.yaml"), "name: bad\nsteps:\n  - expect:\n      - port: 80\n        protcol: TCP\n        matrix: |\n          from\\to x/a\n          x/b .\n").expect("write");
    std::fs::write(dir.join("not-a-case.txt"), "ignored").expect("write");
    let opts = ConformanceOptions {
        paths: vec![dir.clone()],
        family: Family::Ipv4,
        agent: None,
        verbose: false,
        topology: Default::default(),
    };
    let mut out = Vec::new();
    let s = run_conformance_to(&opts, &mut out).expect("runner");
    let out = String::from_utf8_lossy(&out).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    println!("{out}");
    assert_eq!((s.passed, s.failed, s.skipped), (0, 1, 0));
    assert!(out.contains("bad.yaml") && out.contains("protcol"), "{out}");
    assert_eq!(out.lines().last(), Some("0 passed, 1 failed, 0 skipped"));
}
