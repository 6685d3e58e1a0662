//! Diff ordering: applying the writes one at a time never opens a gap. After every
//! single write, each probed address gets either its old or its new decision.
//! Also: unchanged state produces no writes; audit and overflow behaviour.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use palisade_common::{DIR_INGRESS, EP_FAIL_CLOSED, MAX_PORT_RANGES, PROTO_TCP, PROTO_UDP};
use palisade_policy::{
    diff, encode, Desired, DesiredEndpoint, Grant, MapSet, MapWrite, PeerRules, PodKey, PortSet,
    Protocol,
};
use proptest::prelude::*;

const NETS: [&str; 10] = [
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.0.0.0/16",
    "10.0.1.0/24",
    "10.0.1.0/28",
    "10.0.1.1/32",
    "10.0.1.17/32",
    "10.0.2.0/23",
    "10.0.3.0/24",
    "10.0.3.5/32",
];
const PROBES: [&str; 10] = [
    "10.0.1.1",
    "10.0.1.2",
    "10.0.1.17",
    "10.0.1.200",
    "10.0.2.1",
    "10.0.3.5",
    "10.0.3.6",
    "10.1.0.1",
    "192.0.2.1",
    "10.0.0.1",
];

fn net(i: usize) -> IpNet {
    NETS[i].parse().expect("a literal network")
}

fn grant_strategy() -> impl Strategy<Value = Grant> {
    (
        0..NETS.len(),
        proptest::collection::vec(0..NETS.len(), 0..3),
        0..4usize,
    )
        .prop_map(|(n, ex, p)| {
            let cidr = net(n);
            let except = ex
                .into_iter()
                .map(net)
                .filter(|e| cidr.contains(e) && e.prefix_len() > cidr.prefix_len())
                .collect();
            let mut ports = PortSet::default();
            match p {
                0 => ports = PortSet::everything(),
                1 => ports.add_range(Protocol::Tcp, 80, 80),
                2 => ports.add_range(Protocol::Tcp, 443, 443),
                _ => ports.add_all_ports(Protocol::Udp),
            }
            Grant {
                net: cidr,
                except,
                ports,
            }
        })
}

fn desired(iso: bool, grants: Vec<Grant>) -> Desired {
    let mut d = Desired::default();
    d.endpoints.insert(
        PodKey::new("ns", "p"),
        DesiredEndpoint {
            ipv4: Some("10.9.9.9".parse().expect("a literal address")),
            ingress_isolated: iso,
            ingress: PeerRules { grants },
            ..Default::default()
        },
    );
    d
}

