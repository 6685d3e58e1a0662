//! The wire format between the kube conformance backend and `palisade-pod`, the
//! small program that real pods run: probe targets on the command line
//! (`TCP:10.0.0.7:80`, `UDP:[fd00::7]:81`) and one result line per target
//! (`TCP:10.0.0.7:80 reachable`).
use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context, Result};

use crate::model::Transport;
use crate::probe::Outcome;

/// `PROTO:ADDR:PORT`, with IPv6 addresses in brackets.
pub fn format_target(to: SocketAddr, protocol: Transport) -> String {
    format!("{protocol}:{to}")
}

/// The inverse of [`format_target`].
pub fn parse_target(s: &str) -> Result<(SocketAddr, Transport)> {
    let (proto, addr) = s
        .split_once(':')
        .ok_or_else(|| anyhow!("probe target {s:?}: expected PROTO:ADDR:PORT"))?;
    let protocol = proto
        .parse()
        .with_context(|| format!("probe target {s:?}"))?;
    let to = addr
        .parse()
        .with_context(|| format!("probe target {s:?}: {addr:?} is not ADDR:PORT"))?;
    Ok((to, protocol))
}

pub fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Reachable => "reachable",
        Outcome::Blocked => "blocked",
        Outcome::Skipped => "skipped",
    }
}

/// Reads the result lines of `palisade-pod probe` for exactly `targets`, in order.
pub fn parse_results(text: &str, targets: &[String]) -> Result<Vec<Outcome>> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != targets.len() {
        bail!(
            "palisade-pod probe printed {} result lines for {} targets:\n{text}",
            lines.len(),
            targets.len()
        );
    }
    lines
        .iter()
        .zip(targets)
        .map(|(l, t)| {
            let (target, word) = l
                .rsplit_once(' ')
                .ok_or_else(|| anyhow!("result line {l:?}: expected `TARGET OUTCOME`"))?;
            if target != t {
                bail!("result line {l:?} is not for {t}");
            }
            match word {
                "reachable" => Ok(Outcome::Reachable),
                "blocked" => Ok(Outcome::Blocked),
                "skipped" => Ok(Outcome::Skipped),
                _ => bail!("result line {l:?}: unknown outcome {word:?}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_round_trip_for_both_families() {
        for s in ["TCP:10.0.0.7:80", "UDP:[fd00::7]:81", "SCTP:10.96.0.1:8081"] {
            let (to, p) = parse_target(s).expect(s);
            assert_eq!(format_target(to, p), s);
        }
        assert!(
            parse_target("tcp:10.0.0.7:80").is_err(),
            "Kubernetes spelling only"
        );
        assert!(parse_target("TCP:10.0.0.7").is_err());
        assert!(parse_target("10.0.0.7:80").is_err());
    }

    #[test]
    fn results_must_match_the_targets_in_order() {
        let t = vec!["TCP:10.0.0.7:80".to_string(), "UDP:10.0.0.8:81".to_string()];
        let ok = "TCP:10.0.0.7:80 reachable\nUDP:10.0.0.8:81 blocked\n";
        assert_eq!(
            parse_results(ok, &t).expect("parses"),
            [Outcome::Reachable, Outcome::Blocked]
        );
        assert!(parse_results("TCP:10.0.0.7:80 reachable\n", &t).is_err());
        assert!(parse_results("UDP:10.0.0.8:81 blocked\nTCP:10.0.0.7:80 reachable\n", &t).is_err());
        assert!(parse_results("TCP:10.0.0.7:80 maybe\nUDP:10.0.0.8:81 blocked\n", &t).is_err());
    }
}
