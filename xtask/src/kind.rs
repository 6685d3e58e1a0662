//! `cargo xtask kind up|deploy|e2e|down`: a kind cluster running Palisade, and the
//! conformance scenarios run against it.
//!
//! Needs docker, kind and kubectl on PATH. None of this has run on the machines
//! this project is developed on (no Docker engine, no registry for kind's node
//! images); the manifests it applies are checked by agent/tests/deploy.rs, the
//! objects it creates per case and the pod tool by the harness's tests.
use std::{
    io::Write,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use palisade_harness::{
    kube::{check_cni_does_not_enforce, parse_nodes, run_kube_conformance, KubeOptions, Kubectl},
    Family, RunSettings,
};
use serde_json::{json, Value};

pub const CLUSTER: &str = "palisade";

fn context() -> String {
    format!("kind-{CLUSTER}")
}

fn tool(name: &str) -> Result<Command> {
    // `kubectl version` alone also asks the current context's server.
    let args: &[&str] = if name == "kubectl" {
        &["version", "--client"]
    } else {
        &["version"]
    };
    let found = Command::new(name)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        bail!("`{name} version` failed: install {name} (and a running Docker engine) first");
    }
    Ok(Command::new(name))
}

fn check(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed (see above)");
    }
    Ok(())
}

/// `kubectl --context kind-palisade ARGS`, its output shown; fails naming `what`.
fn kubectl(args: &[&str], what: &str) -> Result<()> {
    check(
        tool("kubectl")?.args(["--context", &context()]).args(args),
        what,
    )
}

fn cluster_exists() -> Result<bool> {
    let out = tool("kind")?
        .args(["get", "clusters"])
        .output()
        .context("running kind get clusters")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == CLUSTER))
}

pub fn up() -> Result<()> {
    if cluster_exists()? {
        eprintln!("kind cluster {CLUSTER} exists; not creating it again");
    } else {
        let config = crate::workspace_root().join("deploy/kind-config.yaml");
        check(
            tool("kind")?
                .args(["create", "cluster", "--name", CLUSTER, "--config"])
                .arg(config),
            "kind create cluster",
        )?;
    }
    pod_network()?;
    kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            "--timeout=300s",
        ],
        "kubectl wait for the nodes",
    )
}

/// (name, pod CIDR, IPv4 address) of every node, from `kubectl get nodes -o
/// json`; a kind node's name is also its container's.
fn routed_nodes(list: &Value) -> Result<Vec<(String, String, String)>> {
    parse_nodes(list)?
        .into_iter()
        .map(|n| {
            let cidr = n
                .pod_cidr
                .ok_or_else(|| anyhow!("node {} has no spec.podCIDR yet", n.name))?;
            let ip = n
                .addresses
                .into_iter()
                .find(IpAddr::is_ipv4)
                .ok_or_else(|| anyhow!("node {} has no IPv4 InternalIP", n.name))?;
            Ok((n.name, cidr, ip.to_string()))
        })
        .collect()
}

