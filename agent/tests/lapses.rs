//! Ordinary actions that must never switch enforcement off, each reproduced on
//! a namespace cluster with the real agent and checked by probing pods: pins
//! removed under a running agent, a netlink filter deleted, a second agent on
//! the same pin directory, programs pinned where the agent cannot see them, and
//! policy files broken, symlinked (a ConfigMap volume) or duplicated.
//! Needs root: `#[ignore]`d for plain `cargo test`; `cargo xtask test` runs
//! it with the release agent binary.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use palisade_harness::{in_netns, Cluster, Outcome, Via};
use serde_json::{json, Value};

mod common;
mod probes;
use common::{agent_binary, cluster_with};
use Outcome::{Blocked, Reachable};
use Via::Pod;

/// x/b (node 2) accepts only the pods in `from`, on TCP 80.
fn b_accepts(from: &[&str]) -> Value {
    let peers: Vec<Value> = from
        .iter()
        .map(|p| json!({"podSelector": {"matchLabels": {"pod": p}}}))
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "b-from", "namespace": "x"},
        "spec": {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [{"from": peers, "ports": [{"port": 80}]}]
        }
    })
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("yaml")
}

/// The `/ready` body of the agent on `node`.
fn ready(c: &Cluster, node: usize) -> (u16, Value) {
    match palisade_harness::agent::get_ready(c.node_netns(node).expect("ns")) {
        Ok(r) => (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        ),
        // Not listening yet (starting).
        Err(e) => (0, json!({ "error": format!("{e:#}") })),
    }
}

/// Waits (20 s at most) until `/ready` of `node` satisfies `ok`.
fn wait_ready(c: &Cluster, node: usize, what: &str, ok: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = ready(c, node);
        if ok(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /ready of node-{node} after 20 s: {status} {body}\n{}",
            c.agent_log_tail(node, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Once repaired, later full passes (one a second here) find nothing to
/// repair: the check must not mistake what is attached for something missing.
fn assert_steady(c: &Cluster, node: usize, after_repair: &Value) {
    // The test's own removal may still have been under way when the first
    // repair was reported (a slow guest): wait until the count stops moving,
    // then require the passes after that to repair nothing.
    let mut after_repair = after_repair.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let (_, now) = ready(c, node);
        if now["repairs"] == after_repair["repairs"] || Instant::now() > deadline {
            break;
        }
        after_repair = now;
    }
    std::thread::sleep(Duration::from_millis(2500));
    let (_, now) = ready(c, node);
    assert_eq!(
        now["repairs"], after_repair["repairs"],
        "passes after the repair repaired again: {now}"
    );
    assert_eq!(now["errors"], json!([]), "{now}");
}

fn errors_text(body: &Value) -> String {
    body["errors"].to_string()
}

/// Pins removed under a running agent (the whole directory, as `rm -rf` does):
/// enforcement holds, and the next full pass pins everything again and says so.
#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn removed_pins_keep_enforcing_and_are_pinned_again() {
    common::require_root();
    let mut c = cluster_with(&["--resync-seconds", "1"]);
    c.apply_policy(&b_accepts(&["a"])).expect("policy");
    c.sync().expect("sync");
    probes::expect(&c, &[("policy applied", "x/c", "x/b", Pod, Blocked)]);
    let pins = c.pin_dir(2).expect("pin dir");
    std::fs::remove_dir_all(&pins).expect("rm -rf pins");
    probes::expect(
        &c,
        &[
            ("attached without their pins", "x/c", "x/b", Pod, Blocked),
            ("x/a still allowed", "x/a", "x/b", Pod, Reachable),
        ],
    );
    let veth = std::ffi::CString::new(c.pod_host_veth("x/b").expect("veth")).expect("name");
    // SAFETY: a valid C string; the lookup runs in the node's namespace.
    let ifindex = in_netns(c.node_netns(2).expect("ns"), || unsafe {
        libc::if_nametoindex(veth.as_ptr())
    })
    .expect("netns");
    assert_ne!(ifindex, 0);
    let link_pins =
        ["to_pod", "from_pod"].map(|p| pins.join("links").join(format!("{ifindex}-{p}")));
    // One pass may repair the maps and a later one the links: wait for both.
    let body = wait_ready(&c, 2, "repairs reported and links pinned again", |_, b| {
        b["repairs"].as_u64().unwrap_or(0) > 0 && link_pins.iter().all(|p| p.exists())
    });
    assert!(body["ready"].as_bool().unwrap_or(false), "{body}");
    assert!(pins.join("maps").read_dir().expect("maps").count() > 3);
    assert_steady(&c, 2, &body);
    // The restored pins carry a restart: enforcement continues through it.
    c.stop_agent(2).expect("stop");
    probes::expect(
        &c,
        &[("after the agent stopped", "x/c", "x/b", Pod, Blocked)],
    );
    c.start_agent(2).expect("restart");
    probes::expect(&c, &[("restarted", "x/c", "x/b", Pod, Blocked)]);
    c.teardown().expect("teardown");
}

/// A netlink filter deleted under a running agent is attached again at the
/// next full pass.
#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn a_deleted_netlink_filter_is_attached_again() {
    common::require_root();
    let mut c = cluster_with(&["--resync-seconds", "1", "--attach-mode", "netlink"]);
    c.apply_policy(&b_accepts(&["a"])).expect("policy");
    c.sync().expect("sync");
    probes::expect(&c, &[("policy applied", "x/c", "x/b", Pod, Blocked)]);
    let veth = c.pod_host_veth("x/b").expect("veth").to_string();
    let ns = c.node_netns(2).expect("ns").to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns, "tc", "filter", "del", "dev", &veth, "egress",
        ])
        .output()
        .expect("tc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = wait_ready(&c, 2, "repairs reported", |_, b| {
        b["repairs"].as_u64().unwrap_or(0) > 0
    });
    probes::expect(&c, &[("filter back", "x/c", "x/b", Pod, Blocked)]);
    assert_steady(&c, 2, &body);
    probes::expect(&c, &[("x/a still allowed", "x/a", "x/b", Pod, Reachable)]);
    c.teardown().expect("teardown");
}

