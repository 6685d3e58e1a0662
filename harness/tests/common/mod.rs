//! What the root-only harness tests share (each test file includes this
//! module with `mod common;`): the root check each of them starts with, and
//! the network namespaces present.

/// Fails the calling test at once, saying how to run it, unless it runs as
/// root. Every test that builds network namespaces is `#[ignore]`d (plain
/// `cargo test` lists it as ignored; `cargo xtask test` passes
/// `--include-ignored`) and calls this first, so run without root it fails
/// with this message rather than somewhere deep inside.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces), not uid {euid}: run it through \
         `cargo xtask test`, or as root with `cargo test -- --include-ignored`"
    );
}

/// The network namespaces whose names start with `prefix`.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn netns_with(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}