fn decide(m: &MapSet, peer: IpAddr, proto: u8, port: u16) -> Option<bool> {
    let ep = m.endpoints.get(&PodKey::new("ns", "p"))?;
    Some(m.lookup(ep, DIR_INGRESS, peer, proto, Some(port)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn writes_never_open_a_gap(
        old_iso in any::<bool>(),
        new_iso in any::<bool>(),
        old in proptest::collection::vec(grant_strategy(), 0..5),
        new in proptest::collection::vec(grant_strategy(), 0..5),
        old_id in 1u32..3,
        new_id in 1u32..3,
    ) {
        let ids = |id| BTreeMap::from([(PodKey::new("ns", "p"), id)]);
        let a = encode(&desired(old_iso, old), &ids(old_id), false);
        let b = encode(&desired(new_iso, new), &ids(new_id), false);
        let writes = diff(&a, &b);
        let mut cur = a.clone();
        for w in &writes {
            w.apply_to(&mut cur);
            for p in PROBES {
                let peer: IpAddr = p.parse().unwrap();
                for (proto, port) in [(PROTO_TCP, 80), (PROTO_TCP, 443), (PROTO_UDP, 53)] {
                    let now = decide(&cur, peer, proto, port);
                    let was = decide(&a, peer, proto, port);
                    let will = decide(&b, peer, proto, port);
                    prop_assert!(now == was || now == will,
                        "after {:?}: {} {} {}: now {:?}, old {:?}, new {:?}", w, p, proto, port, now, was, will);
                }
            }
        }
        prop_assert_eq!(&cur, &b);
        prop_assert!(diff(&b, &b).is_empty(), "no writes without change");
    }
}

#[test]
fn order_is_upserts_endpoint_deletes() {
    let g = |n: &str, port| {
        let mut ports = PortSet::default();
        ports.add_range(Protocol::Tcp, port, port);
        Grant {
            net: n.parse().unwrap(),
            except: vec![],
            ports,
        }
    };
    let ids = BTreeMap::from([(PodKey::new("ns", "p"), 1)]);
    let a = encode(
        &desired(true, vec![g("10.0.0.0/16", 80), g("10.0.1.0/24", 81)]),
        &ids,
        false,
    );
    let b = encode(&desired(false, vec![]), &ids, false);
    let b2 = encode(
        &desired(true, vec![g("10.0.0.0/8", 80), g("10.0.1.0/24", 82)]),
        &ids,
        false,
    );
    let kinds = |w: &[MapWrite]| {
        w.iter()
            .map(|w| match w {
                MapWrite::PolicyV4Upsert { prefix_len, .. } => format!("up/{}", prefix_len - 64),
                MapWrite::PolicyV4Delete { prefix_len, .. } => format!("del/{}", prefix_len - 64),
                MapWrite::EndpointUpsert { .. } => "ep".to_string(),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    // Becoming unisolated: the switch first, then the deletes, shortest first.
    assert_eq!(kinds(&diff(&a, &b)), ["ep", "del/16", "del/24"]);
    // Entry changes: longest upserts first, no endpoint write (unchanged).
    assert_eq!(kinds(&diff(&a, &b2)), ["up/24", "up/8", "del/16"]);
    assert_eq!(kinds(&diff(&b, &a)), ["up/24", "up/16", "ep"]);
}

#[test]
fn overflow_fails_closed_without_entries() {
    let mut ports = PortSet::default();
    for i in 0..=MAX_PORT_RANGES as u16 {
        ports.add_range(Protocol::Tcp, 1000 + 2 * i, 1000 + 2 * i);
    }
    assert_eq!(ports.ranges.len(), MAX_PORT_RANGES + 1);
    let grants = vec![Grant {
        net: "10.0.0.0/8".parse().unwrap(),
        except: vec![],
        ports,
    }];
    let ids = BTreeMap::from([(PodKey::new("ns", "p"), 1)]);
    let m = encode(&desired(true, grants), &ids, true);
    assert!(m.policy_v4.is_empty());
    let ep = m.endpoints[&PodKey::new("ns", "p")];
    assert_ne!(ep.flags & EP_FAIL_CLOSED, 0);
    assert_ne!(ep.flags & palisade_common::EP_AUDIT, 0);
    assert_eq!(m.overflow.len(), 1);
    assert_eq!(
        m.overflow[0].1,
        "ingress entry for 10.0.0.0/8 needs 25 port ranges, more than 24: endpoint fails closed"
    );
    assert!(!m.lookup(
        &ep,
        DIR_INGRESS,
        "10.0.0.1".parse().unwrap(),
        PROTO_TCP,
        Some(1000)
    ));

    // Adjacent ranges merge, so 25 adjacent ports fit in one range.
    let mut ports = PortSet::default();
    for i in 0..=MAX_PORT_RANGES as u16 {
        ports.add_range(Protocol::Tcp, 1000 + i, 1000 + i);
    }
    assert_eq!(ports.ranges, vec![(PROTO_TCP, 1000, 1024)]);
}

#[test]
fn port_set_normalisation() {
    let mut p = PortSet::default();
    p.add_range(Protocol::Tcp, 1000, 1010);
    p.add_range(Protocol::Tcp, 1012, 1012);
    assert_eq!(p.ranges.len(), 2, "a one-port gap is not merged");
    p.add_range(Protocol::Tcp, 1011, 1011);
    assert_eq!(p.ranges, vec![(PROTO_TCP, 1000, 1012)]);
    p.add_range(Protocol::Udp, 1005, 1006);
    p.add_range(Protocol::Tcp, 5, 2000);
    assert_eq!(
        p.ranges,
        vec![(PROTO_TCP, 5, 2000), (PROTO_UDP, 1005, 1006)]
    );
    p.add_all_ports(Protocol::Udp);
    assert_eq!(p.ranges, vec![(PROTO_TCP, 5, 2000)]);
    p.add_range(Protocol::Tcp, 65535, 65535);
    p.add_range(Protocol::Tcp, 2001, 65534);
    assert_eq!(p.ranges, vec![(PROTO_TCP, 5, 65535)]);
    p.union_with(&PortSet::everything());
    assert_eq!(p, PortSet::everything());
}