/// A second agent started on a pin directory in use refuses to start, naming
/// the holder.
#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn a_second_agent_on_the_same_pin_directory_refuses_to_start() {
    common::require_root();
    let mut c = cluster_with(&[]);
    let pins = c.pin_dir(2).expect("pin dir");
    let src = c.source_dir(2).expect("src");
    let holder = c.agent_pid(2).expect("pid");
    let out = in_netns(c.node_netns(2).expect("ns"), || {
        Command::new(agent_binary())
            .args(["--node-name", "node-2", "--ready-addr", "127.0.0.1:9999"])
            .arg("--source-dir")
            .arg(&src)
            .arg("--pin-dir")
            .arg(&pins)
            .args(["--uplink", "eth0"])
            .output()
    })
    .expect("netns")
    .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second agent ran:\n{err}");
    assert!(
        err.contains("another agent holds the pin directory")
            && err.contains(&format!("pid {holder}")),
        "{err}"
    );
    assert!(c.agent_running(2));
    c.teardown().expect("teardown");
}

/// Removes a directory on drop (pins moved aside by a test).
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Programs pinned where the agent cannot see them (another pin directory,
/// another bpffs: what `ip netns exec` and a fresh bpffs give) go on deciding
/// beside a new agent's: it must say so and not report ready.
#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn programs_pinned_out_of_sight_keep_a_new_agent_unready() {
    common::require_root();
    let mut c = cluster_with(&["--resync-seconds", "1"]);
    c.apply_policy(&b_accepts(&["a"])).expect("policy");
    c.sync().expect("sync");
    c.stop_agent(2).expect("stop");
    let pins = c.pin_dir(2).expect("pin dir");
    // bpffs does not rename directories: pin each link again elsewhere, then
    // remove the agent's pins, as if they were on a bpffs it cannot see.
    // (bpffs names have no dots.)
    let mut aside = pins.clone().into_os_string();
    aside.push("-out-of-sight");
    let moved = RemoveOnDrop(PathBuf::from(aside));
    std::fs::create_dir_all(&moved.0).expect("dir");
    for e in std::fs::read_dir(pins.join("links"))
        .expect("links")
        .flatten()
    {
        let link = aya::programs::links::PinnedLink::from_pin(e.path()).expect("pinned link");
        aya::programs::links::FdLink::from(link)
            .pin(moved.0.join(e.file_name()))
            .expect("pin elsewhere");
    }
    std::fs::remove_dir_all(&pins).expect("remove the agent's pins");
    c.launch_agent(2).expect("start");
    let body = wait_ready(&c, 2, "another agent's programs reported", |status, b| {
        status == 503 && errors_text(b).contains("programs of another Palisade agent")
    });
    assert_eq!(body["ready"], false, "{body}");
    // Once those programs are gone, the agent is ready.
    drop(moved);
    wait_ready(&c, 2, "ready once they are gone", |status, _| status == 200);
    c.sync().expect("sync");
    probes::expect(
        &c,
        &[
            ("ready: denied", "x/c", "x/b", Pod, Blocked),
            ("ready: allowed", "x/a", "x/b", Pod, Reachable),
        ],
    );
    c.teardown().expect("teardown");
}

