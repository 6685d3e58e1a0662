//! Traffic between peers of the cluster: where a probe from one peer to
//! another connects (pod IP or the pod's ClusterIP), parallel probes,
//! observed matrices, identity queries, long-lived connections and commands
//! run inside a peer's namespace.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};

use super::Cluster;
use crate::matrix::{Cell, Matrix, Peer, Probe, Via};
use crate::model::{pod_service_name, Transport};
use crate::netns::exec_in;
use crate::probe::{run_probes, whoami, Connection, Outcome, RawProbe, PROBE_TIMEOUT};

impl Cluster {
    /// Where a probe from `from` to `to` connects.
    pub fn target_addr(
        &self,
        from: &Peer,
        to: &Peer,
        port: u16,
        protocol: Transport,
        via: Via,
    ) -> Result<SocketAddr> {
        let by_service =
            via == Via::Service && !matches!(from, Peer::External(_)) && matches!(to, Peer::Pod(_));
        if !by_service {
            return Ok(SocketAddr::new(self.address_of(to)?, port));
        }
        let Peer::Pod(key) = to else {
            unreachable!("checked above")
        };
        let p = self.pod_state(key)?;
        let sname = pod_service_name(&p.spec.namespace, &p.spec.name);
        let svc = self
            .service(&p.spec.namespace, &sname)
            .ok_or_else(|| anyhow!("pod {key} has no Service"))?;
        let sp = svc
            .ports
            .iter()
            .find(|sp| sp.target_port == port && sp.protocol == protocol)
            .ok_or_else(|| anyhow!("Service {sname} has no port for {protocol}/{port}"))?;
        Ok(SocketAddr::new(svc.cluster_ip, sp.port))
    }

    /// Runs probes in parallel (1 s timeout each); outcomes in input order.
    pub fn probe(&self, probes: &[Probe]) -> Result<Vec<Outcome>> {
        self.probe_with_timeout(probes, PROBE_TIMEOUT)
    }

    /// [`Cluster::probe`] with another timeout.
    pub fn probe_with_timeout(&self, probes: &[Probe], timeout: Duration) -> Result<Vec<Outcome>> {
        let raw = probes
            .iter()
            .map(|p| {
                Ok(RawProbe {
                    netns: self.netns_of(&p.from)?,
                    to: self.target_addr(&p.from, &p.to, p.port, p.protocol, p.via)?,
                    protocol: p.protocol,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        run_probes(&raw, timeout)
    }

    /// Probes every row × column pair (`port`/`protocol`, `via`) and returns
    /// the observed matrix (`.` reachable, `X` blocked, `?` for a peer to
    /// itself). Print it with [`Matrix::to_aligned_string`].
    pub fn observe_matrix(
        &self,
        rows: &[Peer],
        cols: &[Peer],
        port: u16,
        protocol: Transport,
        via: Via,
    ) -> Result<Matrix> {
        let mut probes = Vec::new();
        for r in rows {
            for c in cols.iter().filter(|c| *c != r) {
                probes.push(Probe {
                    from: r.clone(),
                    to: c.clone(),
                    port,
                    protocol,
                    via,
                });
            }
        }
        let mut out = self.probe(&probes)?.into_iter();
        let mut m = Matrix {
            columns: cols.to_vec(),
            rows: Vec::new(),
        };
        for r in rows {
            let cells = cols
                .iter()
                .map(|c| {
                    if c == r {
                        return Cell::Unchecked;
                    }
                    match out.next() {
                        Some(Outcome::Reachable) => Cell::Reachable,
                        Some(Outcome::Blocked) => Cell::Blocked,
                        _ => Cell::Unchecked,
                    }
                })
                .collect();
            m.rows.push((r.clone(), cells));
        }
        Ok(m)
    }

    /// Asks whoever answers at `to` (any address, e.g. a ClusterIP) for its
    /// identity (`ns/pod` or `@name`), from inside `from`.
    pub fn whoami(
        &self,
        from: &Peer,
        to: SocketAddr,
        protocol: Transport,
    ) -> Result<Option<String>> {
        whoami(&self.netns_of(from)?, to, protocol, PROBE_TIMEOUT)
    }

    /// Opens a long-lived TCP/SCTP connection from `from` to `to` (container
    /// `port`, reached `via` the Service or the pod IP) and returns it for
    /// repeated [`Connection::roundtrip`] checks.
    pub fn connect(
        &self,
        from: &Peer,
        to: &Peer,
        port: u16,
        protocol: Transport,
        via: Via,
    ) -> Result<Connection> {
        let addr = self.target_addr(from, to, port, protocol, via)?;
        Connection::open(&self.netns_of(from)?, addr, protocol, PROBE_TIMEOUT)
    }

    /// Runs a command inside a peer's namespace (`ip netns exec`).
    pub fn exec(&self, peer: &Peer, program: &str, args: &[&str]) -> Result<String> {
        exec_in(&self.netns_of(peer)?, program, args, None)
    }
}
