//! The batch layer of tandem, and the catalog it publishes into.
//!
//! Sealed log segments are [`compaction`]-ed into the master dataset (Parquet partitioned by
//! event date, through `object_store`). A batch [`run`] compacts, picks its watermark (the
//! last compacted sequence number), recomputes a view from the master dataset with
//! DataFusion, writes the result as a new versioned Parquet directory ([`store`]) and
//! publishes it in the [`catalog`] in one transaction. The serving layer loads versions with
//! [`store::load_version`]; runs may also come from `tandem batch` in another process.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::ObjectStore;

pub mod catalog;
pub mod compaction;
pub mod retention;
pub mod run;
pub mod sketches;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use catalog::Catalog;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("catalog: {0}")]
    Catalog(#[from] sqlx::Error),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("query engine: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error(transparent)]
    Log(#[from] tandem_model::log::LogError),
    #[error("i/o on {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is corrupt: {1}")]
    Corrupt(String, String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What batch work needs: the catalog, the object store and the local data dir (for the log).
#[derive(Clone)]
pub struct BatchEnv {
    pub catalog: Catalog,
    pub store: Arc<dyn ObjectStore>,
    pub data_dir: PathBuf,
}

impl BatchEnv {
    /// The environment over a local data dir, its object store rooted there.
    pub fn local(catalog: Catalog, data_dir: PathBuf) -> Result<BatchEnv> {
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::Io(data_dir.display().to_string(), e))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&data_dir)?;
        Ok(BatchEnv { catalog, store: Arc::new(store), data_dir })
    }

    /// Where a dataset's log segments live.
    pub fn log_dir(&self, dataset: &str) -> PathBuf {
        self.data_dir.join("log").join(dataset)
    }

    /// Removes a dataset's log and master files; whether there were any. For a dataset gone
    /// from the catalog (or never in it): its views' files are removed with each view.
    pub async fn remove_dataset_files(&self, dataset: &str) -> Result<bool> {
        let dir = self.log_dir(dataset);
        let had_log = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Io(dir.display().to_string(), e)),
        })
        .await
        .map_err(|e| Error::Invalid(format!("removing the log of dataset {dataset:?}: {e}")))??;
        let master_files = store::delete_prefix(&self.store, &store::master_prefix(dataset)).await?;
        Ok(had_log || master_files > 0)
    }
}
