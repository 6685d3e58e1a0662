//! An in-process Kubernetes API server for tests: a small HTTP/1.1 server on
//! 127.0.0.1 that speaks the parts of the list/watch protocol a kube-rs watcher
//! uses, for the resources Palisade reads ([`RESOURCES`]): lists with
//! `metadata.resourceVersion` (cluster-wide and per namespace), chunked watch
//! streams from a resourceVersion (ADDED/MODIFIED/DELETED/BOOKMARK lines,
//! replayed from history), `ERROR` events with 410 Gone when the requested
//! version is compacted away, connections dropped mid-stream, an API server
//! that is down, 403 Forbidden, a CRD installed later, and pod logs
//! (`pods/<name>/log`, followed or not).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

#[derive(Default)]
struct Res {
    kind: &'static str,
    api_version: String,
    /// "namespace/name" (or "name") -> object as the API server stores it.
    objects: BTreeMap<String, Value>,
    /// (resourceVersion, watch event line) for replay to watches that start behind.
    history: Vec<(u64, String)>,
    /// Watches from a version below this get 410 Gone.
    compacted: u64,
    forbidden: bool,
    /// Lists are allowed, watches refused (a ClusterRole missing `watch`).
    watch_forbidden: bool,
    watchers: Vec<mpsc::UnboundedSender<String>>,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// URL path of a collection -> resource.
    res: BTreeMap<String, Res>,
    /// Refuse every connection (an API server restart).
    down: bool,
    /// "GET path?query" of every request, for checking what the source asked for.
    requests: Vec<String>,
    /// "namespace/pod" -> its log lines so far and the followers of its log.
    logs: BTreeMap<String, (Vec<String>, Vec<mpsc::UnboundedSender<String>>)>,
}

/// The in-process API server (see the crate docs).
#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    st: Arc<Mutex<State>>,
}

/// The collection URL of a watched resource.
pub fn collection(group: &str, version: &str, resource: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}/{resource}")
    } else {
        format!("/apis/{group}/{version}/{resource}")
    }
}

/// Every resource the fake serves: (group, version, plural, kind).
pub const RESOURCES: [(&str, &str, &str, &str); 7] = [
    ("", "v1", "pods", "Pod"),
    ("", "v1", "namespaces", "Namespace"),
    ("", "v1", "services", "Service"),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
    ),
    ("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    ("", "v1", "nodes", "Node"),
    (
        "policy.networking.k8s.io",
        "v1alpha2",
        "clusternetworkpolicies",
        "ClusterNetworkPolicy",
    ),
];

fn resource(resource: &str) -> (&'static str, &'static str, &'static str, &'static str) {
    *RESOURCES
        .iter()
        .find(|r| r.2 == resource)
        .unwrap_or_else(|| panic!("{resource} is not served"))
}

/// The collection URL of a served resource.
pub fn path_of(res: &str) -> String {
    let (g, v, r, _) = resource(res);
    collection(g, v, r)
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn key_of(obj: &Value) -> String {
    let m = &obj["metadata"];
    match m["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", m["name"].as_str().unwrap_or_default()),
        None => m["name"].as_str().unwrap_or_default().to_string(),
    }
}

