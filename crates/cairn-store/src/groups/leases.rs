//! Which instance drives which consumer group, when several instances share one store.
//!
//! A group's delivery bookkeeping lives in the memory of one instance, so exactly one
//! instance may drive a group at a time. [`GroupLeases`] is how a shared backend (see
//! `postgres::PgGroupLeases`) says which: an instance that takes a group's lease gets a
//! new *epoch* for it, and every durable write it makes for the group (checkpoint,
//! parked events) names that epoch and is refused with [`StoreError::GroupMoved`] once
//! another instance took the group over with a later one (a fencing token): an owner
//! that lost its lease without noticing can never move the group's durable state.
//!
//! A store that only one process uses (the embedded SQLite) has no leases: its process
//! drives every group.

use async_trait::async_trait;
use cairn_core::Position;
use tokio::sync::watch;

use crate::{GroupRecord, GroupSettings, ParkedEvent, StoreError};

/// A group this instance now drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Names this ownership in every durable write; higher than any before it.
    pub epoch: u64,
    /// The lease session it was taken in (see [`GroupLeases::session`]).
    pub session: u64,
    /// The group as stored when the lease was taken: everything its previous owner
    /// wrote is in it.
    pub record: GroupRecord,
}

/// Who drives a group, as recorded by the last instance that took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOwner {
    /// Where that instance takes requests; `None` if no instance ever took the group.
    pub url: Option<String>,
    pub epoch: u64,
}

/// Leases on consumer groups for instances sharing one store, and the durable writes
/// of a group's owner, fenced by its epoch. Object safe.
#[async_trait]
pub trait GroupLeases: Send + Sync + 'static {
    /// Where other instances reach this one: its advertised base URL.
    fn advertise_url(&self) -> &str;

    /// The current lease session. It changes when the session is lost, and that voids
    /// every lease taken in an earlier session: their owner must stop driving them.
    fn session(&self) -> watch::Receiver<u64>;

    /// Resolves when leases may have become free (a group was created or released by
    /// an instance): a hint to try again before the next periodic round.
    async fn changed(&self);

    /// Checks that the lease session is alive, opening a new one if there is none.
    /// An error means no lease is held now.
    async fn check(&self) -> Result<(), StoreError>;

    /// Takes the group's lease if no instance holds it: `None` when another does, or
    /// when there is no such group.
    async fn try_acquire(&self, name: &str) -> Result<Option<Lease>, StoreError>;

    /// Gives the group's lease back (a deleted group, a group this instance stopped
    /// driving). Failures are logged: a lost session releases everything anyway.
    async fn release(&self, name: &str);

    /// The group's recorded owner; `None` when there is no such group.
    async fn owner(&self, name: &str) -> Result<Option<GroupOwner>, StoreError>;

    /// Replaces the group's settings, if `epoch` is still the group's.
    async fn save_settings(
        &self,
        name: &str,
        epoch: u64,
        settings: &GroupSettings,
    ) -> Result<(), StoreError>;

    /// Moves the checkpoint forward, if `epoch` is still the group's.
    async fn save_checkpoint(
        &self,
        name: &str,
        epoch: u64,
        checkpoint: Position,
    ) -> Result<(), StoreError>;

    /// Parks events, if `epoch` is still the group's.
    async fn park_events(
        &self,
        name: &str,
        epoch: u64,
        events: Vec<ParkedEvent>,
    ) -> Result<(), StoreError>;

    /// Marks parked events as replaying (all when `positions` is `None`) and returns
    /// the positions marked, if `epoch` is still the group's.
    async fn replay_parked(
        &self,
        name: &str,
        epoch: u64,
        positions: Option<Vec<Position>>,
    ) -> Result<Vec<Position>, StoreError>;

    /// Forgets parked events whose replay was acknowledged, if `epoch` is still the
    /// group's.
    async fn remove_parked(
        &self,
        name: &str,
        epoch: u64,
        positions: Vec<Position>,
    ) -> Result<(), StoreError>;
}
