//! The two commands of the binary: `tandem serve` and `tandem batch`.

use anyhow::{Context, bail};
use axum::serve::ListenerExt;
use tandem_batch::catalog::Trigger;
use tandem_batch::{BatchEnv, Catalog};
use tokio::net::TcpListener;

use crate::app::AppState;
use crate::config::{BatchConfig, ServeConfig};
use crate::{api, metrics, runner};

/// Serves until SIGINT or SIGTERM, then drains requests and stops the writers (every
/// acknowledged event is already on disk; stopping only finishes in-flight requests).
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let exporter = metrics::install()?;
    let state = AppState::start(config).await?;
    let tasks = runner::spawn_background(&state);
    let addr = listener.local_addr()?;
    // the end-to-end tests read this line to find an ephemeral port
    println!("tandem listening on http://{addr}");
    tracing::info!(%addr, "tandem listening");
    let keyless = !state.keys.required();
    if keyless && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "no --api-key set: anyone who reaches this address can write and read every dataset");
    }
    // Nagle's algorithm would hold an answer's last small piece (see `query::Answer`) until
    // the client acknowledges the ones before it, which a client may delay by 40 ms
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY on a connection");
        }
    });
    let app = api::router(state.clone(), exporter);
    // the peer's address names a client for the rate limit when no API keys are set; only
    // then is it handed to every request
    if state.config.rate_limit.is_some() && keyless {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    } else {
        axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    }
    tasks.iter().for_each(|t| t.abort());
    state.shutdown().await;
    tracing::info!("tandem stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Recomputes the chosen views in this process; fails if any run fails.
pub async fn batch(config: BatchConfig) -> anyhow::Result<()> {
    let catalog = Catalog::connect(config.storage.database_url.as_deref(), &config.storage.data_dir)
        .await
        .context("opening the catalog")?;
    let env = BatchEnv::local(catalog.clone(), config.storage.data_dir.clone())?;
    let views = match &config.view {
        Some(name) => {
            catalog.view(name).await?.with_context(|| format!("view {name:?} does not exist"))?;
            vec![name.clone()]
        }
        None => catalog.views().await?.into_iter().map(|v| v.spec.name).collect(),
    };
    let mut failed = 0;
    for view in views {
        let (run, created) = catalog.queue_run(&view, Trigger::Cli).await?;
        if !created {
            eprintln!("view {view}: run {} is already {}; not starting another", run.id, run.status);
            failed += 1;
            continue;
        }
        match tandem_batch::run::execute(&env, &run, config.full).await {
            Ok(outcome) => {
                let p = outcome.publication;
                println!(
                    "{}",
                    serde_json::json!({"view": p.view, "run": p.run_id, "version": p.version, "watermark": p.watermark,
                        "mode": p.mode, "partitions": p.partitions, "rows_in": p.rows_in, "rows_out": p.rows_out})
                );
            }
            Err(e) => {
                eprintln!("view {view}: run {} failed: {e}", run.id);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} run(s) failed");
    }
    Ok(())
}
