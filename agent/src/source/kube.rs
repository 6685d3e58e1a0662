//! The Kubernetes source: watches the API server and feeds the sync loop.
//!
//! It owns one kube-rs watcher per resource the engine reads (Pods, Namespaces,
//! NetworkPolicies, Services, EndpointSlices, all namespaces: peers of local pods
//! can live anywhere; Nodes and ClusterNetworkPolicies, cluster-scoped) and
//! turns their events into [`SourceEvent`]s:
//!
//! - Nothing is declared consistent (`Synced`) until every watcher has delivered its
//!   initial list, so the sync loop programs nothing from a partial view.
//! - Watch expiry (410 Gone), dropped connections and API server restarts are
//!   handled by the watcher (relist or re-watch) behind an exponential backoff with
//!   jitter. Errors never cause deletes: the last programmed state stays enforced
//!   until a fresh list proves an object is gone (objects missing from a relist are
//!   deleted at its end).
//! - An RBAC refusal (403) is logged once, naming the verb and the resource, until
//!   that watcher recovers.
//! - ClusterNetworkPolicy is a CRD: while the API server does not serve it (404)
//!   it counts as listed and empty, so NetworkPolicy is enforced meanwhile, and
//!   it is picked up once the CRD is installed (the watcher keeps retrying).
//!
//! `Synced.revision` is the highest `metadata.resourceVersion` seen in any event.
//! Kubernetes calls resource versions opaque; on every API server backed by etcd
//! they are the etcd revision, so a user can compare it with the resourceVersion
//! `kubectl apply -o jsonpath='{.metadata.resourceVersion}'` printed.
use std::collections::BTreeSet;

use futures::{stream::BoxStream, FutureExt, StreamExt};
use k8s_openapi::api::{discovery::v1::EndpointSlice, networking::v1::NetworkPolicy};
use k8s_openapi::{
    api::core::v1::{Namespace, Node, Pod, Service},
    Resource as _,
};
use kube::{
    runtime::{
        watcher::{self, watcher, Event},
        WatchStreamExt,
    },
    Api, Client, ResourceExt,
};
use palisade_policy::{
    object_from_k8s, ClusterNetworkPolicy, K8sObject, ModelError, Object, ObjectRef,
};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{
    backoff::{BackoffConfig, Jittered},
    SourceEvent,
};

/// One resource the source lists and watches, cluster-wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watched {
    /// API group ("" for the core group), as RBAC rules name it.
    pub group: &'static str,
    /// API version within the group, as URLs name it.
    pub version: &'static str,
    /// Plural resource name, as RBAC rules and URLs name it.
    pub resource: &'static str,
}

impl Watched {
    /// Served only where its CRD is installed: while the API server does not
    /// serve it (404), it counts as listed and empty, the rest is enforced,
    /// and it is picked up once served.
    pub fn optional(&self) -> bool {
        self.group == ClusterNetworkPolicy::GROUP
    }
}

const fn watched<K: k8s_openapi::Resource>() -> Watched {
    Watched {
        group: K::GROUP,
        version: K::VERSION,
        resource: K::URL_PATH_SEGMENT,
    }
}

// The watched types are named once, here; both the RBAC list ([`WATCHED`]) and the
// watchers in [`KubeSource::run`] come from this list, so they cannot drift apart.
macro_rules! for_each_watched {
    ($mac:ident) => {
        $mac!(
            Pod,
            Namespace,
            NetworkPolicy,
            Service,
            EndpointSlice,
            Node,
            ClusterNetworkPolicy
        )
    };
}

macro_rules! watched_list {
    ($($t:ty),*) => { [$(watched::<$t>()),*] };
}

/// Every resource the kube source reads. deploy/'s ClusterRole must grant exactly
/// [`VERBS`] on exactly these (checked by `tests/deploy.rs`).
pub const WATCHED: [Watched; 7] = for_each_watched!(watched_list);

/// The verbs the source uses: a kube-rs watcher lists (paginated), then watches.
/// It never GETs a single object, so `get` is not needed.
pub const VERBS: [&str; 2] = ["list", "watch"];

/// What one watcher item becomes, with the object type erased so the five streams
/// can be merged.
enum Update {
    Init,
    InitApply(Converted),
    InitDone,
    Apply(Converted),
    Delete(ObjectRef, Option<u64>),
    Error(watcher::Error),
}

struct Converted {
    r: ObjectRef,
    obj: Result<Object, ModelError>,
    resource_version: Option<u64>,
}

fn convert<K: K8sObject + kube::Resource>(k: &K) -> Converted {
    Converted {
        r: K8sObject::object_ref(k),
        obj: object_from_k8s(k),
        resource_version: rv(k),
    }
}

fn rv<K: kube::Resource>(k: &K) -> Option<u64> {
    k.resource_version().and_then(|v| v.parse().ok())
}

/// Per-watcher bookkeeping.
#[derive(Default)]
struct WatchState {
    /// Objects this watcher has applied and not deleted.
    known: BTreeSet<ObjectRef>,
    /// During a (re)list: the objects listed so far.
    relisting: Option<BTreeSet<ObjectRef>>,
    /// Has delivered a complete list at least once.
    listed: bool,
    /// The error last logged, so a retry loop logs it once.
    logged_error: Option<String>,
    /// The highest resourceVersion this watcher has delivered.
    revision: u64,
}

