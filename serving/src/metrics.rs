//! `GET /metrics`: the server's counters and histograms in Prometheus' text format, and the
//! state of every view read at each scrape.
//!
//! Events are counted where they happen, through the `metrics` facade: HTTP requests by
//! route and status here ([`track`]), the log's fsyncs and the speed layer's folds in the
//! writer (`tandem_speed::writer`), batch runs and log retention in [`crate::runner`]. A level
//! rather than an event (a view's batch version and watermark, the events past it, the last
//! run's outcome) is read from the views and the catalog when scraped ([`render`]), so it
//! is what a query would see at that moment, and covers runs made by `tandem batch` in
//! another process too.
//!
//! The exporter is `metrics-exporter-prometheus` without its own listener: the answer is
//! rendered from a route of the API, on the API's port.

use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Label, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use crate::app::AppState;

/// Upper bounds of every `*_seconds` histogram's buckets: from the 0.1 ms of an
/// acknowledged single event or a kept-shape query to the minutes of a full batch run.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0,
];

/// How often the histograms' recorded samples are folded into their buckets between scrapes
/// (until then the exporter holds each sample, 8 bytes).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A gauge not set for this long is dropped from the answer: a deleted view's gauges
/// disappear after the first scrape past it (every scrape sets the others).
const GAUGE_IDLE: Duration = Duration::from_secs(60);

/// The installed recorder, which the `/metrics` route renders.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

/// Installs the process-wide recorder (once, by `tandem serve`) and starts its upkeep.
/// Without it the `metrics` calls elsewhere cost nothing and record nothing.
pub fn install() -> anyhow::Result<Metrics> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("histogram buckets")?
        .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(Metrics { handle })
}

/// The `# HELP` lines of the metrics this crate records (the writer describes its own).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("tandem_http_requests_total", "Answered requests, by method, route template and status.");
    describe_histogram!(
        "tandem_http_request_duration_seconds",
        Unit::Seconds,
        "From a request's arrival until its answer's head is ready (a query's rows are made by then)."
    );
    describe_counter!("tandem_batch_runs_total", "Batch runs this server made, by view and outcome.");
    describe_histogram!("tandem_batch_run_seconds", Unit::Seconds, "How long this server's batch runs took.");
    describe_counter!("tandem_log_segments_deleted_total", "Sealed log segments deleted by --log-retention.");
    describe_gauge!("tandem_view_ready", "1 once the view answers queries, 0 while it is building.");
    describe_gauge!("tandem_view_batch_version", "The batch version the view serves (0 without one).");
    describe_gauge!("tandem_view_batch_watermark", "The last sequence number the served batch version covers.");
    describe_gauge!("tandem_view_speed_events", "Events past the batch watermark, held by the speed layer.");
    describe_gauge!("tandem_view_late_events", "Speed-layer events of days the batch version already holds.");
    describe_gauge!(
        "tandem_view_batch_published_timestamp_seconds",
        Unit::Seconds,
        "When the served batch version was published (Unix time)."
    );
    describe_gauge!("tandem_view_last_run_success", "1 if the view's newest ended run succeeded, else 0.");
    describe_gauge!("tandem_view_last_run_duration_seconds", Unit::Seconds, "How long the newest ended run ran.");
    describe_gauge!("tandem_catalog_up", "0 if the catalog did not answer during the scrape.");
}

/// Middleware on every route: `tandem_http_requests_total` by method, route (its template,
/// such as `/v1/views/{name}/query`) and status, and `tandem_http_request_duration_seconds`
/// by method and route, from the request's arrival until its answer's head is ready (a
/// query's rows are made by then; sending them is not counted).
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().map_or_else(String::new, |p| p.as_str().to_owned());
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let response = next.run(request).await;
    let labels = [
        Label::new("method", method),
        Label::new("route", route),
        Label::new("status", response.status().as_str().to_owned()),
    ];
    metrics::counter!("tandem_http_requests_total", labels.iter()).increment(1);
    metrics::histogram!("tandem_http_request_duration_seconds", labels[..2].iter()).record(started.elapsed());
    response
}

/// The answer of `GET /metrics`: every view's state now, then everything recorded.
pub async fn render(state: &AppState, metrics: &Metrics) -> String {
    let mut catalog_up = state.env.catalog.ping().await.is_ok();
    for name in state.view_names() {
        let Some(live) = state.view(&name) else { continue };
        let moment = live.read(|s| s.moment());
        let label = [("view", name.clone())];
        let batch = moment.batch.as_ref();
        gauge!("tandem_view_ready", &label).set(flag(moment.is_ready()));
        gauge!("tandem_view_batch_version", &label).set(batch.map_or(0.0, |b| b.version as f64));
        gauge!("tandem_view_batch_watermark", &label).set(batch.map_or(0.0, |b| b.watermark as f64));
        gauge!("tandem_view_speed_events", &label).set(moment.speed_events as f64);
        gauge!("tandem_view_late_events", &label).set(moment.late_events as f64);
        if !catalog_up {
            continue;
        }
        if let Some(b) = batch {
            match state.env.catalog.version(&name, b.version).await {
                Ok(Some(v)) => {
                    gauge!("tandem_view_batch_published_timestamp_seconds", &label).set(seconds(v.created_at))
                }
                Ok(None) => {}
                Err(_) => catalog_up = false,
            }
        }
        // the newest run that ended (a newer one may be queued or running)
        match state.env.catalog.runs_of(&name, 10).await {
            Ok(runs) => {
                if let Some(run) = runs.iter().find(|r| r.finished_at.is_some()) {
                    gauge!("tandem_view_last_run_success", &label).set(flag(run.status == "succeeded"));
                    let took = run.finished_at.zip(run.started_at).map_or(0, |(end, start)| end - start);
                    gauge!("tandem_view_last_run_duration_seconds", &label).set(seconds(took));
                }
            }
            Err(_) => catalog_up = false,
        }
    }
    gauge!("tandem_catalog_up").set(flag(catalog_up));
    metrics.handle.render()
}

fn seconds(micros: i64) -> f64 {
    micros as f64 / 1e6
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}
