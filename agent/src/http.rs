//! The agent's HTTP endpoint: `GET /ready` (200 with the programmed generation
//! and revision once the first full state is written, 503 before), `GET /healthz`,
//! `GET /metrics` (OpenMetrics text) and `GET /events` (the event stream as
//! JSON lines, see `crate::stream`).
use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::broadcast::{
        self,
        error::{RecvError, TryRecvError},
    },
};

use crate::{
    status::Shared,
    stream::{Filter, Rendered},
};

/// How long one write to an `/events` reader may take before the reader is
/// disconnected (it stopped reading).
const STREAM_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    serve_paths(listener, shared, false).await
}

/// `GET /metrics` only (`--metrics-addr`: metrics on the node's address,
/// readiness and liveness on loopback).
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    serve_paths(listener, shared, true).await
}

async fn serve_paths(listener: TcpListener, shared: Arc<Shared>, metrics_only: bool) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            // Read up to the end of the request head: a client may send it in
            // several segments. Bounded in size and time so a slow or silent
            // client cannot hold the task.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read_head = async {
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), read_head)
                .await
                .is_err()
            {
                return;
            }
            let req = String::from_utf8_lossy(&head);
            let target = req.split_whitespace().nth(1).unwrap_or("/");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            if path == "/events" && !metrics_only {
                stream_events(sock, &shared, query).await;
                return;
            }
            let path = if metrics_only && path != "/metrics" {
                "/not-here"
            } else {
                path
            };
            let openmetrics = req.lines().any(|l| {
                let l = l.to_ascii_lowercase();
                l.starts_with("accept:") && l.contains("application/openmetrics-text")
            });
            let (status, body) = match path {
                "/ready" | "/readyz" => {
                    let r = shared.ready.lock().map(|r| r.clone()).unwrap_or_default();
                    let status = if r.ready {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    (status, serde_json::to_string(&r).unwrap_or_default())
                }
                // Liveness: the sync loop goes round at least every resync; a
                // loop stuck longer is restarted by the kubelet.
                // OpenMetrics for scrapers that ask for it (Prometheus does),
                // the classic text format otherwise.
                "/metrics" => match &shared.metrics {
                    Some(m) if openmetrics => ("200 OK", m.encode()),
                    Some(m) => ("200 OK", m.encode_classic()),
                    None => ("404 Not Found", "{\"error\":\"no metrics\"}".to_string()),
                },
                "/healthz" | "/livez" if shared.alive() => ("200 OK", "{\"ok\":true}".to_string()),
                "/healthz" | "/livez" => (
                    "503 Service Unavailable",
                    "{\"ok\":false,\"error\":\"the sync loop has not gone round in time\"}"
                        .to_string(),
                ),
                _ => ("404 Not Found", "{\"error\":\"not found\"}".to_string()),
            };
            let content_type = match (path, status.starts_with("200")) {
                ("/metrics", true) if openmetrics => {
                    "application/openmetrics-text; version=1.0.0; charset=utf-8"
                }
                ("/metrics", true) => "text/plain; version=0.0.4; charset=utf-8",
                _ => "application/json",
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// `GET /events`: the kept events the query selects (with `since`), then
/// every new one it selects, as JSON lines, until the reader goes away. A
/// reader that falls behind the stream or stops reading is disconnected and
/// counted; the agent never waits for one.
async fn stream_events(mut sock: TcpStream, shared: &Shared, query: &str) {
    let filter = match Filter::parse(query, std::time::SystemTime::now()) {
        Ok(f) => f,
        Err(e) => {
            let body = serde_json::json!({ "error": e }).to_string();
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            return;
        }
    };
    limit_send_buffer(&sock);
    let (past, mut live) = shared.events.subscribe(&filter);
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
    let mut r = write_timed(&mut sock, head.as_bytes()).await;
    for e in past {
        if r.is_err() {
            break;
        }
        r = write_line(&mut sock, &e.line).await;
    }
    let mut batch = Vec::new();
    while r.is_ok() && filter.follow {
        r = match next_batch(&mut live, &filter, &mut batch).await {
            Ok(()) if batch.is_empty() => Ok(()),
            Ok(()) => write_timed(&mut sock, &batch).await,
            Err(stop) => Err(stop),
        };
    }
    if let (Err(Stop::Slow), Some(m)) = (r, &shared.metrics) {
        m.event_readers_dropped.inc();
    }
}

/// Bytes of queued events one write to an `/events` reader carries at most.
const STREAM_BATCH_BYTES: usize = 64 * 1024;

/// Waits for the next live event, then takes every one already queued (up to
/// `STREAM_BATCH_BYTES`) into `batch` as JSON lines, the ones `filter`
/// selects. One write per burst, not per event, keeps a reader that reads
/// within the backlog during a burst of thousands of events.
async fn next_batch(
    live: &mut broadcast::Receiver<Arc<Rendered>>,
    filter: &Filter,
    batch: &mut Vec<u8>,
) -> Result<(), Stop> {
    batch.clear();
    let mut next = match live.recv().await {
        Ok(e) => Some(e),
        Err(RecvError::Lagged(_)) => return Err(Stop::Slow),
        Err(RecvError::Closed) => return Err(Stop::Gone),
    };
    while let Some(e) = next.take() {
        if filter.matches(&e) {
            batch.extend_from_slice(e.line.as_bytes());
            batch.push(b'\n');
        }
        if batch.len() >= STREAM_BATCH_BYTES {
            break;
        }
        next = match live.try_recv() {
            Ok(e) => Some(e),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Lagged(_)) => return Err(Stop::Slow),
            Err(TryRecvError::Closed) => return Err(Stop::Gone),
        };
    }
    Ok(())
}

/// Bytes the kernel may hold for one `/events` reader: without a limit it
/// grows the buffer to megabytes for a reader that stops reading.
const STREAM_SEND_BUFFER: libc::c_int = 64 * 1024;

fn limit_send_buffer(sock: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size = STREAM_SEND_BUFFER;
    // SAFETY: setsockopt reads `size` (a c_int, its length given) on a socket
    // this task owns. A failure leaves the kernel's default, still bounded by
    // the write timeout.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Why a stream ended: the reader went away, or fell behind.
enum Stop {
    Gone,
    Slow,
}

async fn write_timed(sock: &mut TcpStream, bytes: &[u8]) -> Result<(), Stop> {
    match tokio::time::timeout(STREAM_WRITE_TIMEOUT, sock.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stop::Gone),
        Err(_) => Err(Stop::Slow),
    }
}

async fn write_line(sock: &mut TcpStream, line: &str) -> Result<(), Stop> {
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    write_timed(sock, &buf).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A request head that arrives in several segments is still one request
    /// (a client may write it piecewise).
    #[tokio::test]
    async fn a_request_split_over_segments_is_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::new("node-1", Duration::from_secs(60)));
        tokio::spawn(serve(listener, shared));
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET ").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"/healthz HTTP/1.0\r\n").await.expect("write");
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"\r\n").await.expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.expect("read");
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(resp.ends_with("{\"ok\":true}"), "{resp}");
    }
}

#[cfg(test)]
mod liveness_tests {
    use std::time::{Duration, Instant};

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.expect("read");
        resp
    }

    /// A sync loop silent for longer than it may be fails liveness.
    #[tokio::test]
    async fn healthz_fails_when_the_sync_loop_stalls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::new("node-1", Duration::from_secs(1)));
        tokio::spawn(serve(listener, shared.clone()));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let long_ago = Instant::now()
            .checked_sub(shared.stall_after + Duration::from_secs(1))
            .expect("clock");
        *shared.heartbeat.lock().expect("heartbeat") = long_ago;
        let resp = get(addr, "/healthz").await;
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
    }
}
