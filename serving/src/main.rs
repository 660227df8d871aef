use clap::Parser;
use tandem_serving::cli;
use tandem_serving::config::{Cli, Command};
use tracing_subscriber::EnvFilter;

/// Ingest allocates per event and per group: mimalloc's thread-local free lists cost less
/// than glibc malloc's arenas, in time and in memory held after bursts (see README,
/// Performance).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(config) => cli::serve(config).await,
        Command::Batch(config) => cli::batch(config).await,
    }
}
