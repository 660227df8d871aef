//! Batch runs inside the server: started by hand (API), by a view's cron schedule, or at
//! view creation; and the poller that installs versions published by other processes and
//! applies log retention.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tandem_batch::catalog::{RunRecord, Trigger};
use tandem_batch::retention::prune_log;
use tandem_batch::run::execute;
use tandem_model::view::MANUAL_SCHEDULE;
use tokio::task::JoinHandle;

use crate::api::error::ApiResult;
use crate::app::AppState;

/// Queues a run of `view` (`full`: recompute every day, not only the dirty ones) (or returns the one already queued or running) and, if it is
/// new, executes it in the background: seal the log's active segment so the run covers
/// every event acknowledged so far, recompute, then serve the new version at once.
pub async fn trigger(state: &AppState, view: &str, trigger: Trigger, full: bool) -> ApiResult<(RunRecord, bool)> {
    let (run, created) = state.env.catalog.queue_run(view, trigger).await?;
    if created {
        let state = state.clone();
        let run = run.clone();
        tokio::spawn(async move { execute_run(&state, &run, full).await });
    }
    Ok((run, created))
}

async fn execute_run(state: &AppState, run: &RunRecord, full: bool) {
    if let Some(live) = state.view(&run.view)
        && let Some(dataset) = state.dataset(&live.view.spec.dataset)
        && let Err(e) = dataset.writer.roll().await
    {
        tracing::warn!(run = run.id, error = %e, "could not seal the active segment before a run");
    }
    let started = std::time::Instant::now();
    let result = execute(&state.env, run, full).await;
    let status = if result.is_ok() { "succeeded" } else { "failed" };
    let labels = [("view", run.view.clone()), ("status", status.to_string())];
    metrics::counter!("tandem_batch_runs_total", &labels).increment(1);
    metrics::histogram!("tandem_batch_run_seconds", &labels).record(started.elapsed());
    match result {
        Ok(outcome) => {
            let p = outcome.publication;
            if let Err(e) = state.refresh_view(&p.view, p.version).await {
                tracing::error!(view = %p.view, version = p.version, error = %e, "could not load a published version; the poller will retry");
            }
        }
        Err(e) => tracing::warn!(run = run.id, view = %run.view, error = %e, "run failed"),
    }
}

/// Starts the background tasks: the version poller, the scheduler, and first runs for
/// views still building after a restart.
pub fn spawn_background(state: &AppState) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(poll_versions(state.clone())),
        tokio::spawn(schedule(state.clone())),
        tokio::spawn(resume_building(state.clone())),
    ]
}

/// Installs versions that another process (`tandem batch`) published, fails runs
/// whose process died, and deletes the log segments `--log-retention` lets go.
async fn poll_versions(state: AppState) {
    let mut tick = tokio::time::interval(state.config.poll_interval);
    loop {
        tick.tick().await;
        if let Err(e) = state.env.catalog.fail_all_abandoned().await {
            tracing::warn!(error = %e, "could not check for abandoned runs");
        }
        let versions = match state.env.catalog.current_versions().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "could not poll the catalog for new versions");
                continue;
            }
        };
        for (view, version) in versions {
            if let Err(e) = state.refresh_view(&view, version).await {
                tracing::warn!(view, version, error = %e, "could not load a published version");
            }
        }
        if let Some(age) = state.config.log_retention {
            prune_logs(&state, age).await;
        }
    }
}

/// Deletes the log segments `--log-retention` lets go (see `tandem_batch::retention`), for
/// a retention age of at least the windows a restart reads back from the log.
async fn prune_logs(state: &AppState, age: Duration) {
    let writers = state.writer_config();
    let age = age.max(writers.dedup_window).max(writers.key_window);
    for dataset in state.datasets() {
        let name = &dataset.record.spec.name;
        match prune_log(&state.env, name, age).await {
            Ok(p) if p.segments > 0 => {
                metrics::counter!("tandem_log_segments_deleted_total", "dataset" => name.clone())
                    .increment(p.segments as u64);
                tracing::info!(
                    dataset = name,
                    segments = p.segments,
                    events = p.events,
                    bytes = p.bytes,
                    "deleted log segments past retention"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(dataset = name, error = %e, "could not apply log retention"),
        }
    }
}

/// Parses a view's schedule: a cron expression of five fields, or six with leading seconds,
/// in UTC; or `manual` ([`MANUAL_SCHEDULE`]), no scheduled runs (`None`).
pub fn parse_schedule(text: &str) -> Result<Option<croner::Cron>, String> {
    if text == MANUAL_SCHEDULE {
        return Ok(None);
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(text)
        .map(Some)
        .map_err(|e| format!("schedule {text:?}: {e}"))
}

/// Fires each view's cron schedule (UTC). A scheduled run that cannot start (the catalog is
/// unreachable) is retried with exponential backoff, 1 s doubling to 60 s, until it starts.
async fn schedule(state: AppState) {
    const MAX_BACKOFF: Duration = Duration::from_secs(60);
    // when each view runs next (`None`: never by itself), and by which schedule
    let mut next: HashMap<String, (String, Option<DateTime<Utc>>)> = HashMap::new();
    let mut backoff: HashMap<String, Duration> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = Utc::now();
        let names = state.view_names();
        next.retain(|name, _| names.contains(name));
        backoff.retain(|name, _| names.contains(name));
        for name in names {
            let Some(schedule) = state.schedule_of(&name) else { continue };
            // parsed only when the next run is to be set (or the schedule changed), not at
            // every tick: parsing at every tick was nearly all an idle server did (20 ms of CPU
            // a second with 500 views, 2 ms without; bench/HISTORY.md, session 46)
            let upcoming = |schedule: &str| {
                let cron = parse_schedule(schedule).ok().flatten()?;
                cron.find_next_occurrence(&now, false).ok()
            };
            let entry = next.entry(name.clone()).or_insert_with(|| (schedule.clone(), upcoming(&schedule)));
            if entry.0 != schedule {
                *entry = (schedule.clone(), upcoming(&schedule));
                backoff.remove(&name);
            }
            let Some(due) = entry.1 else { continue };
            if due > now {
                continue;
            }
            match trigger(&state, &name, Trigger::Schedule, false).await {
                Ok(_) => {
                    next.insert(name.clone(), (schedule.clone(), upcoming(&schedule)));
                    backoff.remove(&name);
                }
                Err(e) => {
                    let wait = backoff.get(&name).map_or(Duration::from_secs(1), |b| (*b * 2).min(MAX_BACKOFF));
                    tracing::warn!(view = name, error = e.message, retry_in = ?wait, "scheduled run could not start");
                    let retry = now + chrono::Duration::from_std(wait).expect("small duration");
                    next.insert(name.clone(), (schedule, Some(retry)));
                    backoff.insert(name, wait);
                }
            }
        }
    }
}

/// A view that was building when the server stopped gets its first run again.
async fn resume_building(state: AppState) {
    for name in state.view_names() {
        let Some(live) = state.view(&name) else { continue };
        if !live.read(|s| s.is_ready())
            && let Err(e) = trigger(&state, &name, Trigger::Create, true).await
        {
            tracing::warn!(view = name, error = e.message, "could not restart the first run of a building view");
        }
    }
}
