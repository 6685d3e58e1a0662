//! `palisade-cni`: a chained CNI plugin (CNI spec 1.0) that makes a pod's
//! first packet an enforced one. After the plugin that creates the pod's
//! interface (ptp, bridge, ...), ADD asks the node's Palisade agent over its
//! Unix socket to attach the programs to the pod's host-side interface and
//! write its endpoint record, and returns only when that is done.
//!
//! `palisade-cni install DIR` copies the binary into DIR (the DaemonSet's
//! init container puts it into the node's /opt/cni/bin).
use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use palisade_cni::{
    protocol::{self, ClientError, Command, Enforcement, Reply, Request},
    spec::{self, CniError},
};

const HELP: &str = "palisade-cni: chained CNI plugin of the Palisade NetworkPolicy agent

Run by the container runtime (CNI_COMMAND=ADD|DEL|CHECK|STATUS|VERSION, the
network configuration on stdin), after the plugin that creates the pod's
interface. Add it as the last plugin of the node's conflist:

    {\"type\": \"palisade-cni\"}

Options in that object:
    socket          the agent's socket (default /run/palisade/agent.sock)
    timeoutSeconds  how long ADD waits for the agent (default 10)
    failOpen        true: a pod starts unenforced when no agent listens on
                    the socket (UNSAFE: it is enforced only once the agent
                    finds its interface); default false: ADD fails and the
                    runtime retries. An agent that does not answer within
                    timeoutSeconds fails ADD for a retry either way

    palisade-cni install DIR   copy this binary into DIR (atomically)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("install") => return install(args.get(2).map(PathBuf::from)),
        Some("-h" | "--help" | "help") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let outcome = match command.as_str() {
        "VERSION" => Ok(Some(spec::version_info())),
        "ADD" | "DEL" | "CHECK" | "STATUS" => run(&command),
        "" => {
            eprint!("{HELP}");
            Err(CniError::new(
                "1.0.0",
                spec::E_INVALID_ENV,
                "CNI_COMMAND is not set: palisade-cni is run by a container runtime",
                "",
            ))
        }
        other => Err(CniError::new(
            "1.0.0",
            spec::E_INVALID_ENV,
            format!("unknown CNI_COMMAND {other:?}"),
            "expected ADD, DEL, CHECK, STATUS or VERSION",
        )),
    };
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", serde_json::to_string(&e).unwrap_or_default());
            ExitCode::FAILURE
        }
    }
}

fn env(name: &str, version: &str) -> Result<String, CniError> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::new(
            version,
            spec::E_INVALID_ENV,
            format!("{name} is not set"),
            "",
        )),
    }
}

fn run(command: &str) -> Result<Option<serde_json::Value>, CniError> {
    let mut stdin = String::new();
    std::io::stdin()
        .read_to_string(&mut stdin)
        .map_err(|e| CniError::new("1.0.0", spec::E_DECODE, "reading stdin", e.to_string()))?;
    let conf = spec::parse_conf(&stdin)?;
    let v = conf.cni_version.clone();
    let socket = PathBuf::from(
        conf.socket
            .clone()
            .unwrap_or_else(|| protocol::DEFAULT_SOCKET.to_string()),
    );
    let timeout = Duration::from_secs(conf.timeout_seconds.unwrap_or(10).max(1));
    if command == "STATUS" {
        return match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(_) => Ok(None),
            Err(e) => Err(CniError::new(
                &v,
                spec::E_NOT_AVAILABLE,
                format!(
                    "the Palisade agent at {} is not reachable",
                    socket.display()
                ),
                e.to_string(),
            )),
        };
    }
    let args = spec::cni_args(&std::env::var("CNI_ARGS").unwrap_or_default());
    let container_id = env("CNI_CONTAINERID", &v)?;
    let ifname = env("CNI_IFNAME", &v)?;
    let prev = match (command, spec::prev(&conf)) {
        // DEL may come without a usable previous result.
        ("DEL", Err(_)) => spec::Prev::default(),
        (_, p) => p?,
    };
    let req = Request {
        command: match command {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            _ => Command::Check,
        },
        container_id,
        ifname,
        host_interfaces: prev.host_interfaces,
        pod_namespace: args.get("K8S_POD_NAMESPACE").cloned(),
        pod_name: args.get("K8S_POD_NAME").cloned(),
        ips: prev.ips,
    };
    let reply = protocol::call(&socket, &req, timeout);
    match (req.command, reply) {
        (Command::Add, Ok(r)) if r.ok => {
            note(&req, &r);
            Ok(Some(spec::result(&conf)))
        }
        (Command::Check, Ok(r)) if r.ok => Ok(None),
        (Command::Del, Ok(_)) => Ok(None),
        // The agent removes what an interface that is gone left behind on its
        // own; DEL must not fail for want of it.
        (Command::Del, Err(e)) => {
            eprintln!("palisade-cni: DEL of {}: {e}", req.container_id);
            Ok(None)
        }
        (_, Ok(r)) => Err(CniError::new(
            &v,
            spec::E_AGENT_REFUSED,
            format!(
                "the Palisade agent did not enforce pod {} on {}",
                pod_name(&req),
                req.host_interfaces.join(", ")
            ),
            r.error.unwrap_or_default(),
        )),
        // Only an agent that is not there: one that is slow to answer is
        // alive and will enforce the pod, so the runtime retries instead.
        (Command::Add, Err(e @ ClientError::Connect { .. })) if conf.fail_open => {
            eprintln!(
                "palisade-cni: UNENFORCED (failOpen): pod {} starts without the agent: {e}",
                pod_name(&req)
            );
            Ok(Some(spec::result(&conf)))
        }
        (_, Err(e @ ClientError::Connect { .. })) => Err(CniError::new(
            &v,
            spec::E_TRY_AGAIN,
            format!(
                "the Palisade agent is not reachable at {}: pods on this node start once it runs",
                socket.display()
            ),
            e.to_string(),
        )),
        (_, Err(e)) => Err(CniError::new(
            &v,
            spec::E_TRY_AGAIN,
            format!(
                "the Palisade agent at {} did not answer for pod {}: the runtime retries",
                socket.display(),
                pod_name(&req)
            ),
            e.to_string(),
        )),
    }
}

fn pod_name(req: &Request) -> String {
    match (&req.pod_namespace, &req.pod_name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        _ => format!("of container {}", req.container_id),
    }
}

fn note(req: &Request, r: &Reply) {
    let how = match r.enforcement {
        Some(Enforcement::Policy) => "its policies apply",
        _ => "fail-closed until its policies are known",
    };
    eprintln!(
        "palisade-cni: pod {} enforced on {}: {how}",
        pod_name(req),
        r.interface.as_deref().unwrap_or("?")
    );
}

/// Copy this binary into `dir` as `palisade-cni`, through a temporary name
/// and a rename, so a runtime never runs a half-written file.
fn install(dir: Option<PathBuf>) -> ExitCode {
    let Some(dir) = dir else {
        eprintln!("usage: palisade-cni install DIR");
        return ExitCode::FAILURE;
    };
    match copy_into(&dir) {
        Ok(to) => {
            println!("installed {}", to.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("palisade-cni install {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn copy_into(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe()?;
    let tmp = dir.join(".palisade-cni.tmp");
    let to = dir.join("palisade-cni");
    std::fs::copy(&me, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &to)?;
    Ok(to)
}
