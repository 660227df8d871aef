//! The catalog: datasets, views, batch runs, published versions and issued API keys, in
//! Postgres or in an embedded SQLite file, through sqlx.
//!
//! One implementation serves both backends: the SQL is portable (numbered `$N` parameters,
//! `RETURNING`, partial unique indexes) and only the migrations differ, one folder per
//! dialect under `migrations/`. Times are stored as UTC microseconds.
//!
//! Two guarantees live here rather than in code: at most one queued or running run per view
//! across every process (a partial unique index), and a version, its watermark, its file
//! list and the run's success are committed in one transaction ([`Catalog::publish`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tandem_model::{DatasetSpec, ViewSpec};

use crate::{Error, Result};

/// A run whose heartbeat is older than this is taken as abandoned (its process died).
pub const RUN_LEASE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

#[derive(Clone, Debug)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetRecord {
    #[serde(flatten)]
    pub spec: DatasetSpec,
    #[serde(skip)]
    pub created_at: i64,
    #[serde(skip)]
    pub compacted_seq: u64,
}

#[derive(Debug, Clone)]
pub struct ViewRecord {
    pub spec: ViewSpec,
    pub created_at: i64,
    pub start_seq: u64,
    pub current_version: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub view: String,
    pub version: i64,
    pub run_id: i64,
    pub watermark: u64,
    pub files: Vec<String>,
    pub rows: i64,
    pub created_at: i64,
}

/// An API key issued through the API: what it may do, never its secret (only the secret's
/// SHA-256, by which a request's key is found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub name: String,
    /// `all`, `read` or `ingest` (the serving layer's scopes).
    pub scope: String,
    /// The datasets it is limited to; `None`: every dataset.
    pub datasets: Option<Vec<String>>,
    /// The SHA-256 of its secret, in hex.
    pub secret_sha256: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Schedule,
    Manual,
    Cli,
    Create,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Cli => "cli",
            Trigger::Create => "create",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub view: String,
    pub status: String,
    pub trigger: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub watermark: Option<i64>,
    pub rows_in: Option<i64>,
    pub rows_out: Option<i64>,
    pub version: Option<i64>,
    pub error: Option<String>,
    /// `full` or `incremental`, once known.
    pub mode: Option<String>,
    /// The event days (`YYYY-MM-DD`) the run recomputed.
    pub partitions: Option<Vec<String>>,
}

impl RunRecord {
    pub fn is_active(&self) -> bool {
        self.status == "queued" || self.status == "running"
    }
}

/// What a successful run publishes.
#[derive(Debug, Clone)]
pub struct Publication {
    pub run_id: i64,
    pub view: String,
    pub version: i64,
    pub watermark: u64,
    pub files: Vec<String>,
    pub rows_in: i64,
    pub rows_out: i64,
    /// `full` or `incremental`.
    pub mode: &'static str,
    /// The event days recomputed; the others were carried over from the previous version.
    pub partitions: Vec<String>,
}

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

const RUN_COLUMNS: &str = "id, view_name, status, trigger_kind, created_at, started_at, finished_at, watermark, rows_in, rows_out, version, error, mode, partitions";

