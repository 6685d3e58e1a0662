//! The event stream behind `GET /events`: the last N rendered events (what
//! stdout prints) for readers that ask for the past, and a broadcast to every
//! live reader. Publishing never waits for a reader: one that falls behind is
//! disconnected and counted.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde_json::Value;
use tokio::sync::broadcast;

/// Events a live reader may be behind before it is disconnected.
const READER_BACKLOG: usize = 4096;

/// One rendered event, with what the filters look at.
#[derive(Debug)]
pub struct Rendered {
    pub time: SystemTime,
    /// The JSON line, without its newline.
    pub line: String,
    verdict: String,
    /// The judged pod's namespace and name (`endpoint`), if known.
    namespace: Option<String>,
    pod: Option<String>,
}

impl Rendered {
    pub fn new(v: &Value, time: SystemTime) -> Self {
        let endpoint = v["endpoint"].as_str();
        let (namespace, pod) = match endpoint.and_then(|e| e.split_once('/')) {
            Some((ns, name)) => (Some(ns.to_string()), Some(name.to_string())),
            None => (None, None),
        };
        Self {
            time,
            line: v.to_string(),
            verdict: v["verdict"].as_str().unwrap_or_default().to_string(),
            namespace,
            pod,
        }
    }
}

pub struct EventHub {
    history: Mutex<VecDeque<Arc<Rendered>>>,
    capacity: usize,
    live: broadcast::Sender<Arc<Rendered>>,
}

impl EventHub {
    /// Keeps the last `capacity` events.
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(READER_BACKLOG);
        Self {
            history: Mutex::new(VecDeque::with_capacity(capacity.min(65_536))),
            capacity,
            live,
        }
    }

    pub fn publish(&self, ev: Rendered) {
        let ev = Arc::new(ev);
        // Kept and sent under one lock: a reader subscribing meanwhile gets
        // the event either from the history or live, never both or neither.
        let Ok(mut h) = self.history.lock() else {
            let _ = self.live.send(ev);
            return;
        };
        if self.capacity > 0 {
            if h.len() == self.capacity {
                h.pop_front();
            }
            h.push_back(ev.clone());
        }
        // No reader is not an error.
        let _ = self.live.send(ev);
    }

    /// The kept events `filter` selects, and a receiver of the ones after them.
    pub fn subscribe(
        &self,
        filter: &Filter,
    ) -> (Vec<Arc<Rendered>>, broadcast::Receiver<Arc<Rendered>>) {
        // Under the history lock, so no event falls between the two.
        let Ok(h) = self.history.lock() else {
            return (Vec::new(), self.live.subscribe());
        };
        let rx = self.live.subscribe();
        let past = if filter.since.is_some() {
            h.iter().filter(|e| filter.matches(e)).cloned().collect()
        } else {
            Vec::new()
        };
        (past, rx)
    }
}

/// The query of `GET /events`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `denied`, `audit` or `allowed`.
    pub verdict: Option<String>,
    /// The judged pod's namespace.
    pub namespace: Option<String>,
    /// The judged pod's name.
    pub pod: Option<String>,
    /// Replay the kept events from then on first.
    pub since: Option<SystemTime>,
    /// Keep streaming new events (`follow=false`: the past only, then close).
    pub follow: bool,
}

impl Filter {
    /// Parses a query string (`verdict=denied&namespace=x&since=5m`). `since`
    /// is a duration back from `now` (`30s`, `5m`, `2h`, a number of seconds)
    /// or an RFC 3339 UTC time (`2026-12-01T10:00:00Z`).
    pub fn parse(query: &str, now: SystemTime) -> Result<Self, String> {
        let mut f = Filter {
            follow: true,
            ..Default::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "verdict" => match v.as_str() {
                    "denied" | "audit" | "allowed" => f.verdict = Some(v),
                    _ => return Err(format!("verdict={v}: expected denied, audit or allowed")),
                },
                "namespace" => f.namespace = Some(v),
                "pod" => f.pod = Some(v),
                "since" => f.since = Some(parse_since(&v, now)?),
                "follow" => {
                    f.follow = match v.as_str() {
                        "" | "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(format!("follow={v}: expected true or false")),
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {k:?}: expected verdict, namespace, pod, since or follow"
                    ))
                }
            }
        }
        Ok(f)
    }

    pub fn matches(&self, e: &Rendered) -> bool {
        let eq = |want: &Option<String>, got: &Option<String>| {
            want.as_ref().is_none_or(|w| got.as_ref() == Some(w))
        };
        self.verdict.as_ref().is_none_or(|v| *v == e.verdict)
            && eq(&self.namespace, &e.namespace)
            && eq(&self.pod, &e.pod)
            && self.since.is_none_or(|s| e.time >= s)
    }
}

