//! The guest's initramfs: a newc cpio archive holding the init, the test
//! binaries, the host tools they run and the shared libraries those need.
use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Host binaries copied into the guest's /bin (with their libraries).
/// `iptables-restore` is the xtables multi-binary, which dispatches on its name.
const GUEST_TOOLS: &[&str] = &[
    "ip",
    "tc",
    "bridge",
    "sysctl",
    "iptables-restore",
    "ip6tables-restore",
];

/// Where iptables loads its extensions from (dlopen, so `ldd` cannot see them).
const XTABLES_LIBDIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// A newc cpio archive assembled in memory.
#[derive(Default)]
struct Cpio {
    /// path (no leading slash) -> (mode, contents)
    entries: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Cpio {
    fn dirs_for(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.entries
                .entry(acc.clone())
                .or_insert((0o040755, Vec::new()));
        }
    }
    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let path = path.trim_start_matches('/').to_string();
        self.dirs_for(&path);
        self.entries.insert(path, (0o100000 | mode, data));
    }
    fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(path, 0o755, data);
        Ok(())
    }
    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut ino = 1u32;
        let mut header = |out: &mut dyn Write, name: &str, mode: u32, size: usize| {
            let namesize = name.len() + 1;
            write!(
                out,
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
                0, 0, 1, 0, 0, 0, 0, 0, 0
            )?;
            ino += 1;
            out.write_all(name.as_bytes())?;
            out.write_all(&[0])?;
            out.write_all(&[0; 3][..(4 - (110 + namesize) % 4) % 4])
        };
        for (name, (mode, data)) in &self.entries {
            header(out, name, *mode, data.len())?;
            out.write_all(data)?;
            out.write_all(&[0; 3][..(4 - data.len() % 4) % 4])?;
        }
        header(out, "TRAILER!!!", 0, 0)
    }
}

/// Add `bin`'s shared libraries (as `ldd` names them) to the archive.
fn add_libs(cpio: &mut Cpio, bin: &Path) -> Result<()> {
    for lib in crate::image::shared_libraries(bin)? {
        let p = lib.to_string_lossy();
        if !cpio.entries.contains_key(p.trim_start_matches('/')) {
            cpio.host_file(&p, &lib)?;
        }
    }
    Ok(())
}

pub(super) fn build_initramfs(
    out: &Path,
    init: &Path,
    suites: &[(String, PathBuf, Vec<String>)],
    extra: &[(String, PathBuf)],
    modules: &[PathBuf],
) -> Result<()> {
    let mut cpio = Cpio::default();
    for d in ["proc", "sys", "dev", "tmp", "run", "root", "etc"] {
        cpio.entries.insert(d.into(), (0o040755, Vec::new()));
    }
    cpio.host_file("init", init)?;
    add_libs(&mut cpio, init)?;
    let mut list = String::new();
    for (guest, host) in extra {
        cpio.host_file(guest, host)?;
        add_libs(&mut cpio, host)?;
    }
    for (name, exe, args) in suites {
        // Test binaries are copied from the host; a guest path is already there.
        let guest = if exe.starts_with("/palisade/") {
            exe.to_string_lossy().trim_start_matches('/').to_string()
        } else {
            let guest = format!("palisade/tests/{name}");
            cpio.host_file(&guest, exe)?;
            add_libs(&mut cpio, exe)?;
            guest
        };
        list.push_str(&format!("{name}\t/{guest}"));
        for a in args {
            list.push('\t');
            list.push_str(a);
        }
        list.push('\n');
    }
    cpio.file("palisade/suites", 0o644, list.into_bytes());
    let mut mods = String::new();
    for m in modules {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("x.ko");
        let guest = format!("palisade/ko/{name}");
        cpio.file(&guest, 0o644, fs::read(m)?);
        mods.push_str(&format!("/{guest}\n"));
    }
    cpio.file("palisade/modules", 0o644, mods.into_bytes());
    for tool in GUEST_TOOLS {
        let host = crate::find_tool(tool)?;
        cpio.host_file(&format!("bin/{tool}"), &host)?;
        add_libs(&mut cpio, &host)?;
    }
    if let Ok(dir) = fs::read_dir(XTABLES_LIBDIR) {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "so") {
                cpio.host_file(&p.to_string_lossy(), &p)?;
            }
        }
    }
    if let Ok(protocols) = fs::read("/etc/protocols") {
        cpio.file("etc/protocols", 0o644, protocols);
    }
    let mut f = std::io::BufWriter::new(fs::File::create(out)?);
    cpio.write(&mut f)?;
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned() {
        let mut c = Cpio::default();
        c.file("a/bc", 0o644, b"hello".to_vec());
        let mut out = Vec::new();
        c.write(&mut out).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("a\0") && s.contains("a/bc\0") && s.contains("TRAILER!!!\0"));
    }
}
