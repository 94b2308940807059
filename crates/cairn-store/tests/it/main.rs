//! The embedded store's integration tests: the conformance suite, property tests of the
//! invariants, and durability across reopening.

mod pg_faults;
mod pg_groups;
mod pg_instances;
mod pg_model;
mod pg_unknown;
mod postgres;
mod properties;
mod sqlite;

use std::any::Any;
use std::sync::Arc;

use cairn_store::SharedStore;
use cairn_store::sqlite::{SqliteOptions, SqliteStore};

pub async fn new_store() -> (SharedStore, Box<dyn Any + Send>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).expect("open store");
    (Arc::new(store), Box::new(dir))
}

cairn_store::conformance_suite!(new_store);