/// The Kubernetes source. See the module docs.
pub struct KubeSource {
    client: Client,
    backoff: BackoffConfig,
}

impl KubeSource {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            backoff: BackoffConfig::default(),
        }
    }

    /// Retry timing (tests use short ones).
    pub fn with_backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    fn stream<K>(&self) -> BoxStream<'static, Update>
    where
        K: K8sObject
            + kube::Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
    {
        let api: Api<K> = Api::all(self.client.clone());
        watcher(api, watcher::Config::default())
            .backoff(Jittered::new(self.backoff))
            .map(|item| match item {
                Ok(Event::Init) => Update::Init,
                Ok(Event::InitApply(k)) => Update::InitApply(convert(&k)),
                Ok(Event::InitDone) => Update::InitDone,
                Ok(Event::Apply(k)) => Update::Apply(convert(&k)),
                Ok(Event::Delete(k)) => Update::Delete(K8sObject::object_ref(&k), rv(&k)),
                Err(e) => Update::Error(e),
            })
            .boxed()
    }

    /// Watch until the sync loop goes away.
    pub async fn run(self, tx: mpsc::UnboundedSender<SourceEvent>) {
        macro_rules! streams {
            ($($t:ty),*) => { vec![$(self.stream::<$t>()),*] };
        }
        let streams: Vec<BoxStream<'static, Update>> = for_each_watched!(streams);
        let tagged = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |u| (i, u)).boxed());
        let mut merged = futures::stream::select_all(tagged);
        let mut run = Run {
            tx,
            states: WATCHED.iter().map(|_| WatchState::default()).collect(),
            revision: 0,
            dirty: false,
            synced_once: false,
            errors: Default::default(),
        };
        info!(
            resources = %WATCHED.iter().map(|w| w.resource).collect::<Vec<_>>().join(","),
            "watching the API server"
        );
        while let Some((i, u)) = merged.next().await {
            run.handle(i, u);
            // Drain what is already there, then declare one consistent batch.
            while let Some(Some((i, u))) = merged.next().now_or_never() {
                run.handle(i, u);
            }
            run.maybe_synced();
            if run.tx.is_closed() {
                return;
            }
        }
    }
}

struct Run {
    tx: mpsc::UnboundedSender<SourceEvent>,
    states: Vec<WatchState>,
    revision: u64,
    /// Something was sent since the last `Synced`.
    dirty: bool,
    synced_once: bool,
    /// Per resource, why its stream is failing now (reported to `/ready`).
    errors: std::collections::BTreeMap<String, String>,
}

impl Run {
    fn send(&mut self, ev: SourceEvent) {
        self.dirty = true;
        // A closed channel means the agent is shutting down; `run` notices.
        let _ = self.tx.send(ev);
    }

    fn seen_rv(&mut self, i: usize, rv: Option<u64>) {
        if let Some(rv) = rv {
            self.revision = self.revision.max(rv);
            self.states[i].revision = self.states[i].revision.max(rv);
        }
    }

    fn apply(&mut self, i: usize, c: Converted) {
        self.seen_rv(i, c.resource_version);
        match c.obj {
            Ok(obj) => {
                self.states[i].known.insert(c.r);
                self.send(SourceEvent::Apply {
                    obj,
                    origin: "apiserver".to_string(),
                });
            }
            Err(e) => {
                // The object is unreadable: forget the earlier version too, so its pod
                // is not enforced (or allowed as a peer) on stale data; the sync loop
                // reports the error until a readable version arrives. The origin is
                // the object's own name, which is what the sync loop clears on the
                // next apply or delete of it.
                if self.states[i].known.remove(&c.r) {
                    self.send(SourceEvent::Delete(c.r.clone()));
                }
                self.send(SourceEvent::Error {
                    origin: c.r.to_string(),
                    message: e.to_string(),
                });
            }
        }
    }

    fn handle(&mut self, i: usize, u: Update) {
        let w = WATCHED[i];
        // `Init` precedes every list attempt, failed or not: not a sign of recovery.
        if !matches!(u, Update::Error(_) | Update::Init) {
            if let Some(prev) = self.states[i].logged_error.take() {
                info!(resource = w.resource, previous_error = %prev, "watch recovered");
                self.errors.remove(w.resource);
                let _ = self.tx.send(SourceEvent::InputErrors(self.errors.clone()));
                self.dirty = true;
            }
        }
        match u {
            Update::Init => {
                self.states[i].relisting = Some(BTreeSet::new());
            }
            Update::InitApply(c) => {
                if let Some(l) = self.states[i].relisting.as_mut() {
                    l.insert(c.r.clone());
                }
                self.apply(i, c);
            }
            Update::InitDone => {
                self.health(i, true, false);
                let listed = self.states[i].relisting.take().unwrap_or_default();
                let gone: Vec<ObjectRef> =
                    self.states[i].known.difference(&listed).cloned().collect();
                for r in gone {
                    self.states[i].known.remove(&r);
                    self.send(SourceEvent::Delete(r));
                }
                if !self.states[i].listed {
                    info!(resource = w.resource, objects = listed.len(), "listed");
                }
                self.states[i].listed = true;
                // A relist that changed nothing is still news: it ends a period in
                // which this resource was not known to be current.
                self.dirty = true;
            }
            Update::Apply(c) => self.apply(i, c),
            Update::Delete(r, rv) => {
                self.seen_rv(i, rv);
                self.states[i].known.remove(&r);
                self.send(SourceEvent::Delete(r));
            }
            Update::Error(e) => self.log_error(i, &e),
        }
    }

