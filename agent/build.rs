//! Builds the eBPF object (ebpf/) with aya-build; needs nightly rust-src and
//! bpf-linker on PATH (`cargo xtask setup` installs both).
use anyhow::{anyhow, Context as _};
use aya_build::cargo_metadata;

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "palisade-ebpf")
        .ok_or_else(|| anyhow!("palisade-ebpf package not found"))?;
    aya_build::build_ebpf([ebpf_package], aya_build::Toolchain::default())
}
