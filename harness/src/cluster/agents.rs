//! The agents of the cluster, one per node: their directories, starting,
//! stopping and restarting them, waiting until each has programmed the last
//! published revision, and their deny logs and logs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use super::error::{ClusterError, LOG_LINES};
use super::Cluster;
use crate::agent::{get_ready, parse_json_lines, tail, NodeAgent, Readiness};
use crate::netns::{self, lock};

impl Cluster {
    /// Creates each node's directory (source, logs) and records its agent,
    /// not yet started.
    pub(super) fn prepare_agents(&mut self) -> Result<()> {
        for i in 1..=self.nodes {
            let dir = self.temp_dir.join(format!("n{i}"));
            let source_dir = dir.join("source");
            fs::create_dir_all(&source_dir)?;
            let pin_dir = Path::new(netns::PIN_ROOT).join(format!(
                "{}-n{i}",
                self.id.trim_start_matches(netns::NETNS_PREFIX)
            ));
            lock(&self.res).pin_dirs.push(pin_dir.clone());
            self.agents.push(NodeAgent {
                node: i,
                netns: self.node_ns[i - 1].clone(),
                source_dir,
                pin_dir,
                stdout_path: dir.join("deny-log.jsonl"),
                stderr_path: dir.join("agent.log"),
                child: None,
            });
        }
        Ok(())
    }

    /// Starts the agent on every node and waits until all report the current
    /// revision.
    pub fn start_agents(&mut self) -> Result<()> {
        for i in 1..=self.nodes {
            self.spawn_agent(i)?;
        }
        self.wait_programmed()
    }

    /// Starts the agent on one node (1-based) and waits for it.
    pub fn start_agent(&mut self, node: usize) -> Result<()> {
        self.spawn_agent(node)?;
        self.wait_programmed()
    }

    /// Replaces the extra arguments agents started from now on get (a restart
    /// with other flags, e.g. another attach mode).
    pub fn set_agent_args(&mut self, args: &[&str]) -> Result<()> {
        let cfg = self.agent_cfg.as_mut().ok_or(ClusterError::NoAgent)?;
        cfg.extra_args = args.iter().map(|s| s.to_string()).collect();
        Ok(())
    }

    /// Replaces the binary agents started from now on run (an upgrade to
    /// another build).
    pub fn set_agent_binary(&mut self, binary: &Path) -> Result<()> {
        let cfg = self.agent_cfg.as_mut().ok_or(ClusterError::NoAgent)?;
        cfg.binary = binary.to_path_buf();
        Ok(())
    }

    /// Starts the agent on one node without waiting for it (an agent that reads
    /// an API server, [`AgentConfig::kube`](crate::agent::AgentConfig::kube),
    /// knows nothing of this cluster's revisions).
    pub fn launch_agent(&mut self, node: usize) -> Result<()> {
        self.spawn_agent(node)
    }

    fn spawn_agent(&mut self, node: usize) -> Result<()> {
        let cfg = self.agent_cfg.clone().ok_or(ClusterError::NoAgent)?;
        let node_ip = self.node_ip(node)?;
        let a = self.agent_mut(node)?;
        let pid = a.start(&cfg, node_ip)?;
        lock(&self.res).agent_pids.insert(pid as i32);
        Ok(())
    }

    /// Stops the agent on one node (SIGTERM, SIGKILL after 10 s). Its pins
    /// stay, so a restarted agent can adopt them.
    pub fn stop_agent(&mut self, node: usize) -> Result<()> {
        let a = self.agent_mut(node)?;
        if let Some(pid) = a.stop(Duration::from_secs(10)) {
            lock(&self.res).agent_pids.remove(&(pid as i32));
        }
        Ok(())
    }

    /// Kills the agent on one node (SIGKILL, as a crash does). Its pins stay.
    pub fn kill_agent(&mut self, node: usize) -> Result<()> {
        let a = self.agent_mut(node)?;
        if let Some(pid) = a.kill() {
            lock(&self.res).agent_pids.remove(&(pid as i32));
        }
        Ok(())
    }

    /// Whether the agent on `node` is running.
    pub fn agent_running(&mut self, node: usize) -> bool {
        match self.agent_mut(node) {
            Ok(a) => a.child.is_some() && a.exited().is_none(),
            Err(_) => false,
        }
    }