fn on_every_node(c: &Cluster, f: impl Fn(&Path)) {
    for node in 1..=c.node_count() {
        f(&c.source_dir(node).expect("source dir"));
    }
}

/// A ConfigMap volume's layout in `dir`: `..<version>/<name>`, `..data` ->
/// `..<version>`, `<name>` -> `..data/<name>`; a later call swaps `..data`.
fn configmap(dir: &Path, version: &str, name: &str, contents: &str) {
    use std::os::unix::fs::symlink;
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join(name), contents).expect("write");
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..{version}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    if std::fs::symlink_metadata(dir.join(name)).is_err() {
        symlink(format!("..data/{name}"), dir.join(name)).expect("symlink");
    }
}

/// Policy files broken in every ordinary way keep their last good policy;
/// policies mounted from a ConfigMap stay enforced past the rescan and follow
/// its updates; an object in two files comes from the first, and the other
/// applies when that one goes.
#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn policy_files_broken_symlinked_or_duplicated_keep_enforcing() {
    common::require_root();
    let mut c = cluster_with(&["--poll-ms", "300"]);
    c.write_source_file("base.yaml", &yaml(&b_accepts(&["a"])))
        .expect("write");
    c.sync().expect("sync");
    probes::expect(&c, &[("policy applied", "x/c", "x/b", Pod, Blocked)]);
    let broken: [(&str, &str); 3] = [
        (
            "unparseable",
            "kind: NetworkPolicy\nspec: {policyTypes: [Ingress\n",
        ),
        ("empty", ""),
        (
            "another kind",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: x}\n",
        ),
    ];
    for (what, text) in broken {
        c.write_source_file("base.yaml", text).expect("break");
        c.sync().expect("sync");
        // Past a rescan: nothing a later scan does may drop the policy.
        std::thread::sleep(Duration::from_millis(700));
        let still = format!("{what}: still enforced");
        probes::expect(
            &c,
            &[
                (&still, "x/c", "x/b", Pod, Blocked),
                (what, "x/a", "x/b", Pod, Reachable),
            ],
        );
        let (_, body) = ready(&c, 2);
        assert!(
            errors_text(&body).contains("base.yaml"),
            "{what}: reported: {body}"
        );
    }
    c.remove_source_file("base.yaml").expect("remove");
    c.sync().expect("sync");
    probes::expect(
        &c,
        &[("removed: its policy goes", "x/c", "x/b", Pod, Reachable)],
    );
    let (_, body) = ready(&c, 2);
    assert!(
        !errors_text(&body).contains("base.yaml"),
        "error cleared: {body}"
    );

    // A ConfigMap volume: symlinks into `..data`.
    on_every_node(&c, |d| {
        configmap(d, "v1", "policy.yaml", &yaml(&b_accepts(&["a"])))
    });
    c.sync().expect("sync");
    probes::expect(
        &c,
        &[("ConfigMap policy applied", "x/c", "x/b", Pod, Blocked)],
    );
    std::thread::sleep(Duration::from_millis(1000));
    probes::expect(
        &c,
        &[("still enforced after rescans", "x/c", "x/b", Pod, Blocked)],
    );
    on_every_node(&c, |d| {
        configmap(d, "v2", "policy.yaml", &yaml(&b_accepts(&["a", "c"])))
    });
    c.sync().expect("sync");
    probes::expect(
        &c,
        &[
            ("the ConfigMap update applies", "x/c", "x/b", Pod, Reachable),
            ("y/a not added", "y/a", "x/b", Pod, Blocked),
        ],
    );

    // The same policy in a second file, first by path: it wins, and the
    // conflict is reported; once it goes, the ConfigMap's copy applies again.
    c.write_source_file("0-override.yaml", &yaml(&b_accepts(&["a"])))
        .expect("write");
    c.sync().expect("sync");
    probes::expect(
        &c,
        &[("the first file by path wins", "x/c", "x/b", Pod, Blocked)],
    );
    let (_, body) = ready(&c, 2);
    assert!(
        errors_text(&body).contains("policy.yaml")
            && errors_text(&body).contains("0-override.yaml"),
        "the conflict names both files: {body}"
    );
    c.remove_source_file("0-override.yaml").expect("remove");
    c.sync().expect("sync");
    probes::expect(
        &c,
        &[("the other copy applies", "x/c", "x/b", Pod, Reachable)],
    );
    let (_, body) = ready(&c, 2);
    assert_eq!(body["errors"], json!([]), "{body}");
    c.teardown().expect("teardown");
}

