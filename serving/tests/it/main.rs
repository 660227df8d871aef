//! End-to-end tests: the real `tandem` binary on an ephemeral port, a temp data dir, HTTP.
//! Every suite runs with the embedded SQLite catalog, and with Postgres when
//! `TANDEM_TEST_DATABASE_URL` is set (`.ci/run` sets it and fails if Postgres is down).

mod reference;
mod server;

mod auth;
mod bad_input;
mod compression;
mod crash;
mod disk_full;
mod lambda;
mod metrics;
mod openapi;
mod outage;
mod overload;
mod prop;
mod rate_limit;
mod retries;
