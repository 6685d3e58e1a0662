//! `cargo xtask image`: the agent's container image, built from host files only.
//!
//! Owns the image build context: [`stage`] copies the release agent, `palisade-cni`
//! (the CNI plugin the init container installs), `palisade-pod` (what the pods of
//! `cargo xtask kind e2e` run) and the shared libraries they link
//! (as `ldd` names them) into a directory that `deploy/Dockerfile` (`FROM scratch`)
//! packages, so the build pulls nothing.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// The image `deploy/daemonset.yaml` runs.
pub const IMAGE: &str = "palisade-agent:dev";

pub fn dockerfile() -> PathBuf {
    crate::workspace_root().join("deploy/Dockerfile")
}

pub fn context_dir() -> PathBuf {
    crate::target_dir().join("image")
}

/// The programs the agent runs (iproute2, for interface discovery and netlink
/// filter clean-up), staged at `/usr/sbin` in the image with their libraries.
/// A test derives this list from the agent's `Command::new` calls.
pub const AGENT_TOOLS: &[&str] = &["bridge", "ip", "tc"];

/// Stage the build context for `agent` and `pod_tool` in `ctx` (emptied first).
pub fn stage(agent: &Path, cni: &Path, pod_tool: &Path, ctx: &Path) -> Result<()> {
    if ctx.exists() {
        std::fs::remove_dir_all(ctx).with_context(|| format!("emptying {}", ctx.display()))?;
    }
    let rootfs = ctx.join("rootfs");
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    std::fs::copy(agent, ctx.join("palisade-agent"))
        .with_context(|| format!("copying {}", agent.display()))?;
    std::fs::copy(pod_tool, ctx.join("palisade-pod"))
        .with_context(|| format!("copying {}", pod_tool.display()))?;
    std::fs::copy(cni, ctx.join("palisade-cni"))
        .with_context(|| format!("copying {}", cni.display()))?;
    let mut libs = shared_libraries(agent)?;
    libs.extend(shared_libraries(cni)?);
    libs.extend(shared_libraries(pod_tool)?);
    let sbin = rootfs.join("usr/sbin");
    std::fs::create_dir_all(&sbin).with_context(|| format!("creating {}", sbin.display()))?;
    for name in AGENT_TOOLS {
        let tool = crate::find_tool(name)
            .with_context(|| format!("(Debian package iproute2) the agent runs {name}"))?;
        std::fs::copy(&tool, sbin.join(name))
            .with_context(|| format!("copying {}", tool.display()))?;
        libs.extend(shared_libraries(&tool)?);
    }
    libs.sort();
    libs.dedup();
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let dst = rootfs.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // fs::copy follows symlinks: the image gets the real file at the path the
        // loader asks for.
        std::fs::copy(&lib, &dst).with_context(|| format!("copying {}", lib.display()))?;
    }
    Ok(())
}

