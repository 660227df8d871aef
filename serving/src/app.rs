//! The running server's state: the catalog and object store, every dataset's writer and
//! every view's live state; and start-up, which rebuilds all of it from the catalog and
//! the log.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use anyhow::Context;
use parking_lot::RwLock;
use tandem_batch::catalog::{DatasetRecord, KeyRecord, ViewRecord, now_micros};
use tandem_batch::store::load_version;
use tandem_batch::{BatchEnv, Catalog};
use tandem_model::event::Decoder;
use tandem_model::value::format_timestamp;
use tandem_model::{DatasetSpec, FieldType, ViewSpec};
use tandem_speed::writer::WriterConfig;
use tandem_speed::{BatchSnapshot, DatasetWriter, ViewLive};

use crate::api::auth::{ApiKeys, Scope, new_secret};
use crate::api::error::{ApiError, ApiResult};
use crate::config::ServeConfig;

/// A dataset that accepts events; shared, so that an ingest request takes it without
/// copying its schema.
pub struct Dataset {
    pub record: DatasetRecord,
    /// Its events' decoder, which keeps what it learns of the clients' key order.
    pub decoder: Decoder,
    pub writer: DatasetWriter,
}

pub struct Inner {
    pub env: BatchEnv,
    pub config: ServeConfig,
    /// The API keys requests may carry: the flags' and those issued (`POST /v1/keys`).
    pub keys: ApiKeys,
    datasets: RwLock<BTreeMap<String, Arc<Dataset>>>,
    views: RwLock<BTreeMap<String, Arc<ViewLive>>>,
    /// The schedule each view runs on, as the catalog holds it. A view's definition is fixed
    /// when it is made, but its schedule may change (`PATCH /v1/views/{name}`), so the
    /// scheduler reads it here, not from the view's compiled definition.
    schedules: RwLock<BTreeMap<String, String>>,
    /// Held while a view's schedule changes, so that two changes at once leave the catalog and
    /// the scheduler with the same one.
    schedule_changes: tokio::sync::Mutex<()>,
    /// Request-body bytes that ingest requests may hold at once (`--max-inflight-bytes`).
    pub ingest_budget: Arc<tokio::sync::Semaphore>,
    /// Held while a dataset is made or deleted, so that a deletion never removes the writer
    /// or the files of a dataset made again under its name meanwhile.
    dataset_changes: tokio::sync::Mutex<()>,
    /// Held while a key is issued or deleted, so that two deletions at once cannot leave no
    /// key that manages keys.
    key_changes: tokio::sync::Mutex<()>,
}

