//! Golden tests: small clusters (tests/golden/*.yaml) compiled for node-a, encoded
//! and rendered as text (tests/golden/*.txt), reviewed by eye. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p palisade-policy --test golden`.

use std::collections::BTreeMap;
use std::path::Path;

use palisade_policy::{compile, encode, parse_yaml_documents, ClusterIndex, NodeInfo, PodKey};

fn render_case(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).expect("case file");
    let mut index = ClusterIndex::new();
    let mut out = String::new();
    for r in parse_yaml_documents(&text, &format!("{name}.yaml")) {
        let obj = r.expect("golden objects parse");
        if let Some(e) = index.apply(obj).error {
            out.push_str(&format!("error {e}\n"));
        }
    }
    let d = compile(
        &index,
        &NodeInfo {
            name: "node-a".into(),
        },
    );
    let ids: BTreeMap<PodKey, u32> = d
        .endpoints
        .keys()
        .enumerate()
        .map(|(i, k)| (k.clone(), i as u32 + 1))
        .collect();
    out.push_str(&encode(&d, &ids, false).render());
    out
}

fn check(name: &str) {
    let got = render_case(name);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        got, want,
        "golden {name} differs; rerun with UPDATE_GOLDEN=1 and review"
    );
}

#[test]
fn golden_nested() {
    check("nested");
}

#[test]
fn golden_egress() {
    check("egress");
}

#[test]
fn golden_invalid() {
    check("invalid");
}

#[test]
fn golden_policy_types() {
    check("policy-types");
}

#[test]
fn golden_cluster_policy() {
    check("cluster-policy");
}
