//! The agent's command line. It lives in the library (not in `main.rs`) so tests
//! can parse the DaemonSet's `command`/`args` with the very definition the binary
//! uses (`tests/deploy.rs`).
use std::{net::SocketAddr, path::PathBuf};

use clap::{ArgGroup, Parser, ValueEnum};

/// Palisade enforces Kubernetes NetworkPolicy on this node: it compiles the
/// cluster's policies into per-pod eBPF map entries and attaches TC programs to
/// every local pod's host-side veth. Denied packets are printed on stdout as JSON
/// lines (one per event); the agent's own logs go to stderr.
#[derive(Parser, Debug)]
#[command(name = "palisade-agent", version)]
// Exactly one source of cluster state: a half-configured agent must not start and
// enforce an empty cluster.
#[command(group(ArgGroup::new("source").required(true).args(["source_dir", "kube", "uninstall"])))]
pub struct Cli {
    /// This node's name: pods whose spec.nodeName equals it are enforced here.
    /// In a DaemonSet, set NODE_NAME from the downward API (spec.nodeName).
    /// Not needed with --uninstall.
    #[arg(long, env = "NODE_NAME", required_unless_present = "uninstall")]
    pub node_name: Option<String>,

    /// Read cluster state from this directory of Kubernetes YAML (Namespaces,
    /// Pods with status.podIP(s), Services, EndpointSlices, NetworkPolicies),
    /// watched for changes. A file named REVISION, if present, is reported by
    /// /ready once the state it belongs to is programmed.
    #[arg(long, value_name = "DIR")]
    pub source_dir: Option<PathBuf>,

    /// Read cluster state from the Kubernetes API server (in-cluster config, or
    /// KUBECONFIG / ~/.kube/config outside a cluster): watches Pods, Namespaces,
    /// Services, EndpointSlices and NetworkPolicies in all namespaces.
    #[arg(long)]
    pub kube: bool,

    /// Remove Palisade from this node and exit: detach its programs from every
    /// interface and delete everything pinned under --pin-dir. Run it once the
    /// DaemonSet is gone; until then the pinned programs keep enforcing the last
    /// state they were given (that is what carries enforcement across restarts).
    /// Fails, changing nothing, while an agent holds the pin directory, and
    /// exits non-zero when nothing is pinned there or a filter cannot be removed.
    #[arg(long)]
    pub uninstall: bool,

    /// bpffs directory where maps and links are pinned; enforcement survives agent
    /// restarts because the next agent adopts what it finds here.
    #[arg(long, default_value = "/sys/fs/bpf/palisade", value_name = "DIR")]
    pub pin_dir: PathBuf,

    /// Serve the palisade-cni plugin on this Unix socket (the DaemonSet uses
    /// /run/palisade/agent.sock, mounted from the node): a pod's CNI ADD then
    /// returns only once its interface is enforced, so its first packet is.
    /// Without it, pods are found through netlink alone.
    #[arg(long, value_name = "PATH")]
    pub cni_socket: Option<PathBuf>,

    /// Address of the HTTP endpoint serving /ready, /healthz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub ready_addr: SocketAddr,

    /// Also serve /metrics (and only that) on this address, e.g. the node's
    /// address for Prometheus, while /ready and /healthz stay on loopback.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Node interfaces that lead out of the node (to other nodes, to the outside).
    /// The Service egress check runs on their egress. Every other veth is a pod
    /// interface and is fail-closed until its pod's state is written. Repeatable.
    /// A trailing `*` matches a name prefix (`--uplink 'eth*'`).
    /// Default: every interface that is not a veth (loopback excluded), and the
    /// veths that are the node's own link: those holding a --node-ip address or
    /// carrying a route through a gateway (a kind node's eth0 is a veth).
    #[arg(long = "uplink", value_name = "IFACE")]
    pub uplinks: Vec<String>,

