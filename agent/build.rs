//! Builds the eBPF object (ebpf/) with aya-build; needs nightly rust-src and
//! bpf-linker (`cargo xtask setup` installs both, bpf-linker under
//! `~/.cache/palisade/bpf-linker/bin`, which is searched after PATH).
use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed=../common/src");
    // The ABI of the test layout (common/build.rs): the object must match it.
    println!("cargo:rerun-if-env-changed=PALISADE_TEST_LAYOUT");
    let path = env::var_os("PATH").unwrap_or_default();
    let on_path = env::split_paths(&path).any(|d| d.join("bpf-linker").is_file());
    if !on_path {
        let cached = env::var_os("HOME")
            .map(PathBuf::from)
            .map(|h| h.join(".cache/palisade/bpf-linker/bin"))
            .filter(|d| d.join("bpf-linker").is_file());
        let Some(dir) = cached else {
            anyhow::bail!(
                "bpf-linker not found on PATH nor in ~/.cache/palisade/bpf-linker/bin: run `cargo xtask setup` (it builds it there)"
            );
        };
        let joined = env::join_paths(std::iter::once(dir).chain(env::split_paths(&path)))?;
        // SAFETY (edition 2021: safe): a build script is single-threaded here;
        // the nested cargo that aya-build starts inherits it.
        env::set_var("PATH", joined);
    }
    // aya-build forwards every line the nested cargo prints as a cargo warning,
    // which cargo then replays on every build: keep that cargo quiet (errors
    // still print).
    env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "palisade-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