impl FakeApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve_on(listener)
    }

    /// Serve on `listener` (which may belong to another network namespace).
    pub fn serve_on(listener: TcpListener) -> Self {
        let mut st = State::default();
        // Every resource but the ClusterNetworkPolicy CRD, which a test installs.
        for (g, v, r, kind) in RESOURCES.iter().take(6) {
            st.res.insert(
                collection(g, v, r),
                Res {
                    kind,
                    api_version: api_version(g, v),
                    ..Default::default()
                },
            );
        }
        let addr = listener.local_addr().expect("addr");
        let api = FakeApi {
            addr,
            st: Arc::new(Mutex::new(st)),
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move { server.serve(sock).await });
            }
        });
        api
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().expect("fake api state")
    }

    /// Create or replace an object; watchers get ADDED or MODIFIED.
    pub fn put(&self, resource: &str, mut obj: Value) -> u64 {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let res = st.res.get_mut(&path_of(resource)).expect("resource");
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["kind"] = json!(res.kind);
        obj["apiVersion"] = json!(res.api_version);
        let key = key_of(&obj);
        let ty = if res.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        res.objects.insert(key, obj.clone());
        res.emit(rv, json!({"type": ty, "object": obj}));
        rv
    }

    /// Delete an object; watchers get DELETED (unless `silently`: then the event is
    /// lost, as when it happened in a history the API server has compacted).
    pub fn delete(&self, resource: &str, key: &str, silently: bool) {
        let mut st = self.lock();
        st.rv += 1;
        let rv = st.rv;
        let res = st.res.get_mut(&path_of(resource)).expect("resource");
        let mut obj = res.objects.remove(key).expect("object to delete");
        if silently {
            return;
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        res.emit(rv, json!({"type": "DELETED", "object": obj}));
    }

    pub fn bookmark(&self, resource: &str) {
        let mut st = self.lock();
        let rv = st.rv;
        let res = st.res.get_mut(&path_of(resource)).expect("resource");
        let (kind, api_version) = (res.kind, res.api_version.clone());
        let line = json!({"type": "BOOKMARK", "object": {
            "kind": kind, "apiVersion": api_version,
            "metadata": {"resourceVersion": rv.to_string()}}});
        let line = format!("{line}\n");
        res.watchers.retain(|w| w.send(line.clone()).is_ok());
    }

    /// Forget history: watches from before now get 410 Gone (a watch from now
    /// on is fine: there is nothing to replay).
    pub fn compact(&self, resource: &str) {
        let mut st = self.lock();
        let rv = st.rv;
        let res = st.res.get_mut(&path_of(resource)).expect("resource");
        res.compacted = rv;
        res.history.clear();
    }

    /// Send `ERROR` 410 on every open watch of `resource`, then end them.
    pub fn expire_watches(&self, resource: &str) {
        let mut st = self.lock();
        let res = st.res.get_mut(&path_of(resource)).expect("resource");
        let line = format!("{}\n", gone(0, res.compacted));
        for w in res.watchers.drain(..) {
            let _ = w.send(line.clone());
            let _ = w.send(String::new()); // end of stream, cleanly
        }
    }

    /// Cut every open watch of `resource` mid-stream (no terminating chunk).
    pub fn drop_watches(&self, resource: &str) {
        let mut st = self.lock();
        st.res
            .get_mut(&path_of(resource))
            .expect("resource")
            .watchers
            .clear();
    }

    pub fn set_forbidden(&self, resource: &str, forbidden: bool) {
        self.lock()
            .res
            .get_mut(&path_of(resource))
            .expect("resource")
            .forbidden = forbidden;
    }

    pub fn set_watch_forbidden(&self, resource: &str, forbidden: bool) {
        self.lock()
            .res
            .get_mut(&path_of(resource))
            .expect("resource")
            .watch_forbidden = forbidden;
    }

    /// Installs the ClusterNetworkPolicy CRD: the API server serves it from now.
    pub fn install_cluster_policy_crd(&self) {
        let (g, v, r, kind) = resource("clusternetworkpolicies");
        self.lock().res.insert(
            collection(g, v, r),
            Res {
                kind,
                api_version: api_version(g, v),
                ..Default::default()
            },
        );
    }

    /// Down: cut every watch and close new connections before answering.
    pub fn set_down(&self, down: bool) {
        let mut st = self.lock();
        st.down = down;
        if down {
            for res in st.res.values_mut() {
                res.watchers.clear();
            }
        }
    }

    /// Append a line to the log of pod `ns/name` (served at `pods/<name>/log`,
    /// followers get it at once).
    pub fn append_log(&self, ns: &str, name: &str, line: &str) {
        let mut st = self.lock();
        let (lines, followers) = st.logs.entry(format!("{ns}/{name}")).or_default();
        let line = format!("{line}\n");
        lines.push(line.clone());
        followers.retain(|f| f.send(line.clone()).is_ok());
    }

    pub fn rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// How many requests so far were to `resource`, watches only or not.
    pub fn requests_to(&self, resource: &str, watches: bool) -> usize {
        self.requests()
            .iter()
            .filter(|r| {
                r.contains(&format!("/{resource}")) && (!watches || r.contains("watch=true"))
            })
            .count()
    }

    async fn serve(&self, mut sock: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let q: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let watch = q.get("watch") == Some(&"true") || q.get("watch") == Some(&"1");
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);

        // Decide under the lock; write after releasing it.
        let reply = {
            let mut st = self.lock();
            if st.down {
                return; // connection closed without an answer
            }
            st.requests.push(format!("GET {target}"));
            let rv = st.rv;
            let follow = q.get("follow") == Some(&"true");
            if let Some(pod) = log_of(path) {
                Self::log_reply(&mut st, &pod, follow)
            } else if let Some((cluster_path, ns)) = namespaced(path) {
                match st.res.get_mut(&cluster_path) {
                    Some(res) if !watch => Self::decide_in(res, &cluster_path, Some(&ns), rv),
                    _ => {
                        let body = status(404, "NotFound", &format!("no such path {path}"));
                        Err(("404 Not Found", body))
                    }
                }
            } else if let Some(res) = st.res.get_mut(path) {
                Self::decide(res, path, watch, from, rv)
            } else {
                let body = status(404, "NotFound", &format!("no such path {path}"));
                Err(("404 Not Found", body))
            }
        };
        self.write_reply(sock, reply).await
    }

    /// A pod's log: all of it, or (`follow`) all of it and then what comes.
    fn log_reply(st: &mut State, pod: &str, follow: bool) -> Reply {
        let Some((lines, followers)) = st.logs.get_mut(pod) else {
            let body = status(404, "NotFound", &format!("pods \"{pod}\" not found"));
            return Err(("404 Not Found", body));
        };
        if !follow {
            return Err(("200 OK", lines.concat()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        followers.push(tx);
        Ok((lines.clone(), Some(rx)))
    }

    /// A list of one namespace's objects of a cluster-wide collection.
    fn decide_in(res: &mut Res, path: &str, ns: Option<&str>, rv: u64) -> Reply {
        let all = Self::decide(res, path, false, 0, rv);
        let Some(ns) = ns else { return all };
        match all {
            Err(("200 OK", body)) => {
                let mut v: Value = serde_json::from_str(&body).unwrap_or_default();
                if let Some(items) = v["items"].as_array_mut() {
                    items.retain(|o| o["metadata"]["namespace"].as_str() == Some(ns));
                }
                Err(("200 OK", v.to_string()))
            }
            other => other,
        }
    }

    /// The answer to a request for a known collection.
    fn decide(res: &mut Res, path: &str, watch: bool, from: u64, rv: u64) -> Reply {
        {
            if res.forbidden || (watch && res.watch_forbidden) {
                let resource = path.rsplit('/').next().unwrap_or_default();
                let verb = if watch { "watch" } else { "list" };
                let body = status(
                    403,
                    "Forbidden",
                    &format!("{resource} is forbidden: User \"system:serviceaccount:kube-system:palisade-agent\" cannot {verb} resource \"{resource}\" at the cluster scope"),
                );
                Err(("403 Forbidden", body))
            } else if !watch {
                let items: Vec<Value> = res
                    .objects
                    .values()
                    .map(|o| {
                        // List items carry no kind/apiVersion, like the real thing.
                        let mut o = o.clone();
                        if let Some(m) = o.as_object_mut() {
                            m.remove("kind");
                            m.remove("apiVersion");
                        }
                        o
                    })
                    .collect();
                let body = json!({
                    "kind": format!("{}List", res.kind),
                    "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": rv.to_string()},
                    "items": items,
                });
                Err(("200 OK", body.to_string()))
            } else if from < res.compacted {
                Ok((vec![format!("{}\n", gone(from, res.compacted))], None))
            } else {
                let backlog: Vec<String> = res
                    .history
                    .iter()
                    .filter(|(v, _)| *v > from)
                    .map(|(_, l)| l.clone())
                    .collect();
                let (tx, rx) = mpsc::unbounded_channel();
                res.watchers.push(tx);
                Ok((backlog, Some(rx)))
            }
        }
    }

    async fn write_reply(&self, mut sock: TcpStream, reply: Reply) {
        match reply {
            Err((code, body)) => respond(&mut sock, code, &body).await,
            Ok((backlog, rx)) => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for line in backlog {
                    if write_chunk(&mut sock, &line).await.is_err() {
                        return;
                    }
                }
                let Some(mut rx) = rx else {
                    let _ = sock.write_all(b"0\r\n\r\n").await;
                    return;
                };
                loop {
                    match rx.recv().await {
                        // An empty line asks for a clean end of the stream.
                        Some(line) if line.is_empty() => {
                            let _ = sock.write_all(b"0\r\n\r\n").await;
                            return;
                        }
                        Some(line) => {
                            if write_chunk(&mut sock, &line).await.is_err() {
                                return;
                            }
                        }
                        // Sender dropped: cut the connection mid-stream.
                        None => return,
                    }
                }
            }
        }
    }
}

