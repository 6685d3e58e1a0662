//! Root-only: a process holding a cluster is interrupted (SIGINT: it tears
//! down and exits 130) or killed (SIGKILL: the next start cleans up). The
//! child is this test binary re-run on the ignored `hold_cluster_child` test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use palisade_harness::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn netns_with(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Not a test by itself: the body of the child process.
#[test]
#[ignore]
fn hold_cluster_child() {
    if std::env::var_os("PALISADE_HOLD_CHILD").is_none() {
        return;
    }
    let mut spec = ClusterSpec::default_model(Family::Ipv4);
    spec.pods.truncate(3);
    let c = Cluster::build(&spec, ClusterOptions::default()).expect("build");
    println!("READY {}", c.id());
    std::thread::sleep(std::time::Duration::from_secs(60));
    drop(c);
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
fn sigint_tears_down_and_exits_130() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (mut child, id) = spawn_holder();
    assert!(!netns_with(&format!("{id}-")).is_empty());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(130), "{st}");
    assert!(netns_with(&format!("{id}-")).is_empty());
}

#[test]
fn sigkill_leftovers_are_cleaned_by_the_next_start() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (mut child, id) = spawn_holder();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !netns_with(&format!("{id}-")).is_empty(),
        "a killed run leaves its namespaces"
    );
    let removed = cleanup_leftovers();
    assert!(netns_with(&format!("{id}-")).is_empty(), "{removed:?}");
    let tmp = std::env::temp_dir().join(format!(
        "palisade-harness-{}",
        id.trim_start_matches("pal-")
    ));
    assert!(!tmp.exists());
}
