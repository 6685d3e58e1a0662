//! What the root-only harness tests share (each test file includes this
//! module with `mod common;`): the root check each of them starts with.

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