/// The Palisade programs attached to `dev` in `node`'s namespace: TCX ones by
/// the kernel's query, netlink filters through `tc`.
fn programs(c: &Cluster, node: usize, dev: &str) -> (Vec<String>, Vec<String>) {
    use aya::programs::{SchedClassifier, TcAttachType};
    let ns = c.node_netns(node).expect("ns").to_string();
    let dev_arg = dev.to_string();
    let tcx = in_netns(&ns, move || {
        let mut names = Vec::new();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            if let Ok((_, progs)) = SchedClassifier::query_tcx(&dev_arg, t) {
                names.extend(
                    progs
                        .iter()
                        .filter_map(|p| p.name_as_str().map(str::to_string)),
                );
            }
        }
        names.sort();
        names
    })
    .expect("netns");
    let mut filters = Vec::new();
    for dir in ["ingress", "egress"] {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &ns, "tc", "filter", "show", "dev", dev, dir,
            ])
            .output()
            .expect("tc");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(w) = line
                .split_whitespace()
                .find(|w| w.starts_with("to_pod") || w.starts_with("from_pod"))
            {
                filters.push(w.split(':').next().unwrap_or(w).to_string());
            }
        }
    }
    filters.sort();
    (tcx, filters)
}

/// An installed node switched from TCX to netlink attach mode and back
/// migrates: the new way is attached, the old removed, never both stacked, and
/// enforcement holds throughout.
#[test]
#[ignore = "needs root, BPF and network namespaces: run through cargo xtask test"]
fn a_change_of_attach_mode_migrates_without_stacking() {
    common::require_root();
    let mut c = cluster_with(&[]);
    c.apply_policy(&b_accepts(&["a"])).expect("policy");
    c.sync().expect("sync");
    let veth = c.pod_host_veth("x/b").expect("veth").to_string();
    let pods = vec!["from_pod".to_string(), "to_pod".to_string()];
    assert_eq!(programs(&c, 2, &veth), (pods.clone(), vec![]));
    for (args, want) in [
        (&["--attach-mode", "netlink"][..], (vec![], pods.clone())),
        (&["--attach-mode", "tcx"][..], (pods.clone(), vec![])),
    ] {
        c.stop_agent(2).expect("stop");
        c.set_agent_args(args).expect("args");
        c.start_agent(2).expect("start");
        assert_eq!(programs(&c, 2, &veth), want, "{args:?}");
        let (_, body) = ready(&c, 2);
        assert_eq!(body["errors"], json!([]), "{args:?}: {body}");
        let name = format!("{args:?}");
        probes::expect(
            &c,
            &[
                (&name, "x/c", "x/b", Pod, Blocked),
                (&name, "x/a", "x/b", Pod, Reachable),
            ],
        );
    }
    c.teardown().expect("teardown");
}
