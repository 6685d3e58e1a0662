//! Builds the cluster of a scenario file (or the default model), starts the
//! agents, prints where everything is, and holds it until Ctrl-C, SIGTERM or
//! `quit` (which tear it all down): for poking at a live cluster with `ip
//! netns exec`, `tc`, `bpftool`. Commands on stdin: `stop N`, `start N`,
//! `restart N` (the agent of node N), `sync` (publish a REVISION and wait for
//! every agent), `quit`. `cargo run --release -p palisade-harness --example
//! hold -- [--family ipv4|ipv6] [--no-agent] [SCENARIO.yaml]`; the agent is
//! `$PALISADE_AGENT`, else the newest build in the target directory.

use anyhow::{bail, Result};
use palisade_harness::{
    default_agent_path, scenario, AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family,
};

fn main() -> Result<()> {
    let mut family = Family::Ipv4;
    let mut agent = true;
    let mut file = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--family" => match args.next() {
                Some(f) => family = f.parse()?,
                None => bail!("--family needs a value"),
            },
            "--no-agent" => agent = false,
            _ => file = Some(a),
        }
    }
    let spec = match &file {
        Some(f) => scenario::load(f.as_ref())?.cluster_spec(family),
        None => ClusterSpec::default_model(family),
    };
    let opts = ClusterOptions {
        agent: agent.then(|| AgentConfig::new(default_agent_path())),
        keep_temp: false,
        ..Default::default()
    };
    let mut c = Cluster::build(&spec, opts)?;
    if agent {
        c.start_agents()?;
    }
    for n in 1..=c.node_count() {
        println!("node-{n}: netns {} ip {}", c.node_netns(n)?, c.node_ip(n)?);
    }
    for k in c.pod_keys() {
        println!(
            "pod {k}: netns {} ip {} veth {}",
            c.pod_netns(&k)?,
            c.pod_ip(&k)?,
            c.pod_host_veth(&k)?
        );
    }
    for s in c.services() {
        println!("service {}/{}: {}", s.namespace, s.name, s.cluster_ip);
    }
    println!("sources and logs under {}", c.temp_dir().display());
    println!(
        "holding (pid {}); commands: stop N | start N | restart N | sync | quit. Ctrl-C, or SIGTERM/SIGINT (kill) when in the background, tears down",
        std::process::id()
    );
    let count = c.node_count();
    let mut line = String::new();
    loop {
        line.clear();
        // EOF (stdin closed, as in the background): hold until a signal.
        if std::io::stdin().read_line(&mut line).unwrap_or(0) == 0 {
            loop {
                std::thread::park();
            }
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = || -> Result<usize> {
            match words.get(1).map(|n| n.parse::<usize>()) {
                Some(Ok(n)) if (1..=count).contains(&n) => Ok(n),
                _ => bail!("name a node, 1..={count}"),
            }
        };
        let done = match words.first().copied() {
            None => Ok(()),
            Some("quit") | Some("exit") => break,
            Some("stop") => node().and_then(|n| c.stop_agent(n)),
            Some("start") => node().and_then(|n| c.start_agent(n)),
            Some("restart") => node().and_then(|n| {
                c.stop_agent(n)?;
                c.start_agent(n)
            }),
            Some("sync") => c.sync().map(|rev| println!("programmed {rev}")),
            Some(other) => Err(anyhow::anyhow!(
                "unknown command {other:?}: stop N | start N | restart N | sync | quit"
            )),
        };
        match done {
            Ok(()) => println!("ok"),
            Err(e) => println!("error: {e:#}"),
        }
    }
    c.teardown()
}
