//! The serving layer of tandem and the `tandem` binary.
//!
//! Follow one event: [`api`] (`POST /v1/datasets/{name}/events`) decodes and validates it
//! (`tandem_model::event`), hands it to the dataset's writer (`tandem_speed::writer`: log,
//! fsync, speed layer), and answers. A batch run ([`runner`], or `tandem batch`) compacts
//! the log into the master dataset and recomputes each view (`tandem_batch::run`); the new
//! version is installed in the view's live state ([`app::AppState::refresh_view`]). A query
//! ([`query::answer`]) merges that version with the speed layer's events past its watermark.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod query;
pub mod runner;