/// Shared state of the server, cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Connects the catalog, loads every view's published version and replays the log
    /// past it into the speed layer.
    pub async fn start(config: ServeConfig) -> anyhow::Result<AppState> {
        let catalog = Catalog::connect(config.storage.database_url.as_deref(), &config.storage.data_dir)
            .await
            .context("opening the catalog")?;
        let env = BatchEnv::local(catalog.clone(), config.storage.data_dir.clone())?;
        let abandoned = catalog.fail_all_abandoned().await?;
        if abandoned > 0 {
            tracing::warn!(runs = abandoned, "marked runs abandoned by a stopped process as failed");
        }
        let ingest_budget = Arc::new(tokio::sync::Semaphore::new(config.max_inflight_bytes));
        let keys = ApiKeys::new(&config, &catalog.keys().await?).context("reading the issued API keys")?;
        let state = AppState(Arc::new(Inner {
            env,
            ingest_budget,
            keys,
            config,
            datasets: RwLock::new(BTreeMap::new()),
            views: RwLock::new(BTreeMap::new()),
            schedules: RwLock::new(BTreeMap::new()),
            schedule_changes: tokio::sync::Mutex::new(()),
            dataset_changes: tokio::sync::Mutex::new(()),
            key_changes: tokio::sync::Mutex::new(()),
        }));
        let views = catalog.views().await?;
        for dataset in catalog.datasets().await? {
            let mut lives = Vec::new();
            for view in views.iter().filter(|v| v.spec.dataset == dataset.spec.name) {
                let live = state
                    .load_view(&dataset.spec, view)
                    .await
                    .with_context(|| format!("loading view {:?}", view.spec.name))?;
                lives.push(live);
            }
            state.open_dataset(dataset, lives.clone())?;
            let mut map = state.views.write();
            for live in lives {
                map.insert(live.name().to_string(), live);
            }
        }
        for view in &views {
            state.schedules.write().insert(view.spec.name.clone(), view.spec.schedule().to_string());
        }
        Ok(state)
    }

    /// The configuration of every dataset's writer.
    pub(crate) fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            max_queued: self.config.max_queued_requests,
            dedup_window: self.config.dedup_window,
            roll_interval: self.config.segment_interval,
            roll_bytes: self.config.segment_bytes,
            ..WriterConfig::default()
        }
    }

    fn open_dataset(&self, record: DatasetRecord, views: Vec<Arc<ViewLive>>) -> anyhow::Result<Arc<Dataset>> {
        let dir = self.env.log_dir(&record.spec.name);
        let (writer, recovery) = DatasetWriter::open(&dir, record.spec.clone(), views, self.writer_config())
            .with_context(|| format!("opening the log of dataset {:?}", record.spec.name))?;
        if let Some((path, bytes, reason)) = recovery.truncated {
            tracing::warn!(path = %path.display(), dropped_bytes = bytes, reason, "cut a torn tail off the log; no acknowledged request is lost");
        }
        let dataset = Arc::new(Dataset { decoder: Decoder::new(&record.spec), record, writer });
        self.datasets.write().insert(dataset.record.spec.name.clone(), Arc::clone(&dataset));
        Ok(dataset)
    }

    /// A view's live state with its published version installed.
    async fn load_view(&self, dataset: &DatasetSpec, record: &ViewRecord) -> anyhow::Result<Arc<ViewLive>> {
        let compiled = record.spec.compile(dataset).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
        let snapshot = match record.current_version {
            Some(version) => Some(self.snapshot(&compiled, version).await?),
            None => None,
        };
        let live = ViewLive::new(compiled, snapshot).map_err(|e| anyhow::anyhow!(e))?;
        if record.current_version.is_none() {
            live.set_floor(record.start_seq);
        }
        Ok(Arc::new(live))
    }

    async fn snapshot(
        &self,
        view: &tandem_model::view::CompiledView,
        version: i64,
    ) -> tandem_batch::Result<BatchSnapshot> {
        let record =
            self.env.catalog.version(&view.spec.name, version).await?.ok_or_else(|| {
                tandem_batch::Error::NotFound(format!("version {version} of view {:?}", view.spec.name))
            })?;
        let groups = load_version(&self.env.store, view, &record.files).await?;
        let finished_at = Some(format_timestamp(record.created_at));
        // putting the groups in order of bucket sorts them: not on an async worker
        tokio::task::spawn_blocking(move || BatchSnapshot::new(version, record.watermark, finished_at, groups))
            .await
            .map_err(|e| tandem_batch::Error::Invalid(format!("loading version {version}: {e}")))
    }

    /// Installs version `version` of a view if it is newer than what the view serves.
    pub async fn refresh_view(&self, name: &str, version: i64) -> tandem_batch::Result<bool> {
        let Some(live) = self.view(name) else { return Ok(false) };
        if live.read(|s| s.batch.as_ref().is_some_and(|b| b.version >= version)) {
            return Ok(false);
        }
        let snapshot = self.snapshot(&live.view, version).await?;
        let dir = self.env.log_dir(&live.view.dataset.name);
        let view = live.clone();
        // may read sealed log segments (see ViewLive::publish)
        let installed =
            tokio::task::spawn_blocking(move || view.publish(snapshot, |after, to| view.fold_log(&dir, after, to)))
                .await
                .map_err(|e| tandem_batch::Error::Invalid(format!("installing version {version}: {e}")))?
                .map_err(|e| tandem_batch::Error::Invalid(format!("installing version {version}: {e}")))?;
        if installed {
            tracing::info!(view = name, version, "serving new batch version");
        }
        Ok(installed)
    }

    pub fn dataset(&self, name: &str) -> Option<Arc<Dataset>> {
        self.datasets.read().get(name).cloned()
    }

    pub fn datasets(&self) -> Vec<Arc<Dataset>> {
        self.datasets.read().values().cloned().collect()
    }

    pub fn view(&self, name: &str) -> Option<Arc<ViewLive>> {
        self.views.read().get(name).cloned()
    }

    pub fn view_names(&self) -> Vec<String> {
        self.views.read().keys().cloned().collect()
    }

    /// The names of the views that read `dataset`, by name.
    pub fn views_of(&self, dataset: &str) -> Vec<String> {
        self.views
            .read()
            .iter()
            .filter(|(_, live)| live.view.spec.dataset == dataset)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Creates a dataset. Files left under its name by a deletion cut short (see
    /// [`AppState::delete_dataset`]) are removed first: they are not this dataset's events.
    pub async fn create_dataset(&self, spec: DatasetSpec) -> ApiResult<Arc<Dataset>> {
        spec.validate().map_err(|p| ApiError::invalid("invalid_dataset", "invalid dataset", p))?;
        let _changing = self.dataset_changes.lock().await;
        let record = self.env.catalog.create_dataset(&spec).await?;
        let opened = async {
            if self.env.remove_dataset_files(&spec.name).await? {
                tracing::warn!(
                    dataset = spec.name,
                    "removed the log and master files a deleted dataset of this name left"
                );
            }
            self.open_dataset(record.clone(), Vec::new())
        };
        match opened.await {
            Ok(dataset) => Ok(dataset),
            Err(e) => {
                let _ = self.env.catalog.delete_dataset(&spec.name).await; // not made, then
                Err(ApiError::internal("could not open the dataset's log", format!("{e:#}")))
            }
        }
    }

    /// Deletes a dataset that no view reads (409 naming them otherwise): its catalog record,
    /// then its writer, once it has answered the requests it holds, then its log and master
    /// files. Requests that come after are 404s. Files a deletion cut short leaves behind are
    /// removed when a dataset of that name is made again.
    pub async fn delete_dataset(&self, name: &str) -> ApiResult<()> {
        let _changing = self.dataset_changes.lock().await;
        if !self.env.catalog.delete_dataset(name).await? {
            return Err(ApiError::not_found(format!("dataset {name:?}")));
        }
        let removed = self.datasets.write().remove(name);
        if let Some(dataset) = removed {
            dataset.writer.shutdown().await;
        }
        if let Err(e) = self.env.remove_dataset_files(name).await {
            tracing::warn!(dataset = name, error = %e, "could not remove the files of a deleted dataset");
        }
        Ok(())
    }

    /// Creates a view. Its speed layer starts with the next event; if the dataset already
    /// holds events, the view is building until its first batch run publishes.
    pub async fn create_view(&self, spec: ViewSpec) -> ApiResult<(ViewRecord, Arc<ViewLive>)> {
        let dataset = self.dataset(&spec.dataset).ok_or_else(|| {
            ApiError::invalid(
                "invalid_view",
                "invalid view",
                vec![format!("dataset {:?} does not exist", spec.dataset)],
            )
        })?;
        let compiled =
            spec.compile(&dataset.record.spec).map_err(|p| ApiError::invalid("invalid_view", "invalid view", p))?;
        if let Err(e) = crate::runner::parse_schedule(spec.schedule()) {
            return Err(ApiError::invalid("invalid_view", "invalid view", vec![e]));
        }
        let live = Arc::new(
            ViewLive::new(compiled, None).map_err(|e| ApiError::invalid("invalid_view", "invalid view", vec![e]))?,
        );
        if self.env.catalog.view(&spec.name).await?.is_some() {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                format!("view {:?} already exists", spec.name),
            ));
        }
        let floor = dataset.writer.add_view(live.clone()).await?;
        let record = match self.env.catalog.create_view(&spec, floor).await {
            Ok(r) => r,
            Err(e) => {
                dataset.writer.remove_view(&spec.name).await?;
                return Err(e.into());
            }
        };
        self.views.write().insert(spec.name.clone(), live.clone());
        self.schedules.write().insert(spec.name.clone(), spec.schedule().to_string());
        Ok((record, live))
    }

    /// The schedule `view` runs on (a cron expression, or `manual`).
    /// Adds fields to a dataset (`PATCH /v1/datasets/{name}`): in the catalog, then for the
    /// requests that come after, whose events the new definition decodes. Nothing else
    /// changes: the fields go after the others in a row, so the events stored before are rows
    /// without them, which every reader takes as null there (`tandem_model::value::field`; the
    /// batch layer reads a master file without them as null columns), and the views made
    /// before read the fields they read where they were.
    pub async fn add_fields(&self, name: &str, fields: &BTreeMap<String, FieldType>) -> ApiResult<()> {
        let _changing = self.dataset_changes.lock().await;
        let not_found = || ApiError::not_found(format!("dataset {name:?}"));
        let dataset = self.dataset(name).ok_or_else(not_found)?;
        let spec = dataset
            .record
            .spec
            .add_fields(fields)
            .map_err(|p| ApiError::invalid("invalid_dataset", "fields that cannot be added", p))?;
        if !self.env.catalog.set_dataset_spec(&spec).await? {
            return Err(not_found());
        }
        let record = DatasetRecord { spec, ..dataset.record.clone() };
        let wider = Dataset { decoder: Decoder::new(&record.spec), record, writer: dataset.writer.clone() };
        self.datasets.write().insert(name.to_string(), Arc::new(wider));
        Ok(())
    }

    /// Issues an API key: records its secret's hash in the catalog and takes it into use at
    /// once. Returns its record and its secret, which nothing keeps: the caller's to show
    /// this once. Only on a server that asks for keys (else 409: one issued here would lock
    /// out the clients that use none); 400 for a bad name or a dataset that does not exist.
    pub async fn issue_key(
        &self,
        name: String,
        scope: Scope,
        datasets: Option<Vec<String>>,
    ) -> ApiResult<(KeyRecord, String)> {
        if !self.keys.required() {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                "this server asks no API key, so it issues none: start it with --api-key, then issue keys with that one",
            ));
        }
        let mut problems: Vec<String> = tandem_model::validate_name(&name).err().into_iter().collect();
        match &datasets {
            Some(list) if list.is_empty() => problems.push("datasets is empty: leave it out for every dataset".into()),
            Some(list) => problems.extend(
                list.iter().filter(|d| self.dataset(d).is_none()).map(|d| format!("dataset {d:?} does not exist")),
            ),
            None => {}
        }
        if !problems.is_empty() {
            return Err(ApiError::invalid("invalid_key", "a key that cannot be issued", problems));
        }
        let (secret, secret_sha256) = new_secret().map_err(|e| ApiError::internal("issuing an API key", e))?;
        let record =
            KeyRecord { name, scope: scope.as_str().into(), datasets, secret_sha256, created_at: now_micros() };
        let _changing = self.key_changes.lock().await;
        self.env.catalog.create_key(&record).await?;
        self.keys.add(&record).map_err(|e| ApiError::internal("taking an issued API key into use", e))?;
        Ok((record, secret))
    }

    /// Deletes an issued key, in the catalog and at once for requests: 404 if there is none
    /// of that name, 409 if it is the last key that may manage keys.
    pub async fn delete_key(&self, name: &str) -> ApiResult<()> {
        let _changing = self.key_changes.lock().await;
        let exists = self.env.catalog.keys().await?.iter().any(|k| k.name == name);
        if !exists {
            return Err(ApiError::not_found(format!("API key {name:?}")));
        }
        if !self.keys.manageable_without(name) {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "conflict",
                format!("API key {name:?} is the last that may manage keys: issue another of scope all first"),
            ));
        }
        self.env.catalog.delete_key(name).await?;
        self.keys.remove(name);
        Ok(())
    }

    pub fn schedule_of(&self, view: &str) -> Option<String> {
        self.schedules.read().get(view).cloned()
    }

    /// Changes the schedule of a view (`None`: the default), in the catalog and then for the
    /// scheduler, which takes it at its next tick. Its definition and versions stay as they
    /// are.
    pub async fn set_schedule(&self, name: &str, schedule: Option<String>) -> ApiResult<ViewRecord> {
        let _changing = self.schedule_changes.lock().await;
        let mut record =
            self.env.catalog.view(name).await?.ok_or_else(|| ApiError::not_found(format!("view {name:?}")))?;
        record.spec.schedule = schedule;
        if let Err(e) = crate::runner::parse_schedule(record.spec.schedule()) {
            return Err(ApiError::invalid("invalid_view", "invalid schedule", vec![e]));
        }
        if !self.env.catalog.set_view_spec(&record.spec).await? {
            return Err(ApiError::not_found(format!("view {name:?}")));
        }
        // a view deleted meanwhile gets no entry again (a deletion takes `schedules` after it has
        // left `views`, so it removes any entry made while this holds the lock)
        let mut schedules = self.schedules.write();
        if self.views.read().contains_key(name) {
            schedules.insert(name.to_string(), record.spec.schedule().to_string());
        }
        Ok(record)
    }

    pub async fn delete_view(&self, name: &str) -> ApiResult<()> {
        let files =
            self.env.catalog.delete_view(name).await?.ok_or_else(|| ApiError::not_found(format!("view {name:?}")))?;
        let removed = self.views.write().remove(name);
        self.schedules.write().remove(name);
        if let Some(live) = removed
            && let Some(dataset) = self.dataset(&live.view.spec.dataset)
        {
            dataset.writer.remove_view(name).await?;
        }
        let prefix = object_store::path::Path::from(format!("views/{name}"));
        if let Err(e) = tandem_batch::store::delete_prefix(&self.env.store, &prefix).await {
            tracing::warn!(view = name, files = files.len(), error = %e, "could not remove the files of a deleted view");
        }
        Ok(())
    }

    /// Stops every writer after it has answered what it holds.
    pub async fn shutdown(&self) {
        for dataset in self.datasets() {
            dataset.writer.shutdown().await;
        }
    }
}
