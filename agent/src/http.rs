//! The readiness/health endpoint: `GET /ready` (200 with the programmed generation
//! and revision once the first full state is written, 503 before), `GET /healthz`.
use std::sync::Arc;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::sync::Shared;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match sock.read(&mut buf).await {
                Ok(n) => n,
                Err(_) => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
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
                "/healthz" | "/livez" => ("200 OK", "{\"ok\":true}".to_string()),
                _ => ("404 Not Found", "{\"error\":\"not found\"}".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
