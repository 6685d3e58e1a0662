//! The typed map writer: owns the pinned maps and writes ABI records into them.
//!
//! Writes are issued in the order the policy engine's diff gives (adds before
//! removes, the endpoint record as the per-endpoint switch). A write that the kernel
//! refuses is an error that names the map and the key; the caller keeps the
//! endpoint fail-closed.
use std::{collections::BTreeMap, net::IpAddr};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues,
};
use palisade_common::*;
use thiserror::Error;

use crate::datapath::{Datapath, DatapathError};

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("{map}: {op} {key}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        key: String,
        source: Box<MapError>,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

pub struct Maps {
    pub endpoints: HashMap<MapData, u32, Endpoint>,
    pub ep_by_ip: HashMap<MapData, IpKey, u32>,
    pub policy_v4: LpmTrie<MapData, PolicyKeyV4, PolicyValue>,
    pub policy_v6: LpmTrie<MapData, PolicyKeyV6, PolicyValue>,
    /// Full-length entries (`/32`, `/128`): probed before the tries.
    pub policy_host_v4: HashMap<MapData, PolicyKeyV4, PolicyValue>,
    pub policy_host_v6: HashMap<MapData, PolicyKeyV6, PolicyValue>,
    pub node_addrs: HashMap<MapData, IpKey, u32>,
    pub services: HashMap<MapData, ServiceKey, u32>,
    pub counters: PerCpuArray<MapData, Counters>,
    /// Conntrack confirmation budgets, by endpoint id.
    pub ct_quota: PerCpuArray<MapData, CtQuota>,
    pub config: Array<MapData, Config>,
}

fn map_err(
    map: &'static str,
    op: &'static str,
    key: String,
) -> impl FnOnce(MapError) -> WriteError {
    move |source| WriteError::Map {
        map,
        op,
        key,
        source: Box::new(source),
    }
}

/// A missing key on delete is fine: the state we want is reached.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

macro_rules! typed {
    ($dp:expr, $name:expr) => {{
        let m = $dp.take_map($name)?;
        m.try_into().map_err(|source| DatapathError::Map {
            name: $name,
            source: Box::new(source),
        })?
    }};
}

impl Maps {
    pub fn take(dp: &mut Datapath) -> Result<Self, WriteError> {
        Ok(Self {
            endpoints: typed!(dp, maps::ENDPOINTS),
            ep_by_ip: typed!(dp, maps::ENDPOINT_BY_IP),
            policy_v4: typed!(dp, maps::POLICY_V4),
            policy_v6: typed!(dp, maps::POLICY_V6),
            policy_host_v4: typed!(dp, maps::POLICY_HOST_V4),
            policy_host_v6: typed!(dp, maps::POLICY_HOST_V6),
            node_addrs: typed!(dp, maps::NODE_ADDRS),
            services: typed!(dp, maps::SERVICES),
            counters: typed!(dp, maps::COUNTERS),
            ct_quota: typed!(dp, maps::CT_QUOTA),
            config: typed!(dp, maps::CONFIG),
        })
    }

    pub fn set_config(&mut self, cfg: Config) -> Result<(), WriteError> {
        self.config
            .set(0, cfg, 0)
            .map_err(map_err(maps::CONFIG, "set", "0".into()))
    }

    /// Write an endpoint record and its address index; its counters start
    /// from zero unless the interface already holds this endpoint.
    pub fn upsert_endpoint(&mut self, ifindex: u32, ep: &Endpoint) -> Result<(), WriteError> {
        let same = self
            .endpoints
            .get(&ifindex, 0)
            .is_ok_and(|old| old.id == ep.id);
        if !same {
            self.zero_counters(ep.id)?;
        }
        if ep.flags & EP_HAS_V4 != 0 {
            self.ep_by_ip
                .insert(IpKey::v4(ep.ipv4), ifindex, 0)
                .map_err(map_err(
                    maps::ENDPOINT_BY_IP,
                    "insert",
                    format!("{:?}", ep.ipv4),
                ))?;
        }
        if ep.flags & EP_HAS_V6 != 0 {
            self.ep_by_ip
                .insert(IpKey::v6(ep.ipv6), ifindex, 0)
                .map_err(map_err(
                    maps::ENDPOINT_BY_IP,
                    "insert",
                    format!("{:?}", ep.ipv6),
                ))?;
        }
        self.endpoints.insert(ifindex, *ep, 0).map_err(map_err(
            maps::ENDPOINTS,
            "insert",
            ifindex.to_string(),
        ))
    }

    /// Remove an endpoint record: the interface becomes fail-closed (unknown endpoint).
    pub fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), WriteError> {
        if let Ok(ep) = self.endpoints.get(&ifindex, 0) {
            ignore_missing(self.endpoints.remove(&ifindex)).map_err(map_err(
                maps::ENDPOINTS,
                "remove",
                ifindex.to_string(),
            ))?;
            for k in [IpKey::v4(ep.ipv4), IpKey::v6(ep.ipv6)] {
                if self.ep_by_ip.get(&k, 0).ok() == Some(ifindex) {
                    let _ = self.ep_by_ip.remove(&k);
                }
            }
            self.zero_counters(ep.id)?;
        }
        Ok(())
    }

    /// Reset endpoint `id`'s counters and conntrack confirmation budget (a
    /// full bucket, nothing refused), so a pod given a freed id inherits
    /// neither (ids past the arrays are not counted).
    fn zero_counters(&mut self, id: u32) -> Result<(), WriteError> {
        if id == 0 || id >= self.counters.len() {
            return Ok(());
        }
        let err = |op: &'static str, e: std::io::Error| WriteError::Map {
            map: maps::COUNTERS,
            op,
            key: id.to_string(),
            source: Box::new(MapError::SyscallError(aya::sys::SyscallError {
                call: op,
                io_error: e,
            })),
        };
        let n = aya::util::nr_cpus().map_err(|(_, e)| err("nr_cpus", e))?;
        let zero =
            PerCpuValues::try_from(vec![Counters::default(); n]).map_err(|e| err("percpu", e))?;
        self.counters
            .set(id, zero, 0)
            .map_err(map_err(maps::COUNTERS, "set", id.to_string()))?;
        let full =
            PerCpuValues::try_from(vec![CtQuota::default(); n]).map_err(|e| err("percpu", e))?;
        self.ct_quota
            .set(id, full, 0)
            .map_err(map_err(maps::CT_QUOTA, "set", id.to_string()))
    }

    pub fn endpoints(&self) -> Vec<(u32, Endpoint)> {
        self.endpoints.iter().flatten().collect()
    }

    /// Write an IPv4 policy entry: a full-length one into the host hash, any
    /// other into the trie.
    pub fn upsert_v4(
        &mut self,
        plen: u32,
        key: PolicyKeyV4,
        v: &PolicyValue,
    ) -> Result<(), WriteError> {
        if plen == SCOPE_BITS + 32 {
            return self.policy_host_v4.insert(key, *v, 0).map_err(map_err(
                maps::POLICY_HOST_V4,
                "insert",
                format!("{key:?}/{plen}"),
            ));
        }
        self.policy_v4
            .insert(&Key::new(plen, key), *v, 0)
            .map_err(map_err(
                maps::POLICY_V4,
                "insert",
                format!("{key:?}/{plen}"),
            ))
    }

    /// Remove an IPv4 policy entry. A full-length one goes from the trie too,
    /// where maps of a layout without host hashes keep it.
    pub fn delete_v4(&mut self, plen: u32, key: PolicyKeyV4) -> Result<(), WriteError> {
        if plen == SCOPE_BITS + 32 {
            ignore_missing(self.policy_host_v4.remove(&key)).map_err(map_err(
                maps::POLICY_HOST_V4,
                "remove",
                format!("{key:?}/{plen}"),
            ))?;
        }
        ignore_missing(self.policy_v4.remove(&Key::new(plen, key))).map_err(map_err(
            maps::POLICY_V4,
            "remove",
            format!("{key:?}/{plen}"),
        ))
    }

    /// As [`Maps::upsert_v4`], for IPv6 (`/128` entries into the host hash).
    pub fn upsert_v6(
        &mut self,
        plen: u32,
        key: PolicyKeyV6,
        v: &PolicyValue,
    ) -> Result<(), WriteError> {
        if plen == SCOPE_BITS + 128 {
            return self.policy_host_v6.insert(key, *v, 0).map_err(map_err(
                maps::POLICY_HOST_V6,
                "insert",
                format!("{key:?}/{plen}"),
            ));
        }
        self.policy_v6
            .insert(&Key::new(plen, key), *v, 0)
            .map_err(map_err(
                maps::POLICY_V6,
                "insert",
                format!("{key:?}/{plen}"),
            ))
    }

    /// As [`Maps::delete_v4`], for IPv6.
    pub fn delete_v6(&mut self, plen: u32, key: PolicyKeyV6) -> Result<(), WriteError> {
        if plen == SCOPE_BITS + 128 {
            ignore_missing(self.policy_host_v6.remove(&key)).map_err(map_err(
                maps::POLICY_HOST_V6,
                "remove",
                format!("{key:?}/{plen}"),
            ))?;
        }
        ignore_missing(self.policy_v6.remove(&Key::new(plen, key))).map_err(map_err(
            maps::POLICY_V6,
            "remove",
            format!("{key:?}/{plen}"),
        ))
    }

    /// Every IPv4 entry in effect: the trie's, with the host hash's taking
    /// the place of a trie entry of the same key (the programs probe the hash
    /// first).
    pub fn policy_v4_entries(&self) -> Vec<(u32, PolicyKeyV4, PolicyValue)> {
        let mut all: BTreeMap<(u32, PolicyKeyV4), PolicyValue> = BTreeMap::new();
        let keys: Vec<_> = self.policy_v4.keys().flatten().collect();
        for k in keys {
            if let Ok(v) = self.policy_v4.get(&k, 0) {
                all.insert((k.prefix_len(), k.data()), v);
            }
        }
        for (k, v) in self.policy_host_v4.iter().flatten() {
            all.insert((SCOPE_BITS + 32, k), v);
        }
        all.into_iter().map(|((p, k), v)| (p, k, v)).collect()
    }

    /// As [`Maps::policy_v4_entries`], for IPv6.
    pub fn policy_v6_entries(&self) -> Vec<(u32, PolicyKeyV6, PolicyValue)> {
        let mut all: BTreeMap<(u32, PolicyKeyV6), PolicyValue> = BTreeMap::new();
        let keys: Vec<_> = self.policy_v6.keys().flatten().collect();
        for k in keys {
            if let Ok(v) = self.policy_v6.get(&k, 0) {
                all.insert((k.prefix_len(), k.data()), v);
            }
        }
        for (k, v) in self.policy_host_v6.iter().flatten() {
            all.insert((SCOPE_BITS + 128, k), v);
        }
        all.into_iter().map(|((p, k), v)| (p, k, v)).collect()
    }

    pub fn upsert_service(&mut self, k: ServiceKey) -> Result<(), WriteError> {
        self.services
            .insert(k, 1, 0)
            .map_err(map_err(maps::SERVICES, "insert", format!("{k:?}")))
    }
    pub fn delete_service(&mut self, k: ServiceKey) -> Result<(), WriteError> {
        ignore_missing(self.services.remove(&k)).map_err(map_err(
            maps::SERVICES,
            "remove",
            format!("{k:?}"),
        ))
    }
    pub fn services(&self) -> Vec<ServiceKey> {
        self.services.keys().flatten().collect()
    }

    /// Replace the node-address set (add new before removing old).
    pub fn set_node_addrs(&mut self, addrs: &[IpAddr]) -> Result<(), WriteError> {
        let want: Vec<IpKey> = addrs.iter().map(|a| ip_key(*a)).collect();
        for k in &want {
            self.node_addrs.insert(*k, 1, 0).map_err(map_err(
                maps::NODE_ADDRS,
                "insert",
                format!("{k:?}"),
            ))?;
        }
        let have: Vec<IpKey> = self.node_addrs.keys().flatten().collect();
        for k in have.into_iter().filter(|k| !want.contains(k)) {
            let _ = self.node_addrs.remove(&k);
        }
        Ok(())
    }

    /// Sum of an endpoint's per-CPU counters.
    pub fn counters(&self, endpoint_id: u32) -> Option<Counters> {
        let per_cpu = self.counters.get(&endpoint_id, 0).ok()?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Some(sum)
    }
}

pub fn ip_key(a: IpAddr) -> IpKey {
    match a {
        IpAddr::V4(v4) => IpKey::v4(v4.octets()),
        IpAddr::V6(v6) => IpKey::v6(v6.octets()),
    }
}
