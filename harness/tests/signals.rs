//! A process holding a cluster is interrupted (SIGINT: it tears down and
//! exits 130) or killed (SIGKILL: the next start cleans up). The child is this
//! test binary re-run on `hold_cluster_child`, which run on its own checks that
//! a dropped cluster leaves no namespace. Needs root: `#[ignore]`d for plain
//! `cargo test`, run by `cargo xtask test`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use palisade_harness::*;

mod common;

/// The body of the child process of the tests below (`PALISADE_HOLD_CHILD`
/// set): builds a cluster, says `READY <id>` and holds it for 60 s. Run as a
/// test of its own it holds it for no time, and checks that dropping the
/// cluster removes its namespaces.
#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn hold_cluster_child() {
    common::require_root();
    let child = std::env::var_os("PALISADE_HOLD_CHILD").is_some();
    let mut spec = ClusterSpec::default_model(Family::Ipv4);
    spec.pods.truncate(3);
    let c = Cluster::build(&spec, ClusterOptions::default()).expect("build");
    let id = c.id().to_string();
    println!("READY {id}");
    assert!(
        !common::netns_with(&format!("{id}-")).is_empty(),
        "no namespace of {id}"
    );
    if child {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
    drop(c);
    assert!(
        common::netns_with(&format!("{id}-")).is_empty(),
        "a dropped cluster left namespaces: {:?}",
        common::netns_with(&format!("{id}-"))
    );
}

fn spawn_holder() -> (Child, String) {
    let exe = std::env::current_exe().expect("exe");
    let mut child = Command::new(exe)
        .args([
            "hold_cluster_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PALISADE_HOLD_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let out = child.stdout.take().expect("stdout");
    let mut id = String::new();
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        // libtest prints "test name ... " before the child's own output.
        if let Some((_, rest)) = line.split_once("READY ") {
            id = rest.trim().to_string();
            break;
        }
    }
    assert!(!id.is_empty(), "child never became ready");
    (child, id)
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn sigint_tears_down_and_exits_130() {
    common::require_root();
    let (mut child, id) = spawn_holder();
    assert!(!common::netns_with(&format!("{id}-")).is_empty());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(130), "{st}");
    assert!(common::netns_with(&format!("{id}-")).is_empty());
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn sigkill_leftovers_are_cleaned_by_the_next_start() {
    common::require_root();
    let (mut child, id) = spawn_holder();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !common::netns_with(&format!("{id}-")).is_empty(),
        "a killed run leaves its namespaces"
    );
    let removed = cleanup_leftovers();
    assert!(
        common::netns_with(&format!("{id}-")).is_empty(),
        "{removed:?}"
    );
    let tmp = std::env::temp_dir().join(format!(
        "palisade-harness-{}",
        id.trim_start_matches("pal-")
    ));
    assert!(!tmp.exists());
}
