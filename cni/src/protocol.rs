//! The agent's CNI socket protocol: the plugin connects, writes one JSON
//! [`Request`] and a newline, and reads one JSON [`Reply`]. The agent answers
//! an ADD only once the pod's interface has the programs attached and its
//! endpoint record written (or, while the pod's policies are not known, no
//! record: the programs then drop everything the interface carries).
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where the DaemonSet mounts the agent's socket on the node.
pub const DEFAULT_SOCKET: &str = "/run/palisade/agent.sock";
/// Largest request or reply read (a pod has a handful of interfaces and
/// addresses).
pub const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    Add,
    Del,
    Check,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub command: Command,
    pub container_id: String,
    /// The pod's interface name inside its sandbox (`CNI_IFNAME`).
    pub ifname: String,
    /// Host-side interfaces of the previous plugin's result (those without a
    /// sandbox): the pod's veth among them.
    pub host_interfaces: Vec<String>,
    /// From `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`), when the runtime
    /// passes them.
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// The pod's addresses from the previous result.
    pub ips: Vec<IpAddr>,
}

/// How the pod's interface is enforced when the agent replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enforcement {
    /// The pod's endpoint record is written: its policies decide.
    Policy,
    /// Programs attached, no record yet (the pod or its policies are not
    /// known): every packet of the interface is dropped until it is written.
    FailClosed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    /// The host interface the programs are attached to.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub ifindex: Option<u32>,
    #[serde(default)]
    pub enforcement: Option<Enforcement>,
    /// Why not, when `ok` is false.
    #[serde(default)]
    pub error: Option<String>,
}

impl Reply {
    pub fn refused(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            interface: None,
            ifindex: None,
            enforcement: None,
            error: Some(error.into()),
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    /// No agent listens (not running, not mounted): worth retrying.
    #[error("connecting to the Palisade agent at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the Palisade agent at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the Palisade agent at {path} sent an unreadable reply: {source}")]
    Decode {
        path: String,
        source: serde_json::Error,
    },
}

/// Send `req` to the agent at `socket` and wait up to `timeout` for its reply.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|source| ClientError::Decode {
        path: path.clone(),
        source,
    })?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut buf = String::new();
    BufReader::new(s.take(MAX_MESSAGE as u64))
        .read_line(&mut buf)
        .map_err(io)?;
    serde_json::from_str(buf.trim()).map_err(|source| ClientError::Decode { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_in_their_documented_shape() {
        let r = Request {
            command: Command::Add,
            container_id: "c1".into(),
            ifname: "eth0".into(),
            host_interfaces: vec!["veth1".into()],
            pod_namespace: Some("ns".into()),
            pod_name: Some("p".into()),
            ips: vec!["10.0.0.5".parse().expect("address")],
        };
        let text = serde_json::to_string(&r).expect("encode");
        assert!(text.contains(r#""command":"ADD""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).expect("decode"), r);
        let reply: Reply = serde_json::from_str(
            r#"{"ok":true,"interface":"veth1","ifindex":7,"enforcement":"fail-closed"}"#,
        )
        .expect("decode");
        assert_eq!(reply.enforcement, Some(Enforcement::FailClosed));
    }
}
