//! Helpers shared by the root-only integration tests (each test file includes
//! this module with `mod common;`): the root check every such test starts
//! with, veth pairs in a private network namespace, and the agent binary and
//! namespace clusters the cluster tests run it on.

/// Fails the calling test at once, saying how to run it, unless it runs as
/// root. Every test that needs BPF or network namespaces is `#[ignore]`d (plain
/// `cargo test` lists it as ignored; `cargo xtask test` and the VM runner pass
/// `--include-ignored`) and calls this first, so run without root it fails
/// with this message rather than somewhere deep inside.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (BPF, network namespaces), not uid {euid}: run it through \
         `cargo xtask test`, or as root with `cargo test -- --include-ignored`"
    );
}

/// Runs `bin args` (in the calling thread's network namespace) and returns its
/// stdout; fails the test with its stderr when it exits non-zero.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn cmd(bin: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {bin}: {e}"));
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Moves the calling test thread into a fresh network namespace of its own and
/// makes the veth pair `a`/`b` there, both up; returns their ifindexes. The
/// namespace goes away with the thread, so nothing outlives the test.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn private_veth(a: &str, b: &str) -> (u32, u32) {
    require_root();
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
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn private_veth_here(a: &str, b: &str) -> (u32, u32) {
    cmd(
        "ip",
        &["link", "add", "name", a, "type", "veth", "peer", "name", b],
    );
    cmd("ip", &["link", "set", a, "up"]);
    cmd("ip", &["link", "set", b, "up"]);
    let index = |name: &str| {
        let c = std::ffi::CString::new(name).expect("no NUL");
        // SAFETY: a valid C string.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        assert_ne!(i, 0, "no ifindex for {name}");
        i
    };
    (index(a), index(b))
}

/// The agent binary the root-only tests run: `$PALISADE_AGENT` (the release
/// build in `cargo xtask test`), else the one cargo built for this test.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn agent_binary() -> std::path::PathBuf {
    std::env::var_os("PALISADE_AGENT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_BIN_EXE_palisade-agent")))
}

/// The agent's config for the cluster tests: `agent_args` after the harness's
/// own, uplinks told as `uplinks` says.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn agent_config(
    agent_args: &[&str],
    uplinks: palisade_harness::Uplinks,
) -> palisade_harness::AgentConfig {
    let mut agent = palisade_harness::AgentConfig::new(agent_binary());
    agent.extra_args = agent_args.iter().map(|s| s.to_string()).collect();
    agent.uplinks = uplinks;
    agent
}

/// The default model (IPv4, ptp-style nodes) with `agent` started on every node.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn cluster_of(agent: palisade_harness::AgentConfig) -> palisade_harness::Cluster {
    let mut c = palisade_harness::Cluster::build(
        &palisade_harness::ClusterSpec::default_model(palisade_harness::Family::Ipv4),
        palisade_harness::ClusterOptions {
            agent: Some(agent),
            keep_temp: false,
            ..Default::default()
        },
    )
    .expect("build cluster");
    c.start_agents().expect("start agents");
    c
}

/// [`cluster_of`] with `agent_args` and named uplinks, programmed once.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn cluster_with(agent_args: &[&str]) -> palisade_harness::Cluster {
    let mut c = cluster_of(agent_config(agent_args, palisade_harness::Uplinks::Named));
    c.sync().expect("agents programmed");
    c
}
