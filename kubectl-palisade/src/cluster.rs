//! A live cluster, as kubectl reaches it (a kubeconfig and its context, or the
//! in-cluster configuration): the objects the agent's kube source watches,
//! listed once into the engine's index through the same reader as manifests,
//! and the agents' logs (their pods' `log`, every node or one), merged.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::mpsc;

use anyhow::{anyhow, Context, Result};
use futures::{AsyncBufReadExt, StreamExt};
use kube::config::{KubeConfigOptions, Kubeconfig};
use palisade_policy::{parse_yaml_documents, ClusterIndex};
use serde_json::Value;

/// How to reach the cluster (kubectl's own flags).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or
    /// the in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// (API path of the collection, kind, apiVersion, served only with its CRD).
const COLLECTIONS: [(&str, &str, &str, bool); 7] = [
    ("/api/v1/namespaces", "Namespace", "v1", false),
    ("/api/v1/nodes", "Node", "v1", false),
    ("/api/v1/pods", "Pod", "v1", false),
    ("/api/v1/services", "Service", "v1", false),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
        false,
    ),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
        false,
    ),
    (
        "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
        "ClusterNetworkPolicy",
        "policy.networking.k8s.io/v1alpha2",
        true,
    ),
];

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn client(k: &KubeArgs) -> Result<kube::Client> {
    let config = if k.kubeconfig.is_none() && k.context.is_none() {
        kube::Config::infer()
            .await
            .context("no cluster: give --source-dir, or a kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config)")?
    } else {
        let kc = match &k.kubeconfig {
            Some(p) => {
                Kubeconfig::read_from(p).with_context(|| format!("--kubeconfig {}", p.display()))?
            }
            None => Kubeconfig::read().context("reading the kubeconfig")?,
        };
        let opts = KubeConfigOptions {
            context: k.context.clone(),
            ..Default::default()
        };
        kube::Config::from_custom_kubeconfig(kc, &opts)
            .await
            .with_context(|| match &k.context {
                Some(c) => format!("--context {c}"),
                None => "the kubeconfig's current context".to_string(),
            })?
    };
    kube::Client::try_from(config).context("connecting to the API server")
}

fn get(path: &str) -> Result<http::Request<Vec<u8>>> {
    http::Request::get(path)
        .body(Vec::new())
        .with_context(|| format!("GET {path}"))
}

