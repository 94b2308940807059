//! `cairn migrate`: opens the event store as `cairn serve` would, which applies the
//! numbered migrations it lacks (PostgreSQL: under an advisory lock, so instances
//! starting at the same time migrate once), and prints the schema version. For a
//! deployment step that upgrades the database before new instances start.

use super::archive::{OpenedStore, open_store};
use crate::cli::StoreArgs;

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let OpenedStore {
        store,
        described,
        schema_version,
    } = open_store(&args).await?;
    let head = store.head_position().await?;
    println!("{described}: schema version {schema_version}, head position {head}");
    Ok(())
}
