//! The real agent, one per node: starting it inside the node's network
//! namespace, capturing its stdout (JSON deny-log lines) and stderr (logs) to
//! per-node files, stopping it, and asking its readiness endpoint which
//! revision of the source directory it has fully programmed.
//!
//! The agent enters the node namespace with setns(2) in the forked child
//! rather than through `ip netns exec`: `ip netns exec` also unshares the
//! mount namespace and remounts /sys, which hides the host's bpffs at
//! /sys/fs/bpf, so pins would live in a private mount and die with the agent,
//! defeating restart tests.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::netns::{in_netns, netns_path};

/// Where the agent serves readiness inside each node namespace.
pub const READY_ADDR: &str = "127.0.0.1:9464";

/// How to run the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Path of the `palisade-agent` binary.
    pub binary: PathBuf,
    /// Extra arguments appended after the harness's own.
    pub extra_args: Vec<String>,
    /// Extra environment (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// How long to wait for every agent to report a revision.
    pub ready_timeout: Duration,
    /// Read an API server (`--kube`; give `KUBECONFIG` in `env`) instead of the
    /// node's source directory. The cluster's revisions then mean nothing to
    /// the agent: start it with [`crate::Cluster::launch_agent`] and wait on
    /// its `/ready` yourself.
    pub kube: bool,
    /// How the agent is told the node's own links from pods' veths.
    pub uplinks: Uplinks,
    /// Serve the CNI plugin (`--cni-socket`, one socket per node, see
    /// [`crate::Cluster::cni_socket`]).
    pub cni: bool,
}

/// How the agent tells the node's own links (`eth0`, the external hosts'
/// `pale<k>`) from pods' veths; all are veths here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Uplinks {
    /// By name: `--uplink eth0 --uplink pale*`.
    #[default]
    Named,
    /// No `--uplink`: the agent's own rule finds them, given the node's
    /// address as `--node-ip` (as the DaemonSet gives `status.hostIP`).
    /// External hosts' veths are then taken for pods: use no externals.
    ByNodeIp,
}

impl AgentConfig {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        AgentConfig {
            binary: binary.into(),
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            kube: false,
            uplinks: Uplinks::default(),
            cni: false,
        }
    }
}

/// The agent binary to use by default: `$PALISADE_AGENT`, else the newer of
/// `<target dir>/release/palisade-agent` (what set-up, the demo and the tests
/// build) and `<target dir>/debug/palisade-agent` of this workspace
/// (`$CARGO_TARGET_DIR` honoured).
pub fn default_agent_path() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_AGENT") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    let built = |profile: &str| {
        let p = target.join(profile).join("palisade-agent");
        let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
        Some((t, p))
    };
    match (built("release"), built("debug")) {
        (Some(r), Some(d)) => std::cmp::max(r, d).1,
        (Some((_, p)), None) | (None, Some((_, p))) => p,
        (None, None) => target.join("release").join("palisade-agent"),
    }
}

/// Per-node agent state: paths, and the process while it runs.
pub(crate) struct NodeAgent {
    pub node: usize,
    pub netns: String,
    pub source_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    pub child: Option<Child>,
}

impl NodeAgent {
    /// Where this node's agent serves the CNI plugin, beside its source
    /// directory (not in it: the file source reads every file there).
    pub fn cni_socket(&self) -> PathBuf {
        self.source_dir.with_file_name("cni.sock")
    }

