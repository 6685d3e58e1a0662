//! `palisade-pod`: what the pods of `cargo xtask kind e2e` run, packaged in the
//! agent image. `serve` answers on the scenario's ports (the same servers as the
//! network-namespace harness), `probe` connects from inside a pod (or, in the
//! agent's hostNetwork pod, from the node) with the 1 s rule of the scenario format,
//! `get` reads the agent's loopback-only /ready, and `sctp` tells whether this
//! kernel has SCTP.
use std::{io::Write, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use palisade_harness::{
    agent::http_get,
    podtool::{format_target, outcome_word, parse_target},
    probe::probe_here,
    sctp_supported,
    servers::serve_here,
    Family, PortPlan, Transport,
};

#[derive(Parser)]
#[command(
    version,
    about = "Servers and probes for Palisade's conformance cases on a real cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve PORT/PROTO (e.g. 80/TCP 81/UDP 80/SCTP) until killed: TCP and SCTP
    /// echo, UDP echoes datagrams, and `whoami` gets the identity back.
    Serve {
        #[arg(long, default_value = "ipv4", value_parser = ["ipv4", "ipv6"])]
        family: String,
        /// What a `whoami` request gets back (the pod as ns/name).
        #[arg(long)]
        identity: String,
        /// None at all is allowed: a pod that is only ever a client still runs.
        ports: Vec<String>,
    },
    /// Probe every PROTO:ADDR:PORT target in parallel; prints `TARGET reachable`,
    /// `TARGET blocked` or `TARGET skipped` (no SCTP here), one line per target in order.
    Probe {
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// HTTP GET of PATH from ADDR (e.g. 127.0.0.1:9464 /ready); prints the body.
    /// Exit status 0 for 200, 3 for any other answer, 2 when nothing answered.
    Get { addr: SocketAddr, path: String },
    /// Exit status 0 when this kernel can open an SCTP socket.
    Sctp,
}

fn port(s: &str) -> Result<PortPlan> {
    let (n, proto) = s
        .split_once('/')
        .with_context(|| format!("port {s:?}: expected PORT/PROTO, e.g. 80/TCP"))?;
    let n: u16 = n.parse().with_context(|| format!("port {s:?}"))?;
    let p: Transport = proto.parse().with_context(|| format!("port {s:?}"))?;
    Ok(PortPlan::new(n, p))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Serve {
            family,
            identity,
            ports,
        } => {
            let family = if family == "ipv6" {
                Family::Ipv6
            } else {
                Family::Ipv4
            };
            let ports = ports.iter().map(|p| port(p)).collect::<Result<Vec<_>>>()?;
            serve_here(family, &identity, &ports)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe {
            timeout_ms,
            targets,
        } => {
            let parsed = targets
                .iter()
                .map(|t| parse_target(t))
                .collect::<Result<Vec<_>>>()?;
            let res = probe_here(&parsed, Duration::from_millis(timeout_ms))?;
            let mut out = std::io::stdout().lock();
            for ((to, p), o) in parsed.iter().zip(res) {
                writeln!(out, "{} {}", format_target(*to, *p), outcome_word(o))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Get { addr, path } => {
            let (status, body) = http_get(addr, &path)?;
            println!("{body}");
            Ok(if status == 200 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Cmd::Sctp => Ok(if sctp_supported() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade-pod: {e:#}");
            ExitCode::from(2)
        }
    }
}
