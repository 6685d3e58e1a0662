//! Builds the cluster of a scenario file (or the default model), starts the
//! agents, prints where everything is, and holds it until Ctrl-C (which tears
//! it all down): for poking at a live cluster with `ip netns exec`, `tc`,
//! `bpftool`. `cargo run -p palisade-harness --example hold --
//! [--family ipv4|ipv6] [--no-agent] [SCENARIO.yaml]`.

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
    println!("holding; Ctrl-C tears down");
    loop {
        std::thread::park();
    }
}