    fn log_error(&mut self, i: usize, e: &watcher::Error) {
        let w = WATCHED[i];
        let (verb, code) = classify(e);
        if code == Some(404) && w.optional() {
            self.not_served(i);
            return;
        }
        if code == Some(410) {
            // Routine: the watch fell behind the API server's history; the watcher
            // relists, and objects that vanished meanwhile are deleted at its end.
            info!(resource = w.resource, "watch expired (410 Gone); relisting");
            self.health(i, true, true);
            return;
        }
        self.health(i, false, true);
        let msg = e.to_string();
        if self.states[i].logged_error.as_deref() == Some(msg.as_str()) {
            return;
        }
        let group = if w.group.is_empty() {
            "\"\" (core)"
        } else {
            w.group
        };
        let res = w.resource;
        // What this failure means for enforcement, as it really is: the other
        // resources keep being followed and programmed.
        let effect = if verb == "list" && !self.states[i].listed {
            "nothing is programmed until every resource has been listed once".to_string()
        } else {
            format!("changes to {res} are not seen until it succeeds (the {res} read last stay as they were; every other resource is still followed and programmed)")
        };
        let report = if code == Some(403) {
            let m = format!("RBAC: the API server forbids this agent to {verb} {res} (apiGroup {group}) in all namespaces; {effect}. Grant list and watch on it to the agent's ServiceAccount (deploy/rbac.yaml); retrying with backoff");
            error!(verb, resource = res, api_group = w.group, "{m}");
            m
        } else {
            let m = format!(
                "cannot {verb} {res} on the API server ({msg}); {effect}; retrying with backoff"
            );
            warn!(verb, resource = res, "{m}");
            m
        };
        self.states[i].logged_error = Some(msg);
        self.errors.insert(res.to_string(), report);
        let _ = self.tx.send(SourceEvent::InputErrors(self.errors.clone()));
    }

    /// An optional resource the API server does not serve (its CRD is not
    /// installed, or was removed): listed as empty, so the rest is programmed;
    /// objects known from before are gone with their API.
    fn not_served(&mut self, i: usize) {
        let w = WATCHED[i];
        let st = &mut self.states[i];
        st.relisting = None;
        st.listed = true;
        let gone: Vec<ObjectRef> = std::mem::take(&mut st.known).into_iter().collect();
        for r in gone {
            self.send(SourceEvent::Delete(r));
        }
        self.dirty = true;
        let msg = format!(
            "{} ({}/{}) is not served by the API server: its CRD is not installed. NetworkPolicy is enforced; {} are picked up once the CRD is installed, without a restart",
            w.resource, w.group, w.version, w.resource
        );
        if self.states[i].logged_error.as_deref() != Some(msg.as_str()) {
            warn!(resource = w.resource, "{msg}");
            self.states[i].logged_error = Some(msg.clone());
            self.errors.insert(w.resource.to_string(), msg);
            let _ = self.tx.send(SourceEvent::InputErrors(self.errors.clone()));
        }
    }

    /// Reports resource `i`'s feed as current or failing to the metrics.
    fn health(&mut self, i: usize, up: bool, restarted: bool) {
        let _ = self.tx.send(SourceEvent::Health {
            resource: WATCHED[i].resource.to_string(),
            up,
            restarted,
        });
    }

    fn maybe_synced(&mut self) {
        let consistent = self
            .states
            .iter()
            .all(|s| s.listed && s.relisting.is_none());
        if !consistent || !self.dirty {
            return;
        }
        if !self.synced_once {
            info!(
                revision = self.revision,
                "every resource listed; state is complete"
            );
            self.synced_once = true;
        }
        self.dirty = false;
        let _ = self.tx.send(SourceEvent::Synced {
            revision: self.revision.to_string(),
            revisions: WATCHED
                .iter()
                .zip(&self.states)
                .map(|(w, s)| (w.resource.to_string(), s.revision.to_string()))
                .collect(),
        });
    }
}

/// The verb a watcher error came from, and the API status code if the API server
/// answered one.
fn classify(e: &watcher::Error) -> (&'static str, Option<u16>) {
    let api_code = |e: &kube::Error| match e {
        kube::Error::Api(r) => Some(r.code),
        _ => None,
    };
    match e {
        watcher::Error::InitialListFailed(e) => ("list", api_code(e)),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            ("watch", api_code(e))
        }
        watcher::Error::WatchError(r) => ("watch", Some(r.code)),
        watcher::Error::NoResourceVersion => ("list", None),
    }
}
