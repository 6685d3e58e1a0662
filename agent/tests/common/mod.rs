//! Helpers shared by the root-only integration tests (each test file includes
//! this module with `mod common;`).

/// Moves the calling test thread into a fresh network namespace of its own and
/// makes the veth pair `a`/`b` there, both up; returns their ifindexes. The
/// namespace goes away with the thread, so nothing outlives the test.
pub fn private_veth(a: &str, b: &str) -> (u32, u32) {
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "these tests need root (run them through `cargo xtask test`)"
    );
    // SAFETY: unshare affects only this thread, which the test owns.
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNET) },
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    private_veth_here(a, b)
}

/// Another veth pair `a`/`b`, both up, in the namespace [`private_veth`] made.
#[allow(dead_code)] // not every test file that includes this module uses it
pub fn private_veth_here(a: &str, b: &str) -> (u32, u32) {
    for args in [
        vec!["link", "add", "name", a, "type", "veth", "peer", "name", b],
        vec!["link", "set", a, "up"],
        vec!["link", "set", b, "up"],
    ] {
        let out = std::process::Command::new("ip")
            .args(&args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let index = |name: &str| {
        let c = std::ffi::CString::new(name).expect("no NUL");
        // SAFETY: a valid C string.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(i, 0, "no ifindex for {name}");
        i
    };
    (index(a), index(b))
}
