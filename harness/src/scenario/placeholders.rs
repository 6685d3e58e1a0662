//! The placeholders of policy manifests in scenario files, `{{ip REF}}` and
//! `{{host REF}}`, and their substitution with the addresses of the peers
//! they name.

use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::matrix::Peer;
use crate::model::Family;

/// One `{{ip REF}}` / `{{host REF}}` occurrence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placeholder {
    pub host: bool,
    pub peer: Peer,
}

/// Replaces every placeholder in `s` using `resolve(peer) -> address`.
pub fn substitute_str(
    s: &str,
    family: Family,
    resolve: &dyn Fn(&Peer) -> Result<IpAddr>,
) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| anyhow!("unterminated placeholder in {s:?}"))?;
        let ph = parse_placeholder(&after[..end])?;
        let ip = resolve(&ph.peer)?;
        if ph.host {
            out.push_str(&format!("{ip}/{}", family.host_prefix()));
        } else {
            out.push_str(&ip.to_string());
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn parse_placeholder(inner: &str) -> Result<Placeholder> {
    let toks: Vec<&str> = inner.split_whitespace().collect();
    match toks.as_slice() {
        [f, r] if *f == "ip" || *f == "host" => Ok(Placeholder {
            host: *f == "host",
            peer: Peer::parse(r).with_context(|| format!("placeholder {{{{{inner}}}}}"))?,
        }),
        _ => bail!("unknown placeholder {{{{{inner}}}}} (expected `ip REF` or `host REF`)"),
    }
}

/// Substitutes placeholders in every string of a manifest (keys untouched).
pub fn substitute(
    v: &Value,
    family: Family,
    resolve: &dyn Fn(&Peer) -> Result<IpAddr>,
) -> Result<Value> {
    Ok(match v {
        Value::String(s) => Value::String(substitute_str(s, family, resolve)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| substitute(x, family, resolve))
                .collect::<Result<_>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), substitute(x, family, resolve)?)))
                .collect::<Result<_>>()?,
        ),
        other => other.clone(),
    })
}