/// `namespace/pod` of a pod log path (`/api/v1/namespaces/<ns>/pods/<name>/log`).
fn log_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let (ns, rest) = rest.split_once("/pods/")?;
    let name = rest.strip_suffix("/log")?;
    Some(format!("{ns}/{name}"))
}

/// The cluster-wide collection and the namespace of a namespaced list path
/// (`/api/v1/namespaces/<ns>/<resource>`, `/apis/<g>/<v>/namespaces/<ns>/<resource>`).
fn namespaced(path: &str) -> Option<(String, String)> {
    let (prefix, rest) = path.split_once("/namespaces/")?;
    let (ns, resource) = rest.split_once('/')?;
    if resource.contains('/') {
        return None;
    }
    Some((format!("{prefix}/{resource}"), ns.to_string()))
}

/// Either a complete response (status line, JSON body) or a watch stream: the
/// lines to replay, then the live channel (none: end after the replay).
type Reply = Result<(Vec<String>, Option<mpsc::UnboundedReceiver<String>>), (&'static str, String)>;

impl Res {
    fn emit(&mut self, rv: u64, ev: Value) {
        let line = format!("{ev}\n");
        self.history.push((rv, line.clone()));
        self.watchers.retain(|w| w.send(line.clone()).is_ok());
    }
}

fn status(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
    .to_string()
}

fn gone(from: u64, oldest: u64) -> Value {
    json!({"type": "ERROR", "object": serde_json::from_str::<Value>(&status(
        410, "Expired", &format!("too old resource version: {from} ({oldest})"))).unwrap_or_default()})
}

async fn respond(sock: &mut TcpStream, code: &str, body: &str) {
    let resp = format!(
        "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

async fn write_chunk(sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
    sock.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await?;
    sock.flush().await
}
