//! `cairn migrate`: opens the event store as `cairn serve` would, which applies the
//! numbered migrations it lacks (PostgreSQL: under an advisory lock, so instances
//! starting at the same time migrate once), and prints the schema version. For a
//! deployment step that upgrades the database before new instances start.

use cairn_store::postgres::SCHEMA_VERSION as POSTGRES_SCHEMA;
use cairn_store::sqlite::SCHEMA_VERSION as SQLITE_SCHEMA;

use super::archive::open_store;
use crate::cli::StoreArgs;

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let (store, described) = open_store(&args).await?;
    let version = if described.starts_with("PostgreSQL") {
        POSTGRES_SCHEMA
    } else {
        SQLITE_SCHEMA
    };
    let head = store.head_position().await?;
    println!("{described}: schema version {version}, head position {head}");
    Ok(())
}