    /// Starts the agent; `node_ip` is the node's uplink address.
    pub fn start(&mut self, cfg: &AgentConfig, node_ip: IpAddr) -> Result<u32> {
        if self.child.is_some() {
            bail!("agent on node {} is already running", self.node);
        }
        if !cfg.binary.exists() {
            bail!(
                "agent binary {} does not exist (build it, or set PALISADE_AGENT)",
                cfg.binary.display()
            );
        }
        let ns_file = File::open(netns_path(&self.netns))
            .with_context(|| format!("open netns {}", self.netns))?;
        let open_append = |p: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("open {}", p.display()))
        };
        let stdout = open_append(&self.stdout_path)?;
        let mut stderr = open_append(&self.stderr_path)?;
        let _ = writeln!(
            stderr,
            "=== palisade-harness: starting agent on node-{} ===",
            self.node
        );
        let mut cmd = Command::new(&cfg.binary);
        cmd.arg("--node-name").arg(format!("node-{}", self.node));
        if cfg.kube {
            cmd.arg("--kube");
        } else {
            cmd.arg("--source-dir").arg(&self.source_dir);
        }
        cmd.arg("--ready-addr")
            .arg(READY_ADDR)
            .arg("--pin-dir")
            .arg(&self.pin_dir);
        match cfg.uplinks {
            // The node's uplink and the external hosts' links are veths like
            // the pods': name them, so the agent does not treat them as pods.
            Uplinks::Named => cmd.args(["--uplink", "eth0", "--uplink", "pale*"]),
            Uplinks::ByNodeIp => cmd.arg("--node-ip").arg(node_ip.to_string()),
        };
        if cfg.cni {
            cmd.arg("--cni-socket").arg(self.cni_socket());
        }
        cmd.args(&cfg.extra_args)
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Own process group: a terminal Ctrl-C reaches the harness, which
            // then stops agents in order, instead of racing them.
            .process_group(0);
        let fd = ns_file.as_raw_fd();
        // SAFETY: only async-signal-safe setns(2) runs between fork and exec;
        // `ns_file` outlives spawn().
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", cfg.binary.display()))?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    /// Sends SIGTERM without waiting (teardown signals every agent first so
    /// they shut down in parallel, then waits with [`NodeAgent::stop`]).
    pub fn signal_term(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) on our own child's pid, not yet reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the pid that was stopped.
    pub fn stop(&mut self, grace: Duration) -> Option<u32> {
        self.signal_term();
        let mut child = self.child.take()?;
        let pid = child.id();
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        Some(pid)
    }

    /// SIGKILL: no clean-up, as a crash or an OOM kill ends it.
    pub fn kill(&mut self) -> Option<u32> {
        let mut child = self.child.take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        Some(pid)
    }

    /// `Some(status)` when the agent process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut()?.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            _ => None,
        }
    }
}

/// The last `n` lines of a text file (empty when missing).
pub fn tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Parses JSON lines; non-JSON lines are skipped (a partial last line while
/// the agent is writing is not an error).
pub fn parse_json_lines(path: &Path) -> Result<Vec<Value>> {
    let mut s = String::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_string(&mut s)
                .with_context(|| format!("read {}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    }
    Ok(s.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .collect())
}

/// One answer of the readiness endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Readiness {
    pub status: u16,
    pub body: String,
    pub ready: bool,
    pub generation: Option<u64>,
    pub revision: Option<String>,
    /// Per resource, the highest resourceVersion programmed (kube source).
    pub revisions: BTreeMap<String, u64>,
}

/// `GET /ready` from inside `netns`.
pub fn get_ready(netns: &str) -> Result<Readiness> {
    in_netns(netns, || -> Result<Readiness> {
        let addr: SocketAddr = READY_ADDR.parse().map_err(|e| anyhow!("{e}"))?;
        let (status, body) = http_get(addr, "/ready")?;
        Ok(Readiness::parse(status, &body))
    })?
}

/// A tiny HTTP/1.0 GET: (status, body). The agent's endpoint is ours and simple,
/// and this keeps the harness (and `palisade-pod`) free of an HTTP stack.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // One write: a request split over segments may be read in pieces.
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer of {addr}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("malformed HTTP response from {addr}: {head:?}"))?;
    Ok((status, body.trim().to_string()))
}

impl Readiness {
    /// From the status and the JSON body of `GET /ready`.
    pub fn parse(status: u16, body: &str) -> Readiness {
        let v: Option<Value> = serde_json::from_str(body.trim()).ok();
        Readiness {
            status,
            body: body.trim().to_string(),
            ready: v
                .as_ref()
                .and_then(|v| v.get("ready"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            generation: v
                .as_ref()
                .and_then(|v| v.get("generation"))
                .and_then(Value::as_u64),
            revision: v
                .as_ref()
                .and_then(|v| v.get("revision"))
                .and_then(Value::as_str)
                .map(str::to_string),
            revisions: v
                .as_ref()
                .and_then(|v| v.get("revisions"))
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.parse().ok()?)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