/// The index of what the cluster holds now, and what could not be read (each
/// naming the object, or a resource that is not served), which is left out.
pub fn load(k: &KubeArgs) -> Result<(ClusterIndex, Vec<String>)> {
    runtime()?.block_on(async {
        let client = client(k).await?;
        let mut index = ClusterIndex::new();
        let mut errors = Vec::new();
        for (path, kind, api_version, crd) in COLLECTIONS {
            let text = match client.request_text(get(path)?).await {
                Ok(t) => t,
                Err(kube::Error::Api(e)) if crd && e.code == 404 => {
                    errors.push(format!(
                        "{kind}: not served (its CRD is not installed): none read"
                    ));
                    continue;
                }
                Err(e) => return Err(anyhow!("listing {kind}s ({path}): {e}")),
            };
            let list: Value = serde_json::from_str(&text)
                .with_context(|| format!("listing {kind}s ({path}): not JSON"))?;
            for mut item in list["items"].as_array().cloned().unwrap_or_default() {
                // List items carry no kind or apiVersion.
                item["kind"] = Value::from(kind);
                item["apiVersion"] = Value::from(api_version);
                for o in parse_yaml_documents(&item.to_string(), &format!("cluster {kind}")) {
                    match o {
                        Ok(o) => {
                            if let Some(e) = index.apply(o).error {
                                errors.push(e.to_string());
                            }
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
        }
        Ok((index, errors))
    })
}

/// Where the agents run.
#[derive(Clone, Debug)]
pub struct Agents {
    pub namespace: String,
    /// Label selector of the agent pods.
    pub selector: String,
    /// Only the agent on this node.
    pub node: Option<String>,
}

/// The agent pods: (name, node).
async fn agent_pods(client: &kube::Client, a: &Agents) -> Result<Vec<(String, String)>> {
    let path = format!(
        "/api/v1/namespaces/{}/pods?labelSelector={}",
        a.namespace,
        a.selector.replace('=', "%3D").replace(',', "%2C")
    );
    let text = client
        .request_text(get(&path)?)
        .await
        .with_context(|| format!("listing the agent pods in {}", a.namespace))?;
    let list: Value = serde_json::from_str(&text).context("the pod list is not JSON")?;
    let want: BTreeMap<&str, &str> = a
        .selector
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let mut pods = Vec::new();
    for p in list["items"].as_array().into_iter().flatten() {
        let labels = &p["metadata"]["labels"];
        if !want.iter().all(|(k, v)| labels[*k].as_str() == Some(*v)) {
            continue;
        }
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        let node = p["spec"]["nodeName"].as_str().unwrap_or("").to_string();
        if a.node.as_ref().is_none_or(|n| *n == node) && !name.is_empty() {
            pods.push((name, node));
        }
    }
    if pods.is_empty() {
        return Err(anyhow!(
            "no agent pod ({}) in namespace {}{}",
            a.selector,
            a.namespace,
            a.node
                .as_ref()
                .map(|n| format!(" on node {n}"))
                .unwrap_or_default()
        ));
    }
    Ok(pods)
}

/// Lines sent by the log readers, read as one stream.
struct ChannelReader {
    rx: mpsc::Receiver<String>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.rx.recv() {
                Ok(line) => {
                    self.buf = line.into_bytes();
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The agents' logs, every line (events and the agents' own lines). Without
/// `follow`: what each agent logged so far, events ordered by time across
/// nodes. With `follow`: that and then what comes, as it comes.
pub fn agent_logs(k: &KubeArgs, a: &Agents, follow: bool) -> Result<Box<dyn std::io::BufRead>> {
    let rt = runtime()?;
    let (client, pods) = rt.block_on(async {
        let client = client(k).await?;
        let pods = agent_pods(&client, a).await?;
        Ok::<_, anyhow::Error>((client, pods))
    })?;
    let ns = a.namespace.clone();
    let log_path =
        move |pod: &str| format!("/api/v1/namespaces/{ns}/pods/{pod}/log?follow={follow}");
    if !follow {
        let mut lines: Vec<(String, String)> = Vec::new();
        rt.block_on(async {
            for (pod, _) in &pods {
                let text = client
                    .request_text(get(&log_path(pod))?)
                    .await
                    .with_context(|| format!("the log of agent pod {pod}"))?;
                for l in text.lines() {
                    let t = serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v["time"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    lines.push((t, format!("{l}\n")));
                }
            }
            Ok::<_, anyhow::Error>(())
        })?;
        lines.sort_by(|x, y| x.0.cmp(&y.0));
        let all: String = lines.into_iter().map(|(_, l)| l).collect();
        return Ok(Box::new(std::io::Cursor::new(all.into_bytes())));
    }
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        rt.block_on(async move {
            let mut streams = Vec::new();
            for (pod, _) in &pods {
                let Ok(req) = get(&log_path(pod)) else {
                    continue;
                };
                match client.request_stream(req).await {
                    Ok(s) => streams.push(s.lines().boxed()),
                    Err(e) => {
                        let _ = tx.send(format!("agent pod {pod}: {e}\n"));
                    }
                }
            }
            let mut all = futures::stream::select_all(streams);
            while let Some(Ok(line)) = all.next().await {
                if tx.send(format!("{line}\n")).is_err() {
                    return;
                }
            }
        })
    });
    Ok(Box::new(std::io::BufReader::new(ChannelReader {
        rx,
        buf: Vec::new(),
        pos: 0,
    })))
}
