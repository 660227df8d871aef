//! Command-line and environment configuration: every flag also reads `TANDEM_*`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "tandem", version, about = "Lambda-architecture analytics: exact answers from batch + speed layers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP server: ingest, speed layer, scheduled batch runs, queries.
    Serve(ServeConfig),
    /// Recompute views in this process (for system cron or a Kubernetes CronJob); exits
    /// non-zero if any run fails.
    Batch(BatchConfig),
}

/// Where tandem keeps its data and metadata.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Directory for the log, the master dataset, view versions and the embedded catalog.
    #[arg(long, env = "TANDEM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Catalog database, `postgres://...`; without it an SQLite file in the data dir.
    #[arg(long, env = "TANDEM_DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "TANDEM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub storage: StorageConfig,
    /// Events whose id was accepted within this window are dropped as duplicates.
    #[arg(long, env = "TANDEM_DEDUP_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub dedup_window: Duration,
    /// The active log segment is sealed (made available to batch runs) at least this often.
    #[arg(long, env = "TANDEM_SEGMENT_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub segment_interval: Duration,
    /// ...or once it holds this many bytes. Every seal costs the writer for a few hundred
    /// milliseconds (the views' maps of the new segment start empty while the sealed one is
    /// merged in the background), so fewer seals mean fewer slow acknowledgements. A batch run
    /// streams a sealed segment record by record; it holds the segment's Parquet files (one
    /// per event day, compressed) in memory until they are written.
    #[arg(long, env = "TANDEM_SEGMENT_BYTES", default_value_t = tandem_speed::writer::WriterConfig::default().roll_bytes)]
    pub segment_bytes: u64,
    /// Delete sealed log segments last written longer ago than this (at least the dedup
    /// window and the 24 h of idempotency keys), once every view's version covers them and
    /// their events are in the master dataset, checked and synced; without it the log is kept
    /// whole. Checked at every poll (see `--poll-interval`).
    #[arg(long, env = "TANDEM_LOG_RETENTION", value_parser = humantime::parse_duration)]
    pub log_retention: Option<Duration>,
    /// How often to look for versions published by other processes (`tandem batch`).
    #[arg(long, env = "TANDEM_POLL_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "TANDEM_MAX_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Most events in one ingest request.
    #[arg(long, env = "TANDEM_MAX_EVENTS_PER_REQUEST", default_value_t = 100_000)]
    pub max_events_per_request: usize,
    /// Longest string value, in bytes.
    #[arg(long, env = "TANDEM_MAX_STRING_BYTES", default_value_t = 64 << 10)]
    pub max_string_bytes: usize,
    /// Most ingest requests waiting for a dataset's writer; more get 503 with Retry-After.
    #[arg(long, env = "TANDEM_MAX_QUEUED_REQUESTS", default_value_t = 4096)]
    pub max_queued_requests: usize,
    /// Most request-body bytes held by ingest requests at once (read, decoded or waiting for
    /// the writer); past it requests wait up to half a second, then get 503 with Retry-After.
    #[arg(long, env = "TANDEM_MAX_INFLIGHT_BYTES", default_value_t = 256 << 20)]
    pub max_inflight_bytes: usize,
    /// A key of full access. With any key set (of this flag or the two below), `/v1/*` and
    /// `/metrics` requests must send one as `Authorization: Bearer KEY` (repeat the flag, or
    /// separate keys by commas in the variable, to accept several); with none, every request
    /// is served.
    #[arg(long = "api-key", env = "TANDEM_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<ApiKey>,
    /// A key that may only read: `GET` on `/v1/*` and `/metrics`, and view queries by `POST`
    /// (for dashboards); as `--api-key` otherwise.
    #[arg(long = "read-api-key", env = "TANDEM_READ_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub read_api_keys: Vec<ApiKey>,
    /// A key that may only send events, `POST /v1/datasets/{name}/events` (for shippers); as
    /// `--api-key` otherwise.
    #[arg(long = "ingest-api-key", env = "TANDEM_INGEST_API_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub ingest_api_keys: Vec<ApiKey>,
    /// Requests a second each client may make to `/v1/*` and `/metrics`, in bursts of as many
    /// (a client: its API key, or without keys its address); past it, 429 with Retry-After.
    #[arg(long, env = "TANDEM_RATE_LIMIT")]
    pub rate_limit: Option<std::num::NonZeroU32>,
}

/// An API key, which debug output does not show. An empty one (`TANDEM_API_KEYS=`, as a
/// compose file's `${VAR:-}` gives) stands for none and allows nothing.
#[derive(Clone)]
pub struct ApiKey(pub String);

impl std::str::FromStr for ApiKey {
    type Err = String;
    fn from_str(s: &str) -> Result<ApiKey, String> {
        let key = s.trim();
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("an API key is visible ASCII characters, without spaces".into());
        }
        Ok(ApiKey(key.to_string()))
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

#[derive(Debug, Clone, Args)]
pub struct BatchConfig {
    #[command(flatten)]
    pub storage: StorageConfig,
    /// The view to recompute.
    #[arg(long, required_unless_present = "all", conflicts_with = "all")]
    pub view: Option<String>,
    /// Recompute every view.
    #[arg(long)]
    pub all: bool,
    /// Recompute every day, not only the days that received events since the last version.
    #[arg(long)]
    pub full: bool,
}
