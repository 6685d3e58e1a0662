//! Pod interface discovery on a bridge-style node (the CNI bridge plugin, flannel):
//! no host route names the pod's veth, so the neighbour entry of the pod's address
//! gives its MAC and the bridge's forwarding database the port it is on. The
//! namespace harness is ptp-style, so this is where the bridge path runs. Needs
//! root (`#[ignore]`d for plain `cargo test`, run by `cargo xtask test`);
//! everything happens in a network namespace private to the test thread.
use palisade_agent::node::Links;

mod common;

fn ip(args: &[&str]) {
    common::cmd("ip", args);
}

fn bridge(args: &[&str]) {
    common::cmd("bridge", args);
}

#[test]
#[ignore = "needs root and network namespaces: run through cargo xtask test"]
fn bridge_style_pods_are_found_through_neighbour_and_fdb_entries() {
    common::require_root();
    // vethpod1 is the pod's host side, podeth stands in for its eth0.
    let (host_if, _) = common::private_veth("vethpod1", "podeth");
    ip(&["link", "add", "cni0", "type", "bridge"]);
    ip(&["link", "set", "cni0", "up"]);
    ip(&["addr", "add", "10.88.0.1/24", "dev", "cni0"]);
    ip(&["link", "set", "vethpod1", "master", "cni0"]);
    // (sysfs shows the namespace it was mounted in, not this thread's: ask ip.)
    let shown = common::cmd("ip", &["-json", "link", "show", "podeth"]);
    let link: serde_json::Value = serde_json::from_str(&shown).expect("ip -json");
    let mac = link[0]["address"].as_str().expect("pod MAC").to_string();
    ip(&[
        "neigh",
        "replace",
        "10.88.0.5",
        "lladdr",
        &mac,
        "dev",
        "cni0",
        "nud",
        "permanent",
    ]);
    bridge(&[
        "fdb", "replace", &mac, "dev", "vethpod1", "master", "static",
    ]);
    // A ptp-style pod beside it: its host route names the veth directly.
    let (ptp_if, _) = common::private_veth_here("vethpod2", "podeth2");
    ip(&["route", "add", "10.99.0.7/32", "dev", "vethpod2"]);

    let links = Links::scan().expect("scan");
    assert_eq!(
        links.pod_interface("10.88.0.5".parse().expect("ip")),
        Some(("vethpod1".to_string(), host_if)),
        "found through neighbour + FDB; neigh {:?}, fdb {:?}",
        links.neigh,
        links.fdb
    );
    assert_eq!(
        links.pod_interface("10.99.0.7".parse().expect("ip")),
        Some(("vethpod2".to_string(), ptp_if)),
        "found through its host route"
    );
    assert_eq!(
        links.pod_interface("10.88.0.6".parse().expect("ip")),
        None,
        "an address nobody has"
    );
    assert!(
        links.veths.contains_key("vethpod1") && !links.by_name.is_empty(),
        "{links:?}"
    );
}