fn parse_since(v: &str, now: SystemTime) -> Result<SystemTime, String> {
    let back = |secs: u64| {
        Ok(now
            .checked_sub(Duration::from_secs(secs))
            .unwrap_or(SystemTime::UNIX_EPOCH))
    };
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    if let (Ok(n), Some(mult)) = (
        num.parse::<u64>(),
        match unit {
            "" | "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            _ => None,
        },
    ) {
        return back(n.saturating_mul(mult));
    }
    parse_rfc3339(v).ok_or_else(|| {
        format!("since={v}: expected a duration (30s, 5m, 2h) or a UTC time (2026-12-01T10:00:00Z)")
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
fn parse_rfc3339(v: &str) -> Option<SystemTime> {
    let v = v.strip_suffix('Z')?;
    let (date, time) = v.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from civil (proleptic Gregorian).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + s).ok()?;
    let millis: u64 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ev(verdict: &str, endpoint: &str, t: SystemTime) -> Rendered {
        Rendered::new(&json!({"verdict": verdict, "endpoint": endpoint}), t)
    }

    #[test]
    fn filters_select_by_verdict_namespace_pod_and_time() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let f = Filter::parse("verdict=denied&namespace=x&since=60s", now).expect("parse");
        assert!(f.follow);
        assert!(f.matches(&ev("denied", "x/a", now)));
        assert!(!f.matches(&ev("allowed", "x/a", now)));
        assert!(!f.matches(&ev("denied", "y/a", now)));
        assert!(!f.matches(&ev("denied", "x/a", now - Duration::from_secs(61))));
        let f = Filter::parse("pod=a&follow=false", now).expect("parse");
        assert!(!f.follow);
        assert!(f.matches(&ev("audit", "y/a", now)));
        assert!(!f.matches(&ev("audit", "y/b", now)));
    }

    #[test]
    fn bad_queries_name_the_parameter() {
        let now = SystemTime::now();
        let e = Filter::parse("verdict=dropped", now).expect_err("bad verdict");
        assert!(e.contains("verdict=dropped"), "{e}");
        let e = Filter::parse("since=yesterday", now).expect_err("bad since");
        assert!(e.contains("since=yesterday"), "{e}");
        let e = Filter::parse("color=red", now).expect_err("unknown");
        assert!(e.contains("color"), "{e}");
    }

    #[test]
    fn since_takes_a_utc_time() {
        let t = parse_rfc3339("2026-12-01T10:00:00.250Z").expect("time");
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch");
        // 2026-12-01T10:00:00Z
        assert_eq!(secs.as_secs(), 1_796_119_200);
        assert_eq!(secs.subsec_millis(), 250);
    }

    #[tokio::test]
    async fn history_is_bounded_and_replayed_to_readers_that_ask() {
        let hub = EventHub::new(2);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        for i in 0..3 {
            hub.publish(ev("denied", &format!("x/p{i}"), t0));
        }
        let all = Filter {
            since: Some(SystemTime::UNIX_EPOCH),
            follow: true,
            ..Default::default()
        };
        let (past, mut rx) = hub.subscribe(&all);
        let pods: Vec<_> = past
            .iter()
            .map(|e| e.pod.clone().unwrap_or_default())
            .collect();
        assert_eq!(pods, ["p1", "p2"]);
        hub.publish(ev("allowed", "x/p3", t0));
        let next = rx.recv().await.expect("live event");
        assert_eq!(next.pod.as_deref(), Some("p3"));
    }
}