/// The CNI configuration of one node: ptp veths (one host route per pod, which
/// is what the agent discovers pods by) with addresses from the node's pod CIDR,
/// no masquerade (pod addresses stay visible to policy across nodes). With
/// `palisade`, `palisade-cni` last: a pod starts only once the node's agent
/// enforces its interface (the DaemonSet installs the plugin; while no agent
/// runs, new pods wait).
fn cni_config(pod_cidr: &str, palisade: bool) -> Value {
    let mut c = json!({
        "cniVersion": "0.4.0",
        "name": "palisade-ptp",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": false,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    if let (true, Some(plugins)) = (palisade, c["plugins"].as_array_mut()) {
        plugins.push(json!({"type": "palisade-cni"}));
    }
    c
}

/// Writes every node's conflist: `palisade` says whether `palisade-cni` ends
/// the chain.
fn write_cni_configs(nodes: &[(String, String, String)], palisade: bool) -> Result<()> {
    for (name, cidr, _) in nodes {
        let conf = serde_json::to_string_pretty(&cni_config(cidr, palisade))?;
        docker_exec(
            name,
            &[
                "sh",
                "-c",
                "mkdir -p /etc/cni/net.d && cat > /etc/cni/net.d/10-palisade-ptp.conflist.tmp && mv /etc/cni/net.d/10-palisade-ptp.conflist.tmp /etc/cni/net.d/10-palisade-ptp.conflist",
            ],
            Some(&conf),
        )?;
    }
    Ok(())
}

fn docker_exec(node: &str, args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut cmd = tool("docker")?;
    cmd.arg("exec");
    if stdin.is_some() {
        cmd.arg("-i");
    }
    let mut child = cmd
        .arg(node)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .with_context(|| format!("docker exec {node}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("docker exec {node} {}: {st}", args.join(" "));
    }
    Ok(())
}

/// Pod networking without kindnet: every node gets the ptp CNI configuration for
/// its pod CIDR and a route to every other node's pod CIDR through that node.
fn pod_network() -> Result<()> {
    crate::step("kind: bpffs and pod networking (ptp CNI, routes between nodes; no policy)");
    let k = Kubectl::new(Some(context()));
    // The controller manager assigns pod CIDRs shortly after a node registers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let nodes = loop {
        match routed_nodes(&k.json(&["get", "nodes"])?) {
            Ok(n) => break n,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting: {e}");
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    };
    for (name, _, _) in &nodes {
        // systemd does not mount bpffs inside a container, and the agent pins
        // its programs and maps there. Shared, so that the DaemonSet's
        // HostToContainer mount sees it.
        docker_exec(
            name,
            &[
                "sh",
                "-c",
                "[ \"$(stat -f -c %T /sys/fs/bpf)\" = bpf_fs ] || mount -t bpf bpf /sys/fs/bpf; mount --make-shared /sys/fs/bpf",
            ],
            None,
        )?;
        for (_, other_cidr, other_ip) in nodes.iter().filter(|o| &o.0 != name) {
            docker_exec(
                name,
                &["ip", "route", "replace", other_cidr, "via", other_ip],
                None,
            )?;
        }
    }
    // Without palisade-cni until the agent is deployed: the check that the
    // cluster alone enforces nothing needs pods before Palisade runs.
    let palisade = deployed(&k)?;
    write_cni_configs(&nodes, palisade)
}

fn deployed(k: &Kubectl) -> Result<bool> {
    let out = k.run(
        &[
            "-n",
            "kube-system",
            "get",
            "daemonset",
            "palisade-agent",
            "--ignore-not-found",
            "-o",
            "name",
        ],
        None,
    )?;
    Ok(!out.trim().is_empty())
}

pub fn deploy() -> Result<()> {
    crate::image::image()?;
    // Through an archive: `kind load docker-image` fails on images whose
    // manifest lists attestations (BuildKit's default provenance).
    let archive = crate::image::context_dir().join("palisade-agent.tar");
    check(
        tool("docker")?
            .args(["save", "-o"])
            .arg(&archive)
            .arg(crate::image::IMAGE),
        "docker save",
    )?;
    check(
        tool("kind")?
            .args(["load", "image-archive"])
            .arg(&archive)
            .args(["--name", CLUSTER]),
        "kind load image-archive",
    )?;
    let k = Kubectl::new(Some(context()));
    if deployed(&k)? {
        eprintln!(
            "palisade-agent is deployed already: the CNI check runs only before the first deploy"
        );
    } else {
        crate::step("kind: checking that the cluster's CNI does not enforce NetworkPolicy");
        let opts = KubeOptions {
            context: Some(context()),
            image: crate::image::IMAGE.into(),
            settle: Duration::from_secs(10),
            ..KubeOptions::default()
        };
        check_cni_does_not_enforce(&opts, Family::Ipv4)?;
        eprintln!("a deny-all policy blocked nothing without Palisade: good");
    }
    let deploy_dir = crate::workspace_root().join("deploy");
    kubectl(
        &["apply", "-k", &deploy_dir.to_string_lossy()],
        "kubectl apply -k deploy/",
    )?;
    // A new image under the same tag: restart so every node runs it.
    kubectl(
        &[
            "-n",
            "kube-system",
            "rollout",
            "restart",
            "ds/palisade-agent",
        ],
        "kubectl rollout restart",
    )?;
    // Ready means every node's agent has programmed its first full state.
    kubectl(
        &[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "ds/palisade-agent",
            "--timeout=300s",
        ],
        "kubectl rollout status",
    )?;
    // The agents run and the plugin is installed: from now on a pod starts
    // only once its node's agent enforces it.
    crate::step("kind: palisade-cni at the end of every node's CNI chain");
    let nodes = routed_nodes(&k.json(&["get", "nodes"])?)?;
    write_cni_configs(&nodes, true)
}

/// The conformance scenarios on the kind cluster (deployed first by the caller).
pub fn e2e(paths: &[PathBuf], sctp: bool, settle: u64, verbose: bool) -> Result<()> {
    crate::step("kind: conformance scenarios on the real cluster");
    // deploy/kind-config.yaml makes an IPv4 cluster.
    let settings = RunSettings {
        family: Family::Ipv4,
        sctp,
        enforced: true,
        verbose,
    };
    let opts = KubeOptions {
        context: Some(context()),
        image: crate::image::IMAGE.into(),
        settle: Duration::from_secs(settle),
        ..KubeOptions::default()
    };
    let stdout = std::io::stdout();
    let summary = run_kube_conformance(paths, &settings, &opts, &mut stdout.lock())?;
    if summary.failed > 0 {
        bail!("{} conformance case(s) failed on kind", summary.failed);
    }
    Ok(())
}

pub fn down() -> Result<()> {
    check(
        tool("kind")?.args(["delete", "cluster", "--name", CLUSTER]),
        "kind delete cluster",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_give_pod_cidrs_and_addresses() {
        let list = json!({"items": [
            {"metadata": {"name": "palisade-worker"},
             "spec": {"podCIDR": "10.244.1.0/24"},
             "status": {"addresses": [{"type": "Hostname", "address": "palisade-worker"},
                                      {"type": "InternalIP", "address": "172.18.0.3"}]}},
        ]});
        assert_eq!(
            routed_nodes(&list).expect("parses"),
            [(
                "palisade-worker".to_string(),
                "10.244.1.0/24".to_string(),
                "172.18.0.3".to_string()
            )]
        );
        let no_cidr = json!({"items": [{"metadata": {"name": "n"}, "status": {}}]});
        assert!(routed_nodes(&no_cidr).is_err());
    }

    /// The pod subnet of the kind config is what the CNI hands out from, per node.
    #[test]
    fn cni_config_is_ptp_with_host_local_ranges_and_no_masquerade() {
        let c = cni_config("10.244.2.0/24", true);
        assert_eq!(c["plugins"][0]["type"], "ptp");
        let last = c["plugins"].as_array().and_then(|p| p.last()).cloned();
        assert_eq!(last.map(|p| p["type"].clone()), Some("palisade-cni".into()));
        let before = cni_config("10.244.2.0/24", false);
        assert!(!before.to_string().contains("palisade-cni"));
        assert_eq!(c["plugins"][0]["ipMasq"], false);
        assert_eq!(c["plugins"][0]["ipam"]["type"], "host-local");
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.2.0/24"
        );
        let text = std::fs::read_to_string(crate::workspace_root().join("deploy/kind-config.yaml"))
            .expect("kind config");
        let k: Value = serde_yaml::from_str(&text).expect("yaml");
        assert_eq!(k["networking"]["disableDefaultCNI"], true);
        assert_eq!(k["networking"]["podSubnet"], "10.244.0.0/16");
    }
}
