//! Test helpers shared by this crate's tests and the end-to-end tests.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// The environment variable naming a Postgres server for tests, e.g.
/// `postgres://postgres@127.0.0.1:5432/test`. Unset, tests run on SQLite only.
pub const POSTGRES_ENV: &str = "TANDEM_TEST_DATABASE_URL";

/// Creates a new empty database on the test Postgres server and returns its URL; `None`
/// when [`POSTGRES_ENV`] is unset. Panics if it is set but the server is unreachable, so a
/// CI run never silently skips Postgres.
pub async fn fresh_postgres_database() -> Option<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let base = std::env::var(POSTGRES_ENV).ok()?;
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={base} is not reachable: {e}"));
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let name = format!("tandem_test_{}_{}_{stamp}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("creating a test database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    Some(format!("{prefix}/{name}"))
}

/// The catalogs a suite runs against: the embedded SQLite (`None`) always, and a fresh
/// Postgres database when one is configured.
pub async fn catalog_urls() -> Vec<Option<String>> {
    let mut out = vec![None];
    out.extend(fresh_postgres_database().await.map(Some));
    out
}
