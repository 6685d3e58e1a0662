//! The node's CNI endpoint: a Unix socket (`--cni-socket`) that the
//! `palisade-cni` plugin calls on ADD, DEL and CHECK. Each request is handed
//! to the sync loop, which attaches the programs and writes the pod's record
//! before the reply goes back, so a pod's first packet is enforced.
use std::{
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use palisade_cni::protocol::{Reply, Request, MAX_MESSAGE};
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

/// One request and where its reply goes.
pub struct CniCall {
    pub req: Request,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug, Error)]
pub enum CniSocketError {
    #[error("CNI socket {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("CNI socket {path}: a file that is not a socket is in the way")]
    NotSocket { path: PathBuf },
}

/// How long one connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind the socket at `path`: its directory created, a stale socket of an
/// earlier agent replaced, readable and writable by root only (the runtime
/// runs CNI plugins as root).
pub fn bind(path: &Path) -> Result<UnixListener, CniSocketError> {
    let io = |what: &'static str| {
        move |source| CniSocketError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating its directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(io("removing the stale socket"))?
        }
        Ok(_) => {
            return Err(CniSocketError::NotSocket {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    let l = UnixListener::bind(path).map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("setting its mode"))?;
    Ok(l)
}

/// Accept connections until the sync loop is gone.
pub async fn serve(listener: UnixListener, tx: mpsc::UnboundedSender<CniCall>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, tx.clone()));
            }
            Err(e) => {
                warn!(error = %e, "CNI socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

async fn answer(stream: UnixStream, tx: mpsc::UnboundedSender<CniCall>) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_MESSAGE as u64));
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(line.trim()) {
            Ok(req) => {
                let (reply_tx, reply_rx) = oneshot::channel();
                if tx
                    .send(CniCall {
                        req,
                        reply: reply_tx,
                    })
                    .is_err()
                {
                    Reply::refused("the agent is shutting down")
                } else {
                    reply_rx
                        .await
                        .unwrap_or_else(|_| Reply::refused("the agent dropped the request"))
                }
            }
            Err(e) => Reply::refused(format!("unreadable request: {e}")),
        },
        Ok(Err(e)) => Reply::refused(format!("reading the request: {e}")),
        Err(_) => Reply::refused("no request within 10 s"),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    if let Err(e) = w.write_all(&out).await {
        debug!(error = %e, "CNI socket: the plugin left before the reply");
    }
}
