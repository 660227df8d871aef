//! Integration tests of the batch crate. The catalog suite runs against the embedded SQLite
//! catalog and, when `TANDEM_TEST_DATABASE_URL` is set, against a fresh Postgres database.
//! The runs suite runs batch runs over a real log on disk.

mod catalog;
mod runs;
