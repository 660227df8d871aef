//! `GET /metrics`: the server's counters and histograms in Prometheus' text format, and the
//! state of every view read at each scrape.
//!
//! Events are counted where they happen, through the `metrics` facade: HTTP requests by
//! route and status here ([`TrackLayer`]), the log's fsyncs and the speed layer's folds in the
//! writer (`tandem_speed::writer`), batch runs and log retention in [`crate::runner`]. A level
//! rather than an event (a view's batch version and watermark, the events past it, the last
//! run's outcome) is read from the views and the catalog when scraped ([`render`]), so it
//! is what a query would see at that moment, and covers runs made by `tandem batch` in
//! another process too.
//!
//! The exporter is `metrics-exporter-prometheus` without its own listener: the answer is
//! rendered from a route of the API, on the API's port.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use metrics::{Counter, Histogram, Label, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use parking_lot::RwLock;
use pin_project_lite::pin_project;
use tandem_model::value::parse_timestamp;
use tower::{Layer, Service};

use crate::app::AppState;

/// The maps of [`HttpHandles`], with a fast hash: a request hashes its route template.
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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

/// The installed recorder, which the `/metrics` route renders, and the HTTP metrics' handles.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    http: Arc<HttpHandles>,
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
    Ok(Metrics { handle, http: Arc::default() })
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
        "tandem_view_speed_bytes",
        Unit::Bytes,
        "About how many bytes the speed layer's groups hold (table, keys, states and sketches)."
    );
    describe_gauge!(
        "tandem_view_batch_published_timestamp_seconds",
        Unit::Seconds,
        "When the served batch version was published (Unix time)."
    );
    describe_gauge!("tandem_view_last_run_success", "1 if the view's newest ended run succeeded, else 0.");
    describe_gauge!("tandem_view_last_run_duration_seconds", Unit::Seconds, "How long the newest ended run ran.");
    describe_gauge!("tandem_catalog_up", "0 if the catalog did not answer during the scrape.");
    describe_gauge!("process_resident_memory_bytes", Unit::Bytes, "Resident memory of the server (Linux).");
}

/// The layer on every route that counts requests: `tandem_http_requests_total` by method,
/// route (its template, such as `/v1/views/{name}/query`) and status, and
/// `tandem_http_request_duration_seconds` by method and route, from the request's arrival
/// until its answer's head is ready (a query's rows are made by then; sending them is not
/// counted). A service of its own rather than `axum::middleware::from_fn`, whose boxed
/// future and clone of the route's service cost a single-event request 1.6 k instructions
/// more (callgrind; see `bench/HISTORY.md`, session 45).
#[derive(Clone)]
pub struct TrackLayer(Arc<HttpHandles>);

impl TrackLayer {
    pub fn new(metrics: &Metrics) -> TrackLayer {
        TrackLayer(metrics.http.clone())
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track { inner, http: self.0.clone() }
    }
}

/// See [`TrackLayer`].
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    http: Arc<HttpHandles>,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Tracked<S::Future> {
        Tracked {
            started: Instant::now(),
            route: request.extensions().get::<MatchedPath>().cloned(),
            method: request.method().clone(),
            http: self.http.clone(),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// A request's answer on its way, and what it is counted under once it is ready.
    pub struct Tracked<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: Method,
        http: Arc<HttpHandles>,
    }
}

impl<F, E> Future for Tracked<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        if let Ok(response) = &answer {
            let route = this.route.as_ref().map_or("", |r| r.as_str());
            this.http.record(route, this.method, response.status(), this.started.elapsed());
        }
        Poll::Ready(answer)
    }
}

/// The handles of the HTTP metrics, one pair for each route, method and status seen.
///
/// Kept here, a request finds its pair under a read lock; found by name in the recorder at each
/// request (building and looking up the labelled keys), they cost a single-event request 3.8 k
/// instructions more (callgrind, `bench/HISTORY.md`, session 45).
#[derive(Default)]
pub struct HttpHandles {
    by_route: RwLock<Map<String, ByStatus>>,
}

/// A route's `tandem_http_requests_total` and `tandem_http_request_duration_seconds` by
/// method and status.
type ByStatus = Map<(Method, StatusCode), (Counter, Histogram)>;

impl HttpHandles {
    fn record(&self, route: &str, method: &Method, status: StatusCode, took: Duration) {
        if let Some((requests, duration)) =
            self.by_route.read().get(route).and_then(|m| m.get(&(method.clone(), status)))
        {
            requests.increment(1);
            duration.record(took);
            return;
        }
        let method_label = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::DELETE => "DELETE",
            _ => "other",
        };
        let labels = [
            Label::new("method", method_label),
            Label::new("route", route.to_string()),
            Label::new("status", status.as_str().to_string()),
        ];
        let requests = metrics::counter!("tandem_http_requests_total", labels.iter());
        let duration = metrics::histogram!("tandem_http_request_duration_seconds", labels[..2].iter());
        requests.increment(1);
        duration.record(took);
        let mut by_route = self.by_route.write();
        by_route.entry(route.to_string()).or_default().insert((method.clone(), status), (requests, duration));
    }
}

/// The answer of `GET /metrics`: every view's state now, then everything recorded.
pub async fn render(state: &AppState, metrics: &Metrics) -> String {
    // the newest run of each view that ended (a newer one may be queued or running)
    let last_runs = state.env.catalog.newest_runs(true).await;
    let catalog_up = last_runs.is_ok();
    let last_runs = last_runs.unwrap_or_default();
    for name in state.view_names() {
        let Some(live) = state.view(&name) else { continue };
        let (moment, speed_bytes) = live.read(|s| (s.moment(), s.speed_bytes()));
        let label = [("view", name.clone())];
        let batch = moment.batch.as_ref();
        gauge!("tandem_view_ready", &label).set(flag(moment.is_ready()));
        gauge!("tandem_view_batch_version", &label).set(batch.map_or(0.0, |b| b.version as f64));
        gauge!("tandem_view_batch_watermark", &label).set(batch.map_or(0.0, |b| b.watermark as f64));
        gauge!("tandem_view_speed_events", &label).set(moment.speed_events as f64);
        gauge!("tandem_view_late_events", &label).set(moment.late_events as f64);
        gauge!("tandem_view_speed_bytes", &label).set(speed_bytes as f64);
        // the version's publish time, which the view loaded with it
        if let Some(published) = batch.and_then(|b| b.finished_at.as_deref()).and_then(parse_timestamp) {
            gauge!("tandem_view_batch_published_timestamp_seconds", &label).set(seconds(published));
        }
        if let Some(run) = last_runs.get(&name) {
            gauge!("tandem_view_last_run_success", &label).set(flag(run.status == "succeeded"));
            let took = run.finished_at.zip(run.started_at).map_or(0, |(end, start)| end - start);
            gauge!("tandem_view_last_run_duration_seconds", &label).set(seconds(took));
        }
    }
    gauge!("tandem_catalog_up").set(flag(catalog_up));
    if let Some(bytes) = resident_bytes() {
        gauge!("process_resident_memory_bytes").set(bytes as f64);
    }
    metrics.handle.render()
}

/// The process's resident memory (`VmRSS` in `/proc/self/status`; `None` where there is none).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

fn seconds(micros: i64) -> f64 {
    micros as f64 / 1e6
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}
