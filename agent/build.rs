//! Builds the eBPF object (ebpf/) with aya-build; needs nightly rust-src and
//! bpf-linker on PATH (`cargo xtask setup` installs both).
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed=../common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "palisade-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
