//! The agent's wiring: startup checks, the datapath, the sources, the sync
//! loop, the event printer and the HTTP endpoints as tasks, signals, and
//! `--uninstall`.
use std::{
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use palisade_agent::{
    cli::{AttachModeArg, Cli, LogFormat},
    datapath::{self, AttachMode, Datapath},
    denylog,
    events::EventReader,
    http,
    maps::Maps,
    node::{self, neighbours, watch, Wake},
    source::{FileSource, KubeSource},
    status::Shared,
    stream::Rendered,
    sync::{Options, SyncLoop},
};
use palisade_common::Config;
use tokio::sync::mpsc;
use tracing::{error, info};

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default (64 KiB
/// in many container runtimes) is far too small for the maps. Best effort: later
/// kernels do not use it, and without CAP_SYS_RESOURCE the hard limit stays.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; no other effect on memory.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return;
    }
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) } == 0 {
        let raised = libc::rlimit {
            rlim_cur: cur.rlim_max,
            rlim_max: cur.rlim_max,
        };
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) };
    }
}

fn startup_checks(cli: &Cli) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let caps = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = caps
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        const CAP_NET_ADMIN: u64 = 12;
        const CAP_SYS_ADMIN: u64 = 21;
        const CAP_BPF: u64 = 39;
        let has = |c: u64| eff & (1 << c) != 0;
        if !has(CAP_NET_ADMIN) || !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
            bail!("palisade-agent needs root, or CAP_BPF (or CAP_SYS_ADMIN), CAP_NET_ADMIN and CAP_PERFMON; effective capabilities are {eff:#x}");
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let bpffs: Vec<&str> = mounts
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("bpf"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    if !bpffs.iter().any(|m| cli.pin_dir.starts_with(m)) {
        bail!(
            "{}",
            palisade_agent::pins::not_bpffs_advice(&cli.pin_dir, &bpffs)
        );
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("this kernel has no BTF (/sys/kernel/btf/vmlinux missing); Palisade needs CONFIG_DEBUG_INFO_BTF");
    }
    // Interface discovery runs iproute2's `ip` and `bridge`: without them the
    // agent would find no pod at all.
    if let Err(e) = node::Links::scan() {
        bail!("cannot read this node's interfaces: {e}");
    }
    if let Some(dir) = &cli.source_dir {
        if !dir.is_dir() {
            bail!("--source-dir {}: not a directory", dir.display());
        }
    }
    Ok(())
}