    /// The node's own addresses (comma-separated). Without --uplink, the
    /// interface holding one of them is an uplink even if it is a veth. In a
    /// DaemonSet, set NODE_IP from the downward API (status.hostIP).
    #[arg(
        long = "node-ip",
        env = "NODE_IP",
        value_delimiter = ',',
        value_name = "ADDR"
    )]
    pub node_ips: Vec<std::net::IpAddr>,

    /// How programs are attached: `auto` uses TCX links on kernels from 6.6 and
    /// netlink TC (a clsact qdisc with direct-action filters) before; `tcx` and
    /// `netlink` force one (netlink works on every kernel with clsact).
    #[arg(long, value_enum, default_value_t = AttachModeArg::Auto, env = "PALISADE_ATTACH_MODE")]
    pub attach_mode: AttachModeArg,

    /// Audit mode: packets that policy would drop pass, and are logged with
    /// verdict "audit".
    #[arg(long)]
    pub audit: bool,

    /// Recompile and rewrite everything at this interval even without changes
    /// (seconds).
    #[arg(long, default_value_t = 60)]
    pub resync_seconds: u64,

    /// How often the file source rescans its whole directory regardless of
    /// inotify (milliseconds). Changes are picked up at once through inotify,
    /// which names the files to read; this is the safety net, and the only
    /// mechanism where inotify is unavailable (lower it there).
    #[arg(long, default_value_t = 10_000)]
    pub poll_ms: u64,

    /// Minimum time between two deny events for the same flow (milliseconds);
    /// drops in between are counted in the next event's "suppressed".
    #[arg(long, default_value_t = 1000)]
    pub event_interval_ms: u64,

    /// Deny events one pod may produce per second on each CPU, whatever the flows
    /// (a flood of ever-new flows passes the per-flow limit). Events over the
    /// budget are dropped and counted in the pod's next event's "throttled".
    #[arg(long, default_value_t = palisade_common::ENDPOINT_EVENTS_PER_SEC)]
    pub endpoint_events_per_second: u32,

    /// Connections one pod's replies may confirm per second on each CPU
    /// (bursts of 4 s worth). A confirmed connection lives in the large
    /// conntrack table; beyond the budget it stays in the table of
    /// unanswered flows, where its replies still pass, so a pod opening
    /// answered connections at full speed cannot evict the established
    /// connections of others. Raise it for pods that open more than this
    /// many long-lived connections a second (proxies, load generators).
    #[arg(long, default_value_t = palisade_common::CT_CONFIRM_PER_SEC, value_parser = clap::value_parser!(u32).range(1..))]
    pub conntrack_confirms_per_second: u32,

    /// Report allowed connections too: `new` prints (and streams on
    /// `/events`) the first packet of every new connection a policy or the
    /// pod's node allowed, `all-new` also those of pods no policy isolates
    /// (what to base a first policy on). Through the same per-flow rate limit
    /// and per-pod budget as denies.
    #[arg(long, value_enum, default_value_t = FlowEvents::Off)]
    pub flow_events: FlowEvents,

    /// Per-pod series (`palisade_pod_packets_total` with `namespace` and
    /// `pod` labels) on `/metrics`: one series per local pod and verdict, so
    /// off by default (cardinality). A deleted pod's series go with it.
    #[arg(long)]
    pub metrics_pod_labels: bool,

    /// Events `GET /events` keeps for readers that ask for the past
    /// (`since=`): the last N.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub event_history: usize,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--flow-events`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlowEvents {
    /// Denies (and audits) only.
    Off,
    /// Also new connections allowed by a policy or from the pod's node.
    New,
    /// Also new connections of pods no policy isolates.
    AllNew,
}

impl FlowEvents {
    /// The `Config::flags` bits.
    pub fn config_flags(self) -> u32 {
        match self {
            Self::Off => 0,
            Self::New => palisade_common::CFG_FLOW_NEW,
            Self::AllNew => palisade_common::CFG_FLOW_NEW | palisade_common::CFG_FLOW_ALL,
        }
    }
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// `--attach-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AttachModeArg {
    Auto,
    Tcx,
    Netlink,
}