/// This process as a run owner: `host/pid`.
fn this_process() -> String {
    format!("{}/{}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// Whether `owner` (`host/pid`) names a process of this host that no longer exists. Owners
/// on other hosts, or where `/proc` is missing, are left to the heartbeat lease.
fn owner_is_gone(owner: &str) -> bool {
    let Some((host, pid)) = owner.rsplit_once('/') else { return false };
    if host != hostname() || !std::path::Path::new("/proc/self").exists() {
        return false;
    }
    pid.parse::<u32>().is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

impl Catalog {
    /// Connects to `url` (a `postgres://` URL), or with none to `catalog.db` in `data_dir`,
    /// and applies the migrations of that dialect.
    pub async fn connect(url: Option<&str>, data_dir: &Path) -> Result<Catalog> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                (u.to_string(), Backend::Postgres)
            }
            Some(u) if u.starts_with("sqlite:") => (u.to_string(), Backend::Sqlite),
            Some(u) => {
                return Err(Error::Invalid(format!(
                    "unsupported database URL {u:?}: use postgres://... or leave it unset"
                )));
            }
            None => {
                std::fs::create_dir_all(data_dir).map_err(|e| Error::Io(data_dir.display().to_string(), e))?;
                (format!("sqlite://{}?mode=rwc", data_dir.join("catalog.db").display()), Backend::Sqlite)
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets a `tandem batch` process write while the server reads
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        let migrator = match backend {
            Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
        };
        migrator.run(&pool).await.map_err(|e| Error::Invalid(format!("catalog migration failed: {e}")))?;
        Ok(Catalog { pool, backend })
    }

    /// The connection pool, for tests that must reach behind the API (e.g. to age a lease).
    #[cfg(any(test, feature = "test-util"))]
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- API keys

    /// Records an issued key; [`Error::Conflict`] if its name (or secret) is taken.
    pub async fn create_key(&self, key: &KeyRecord) -> Result<()> {
        let datasets = key.datasets.as_ref().map(|d| serde_json::to_string(d).expect("names serialize"));
        let inserted = sqlx::query(
            "INSERT INTO api_keys (name, scope, datasets, secret_sha256, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.name)
        .bind(&key.scope)
        .bind(datasets)
        .bind(&key.secret_sha256)
        .bind(key.created_at)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!("API key {:?} already exists", key.name))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every issued key, by name.
    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query("SELECT name, scope, datasets, secret_sha256, created_at FROM api_keys ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        let key = |row: &AnyRow| -> Result<KeyRecord> {
            let datasets: Option<String> = row.try_get("datasets")?;
            Ok(KeyRecord {
                name: row.try_get("name")?,
                scope: row.try_get("scope")?,
                datasets: datasets
                    .map(|d| serde_json::from_str(&d))
                    .transpose()
                    .map_err(|e| Error::Invalid(format!("stored API key datasets: {e}")))?,
                secret_sha256: row.try_get("secret_sha256")?,
                created_at: row.try_get("created_at")?,
            })
        };
        rows.iter().map(key).collect()
    }

    /// Deletes an issued key: whether there was one of that name.
    pub async fn delete_key(&self, name: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM api_keys WHERE name = $1").bind(name).execute(&self.pool).await?;
        Ok(deleted.rows_affected() > 0)
    }

    // ---- datasets

    pub async fn create_dataset(&self, spec: &DatasetSpec) -> Result<DatasetRecord> {
        let now = now_micros();
        let text = serde_json::to_string(spec).expect("specs serialize");
        match sqlx::query("INSERT INTO datasets (name, spec, created_at) VALUES ($1, $2, $3)")
            .bind(&spec.name)
            .bind(text)
            .bind(now)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(DatasetRecord { spec: spec.clone(), created_at: now, compacted_seq: 0 }),
            Err(e) if is_unique_violation(&e) => {
                Err(Error::Conflict(format!("dataset {:?} already exists", spec.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn dataset_from(row: &AnyRow) -> Result<DatasetRecord> {
        let spec: String = row.try_get("spec")?;
        Ok(DatasetRecord {
            spec: serde_json::from_str(&spec).map_err(|e| Error::Invalid(format!("stored dataset spec: {e}")))?,
            created_at: row.try_get("created_at")?,
            compacted_seq: row.try_get::<i64, _>("compacted_seq")? as u64,
        })
    }

    pub async fn datasets(&self) -> Result<Vec<DatasetRecord>> {
        let rows = sqlx::query("SELECT spec, created_at, compacted_seq FROM datasets ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::dataset_from).collect()
    }

    pub async fn dataset(&self, name: &str) -> Result<Option<DatasetRecord>> {
        let row = sqlx::query("SELECT spec, created_at, compacted_seq FROM datasets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::dataset_from).transpose()
    }

    /// Deletes a dataset that no view reads: `Ok(true)`, or `Ok(false)` if there was no such
    /// dataset; [`Error::Conflict`] naming its views if it has any (they go first). Its log
    /// and master files are the caller's to remove. One statement decides (a write from its
    /// start, so SQLite waits for another writer instead of failing on a lock upgrade); the
    /// views are read only to say why nothing was deleted.
    pub async fn delete_dataset(&self, name: &str) -> Result<bool> {
        for _ in 0..3 {
            let deleted = sqlx::query(
                "DELETE FROM datasets WHERE name = $1 AND NOT EXISTS (SELECT 1 FROM views WHERE dataset = $1)",
            )
            .bind(name)
            .execute(&self.pool)
            .await;
            match deleted {
                Ok(d) if d.rows_affected() > 0 => return Ok(true),
                Ok(_) => {}
                // a view made while the statement ran (Postgres checks the key at its end)
                Err(e) if is_foreign_key_violation(&e) => {}
                Err(e) => return Err(e.into()),
            }
            let views = sqlx::query("SELECT name FROM views WHERE dataset = $1 ORDER BY name")
                .bind(name)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|row| row.try_get::<String, _>("name"))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            if !views.is_empty() {
                return Err(Error::Conflict(format!(
                    "dataset {name:?} is read by views {}; delete them first",
                    views.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
                )));
            }
            if self.dataset(name).await?.is_none() {
                return Ok(false);
            }
            // its last view went between the two statements: try again
        }
        Err(Error::Conflict(format!("dataset {name:?} is changing; try again")))
    }

    /// Records that the master dataset holds every event up to `seq` (never moves back).
    pub async fn set_compacted(&self, dataset: &str, seq: u64) -> Result<()> {
        sqlx::query("UPDATE datasets SET compacted_seq = $1 WHERE name = $2 AND compacted_seq < $1")
            .bind(seq as i64)
            .bind(dataset)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- views

    pub async fn create_view(&self, spec: &ViewSpec, start_seq: u64) -> Result<ViewRecord> {
        let now = now_micros();
        let text = serde_json::to_string(spec).expect("specs serialize");
        match sqlx::query("INSERT INTO views (name, dataset, spec, created_at, start_seq) VALUES ($1, $2, $3, $4, $5)")
            .bind(&spec.name)
            .bind(&spec.dataset)
            .bind(text)
            .bind(now)
            .bind(start_seq as i64)
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(ViewRecord { spec: spec.clone(), created_at: now, start_seq, current_version: None }),
            Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!("view {:?} already exists", spec.name))),
            // its dataset deleted since the caller found it
            Err(e) if is_foreign_key_violation(&e) => Err(Error::NotFound(format!("dataset {:?}", spec.dataset))),
            Err(e) => Err(e.into()),
        }
    }

    fn view_from(row: &AnyRow) -> Result<ViewRecord> {
        let spec: String = row.try_get("spec")?;
        Ok(ViewRecord {
            spec: serde_json::from_str(&spec).map_err(|e| Error::Invalid(format!("stored view spec: {e}")))?,
            created_at: row.try_get("created_at")?,
            start_seq: row.try_get::<i64, _>("start_seq")? as u64,
            current_version: row.try_get("current_version")?,
        })
    }

    pub async fn views(&self) -> Result<Vec<ViewRecord>> {
        let rows = sqlx::query("SELECT spec, created_at, start_seq, current_version FROM views ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::view_from).collect()
    }

    pub async fn view(&self, name: &str) -> Result<Option<ViewRecord>> {
        let row = sqlx::query("SELECT spec, created_at, start_seq, current_version FROM views WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::view_from).transpose()
    }

    /// Stores a dataset's definition anew, for what of it may change after it is made (fields
    /// added); `false` if there is no such dataset.
    pub async fn set_dataset_spec(&self, spec: &DatasetSpec) -> Result<bool> {
        self.set_spec("UPDATE datasets SET spec = $1 WHERE name = $2", &spec.name, spec).await
    }

    /// Stores a view's definition anew, for what of it may change after it is made (its
    /// schedule); `false` if there is no such view.
    pub async fn set_view_spec(&self, spec: &ViewSpec) -> Result<bool> {
        self.set_spec("UPDATE views SET spec = $1 WHERE name = $2", &spec.name, spec).await
    }

    /// Runs `update` (which sets the spec `$1` of the row named `$2`); whether it found the row.
    async fn set_spec(&self, update: &'static str, name: &str, spec: &impl serde::Serialize) -> Result<bool> {
        let text = serde_json::to_string(spec).expect("specs serialize");
        let updated = sqlx::query(update).bind(text).bind(name).execute(&self.pool).await?;
        Ok(updated.rows_affected() > 0)
    }

    /// Deletes a view with its runs and versions; returns the version file lists so the
    /// caller can remove the files. `None` if there was no such view.
    pub async fn delete_view(&self, name: &str) -> Result<Option<Vec<String>>> {
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM views WHERE name = $1").bind(name).execute(&mut *tx).await?;
        if deleted.rows_affected() == 0 {
            return Ok(None);
        }
        let files =
            sqlx::query("SELECT files FROM versions WHERE view_name = $1").bind(name).fetch_all(&mut *tx).await?;
        sqlx::query("DELETE FROM versions WHERE view_name = $1").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM runs WHERE view_name = $1").bind(name).execute(&mut *tx).await?;
        tx.commit().await?;
        let mut paths = Vec::new();
        for row in files {
            let text: String = row.try_get("files")?;
            paths.extend(serde_json::from_str::<Vec<String>>(&text).unwrap_or_default());
        }
        Ok(Some(paths))
    }

    // ---- versions

    pub async fn version(&self, view: &str, version: i64) -> Result<Option<VersionRecord>> {
        let row = sqlx::query("SELECT view_name, version, run_id, watermark, files, row_count, created_at FROM versions WHERE view_name = $1 AND version = $2")
            .bind(view)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let files: String = row.try_get("files")?;
        Ok(Some(VersionRecord {
            view: row.try_get("view_name")?,
            version: row.try_get("version")?,
            run_id: row.try_get("run_id")?,
            watermark: row.try_get::<i64, _>("watermark")? as u64,
            files: serde_json::from_str(&files).map_err(|e| Error::Invalid(format!("stored file list: {e}")))?,
            rows: row.try_get("row_count")?,
            created_at: row.try_get("created_at")?,
        }))
    }

    /// The watermark of the version each view of `dataset` serves, in one query: one entry a
    /// view, `None` for a view without a version.
    pub async fn served_watermarks(&self, dataset: &str) -> Result<Vec<Option<u64>>> {
        let rows = sqlx::query(
            "SELECT versions.watermark FROM views LEFT JOIN versions \
             ON versions.view_name = views.name AND versions.version = views.current_version WHERE views.dataset = $1",
        )
        .bind(dataset)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get::<Option<i64>, _>("watermark")?.map(|w| w as u64))).collect()
    }

    /// The published version of every view that has one: (view, version).
    pub async fn current_versions(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT name, current_version FROM views WHERE current_version IS NOT NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("name")?, r.try_get("current_version")?))).collect()
    }

    /// Installs a run's output as the view's current version, records its watermark and
    /// files and marks the run succeeded, all in one transaction. Fails, changing nothing,
    /// if the run is no longer running (abandoned, or its view deleted).
    pub async fn publish(&self, p: &Publication) -> Result<()> {
        let now = now_micros();
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE runs SET status = 'succeeded', finished_at = $1, heartbeat_at = $1, watermark = $2, rows_in = $3, rows_out = $4, version = $5, mode = $6, partitions = $7 WHERE id = $8 AND status = 'running'",
        )
        .bind(now)
        .bind(p.watermark as i64)
        .bind(p.rows_in)
        .bind(p.rows_out)
        .bind(p.version)
        .bind(p.mode)
        .bind(serde_json::to_string(&p.partitions).expect("strings serialize"))
        .bind(p.run_id)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() != 1 {
            return Err(Error::Conflict(format!("run {} is no longer running", p.run_id)));
        }
        sqlx::query("INSERT INTO versions (view_name, version, run_id, watermark, files, row_count, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&p.view)
            .bind(p.version)
            .bind(p.run_id)
            .bind(p.watermark as i64)
            .bind(serde_json::to_string(&p.files).expect("strings serialize"))
            .bind(p.rows_out)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let updated = sqlx::query("UPDATE views SET current_version = $1 WHERE name = $2")
            .bind(p.version)
            .bind(&p.view)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() != 1 {
            return Err(Error::NotFound(format!("view {:?}", p.view)));
        }
        tx.commit().await?;
        Ok(())
    }

    // ---- runs

    fn run_from(row: &AnyRow) -> Result<RunRecord> {
        Ok(RunRecord {
            id: row.try_get("id")?,
            view: row.try_get("view_name")?,
            status: row.try_get("status")?,
            trigger: row.try_get("trigger_kind")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            watermark: row.try_get("watermark")?,
            rows_in: row.try_get("rows_in")?,
            rows_out: row.try_get("rows_out")?,
            version: row.try_get("version")?,
            error: row.try_get("error")?,
            mode: row.try_get("mode")?,
            partitions: row
                .try_get::<Option<String>, _>("partitions")?
                .map(|p| serde_json::from_str(&p).map_err(|e| Error::Invalid(format!("stored partitions: {e}"))))
                .transpose()?,
        })
    }

    /// Queues a run of `view`, or returns the one already queued or running (second item
    /// false). Runs whose process stopped heart-beating are failed first.
    pub async fn queue_run(&self, view: &str, trigger: Trigger) -> Result<(RunRecord, bool)> {
        let now = now_micros();
        self.fail_abandoned(Some(view)).await?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO runs (view_name, status, trigger_kind, created_at, heartbeat_at, owner) VALUES ($1, 'queued', $2, $3, $3, $4) RETURNING {RUN_COLUMNS}"
        )))
        .bind(view)
        .bind(trigger.as_str())
        .bind(now)
        .bind(this_process())
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => Ok((Self::run_from(&row)?, true)),
            Err(e) if is_unique_violation(&e) => {
                let row = sqlx::query(AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE view_name = $1 AND status IN ('queued', 'running')"
                )))
                .bind(view)
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(row) => Ok((Self::run_from(&row)?, false)),
                    None => Err(Error::Conflict(format!("another run of view {view:?} just finished; try again"))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fails the queued or running runs (of one view, or all) whose process is gone: its
    /// heartbeat is older than [`RUN_LEASE`], or it ran on this host under a pid that no
    /// longer exists.
    async fn fail_abandoned(&self, view: Option<&str>) -> Result<u64> {
        let now = now_micros();
        let cutoff = now - RUN_LEASE.as_micros() as i64;
        let rows = sqlx::query(
            "SELECT id, owner, heartbeat_at FROM runs WHERE status IN ('queued', 'running') AND ($1 = '' OR view_name = $1)",
        )
        .bind(view.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        let mut failed = 0;
        for row in rows {
            let id: i64 = row.try_get("id")?;
            let owner: Option<String> = row.try_get("owner")?;
            let heartbeat: i64 = row.try_get("heartbeat_at")?;
            if heartbeat >= cutoff && !owner.as_deref().is_some_and(owner_is_gone) {
                continue;
            }
            let done = sqlx::query(
                "UPDATE runs SET status = 'failed', finished_at = $1, error = 'abandoned: the process running it stopped' WHERE id = $2 AND status IN ('queued', 'running')",
            )
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
            failed += done.rows_affected();
        }
        Ok(failed)
    }

    /// Fails every abandoned run of every view (at start-up, and periodically).
    pub async fn fail_all_abandoned(&self) -> Result<u64> {
        self.fail_abandoned(None).await
    }

    /// Moves a queued run to running; false if it is not queued any more.
    pub async fn start_run(&self, id: i64) -> Result<bool> {
        let now = now_micros();
        let done = sqlx::query(
            "UPDATE runs SET status = 'running', started_at = $1, heartbeat_at = $1, owner = $2 WHERE id = $3 AND status = 'queued'",
        )
        .bind(now)
        .bind(this_process())
        .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Keeps a running run's lease.
    pub async fn heartbeat(&self, id: i64) -> Result<()> {
        sqlx::query("UPDATE runs SET heartbeat_at = $1 WHERE id = $2 AND status = 'running'")
            .bind(now_micros())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn fail_run(&self, id: i64, error: &str, watermark: Option<u64>) -> Result<()> {
        sqlx::query("UPDATE runs SET status = 'failed', finished_at = $1, error = $2, watermark = $3 WHERE id = $4 AND status IN ('queued', 'running')")
            .bind(now_micros())
            .bind(error)
            .bind(watermark.map(|w| w as i64))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::run_from).transpose()
    }

    /// Runs of a view, newest first, at most `limit`; with `before`, only runs older than
    /// that run id (the next page after a page ending with it).
    pub async fn runs_of(&self, view: &str, limit: i64, before: Option<i64>) -> Result<Vec<RunRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE view_name = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        )))
        .bind(view)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::run_from).collect()
    }

    /// The newest run of a view (it may still be queued or running).
    pub async fn last_run(&self, view: &str) -> Result<Option<RunRecord>> {
        Ok(self.runs_of(view, 1, None).await?.into_iter().next())
    }

    /// The newest run of every view that has one, by view name, in one query; with `ended`,
    /// the newest that ended (succeeded or failed). Each view's run is found by walking its
    /// end of the `runs_by_view` index, so the cost grows with the number of views, not with
    /// the runs they have kept.
    pub async fn newest_runs(&self, ended: bool) -> Result<HashMap<String, RunRecord>> {
        let only_ended = if ended { "AND r.finished_at IS NOT NULL" } else { "" };
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN (SELECT (SELECT r.id FROM runs r \
             WHERE r.view_name = views.name {only_ended} ORDER BY r.id DESC LIMIT 1) FROM views)"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Self::run_from(row).map(|run| (run.view.clone(), run))).collect()
    }
}
