//! The CNI calling convention (CNI spec 1.0): the `CNI_*` environment, the
//! network configuration on stdin with the previous plugin's result
//! (`prevResult`: chained plugins take the interfaces and addresses from it),
//! and the result or error printed on stdout.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The versions whose results have `interfaces` and `ips` as 1.0 has them.
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0"];

/// CNI spec error codes.
pub const E_INCOMPATIBLE_VERSION: u32 = 1;
pub const E_INVALID_ENV: u32 = 4;
pub const E_DECODE: u32 = 6;
pub const E_INVALID_CONFIG: u32 = 7;
pub const E_TRY_AGAIN: u32 = 11;
/// `STATUS`: the plugin cannot set up pods now.
pub const E_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific: the agent answered and refused.
pub const E_AGENT_REFUSED: u32 = 100;

/// This plugin's part of the network configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    /// The agent's socket (default [`crate::protocol::DEFAULT_SOCKET`]).
    #[serde(default)]
    pub socket: Option<String>,
    /// Unsafe: let a pod start unenforced when the agent cannot be reached
    /// (it is enforced once the agent finds its interface).
    #[serde(default)]
    pub fail_open: bool,
    /// How long ADD waits for the agent (default 10 s).
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub prev_result: Option<Value>,
}

/// What a chained plugin reads of the previous result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prev {
    /// Interfaces without a sandbox: on the host.
    pub host_interfaces: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// An error in the CNI error format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(
        version: &str,
        code: u32,
        msg: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        Self {
            cni_version: version.to_string(),
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

/// Parse the network configuration; `Err` is printable as is.
pub fn parse_conf(stdin: &str) -> Result<NetConf, CniError> {
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            "1.0.0",
            E_DECODE,
            "decoding the network configuration on stdin",
            e.to_string(),
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            &conf.cni_version,
            E_INCOMPATIBLE_VERSION,
            format!("cniVersion {} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    Ok(conf)
}

/// The host interfaces and addresses of `prevResult`: interfaces are host
/// side when they have no (or an empty) `sandbox`; addresses are the `ips`'
/// `address` fields without their prefix length.
pub fn prev(conf: &NetConf) -> Result<Prev, CniError> {
    let invalid = |msg: &str| CniError::new(&conf.cni_version, E_INVALID_CONFIG, msg, "");
    let Some(prev) = &conf.prev_result else {
        return Err(invalid(
            "no prevResult: palisade-cni is a chained plugin and goes after the plugin that creates the pod's interface (ptp, bridge, ...)",
        ));
    };
    let mut out = Prev::default();
    for i in prev["interfaces"].as_array().into_iter().flatten() {
        let sandbox = i["sandbox"].as_str().unwrap_or("");
        if let (Some(name), true) = (i["name"].as_str(), sandbox.is_empty()) {
            out.host_interfaces.push(name.to_string());
        }
    }
    for ip in prev["ips"].as_array().into_iter().flatten() {
        let Some(addr) = ip["address"].as_str() else {
            return Err(invalid("prevResult.ips[].address missing"));
        };
        let bare = addr.split('/').next().unwrap_or(addr);
        let parsed: IpAddr = bare.parse().map_err(|_| {
            CniError::new(
                &conf.cni_version,
                E_INVALID_CONFIG,
                format!("prevResult.ips[].address {addr:?} is not an address"),
                "",
            )
        })?;
        out.ips.push(parsed);
    }
    if out.host_interfaces.is_empty() {
        return Err(invalid(
            "prevResult lists no host-side interface (one without a sandbox): nothing to enforce on",
        ));
    }
    Ok(out)
}

/// `CNI_ARGS` (`K=V;K=V`) as a map.
pub fn cni_args(args: &str) -> BTreeMap<String, String> {
    args.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The result ADD prints: the previous result, unchanged but for
/// `cniVersion` (a chained plugin passes it on).
pub fn result(conf: &NetConf) -> Value {
    let mut r = conf.prev_result.clone().unwrap_or(Value::Null);
    if let Some(o) = r.as_object_mut() {
        o.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }
    r
}

/// `VERSION`'s answer.
pub fn version_info() -> Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTP: &str = r#"{
        "cniVersion": "1.0.0", "name": "palisade-ptp", "type": "palisade-cni",
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "veth1a2b", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/var/run/netns/cni-1"}
            ],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    }"#;

    #[test]
    fn a_ptp_result_gives_the_host_veth_and_the_pod_address() {
        let conf = parse_conf(PTP).expect("conf");
        let p = prev(&conf).expect("prev");
        assert_eq!(p.host_interfaces, ["veth1a2b"]);
        assert_eq!(p.ips, ["10.244.1.5".parse::<IpAddr>().expect("address")]);
        assert!(!conf.fail_open);
        let r = result(&conf);
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["ips"][0]["address"], "10.244.1.5/24");
    }

    #[test]
    fn bad_input_gets_the_specs_error_codes() {
        assert_eq!(parse_conf("{").map(|_| ()).unwrap_err().code, E_DECODE);
        let old = PTP.replace(
            r#""cniVersion": "1.0.0", "name""#,
            r#""cniVersion": "0.2.0", "name""#,
        );
        assert_eq!(
            parse_conf(&old).map(|_| ()).unwrap_err().code,
            E_INCOMPATIBLE_VERSION
        );
        let none = r#"{"cniVersion": "1.0.0", "name": "x", "type": "palisade-cni"}"#;
        let conf = parse_conf(none).expect("conf");
        let e = prev(&conf).unwrap_err();
        assert_eq!(e.code, E_INVALID_CONFIG);
        assert!(e.msg.contains("chained"), "{}", e.msg);
    }

    #[test]
    fn cni_args_are_split() {
        let a = cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=api-0");
        assert_eq!(a["K8S_POD_NAMESPACE"], "web");
        assert_eq!(a["K8S_POD_NAME"], "api-0");
    }
}
