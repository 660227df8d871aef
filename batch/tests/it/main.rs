//! Integration tests of the batch crate. The catalog suite runs against the embedded SQLite
//! catalog and, when `TANDEM_TEST_DATABASE_URL` is set, against a fresh Postgres database.

mod catalog;