    /// The process id of the running agent on `node`.
    pub fn agent_pid(&self, node: usize) -> Option<u32> {
        self.agent(node).ok()?.child.as_ref().map(|c| c.id())
    }

    fn agent_mut(&mut self, node: usize) -> Result<&mut NodeAgent, ClusterError> {
        self.agents
            .get_mut(node.wrapping_sub(1))
            .ok_or(ClusterError::NoNode(node))
    }

    fn agent(&self, node: usize) -> Result<&NodeAgent, ClusterError> {
        self.agents
            .get(node.wrapping_sub(1))
            .ok_or(ClusterError::NoNode(node))
    }

    /// Waits until every running agent reports the last published revision
    /// (timeout from the agent config, 30 s by default). Without running
    /// agents, returns at once.
    pub fn wait_programmed(&mut self) -> Result<()> {
        let Some(rev) = self.revision.clone() else {
            return Ok(());
        };
        let timeout = self
            .agent_cfg
            .as_ref()
            .map(|c| c.ready_timeout)
            .unwrap_or(Duration::from_secs(30));
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = self
            .agents
            .iter()
            .filter(|a| a.child.is_some())
            .map(|a| a.node)
            .collect();
        let mut last: BTreeMap<usize, String> = BTreeMap::new();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for node in pending {
                let a = &mut self.agents[node - 1];
                if let Some(status) = a.exited() {
                    return Err(ClusterError::AgentExited {
                        node,
                        status,
                        revision: rev,
                        log: tail(&a.stderr_path, LOG_LINES),
                    }
                    .into());
                }
                match get_ready(&a.netns) {
                    Ok(Readiness {
                        status: 200,
                        ready: true,
                        revision: Some(r),
                        ..
                    }) if r == rev => {}
                    Ok(r) => {
                        last.insert(node, format!("HTTP {} {}", r.status, r.body));
                        still.push(node);
                    }
                    Err(e) => {
                        last.insert(node, format!("no answer: {e:#}"));
                        still.push(node);
                    }
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let node = pending[0];
                return Err(ClusterError::NotProgrammed {
                    node,
                    revision: rev,
                    timeout,
                    last: last.remove(&node).unwrap_or_default(),
                    log: tail(&self.agents[node - 1].stderr_path, LOG_LINES),
                }
                .into());
            }
            // Polling interval for a fact (the revision), not a guess at timing.
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The agent's deny-log lines (its stdout) on `node`, parsed as JSON.
    pub fn deny_log_lines(&self, node: usize) -> Result<Vec<Value>> {
        parse_json_lines(&self.agent(node)?.stdout_path)
    }

    /// Deny-log lines of `node` after the first `*seen` ones; advances
    /// `*seen`. For streaming the log while traffic runs (the demo).
    pub fn new_deny_log_lines(&self, node: usize, seen: &mut usize) -> Result<Vec<Value>> {
        let all = self.deny_log_lines(node)?;
        let new = all.get(*seen..).map(<[Value]>::to_vec).unwrap_or_default();
        *seen = all.len().max(*seen);
        Ok(new)
    }

    /// Path of the agent's stdout (JSON deny-log lines) on `node`.
    pub fn deny_log_path(&self, node: usize) -> Result<PathBuf> {
        Ok(self.agent(node)?.stdout_path.clone())
    }

    /// Path of the agent's stderr log on `node`.
    pub fn agent_log_path(&self, node: usize) -> Result<PathBuf> {
        Ok(self.agent(node)?.stderr_path.clone())
    }

    /// The last `lines` lines of the agent's log on `node`.
    pub fn agent_log_tail(&self, node: usize, lines: usize) -> String {
        self.agent(node)
            .map(|a| tail(&a.stderr_path, lines))
            .unwrap_or_default()
    }

    /// The source directory the agent on `node` reads.
    pub fn source_dir(&self, node: usize) -> Result<PathBuf> {
        Ok(self.agent(node)?.source_dir.clone())
    }

    /// The pin directory passed to the agent on `node`.
    pub fn pin_dir(&self, node: usize) -> Result<PathBuf> {
        Ok(self.agent(node)?.pin_dir.clone())
    }
}
