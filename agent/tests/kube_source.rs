//! The kube source against an in-process API server (`palisade-fake-apiserver`:
//! lists, watches, 410 Gone, dropped streams, outages, 403 Forbidden). The real `KubeSource` (real kube::Client, real watchers) runs against it; its
//! events feed a `ClusterIndex` the way the sync loop does, and the index is
//! checked each time the source declares a consistent state (`Synced`). The
//! last test runs the whole agent binary with `--kube` against it on a node of
//! the namespace harness, and checks what is programmed by probing the pods.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use palisade_agent::source::{
    kube::{KubeSource, VERBS, WATCHED},
    BackoffConfig, SourceEvent,
};
use palisade_fake_apiserver::{collection, FakeApi};
use palisade_policy::ClusterIndex;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::mpsc};

mod common;
mod probes;

// ---------------------------------------------------------------------------
// Objects

fn namespace(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str, app: &str, ip: &str) -> Value {
    json!({
        "metadata": {"namespace": ns, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn deny_all(ns: &str, name: &str) -> Value {
    json!({"metadata": {"namespace": ns, "name": name},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
}

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({"metadata": {"namespace": ns, "name": name},
           "spec": {"clusterIP": ip, "clusterIPs": [ip],
                    "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}

fn slice(ns: &str, name: &str, svc: &str, ip: &str) -> Value {
    json!({"metadata": {"namespace": ns, "name": name,
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4",
           "endpoints": [{"addresses": [ip]}],
           "ports": [{"port": 8080, "protocol": "TCP"}]})
}

// ---------------------------------------------------------------------------
// The agent side: the source feeding a ClusterIndex like the sync loop does.

struct Agent {
    rx: mpsc::UnboundedReceiver<SourceEvent>,
    index: ClusterIndex,
    synced: usize,
    revision: String,
    revisions: BTreeMap<String, String>,
    /// Deletes received since the last `take_deletes`.
    deletes: Vec<String>,
    errors: Vec<String>,
    /// The stream errors the source reports now (resource -> why).
    input_errors: BTreeMap<String, String>,
    /// The health the source reports per resource, and its restarts.
    up: BTreeMap<String, bool>,
    restarts: BTreeMap<String, u32>,
}

impl Agent {
    fn start(api: &FakeApi) -> Self {
        let url = format!("http://{}", api.addr).parse().expect("url");
        let config = kube::Config::new(url);
        let client = kube::Client::try_from(config).expect("client");
        let (tx, rx) = mpsc::unbounded_channel();
        let source = KubeSource::new(client).with_backoff(BackoffConfig {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            reset_after: Duration::from_secs(1),
        });
        tokio::spawn(source.run(tx));
        Agent {
            rx,
            index: ClusterIndex::new(),
            synced: 0,
            revision: String::new(),
            revisions: BTreeMap::new(),
            deletes: Vec::new(),
            errors: Vec::new(),
            input_errors: BTreeMap::new(),
            up: BTreeMap::new(),
            restarts: BTreeMap::new(),
        }
    }

    fn handle(&mut self, ev: SourceEvent) {
        match ev {
            SourceEvent::Apply { obj, .. } => {
                self.index.apply(obj);
            }
            SourceEvent::Delete(r) => {
                self.deletes.push(r.to_string());
                self.index.delete(&r);
            }
            SourceEvent::Error { origin, message } => {
                self.errors.push(format!("{origin}: {message}"))
            }
            SourceEvent::InputErrors(now) => self.input_errors = now,
            SourceEvent::Health {
                resource,
                up,
                restarted,
            } => {
                *self.restarts.entry(resource.clone()).or_default() += u32::from(restarted);
                self.up.insert(resource, up);
            }
            SourceEvent::Synced {
                revision,
                revisions,
            } => {
                self.synced += 1;
                self.revision = revision;
                self.revisions = revisions;
            }
        }
    }

    /// What the index holds, as sorted lines.
    fn snapshot(&self) -> BTreeSet<String> {
        let mut s = BTreeSet::new();
        for n in self.index.namespaces() {
            s.insert(format!("ns {}", n.name));
        }
        for p in self.index.pods() {
            let app = p.labels.get("app").cloned().unwrap_or_default();
            s.insert(format!("pod {} app={app}", p.key()));
        }
        for p in self.index.policies() {
            s.insert(format!("netpol {}/{}", p.namespace, p.name));
        }
        for v in self.index.services() {
            s.insert(format!("svc {}/{}", v.namespace, v.name));
        }
        for e in self.index.endpoint_slices() {
            s.insert(format!("slice {}/{}", e.namespace, e.name));
        }
        for c in self.index.cluster_policies() {
            s.insert(format!("cnp {}", c.name));
        }
        s
    }

    /// Consume events until a `Synced` after which the index equals `want`.
    async fn synced_to(&mut self, want: &[&str], what: &str) {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) => {
                    let is_sync = matches!(ev, SourceEvent::Synced { .. });
                    self.handle(ev);
                    if is_sync && self.snapshot() == want {
                        return;
                    }
                }
                Ok(None) => panic!("{what}: the source ended"),
                Err(_) => panic!(
                    "{what}: no Synced with the wanted state within 15 s\nwant: {want:#?}\nhave: {:#?}\nsynced {} times",
                    self.snapshot(),
                    self.synced
                ),
            }
        }
    }

    /// The latest error the source reported for `resource`'s stream ("" for none).
    fn input_error(&self, resource: &str) -> String {
        self.input_errors.get(resource).cloned().unwrap_or_default()
    }

    /// Consume events for `d`; returns how many `Synced` arrived.
    async fn drain_for(&mut self, d: Duration) -> usize {
        let before = self.synced;
        let deadline = Instant::now() + d;
        while let Ok(Some(ev)) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.rx.recv(),
        )
        .await
        {
            self.handle(ev);
        }
        self.synced - before
    }
}

/// [`seed_without_crd`], with the ClusterNetworkPolicy CRD installed.
fn seed(api: &FakeApi) {
    api.install_cluster_policy_crd();
    seed_without_crd(api);
}

fn seed_without_crd(api: &FakeApi) {
    api.put("namespaces", namespace("default", json!({})));
    api.put("namespaces", namespace("prod", json!({"team": "a"})));
    api.put("pods", pod("prod", "web-1", "web", "10.244.1.10"));
    api.put("networkpolicies", deny_all("prod", "deny-ingress"));
    api.put("services", service("prod", "web", "10.96.0.10"));
    api.put(
        "endpointslices",
        slice("prod", "web-abc", "web", "10.244.1.10"),
    );
}

const SEEDED: &[&str] = &[
    "ns default",
    "ns prod",
    "pod prod/web-1 app=web",
    "netpol prod/deny-ingress",
    "svc prod/web",
    "slice prod/web-abc",
];

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn lists_then_follows_watch_events_bookmarks_drops_and_410() {
    let api = FakeApi::start().await;
    seed(&api);
    let mut agent = Agent::start(&api);

    // 1. Initial lists: the first Synced carries all five resources.
    agent.synced_to(SEEDED, "initial list").await;
    assert_eq!(agent.synced, 1, "the first Synced is the complete state");
    assert_eq!(agent.revision, api.rv().to_string());
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
    // Exactly the five collections were listed, cluster-wide: the paths come from
    // the same WATCHED list the ClusterRole is checked against.
    let listed: BTreeSet<String> = api
        .requests()
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .map(|r| {
            let target = r.trim_start_matches("GET ");
            target.split('?').next().unwrap_or_default().to_string()
        })
        .collect();
    let want: BTreeSet<String> = WATCHED
        .iter()
        .map(|w| collection(w.group, w.version, w.resource))
        .collect();
    assert_eq!(listed, want);

    // Every resource reports its own revision; the overall one is their maximum.
    let per: Vec<u64> = WATCHED
        .iter()
        .map(|w| agent.revisions[w.resource].parse().expect("a number"))
        .collect();
    assert_eq!(
        per.iter().max().map(|m| m.to_string()),
        Some(agent.revision.clone())
    );

    // 2. Watch events: ADDED, MODIFIED, DELETED, and a BOOKMARK in between.
    api.put("pods", pod("prod", "web-2", "web", "10.244.1.11"));
    let pods_rv = api.put("pods", pod("prod", "web-1", "canary", "10.244.1.10"));
    api.bookmark("pods");
    api.delete("networkpolicies", "prod/deny-ingress", false);
    let policies_rv = api.put("networkpolicies", deny_all("default", "deny-all"));
    agent
        .synced_to(
            &[
                "ns default",
                "ns prod",
                "pod prod/web-1 app=canary",
                "pod prod/web-2 app=web",
                "netpol default/deny-all",
                "svc prod/web",
                "slice prod/web-abc",
            ],
            "watch events",
        )
        .await;
    assert_eq!(agent.revision, api.rv().to_string());
    // Each stream's revision is the last event it delivered, not the overall one:
    // this is what tells a client that a write to one resource has arrived.
    assert_eq!(agent.revisions["pods"], pods_rv.to_string());
    assert_eq!(agent.revisions["networkpolicies"], policies_rv.to_string());

    // 3. A dropped connection: the watcher re-watches from its last version and
    //    gets what happened meanwhile from the server's history.
    api.drop_watches("pods");
    api.put("pods", pod("prod", "web-3", "web", "10.244.1.12"));
    agent.deletes.clear();
    agent
        .synced_to(
            &[
                "ns default",
                "ns prod",
                "pod prod/web-1 app=canary",
                "pod prod/web-2 app=web",
                "pod prod/web-3 app=web",
                "netpol default/deny-all",
                "svc prod/web",
                "slice prod/web-abc",
            ],
            "after a dropped watch",
        )
        .await;
    assert!(agent.deletes.is_empty(), "{:?}", agent.deletes);

    // 4. 410 Gone when re-watching: the connection drops, a pod is deleted in a
    //    history the server has since compacted, so the watcher's version is too
    //    old; it relists, and the relist's end deletes the pod it never heard of.
    api.drop_watches("pods");
    api.delete("pods", "prod/web-2", true);
    api.compact("pods");
    agent
        .synced_to(
            &[
                "ns default",
                "ns prod",
                "pod prod/web-1 app=canary",
                "pod prod/web-3 app=web",
                "netpol default/deny-all",
                "svc prod/web",
                "slice prod/web-abc",
            ],
            "after 410 on re-watch",
        )
        .await;
    assert_eq!(agent.deletes, vec!["pod prod/web-2".to_string()]);

    // 5. 410 Gone as an ERROR event on an open watch (namespaces this time).
    agent.deletes.clear();
    api.delete("namespaces", "default", true);
    api.put("namespaces", namespace("staging", json!({})));
    // The ADDED above reached the open watch; the deletion did not.
    api.compact("namespaces");
    api.expire_watches("namespaces");
    agent
        .synced_to(
            &[
                "ns prod",
                "ns staging",
                "pod prod/web-1 app=canary",
                "pod prod/web-3 app=web",
                "netpol default/deny-all",
                "svc prod/web",
                "slice prod/web-abc",
            ],
            "after 410 on an open watch",
        )
        .await;
    assert_eq!(agent.deletes, vec!["namespace default".to_string()]);
    assert!(agent.errors.is_empty(), "{:?}", agent.errors);
    // One relist settles it: the new watch starts from the list's version.
    let lists = |api: &FakeApi| {
        api.requests()
            .iter()
            .filter(|r| r.contains("/api/v1/namespaces") && !r.contains("watch=true"))
            .count()
    };
    let before = lists(&api);
    agent.drain_for(Duration::from_millis(1000)).await;
    assert_eq!(lists(&api), before, "relisting again and again");

    // What the source did over lists, watches, drops and 410s, as RBAC sees it
    // ((resource, verb); a path below a collection would be a `get`), is
    // exactly WATCHED x VERBS, which tests/deploy.rs holds the ClusterRole to.
    let collections: BTreeMap<String, &str> = WATCHED
        .iter()
        .map(|w| (collection(w.group, w.version, w.resource), w.resource))
        .collect();
    let used: BTreeSet<(String, String)> = api
        .requests()
        .iter()
        .map(|r| {
            let target = r.trim_start_matches("GET ");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let watch = query
                .split('&')
                .any(|kv| kv == "watch=true" || kv == "watch=1");
            match collections.get(path) {
                Some(res) => (
                    res.to_string(),
                    if watch { "watch" } else { "list" }.to_string(),
                ),
                None => (path.to_string(), "get".to_string()),
            }
        })
        .collect();
    let granted: BTreeSet<(String, String)> = WATCHED
        .iter()
        .flat_map(|w| {
            VERBS
                .iter()
                .map(|v| (w.resource.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(used, granted);
}

#[tokio::test]
async fn api_server_restart_keeps_state_and_catches_up() {
    let api = FakeApi::start().await;
    seed(&api);
    let mut agent = Agent::start(&api);
    agent.synced_to(SEEDED, "initial list").await;

    // Down: every watch is cut and every reconnect fails. Nothing is deleted and
    // nothing new is declared meanwhile; the last state stays as it was.
    agent.deletes.clear();
    api.set_down(true);
    let synced = agent.drain_for(Duration::from_millis(800)).await;
    assert_eq!(synced, 0, "no Synced while the API server is down");
    assert!(agent.deletes.is_empty(), "{:?}", agent.deletes);
    let want: BTreeSet<String> = SEEDED.iter().map(|s| s.to_string()).collect();
    assert_eq!(agent.snapshot(), want);

    // Changes while down (history kept): they arrive after the restart.
    api.put("pods", pod("prod", "web-9", "web", "10.244.1.19"));
    api.delete("services", "prod/web", false);
    api.set_down(false);
    agent
        .synced_to(
            &[
                "ns default",
                "ns prod",
                "pod prod/web-1 app=web",
                "pod prod/web-9 app=web",
                "netpol prod/deny-ingress",
                "slice prod/web-abc",
            ],
            "after the API server came back",
        )
        .await;
    assert_eq!(agent.revision, api.rv().to_string());
}

/// A `MakeWriter` for tracing that keeps everything in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures this thread's logs, filtered as the agent filters them, until
    /// the guard drops.
    fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_env_filter("info,kube_runtime=error")
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// The one RBAC line logged so far (however often the request was refused).
    fn rbac_line(&self) -> String {
        let rbac: Vec<String> = String::from_utf8_lossy(&self.0.lock().expect("log buffer"))
            .lines()
            .filter(|l| l.contains("RBAC"))
            .map(str::to_string)
            .collect();
        assert_eq!(rbac.len(), 1, "one RBAC line, not one per retry: {rbac:#?}");
        rbac[0].clone()
    }
}

/// ClusterNetworkPolicy is a CRD: without it the rest is synced and
/// programmed, the absence is reported, and policies are picked up once the
/// CRD is installed, without a restart.
#[tokio::test]
async fn cluster_policies_are_picked_up_once_their_crd_is_installed() {
    let api = FakeApi::start().await;
    seed_without_crd(&api);
    let mut agent = Agent::start(&api);
    agent.synced_to(SEEDED, "without the CRD").await;
    let why = agent.input_error("clusternetworkpolicies");
    assert!(
        why.contains("CRD is not installed") && why.contains("NetworkPolicy is enforced"),
        "{why}"
    );
    api.install_cluster_policy_crd();
    api.put(
        "clusternetworkpolicies",
        json!({"metadata": {"name": "deny-dev"},
               "spec": {"tier": "Admin", "priority": 10,
                        "subject": {"namespaces": {}},
                        "ingress": [{"action": "Deny",
                                     "from": [{"namespaces": {"matchLabels": {"env": "dev"}}}]}]}}),
    );
    let mut want: Vec<&str> = SEEDED.to_vec();
    want.push("cnp deny-dev");
    agent.synced_to(&want, "after the CRD was installed").await;
    assert!(agent.input_errors.is_empty(), "{:?}", agent.input_errors);
}

// Single-threaded, so the thread-local log subscriber sees the source's task.
#[tokio::test(flavor = "current_thread")]
async fn forbidden_resource_blocks_sync_and_is_logged_once() {
    let (logs, _guard) = Captured::install();

    let api = FakeApi::start().await;
    seed(&api);
    api.set_forbidden("networkpolicies", true);
    let mut agent = Agent::start(&api);

    // Four of five resources list fine; the fifth is refused again and again (the
    // backoff is 20-200 ms here), and nothing may be declared synced meanwhile.
    let synced = agent.drain_for(Duration::from_millis(1500)).await;
    assert_eq!(synced, 0, "Synced before every resource was listed");
    let refused = api.requests_to("networkpolicies", false);
    assert!(refused >= 3, "expected retries, saw {refused} requests");
    let rbac = logs.rbac_line();
    assert!(
        rbac.contains("list networkpolicies") && rbac.contains("networking.k8s.io"),
        "the line names the verb, the resource and its group: {rbac}"
    );

    let why = agent.input_error("networkpolicies");
    assert!(
        why.contains("forbids this agent to list networkpolicies")
            && why.contains("nothing is programmed until every resource has been listed"),
        "reported for /ready, saying what happens: {why}"
    );
    // palisade_source_up / palisade_source_restarts_total: down with every
    // retry counted, the others up.
    assert_eq!(
        agent.up.get("networkpolicies"),
        Some(&false),
        "{:?}",
        agent.up
    );
    assert!(agent.restarts.get("networkpolicies").copied().unwrap_or(0) >= 3);
    assert_eq!(agent.up.get("pods"), Some(&true), "{:?}", agent.up);

    // Granted: the source completes its first state, and the error clears.
    api.set_forbidden("networkpolicies", false);
    agent.synced_to(SEEDED, "after the grant").await;
    assert_eq!(agent.synced, 1);
    assert!(agent.input_errors.is_empty(), "{:?}", agent.input_errors);
    assert_eq!(
        agent.up.get("networkpolicies"),
        Some(&true),
        "{:?}",
        agent.up
    );
}

// Single-threaded, so the thread-local log subscriber sees the source's task.
#[tokio::test(flavor = "current_thread")]
async fn forbidden_watch_after_an_allowed_list_is_logged_once_and_recovers() {
    let (logs, _guard) = Captured::install();

    let api = FakeApi::start().await;
    seed(&api);
    api.set_watch_forbidden("services", true);
    let mut agent = Agent::start(&api);
    // Every list succeeds: the first state is complete and programmed.
    agent.synced_to(SEEDED, "initial list").await;
    // The services watch is refused again and again meanwhile.
    agent.drain_for(Duration::from_millis(1500)).await;
    let watches = api.requests_to("services", true);
    assert!(watches >= 3, "expected watch retries, saw {watches}");
    let rbac = logs.rbac_line();
    assert!(
        rbac.contains("watch services"),
        "the line names the verb and the resource: {rbac}"
    );
    let why = agent.input_error("services");
    assert!(
        why.contains("changes to services are not seen")
            && why.contains("every other resource is still followed and programmed"),
        "reported for /ready, saying what really happens: {why}"
    );
    assert!(!rbac.contains("nothing new is programmed"), "{rbac}");

    // Granted: a Service created meanwhile arrives (through a relist or the
    // watch), and the state follows again.
    api.put("services", service("prod", "api", "10.96.0.20"));
    api.set_watch_forbidden("services", false);
    let mut want: Vec<&str> = SEEDED.to_vec();
    want.push("svc prod/api");
    agent.synced_to(&want, "after the grant").await;
    api.put("services", service("prod", "db", "10.96.0.30"));
    want.push("svc prod/db");
    agent
        .synced_to(&want, "a watch event after the grant")
        .await;
    assert!(agent.input_errors.is_empty(), "{:?}", agent.input_errors);
}

// ---------------------------------------------------------------------------
// The whole agent against the fake API server

/// Waits until the agent on `ns` has programmed resourceVersion `rv`.
fn wait_programmed(ns: &str, rv: u64, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = palisade_harness::agent::get_ready(ns) {
            if r.ready && r.revision.as_deref() == Some(rv.to_string().as_str()) {
                return serde_json::from_str(&r.body).unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "{what}: resourceVersion {rv} not programmed after 30 s: {}",
                r.body
            );
        } else {
            assert!(Instant::now() < deadline, "{what}: no /ready after 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Needs root (network namespaces, BPF), like the cluster tests; the only test
/// of this file that does.
#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn the_agent_programs_what_the_api_server_says_through_drops_410_and_outages() {
    common::require_root();
    use palisade_harness::{
        objects, AgentConfig, Cluster, ClusterOptions, ClusterSpec, Family, LabelMap, Outcome,
        PodPlan, PortPlan, Transport, Via,
    };
    use Outcome::{Blocked, Reachable};
    use Via::Pod;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let pod_spec = |ns: &str, name: &str| PodPlan {
        namespace: ns.into(),
        name: name.into(),
        labels: LabelMap::from([("pod".to_string(), name.to_string())]),
        node: 1,
        ports: vec![PortPlan::new(80, Transport::Tcp)],
    };
    let spec = ClusterSpec {
        family: Family::Ipv4,
        nodes: 1,
        namespaces: [("x", LabelMap::new()), ("y", LabelMap::new())]
            .into_iter()
            .map(|(n, l)| (n.to_string(), l))
            .collect(),
        pods: vec![pod_spec("x", "a"), pod_spec("x", "b"), pod_spec("y", "a")],
        externals: Vec::new(),
        node_labels: Default::default(),
        node_ports: Vec::new(),
    };
    let kubeconfig =
        std::env::temp_dir().join(format!("palisade-kubeconfig-{}", std::process::id()));
    let mut agent = AgentConfig::new(common::agent_binary());
    agent.kube = true;
    agent.env = vec![
        ("KUBECONFIG".into(), kubeconfig.display().to_string()),
        ("RUST_LOG".into(), "info,kube_runtime=error".into()),
    ];
    let mut c = Cluster::build(
        &spec,
        ClusterOptions {
            agent: Some(agent),
            ..Default::default()
        },
    )
    .expect("build cluster");
    let ns = c.node_netns(1).expect("node").to_string();

    // The API server listens in the node's namespace, where the agent runs.
    let std_listener = palisade_harness::in_netns(&ns, || {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind in the node")
    })
    .expect("in node netns");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let api = {
        let _rt = rt.enter();
        FakeApi::serve_on(TcpListener::from_std(std_listener).expect("tokio listener"))
    };
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n",
            api.addr
        ),
    )
    .expect("kubeconfig");

    // The cluster's objects, as the API server holds them.
    for n in ["x", "y"] {
        api.put("namespaces", objects::namespace(n, &LabelMap::new()));
    }
    let node_ip = c.node_ip(1).expect("node ip");
    for key in c.pod_keys() {
        let p = c.pod_spec(&key).expect("pod").clone();
        let ip = c.pod_ip(&key).expect("ip");
        api.put("pods", objects::pod(&p, ip, node_ip));
    }
    let same_namespace_only = json!({
        "metadata": {"namespace": "x", "name": "same-namespace-only"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {}}]}]}
    });

    // 0. Pods cannot be listed (RBAC): not ready, and /ready says why.
    api.set_forbidden("pods", true);
    c.launch_agent(1).expect("start agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = palisade_harness::agent::get_ready(&ns);
        if let Ok(r) = &r {
            if r.body.contains("forbids this agent to list pods") {
                assert_eq!(r.status, 503, "{}", r.body);
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no reason in /ready: {:?}",
            r.map(|r| r.body)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    api.set_forbidden("pods", false);
    // 1. Initial lists: every local pod has its endpoint; nothing isolates.
    let ready = wait_programmed(&ns, api.rv(), "initial lists");
    assert_eq!(ready["endpoints"], json!(3), "{ready}");
    let errors = ready["errors"].to_string();
    assert!(
        !errors.contains("pods"),
        "the refusal's error cleared: {ready}"
    );
    assert!(
        errors.contains("CRD is not installed"),
        "no ClusterNetworkPolicy CRD here: {ready}"
    );
    probes::expect(&c, &[("initial lists", "y/a", "x/a", Pod, Reachable)]);

    // 2. A watch event: a policy isolates x to itself.
    let rv = api.put("networkpolicies", same_namespace_only.clone());
    wait_programmed(&ns, rv, "policy added");
    probes::expect(
        &c,
        &[
            ("policy added: denied", "y/a", "x/a", Pod, Blocked),
            ("policy added: allowed", "x/b", "x/a", Pod, Reachable),
        ],
    );
    // The deny line names the node (Kubernetes mode).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = c.deny_log_lines(1).expect("deny log");
        if let Some(l) = lines.iter().find(|l| l["endpoint"] == json!("x/a")) {
            assert_eq!(l["node"], json!("node-1"), "{l}");
            break;
        }
        assert!(Instant::now() < deadline, "no deny line for x/a: {lines:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3. The policy is deleted in history the API server has compacted, and the
    //    watch expires (410): the relist finds it gone.
    api.delete("networkpolicies", "x/same-namespace-only", true);
    api.compact("networkpolicies");
    api.expire_watches("networkpolicies");
    // `revision` counts objects' resourceVersions (kube-rs's watcher passes no
    // list or bookmark versions on), so a later write on the stream, a policy
    // that selects no pod, marks the point to wait for, as `kind e2e` does.
    let rv = api.put(
        "networkpolicies",
        json!({"metadata": {"namespace": "y", "name": "marker"},
               "spec": {"podSelector": {"matchLabels": {"none": "none"}}}}),
    );
    wait_programmed(&ns, rv, "relist after 410");
    probes::expect(&c, &[("relist after 410", "y/a", "x/a", Pod, Reachable)]);

    // 4. A connection dropped mid-stream: the watch resumes, the next event lands.
    api.drop_watches("networkpolicies");
    let rv = api.put("networkpolicies", same_namespace_only.clone());
    wait_programmed(&ns, rv, "after a dropped watch");
    probes::expect(&c, &[("after a dropped watch", "y/a", "x/a", Pod, Blocked)]);

    // 5. The API server goes away: the last programmed state stays enforced,
    //    and what changed meanwhile is programmed when it is back.
    api.set_down(true);
    api.delete("networkpolicies", "x/same-namespace-only", false);
    std::thread::sleep(Duration::from_secs(2));
    probes::expect(
        &c,
        &[
            ("API server down: denied", "y/a", "x/a", Pod, Blocked),
            ("API server down: allowed", "x/b", "x/a", Pod, Reachable),
        ],
    );
    api.set_down(false);
    wait_programmed(&ns, api.rv(), "after the outage");
    probes::expect(&c, &[("after the outage", "y/a", "x/a", Pod, Reachable)]);

    c.teardown().expect("teardown");
    let _ = std::fs::remove_file(&kubeconfig);
}
