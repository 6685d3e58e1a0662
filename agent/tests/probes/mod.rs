//! Tables of TCP port 80 probes on a namespace cluster with the agent, for
//! the tests that check enforcement by probing pods (each includes this
//! module with `mod probes;`).
use palisade_harness::{Cluster, Outcome, Peer, Probe, Transport, Via};

/// One row: the case's name, the probe's source and target (as `Peer::parse`
/// reads them: `x/a`, `node/1`), pod address or Service, and the outcome the
/// probe must get.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub type Expect<'a> = (&'a str, &'a str, &'a str, Via, Outcome);

/// Probes TCP 80 from `from` to `to` by `via`.
pub fn tcp80(c: &Cluster, from: &str, to: &str, via: Via) -> Outcome {
    let p = Probe {
        from: Peer::parse(from).expect("peer"),
        to: Peer::parse(to).expect("peer"),
        port: 80,
        protocol: Transport::Tcp,
        via,
    };
    c.probe(&[p]).expect("probe")[0]
}

/// Probes the rows in order, one at a time, and checks each outcome, naming
/// the row that differs.
#[allow(
    dead_code,
    reason = "not every test file that includes this module uses it"
)]
pub fn expect(c: &Cluster, rows: &[Expect<'_>]) {
    for &(name, from, to, via, want) in rows {
        let got = tcp80(c, from, to, via);
        assert_eq!(got, want, "{name}: {from} -> {to} TCP 80 via {via:?}");
    }
}
