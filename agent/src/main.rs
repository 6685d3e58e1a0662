//! palisade-agent: enforces Kubernetes NetworkPolicy on this node with eBPF.
mod run;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run::main().await
}