/// The absolute paths `ldd` resolves for `bin` (none for a static binary).
pub(crate) fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd (Debian package libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` give paths; `linux-vdso.so.1 (0x...)` is
/// the kernel's and has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Sources of the Dockerfile's COPY/ADD instructions.
fn copy_sources(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        let Some(instr) = words.next() else { continue };
        if !matches!(instr.to_ascii_uppercase().as_str(), "COPY" | "ADD") {
            continue;
        }
        let args: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        if let Some((_dest, srcs)) = args.split_last() {
            out.extend(srcs.iter().map(|s| s.to_string()));
        }
    }
    out
}

/// Build the release agent, stage the context, and `docker build` where an engine
/// answers.
pub fn image() -> Result<()> {
    let agent = crate::build_agent()?;
    let pod_tool = crate::build_pod_tool()?;
    let cni = crate::build_cni()?;
    let ctx = context_dir();
    crate::step("image: staging the build context");
    stage(&agent, &cni, &pod_tool, &ctx)?;
    let text = std::fs::read_to_string(dockerfile()).context("reading deploy/Dockerfile")?;
    for src in copy_sources(&text) {
        if !ctx.join(&src).exists() {
            bail!("deploy/Dockerfile copies {src}, which the staging did not produce");
        }
    }
    eprintln!("staged {}", ctx.display());
    let engine = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    let answers = matches!(&engine, Ok(o) if o.status.success());
    if !answers {
        bail!(
            "no Docker engine answers here (`docker version` failed), so the image was not built.\n\
             The context is staged; where Docker runs:\n  docker build -f {} -t {IMAGE} {}",
            dockerfile().display(),
            ctx.display()
        );
    }
    crate::step("image: docker build");
    let status = Command::new("docker")
        .args(["build", "-t", IMAGE, "-f"])
        .arg(dockerfile())
        .arg(&ctx)
        .status()
        .context("running docker build")?;
    if !status.success() {
        bail!("docker build failed (see above)");
    }
    eprintln!("built {IMAGE}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program the agent's code runs is staged, and nothing else.
    #[test]
    fn agent_tools_are_what_the_agent_runs() {
        fn walk(dir: &Path, out: &mut std::collections::BTreeSet<String>) {
            for e in std::fs::read_dir(dir).expect("agent/src").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).expect("source");
                    for part in text.split("Command::new(\"").skip(1) {
                        if let Some((name, _)) = part.split_once('"') {
                            out.insert(name.to_string());
                        }
                    }
                }
            }
        }
        let mut run = std::collections::BTreeSet::new();
        walk(&crate::workspace_root().join("agent/src"), &mut run);
        let staged: std::collections::BTreeSet<String> =
            AGENT_TOOLS.iter().map(|s| s.to_string()).collect();
        assert_eq!(run, staged);
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    /// The Dockerfile references only what `stage` produces, and pulls nothing.
    #[test]
    fn dockerfile_uses_only_staged_files() {
        let text = std::fs::read_to_string(dockerfile()).expect("deploy/Dockerfile");
        let from: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
            .collect();
        assert_eq!(from, ["FROM scratch"], "no base image can be pulled here");

        // Stage with a stand-in for the agent: any dynamically linked host binary
        // exercises the same ldd path.
        let ctx = std::env::temp_dir().join(format!("palisade-image-test-{}", std::process::id()));
        let stand_in = Path::new("/bin/true");
        stage(
            stand_in,
            Path::new("/bin/true"),
            Path::new("/bin/false"),
            &ctx,
        )
        .expect("stage");
        let sources = copy_sources(&text);
        assert!(!sources.is_empty());
        for s in &sources {
            assert!(!s.contains("://"), "{s}: remote source");
            assert!(ctx.join(s).exists(), "{s}: not produced by the staging");
        }
        assert!(
            ctx.join("rootfs")
                .read_dir()
                .expect("rootfs")
                .next()
                .is_some(),
            "the libraries of a dynamic binary are staged"
        );
        let entry = text
            .lines()
            .find(|l| l.starts_with("ENTRYPOINT"))
            .expect("ENTRYPOINT");
        assert!(entry.contains("\"/palisade-agent\""));
        assert!(sources.iter().any(|s| s == "palisade-agent"));
        assert!(
            sources.iter().any(|s| s == "palisade-cni"),
            "the init container runs /palisade-cni install"
        );
        assert!(
            sources.iter().any(|s| s == "palisade-pod"),
            "kind e2e pods run /palisade-pod from this image"
        );
        for tool in AGENT_TOOLS {
            assert!(
                ctx.join("rootfs/usr/sbin").join(tool).is_file(),
                "{tool} is staged"
            );
        }
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("ENV PATH="))
            .expect("ENV PATH (a scratch image has none)");
        assert!(path.split(':').any(|d| d == "/usr/sbin"), "{path}");
        let _ = std::fs::remove_dir_all(&ctx);
    }
}