/// Runs the agent as the command line says.
pub async fn main() -> Result<()> {
    let cli = Cli::parse();
    // kube-runtime's watcher logs every 403 retry at warn, and kube-client every
    // failed attempt at error without naming the resource; the kube source logs
    // one clear line per failing resource instead (RUST_LOG brings them back).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube_runtime=error,kube_client=off")
    });
    // Colour only on a terminal: escape codes in a log file or `kubectl logs`
    // break grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if cli.log_format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
    if cli.uninstall {
        return uninstall(&cli);
    }
    let node_name = cli.node_name.clone().unwrap_or_default();
    if let Err(e) = startup_checks(&cli) {
        error!("{e:#}");
        return Err(e);
    }
    raise_memlock_limit();

    let mut dp = Datapath::load(&cli.pin_dir).with_context(|| {
        format!(
            "loading the datapath (kernel needs TC/TCX and BPF support; pin dir {})",
            cli.pin_dir.display()
        )
    })?;
    match cli.attach_mode {
        AttachModeArg::Auto => {}
        AttachModeArg::Tcx => dp.mode = AttachMode::Tcx,
        AttachModeArg::Netlink => dp.mode = AttachMode::Netlink,
    }
    let mut maps = Maps::take(&mut dp)?;
    maps.set_config(Config {
        event_interval_ns: cli.event_interval_ms.max(1) * 1_000_000,
        endpoint_events_per_sec: cli.endpoint_events_per_second.max(1),
        flags: cli.flow_events.config_flags(),
        ct_confirm_per_sec: cli.conntrack_confirms_per_second,
        _pad0: 0,
    })?;
    let mut events = EventReader::new(&mut dp)?;
    info!(node = %node_name, attach_mode = dp.mode.as_str(), pin_dir = %cli.pin_dir.display(), "datapath loaded");

    let resync = Duration::from_secs(cli.resync_seconds.max(1));
    let metrics = palisade_agent::metrics::Metrics::new(
        cli.pin_dir.clone(),
        dp.mode.as_str(),
        cli.metrics_pod_labels,
    );
    let shared = Arc::new(
        Shared::new(&node_name, resync)
            .with_metrics(metrics)
            .with_event_history(cli.event_history),
    );
    let listener = tokio::net::TcpListener::bind(cli.ready_addr)
        .await
        .with_context(|| format!("binding the readiness endpoint {}", cli.ready_addr))?;
    tokio::spawn(http::serve(listener, shared.clone()));
    if let Some(addr) = cli.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        tokio::spawn(http::serve_metrics(listener, shared.clone()));
    }

    // Events -> JSON lines on stdout and to `/events` readers.
    let names_for_events = shared.clone();
    tokio::spawn(async move {
        loop {
            match events.next_batch().await {
                Ok(batch) => {
                    let names = names_for_events.names();
                    let mut out = std::io::stdout().lock();
                    for ev in batch {
                        let now = SystemTime::now();
                        let line = denylog::render(&ev, &names, now);
                        // stdout closed (a detached agent) must not stop the stream.
                        let _ = writeln!(out, "{line}");
                        if let Some(m) = &names_for_events.metrics {
                            m.record_event(&ev);
                        }
                        names_for_events.events.publish(Rendered::new(&line, now));
                    }
                    let _ = out.flush();
                }
                Err(e) => {
                    error!(error = %e, "reading deny events");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });

    // Interface changes wake the sync loop.
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let watched = watch::watch_netlink(|change| {
            let w = match change {
                watch::NetlinkChange::Links => Wake::Links,
                watch::NetlinkChange::Neigh => Wake::Neigh,
            };
            wake_tx.send(w).is_ok()
        });
        if let Err(e) = watched {
            error!(error = %e, "netlink watch failed; discovering interfaces on every pass");
            let _ = wake_tx.send(Wake::Unwatched);
        }
    });

    let (src_tx, src_rx) = mpsc::unbounded_channel();
    match &cli.source_dir {
        Some(dir) => {
            tokio::spawn(FileSource::new(dir, Duration::from_millis(cli.poll_ms)).run(src_tx));
        }
        None => {
            // clap requires exactly one of --source-dir, --kube and --uninstall,
            // and --uninstall has returned above.
            let client = kube::Client::try_default().await.context(
                "connecting to the Kubernetes API server (in-cluster service account, or KUBECONFIG / ~/.kube/config)",
            )?;
            tokio::spawn(KubeSource::new(client).run(src_tx));
        }
    }

    // CNI requests, when the plugin is in use. A socket that cannot be bound
    // is an error: the plugin's ADD would fail for every new pod.
    let (cni_tx, cni_rx) = mpsc::unbounded_channel();
    if let Some(path) = &cli.cni_socket {
        let listener = palisade_agent::cni::bind(path)?;
        info!(socket = %path.display(), "serving the CNI plugin");
        tokio::spawn(palisade_agent::cni::serve(listener, cni_tx));
    } else {
        drop(cni_tx);
    }

    let sync = SyncLoop::new(
        Options {
            node: node_name.clone(),
            audit: cli.audit,
            uplinks: cli.uplinks.clone(),
            node_ips: cli.node_ips.clone(),
            resync,
        },
        dp,
        maps,
        shared,
    );
    tokio::select! {
        _ = sync.run(src_rx, wake_rx, cni_rx) => {}
        _ = tokio::signal::ctrl_c() => {
            info!("interrupted; leaving programs and maps pinned so enforcement continues");
        }
        _ = sigterm() => {
            info!("terminated; leaving programs and maps pinned so enforcement continues");
        }
    }
    Ok(())
}

/// `--uninstall`: everything the agent attached and pinned goes, or the exit
/// status says what did not.
fn uninstall(cli: &Cli) -> Result<()> {
    let done = datapath::uninstall(&cli.pin_dir)
        .with_context(|| format!("uninstalling from {}", cli.pin_dir.display()))?;
    // The managed neighbour entries of bridge-style pods go too.
    let links = node::Links::scan()
        .map_err(|e| anyhow::anyhow!("reading this node's neighbour entries: {e}"))?;
    for (ip, dev) in &links.managed {
        if let Err(e) = neighbours::forget_neighbour(*ip, dev) {
            bail!("removing managed neighbour entry {ip} on {dev}: {e}");
        }
    }
    if !done.failed.is_empty() {
        bail!(
            "could not remove {} netlink filter(s), whose records are kept under {} for another try (needs CAP_NET_ADMIN): {}",
            done.failed.len(),
            cli.pin_dir.display(),
            done.failed.join("; ")
        );
    }
    if !done.found && links.managed.is_empty() {
        bail!(
            "nothing is pinned under {}: no Palisade state found there, nothing was removed. Check --pin-dir (from a debug pod, the node's bpffs is usually under /host/sys/fs/bpf/palisade)",
            cli.pin_dir.display()
        );
    }
    info!(
        pin_dir = %cli.pin_dir.display(),
        tcx_links = done.links,
        netlink_filters = done.filters,
        neighbour_entries = links.managed.len(),
        "uninstalled: removed {} TCX link(s), {} netlink filter(s), {} managed neighbour entr(ies) and the pins; no Palisade program is attached here any more",
        done.links,
        done.filters,
        links.managed.len()
    );
    Ok(())
}

async fn sigterm() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
