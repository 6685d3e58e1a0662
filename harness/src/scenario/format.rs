//! The YAML shape of a scenario file (tests/conformance/FORMAT.md), as serde
//! reads it: every key optional where the format says so, and any key it does
//! not list rejected. What the values mean is checked in `parse`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::LabelMap;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct FileDef {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) families: Option<Vec<String>>,
    #[serde(default)]
    pub(super) cluster: Option<ClusterDef>,
    pub(super) steps: Vec<StepDef>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterDef {
    #[serde(default)]
    pub(super) nodes: Option<usize>,
    #[serde(default)]
    pub(super) namespaces: Option<BTreeMap<String, Option<LabelMap>>>,
    #[serde(default)]
    pub(super) ports: Option<Vec<PortDef>>,
    #[serde(default)]
    pub(super) pods: Option<Vec<PodDef>>,
    #[serde(default)]
    pub(super) externals: Option<Vec<ExternalDef>>,
    #[serde(default)]
    pub(super) node_labels: Option<BTreeMap<usize, Option<LabelMap>>>,
    #[serde(default)]
    pub(super) node_ports: Option<Vec<PortDef>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct PortDef {
    pub(super) port: u16,
    #[serde(default)]
    pub(super) protocol: Option<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) service_port: Option<u16>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct PodDef {
    pub(super) name: String,
    #[serde(default)]
    pub(super) labels: Option<LabelMap>,
    #[serde(default)]
    pub(super) node: Option<usize>,
    #[serde(default)]
    pub(super) ports: Option<Vec<PortDef>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct ExternalDef {
    pub(super) name: String,
    #[serde(default)]
    pub(super) ports: Option<Vec<PortDef>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct StepDef {
    #[serde(default)]
    pub(super) apply: Option<Vec<serde_yaml::Value>>,
    #[serde(default)]
    pub(super) delete: Option<Vec<String>>,
    #[serde(default)]
    pub(super) set_labels: Option<SetLabelsDef>,
    #[serde(default)]
    pub(super) expect: Option<Vec<ExpectDef>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct SetLabelsDef {
    #[serde(default)]
    pub(super) pods: Option<BTreeMap<String, Option<LabelMap>>>,
    #[serde(default)]
    pub(super) namespaces: Option<BTreeMap<String, Option<LabelMap>>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectDef {
    pub(super) port: u16,
    #[serde(default)]
    pub(super) protocol: Option<String>,
    #[serde(default)]
    pub(super) via: Option<String>,
    #[serde(default)]
    pub(super) ignore_loopback: Option<bool>,
    pub(super) matrix: String,
}
