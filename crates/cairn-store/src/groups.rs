//! Consumer groups: competing consumers with at-least-once delivery.
//!
//! A group reads the global log through its filter and hands events out to whichever
//! consumer claims them. A claimed event is *in flight* until it is acknowledged; if
//! the acknowledgement does not come within the ack timeout, or the consumer nacks it,
//! the event is delivered again, and after `max_deliveries` attempts it is *parked*
//! (kept aside, durably, until an operator replays it).
//!
//! The bookkeeping of deliveries lives in memory; what must survive a restart is
//! stored through the [`EventStore`]: the group's settings, its checkpoint (every
//! matching event at or before it is acknowledged or parked) and its parked events.
//! After a restart, delivery resumes after the checkpoint, so an event acknowledged but
//! not yet covered by the stored checkpoint may be delivered again: at least once.
//!
//! With [`GroupOrdering::PerStream`], two events of one stream are never in flight at
//! once and are delivered in version order, while different streams go in parallel.
//!
//! # Several instances on one store
//!
//! Built with [`ConsumerGroups::shared`] (a store several instances share), an instance
//! drives only the groups whose lease it holds ([`GroupLeases`]): their bookkeeping
//! lives in its memory alone, so deliveries are never handed out by two instances at
//! once and per-stream order holds across instances. A background task takes the
//! leases of groups nobody drives (every [`OWNERSHIP_ROUND`], and at once when told of
//! a created or released group), loading each from the store: its checkpoint and
//! parked events as its previous owner last wrote them. When the lease session is
//! lost, or a durable write is refused because another instance took the group over,
//! the instance stops driving the group at once: waiting claims end with
//! [`StoreError::GroupMoved`] and its in-flight bookkeeping is dropped. The new owner
//! delivers again whatever was in flight (at least once; attempt counts restart).
//! [`ConsumerGroups::route`] tells a caller whether a request is for this instance.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use cairn_core::{EventFilter, Position, RecordedEvent, StreamName, now_micros};
use tokio::sync::{Mutex, Notify, RwLock};
use tokio::time::Instant;

use crate::metrics as m;
use crate::{SharedStore, StoreError};

mod leases;

pub use self::leases::{GroupLeases, GroupOwner, Lease};

/// How many matching events a group keeps read ahead of its consumers.
const READ_AHEAD: usize = 512;

/// How often an instance sharing its store tries to take the groups nobody drives,
/// and checks its lease session.
pub const OWNERSHIP_ROUND: Duration = Duration::from_secs(1);

/// Where a request for a group is to be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRoute {
    /// This instance drives the group.
    Here,
    /// Another instance drives it (as last recorded): its advertised URL.
    Owner(String),
    /// The group exists, but no instance is known to drive it now (a takeover is under
    /// way): a retry shortly will find its new owner.
    Unowned,
    /// There is no such group.
    Missing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupOrdering {
    /// Any event may be in flight with any other.
    #[default]
    None,
    /// One event per stream in flight at a time, in version order.
    PerStream,
}

impl GroupOrdering {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupOrdering::None => "none",
            GroupOrdering::PerStream => "per_stream",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(GroupOrdering::None),
            "per_stream" => Some(GroupOrdering::PerStream),
            _ => None,
        }
    }
}

/// What a group delivers and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// The first log position the group considers (1: from the beginning).
    pub from_position: Position,
    pub filter: EventFilter,
    pub ack_timeout: Duration,
    /// Deliveries of one event before it is parked (at least 1).
    pub max_deliveries: u32,
    pub ordering: GroupOrdering,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            from_position: 1,
            filter: EventFilter::default(),
            ack_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            ordering: GroupOrdering::None,
        }
    }
}

impl GroupSettings {
    /// The stored form (JSON, private to the store).
    pub fn to_stored(&self) -> String {
        serde_json::json!({
            "from_position": self.from_position,
            "category": self.filter.category,
            "types": self.filter.types,
            "tags": self.filter.tags,
            "stream": self.filter.stream,
            "ack_timeout_ms": u64::try_from(self.ack_timeout.as_millis()).unwrap_or(u64::MAX),
            "max_deliveries": self.max_deliveries,
            "ordering": self.ordering.as_str(),
        })
        .to_string()
    }

    pub fn from_stored(text: &str) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Internal(format!("stored group settings: {what}"));
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| corrupt(&e.to_string()))?;
        let strings = |key: &str| -> Vec<String> {
            value[key]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text_of = |key: &str| value[key].as_str().map(str::to_owned);
        Ok(Self {
            from_position: value["from_position"]
                .as_u64()
                .ok_or_else(|| corrupt("from_position"))?,
            filter: EventFilter {
                category: text_of("category"),
                types: strings("types"),
                tags: strings("tags"),
                stream: text_of("stream"),
            },
            ack_timeout: Duration::from_millis(
                value["ack_timeout_ms"]
                    .as_u64()
                    .ok_or_else(|| corrupt("ack_timeout_ms"))?,
            ),
            max_deliveries: value["max_deliveries"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| corrupt("max_deliveries"))?,
            ordering: text_of("ordering")
                .and_then(|o| GroupOrdering::parse(&o))
                .ok_or_else(|| corrupt("ordering"))?,
        })
    }
}

/// A group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub name: String,
    pub settings: GroupSettings,
    pub checkpoint: Position,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An event set aside after too many deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedEvent {
    pub position: Position,
    pub deliveries: u32,
    pub reason: String,
    /// Microseconds since the epoch.
    pub parked_at: i64,
    /// Back in delivery after a replay, until acknowledged or parked again.
    pub replaying: bool,
}

/// One event handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Arc<RecordedEvent>,
    /// 1 for the first delivery, 2 for the first redelivery, …
    pub attempt: u32,
}

/// A group's state for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub name: String,
    pub settings: GroupSettings,
    pub checkpoint: Position,
    pub head_position: Position,
    /// Log positions between the checkpoint and the head.
    pub lag: u64,
    pub in_flight: usize,
    /// Events read ahead and waiting for a consumer (including ones to retry).
    pub waiting: usize,
    pub parked: u64,
}

/// What `ack` and `nack` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Settled {
    /// Positions that were in flight (or waiting for redelivery) and are now settled.
    pub settled: usize,
    /// Positions that were not awaiting an answer (unknown, or already settled).
    pub ignored: usize,
    /// Positions parked because they ran out of deliveries.
    pub parked: usize,
}

struct Waiting {
    event: Arc<RecordedEvent>,
    deliveries: u32,
    not_before: Option<Instant>,
}

struct InFlight {
    event: Arc<RecordedEvent>,
    deliveries: u32,
    deadline: Instant,
    replay: bool,
}

struct GroupState {
    settings: GroupSettings,
    checkpoint: Position,
    saved_checkpoint: Position,
    /// The next log position to read.
    cursor: Position,
    waiting: BTreeMap<Position, Waiting>,
    /// Parked events brought back by a replay; they do not hold the checkpoint.
    replays: BTreeMap<Position, Waiting>,
    in_flight: BTreeMap<Position, InFlight>,
    /// Settled positions after the checkpoint.
    done: BTreeSet<Position>,
    parked: u64,
    deleted: bool,
    /// This instance stopped driving the group (its lease is gone).
    moved: bool,
}

struct Group {
    name: String,
    /// The lease epoch that fences this owner's durable writes; `None` for the only
    /// process on its store.
    epoch: Option<u64>,
    /// The lease session the group was taken in.
    session: u64,
    state: Mutex<GroupState>,
    changed: Notify,
}

/// Every consumer group of one store (or, sharing a store with other instances, every
/// group this instance drives).
pub struct ConsumerGroups {
    store: SharedStore,
    groups: RwLock<HashMap<String, Arc<Group>>>,
    /// `None`: this process is the only one on its store and drives every group.
    leases: Option<Arc<dyn GroupLeases>>,
    /// One acquisition at a time.
    acquiring: Mutex<()>,
}

impl ConsumerGroups {
    /// Loads every stored group; deliveries resume after each checkpoint.
    pub async fn load(store: SharedStore) -> Result<Self, StoreError> {
        let mut groups = HashMap::new();
        for record in store.load_groups().await? {
            let (parked_count, replays) = load_parked(&store, &record.name).await?;
            let group = Group::new(
                record.name.clone(),
                record.settings,
                record.checkpoint,
                parked_count,
                replays,
            );
            groups.insert(record.name, Arc::new(group));
        }
        Ok(Self {
            store,
            groups: RwLock::new(groups),
            leases: None,
            acquiring: Mutex::new(()),
        })
    }

    /// The groups of a store that other instances share: this instance drives the
    /// groups whose lease it holds. Takes every free lease before it returns, then
    /// keeps taking free ones in the background for as long as it lives.
    pub async fn shared(
        store: SharedStore,
        leases: Arc<dyn GroupLeases>,
    ) -> Result<Arc<Self>, StoreError> {
        let groups = Arc::new(Self {
            store,
            groups: RwLock::new(HashMap::new()),
            leases: Some(Arc::clone(&leases)),
            acquiring: Mutex::new(()),
        });
        groups.ownership_round(&leases).await;
        tokio::spawn(drive_ownership(Arc::downgrade(&groups), leases));
        Ok(groups)
    }

    /// Whether other instances share the store (and a request may belong to another).
    pub fn is_shared(&self) -> bool {
        self.leases.is_some()
    }

    /// This instance's advertised URL, when it shares its store.
    pub fn advertise_url(&self) -> Option<&str> {
        self.leases.as_deref().map(|leases| leases.advertise_url())
    }

    /// Where requests for the group are served. Takes no I/O for a group this instance
    /// drives, nor on a store nobody else shares.
    pub async fn route(&self, name: &str) -> Result<GroupRoute, StoreError> {
        if self.groups.read().await.contains_key(name) {
            return Ok(GroupRoute::Here);
        }
        let Some(leases) = &self.leases else {
            return Ok(GroupRoute::Missing);
        };
        Ok(match leases.owner(name).await? {
            None => GroupRoute::Missing,
            Some(GroupOwner { url: Some(url), .. }) if url != leases.advertise_url() => {
                GroupRoute::Owner(url)
            }
            Some(_) => GroupRoute::Unowned,
        })
    }

    /// Tries at once to take the group over if no instance holds its lease (its owner
    /// could not be reached, say), instead of waiting for the next ownership round.
    /// Returns whether this instance drives it now.
    pub async fn take_over_if_free(&self, name: &str) -> Result<bool, StoreError> {
        self.acquire(name).await
    }

    /// Whether the group exists (driven here or, on a shared store, anywhere).
    pub async fn exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.route(name).await? != GroupRoute::Missing)
    }

    /// One round of ownership: lets go of groups of a lost lease session, checks the
    /// session, and takes the lease of every group nobody drives.
    async fn ownership_round(&self, leases: &Arc<dyn GroupLeases>) {
        let session = *leases.session().borrow();
        let stale: Vec<Arc<Group>> = self
            .groups
            .read()
            .await
            .values()
            .filter(|group| group.session != session)
            .cloned()
            .collect();
        for group in stale {
            self.abandon(&group, "its lease session was lost").await;
        }
        if let Err(error) = leases.check().await {
            tracing::warn!(%error, "consumer groups: no lease session; retrying");
            return;
        }
        let records = match self.store.load_groups().await {
            Ok(records) => records,
            Err(error) => {
                tracing::warn!(%error, "consumer groups: cannot list the groups");
                return;
            }
        };
        let stored: HashSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
        let gone: Vec<Arc<Group>> = self
            .groups
            .read()
            .await
            .values()
            .filter(|group| !stored.contains(group.name.as_str()))
            .cloned()
            .collect();
        for group in gone {
            self.abandon(&group, "it was deleted").await;
        }
        for record in &records {
            if self.groups.read().await.contains_key(&record.name) {
                continue;
            }
            if let Err(error) = self.acquire(&record.name).await {
                tracing::warn!(group = record.name, %error, "could not take a consumer group");
            }
        }
    }

    /// Takes the group's lease if it is free and starts driving the group from its
    /// stored state; `false` when another instance holds it.
    async fn acquire(&self, name: &str) -> Result<bool, StoreError> {
        let Some(leases) = &self.leases else {
            return Ok(false);
        };
        let _one_at_a_time = self.acquiring.lock().await;
        if self.groups.read().await.contains_key(name) {
            return Ok(true);
        }
        let Some(lease) = leases.try_acquire(name).await? else {
            return Ok(false);
        };
        // Loaded after the epoch moved: the previous owner can write nothing more.
        let (parked, replays) = match load_parked(&self.store, name).await {
            Ok(loaded) => loaded,
            Err(error) => {
                leases.release(name).await;
                return Err(error);
            }
        };
        let mut groups = self.groups.write().await;
        if *leases.session().borrow() != lease.session {
            return Ok(false); // the session was lost meanwhile, and the lease with it
        }
        let record = lease.record;
        let mut group = Group::new(
            name.to_owned(),
            record.settings,
            record.checkpoint,
            parked,
            replays,
        );
        group.epoch = Some(lease.epoch);
        group.session = lease.session;
        groups.insert(name.to_owned(), Arc::new(group));
        tracing::info!(
            group = name,
            epoch = lease.epoch,
            checkpoint = record.checkpoint,
            "consumer group taken: this instance drives it"
        );
        Ok(true)
    }

    /// Stops driving `group` (if it is still the one driven under its name): waiting
    /// claims end with `GroupMoved`, its bookkeeping is dropped, its lease given back.
    async fn abandon(&self, group: &Arc<Group>, why: &str) {
        let removed = {
            let mut groups = self.groups.write().await;
            match groups.get(&group.name) {
                Some(current) if Arc::ptr_eq(current, group) => {
                    groups.remove(&group.name);
                    true
                }
                _ => false,
            }
        };
        group.state.lock().await.moved = true;
        group.changed.notify_waiters();
        if !removed {
            return;
        }
        tracing::warn!(
            group = group.name,
            epoch = group.epoch,
            why,
            "consumer group released: this instance stops driving it"
        );
        if let Some(leases) = &self.leases
            && group.session == *leases.session().borrow()
        {
            leases.release(&group.name).await;
        }
    }

    /// Whether the lease session `group` was taken in is gone (never, without leases).
    fn session_lost(&self, group: &Group) -> bool {
        self.leases
            .as_ref()
            .is_some_and(|leases| *leases.session().borrow() != group.session)
    }

    /// Passes `result` on; a `GroupMoved` means another instance took `group` over, so
    /// this one stops driving it first.
    async fn unless_moved<T>(
        &self,
        group: &Arc<Group>,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Err(StoreError::GroupMoved(_)) = &result {
            self.abandon(group, "another instance took it over").await;
        }
        result
    }

    /// Every group with its status: live for the groups driven here; for groups another
    /// instance drives, as stored (checkpoint, lag, parked), with nothing in flight or
    /// waiting counted.
    pub async fn statuses(&self) -> Result<Vec<GroupStatus>, StoreError> {
        let mut statuses = Vec::new();
        if self.leases.is_none() {
            for name in self.names().await {
                match self.status(&name).await {
                    Ok(status) => statuses.push(status),
                    // Deleted since the names were taken.
                    Err(StoreError::GroupNotFound(_)) => {}
                    Err(error) => return Err(error),
                }
            }
            return Ok(statuses);
        }
        for record in self.store.load_groups().await? {
            let driven = self.groups.read().await.get(&record.name).cloned();
            let status = match driven {
                Some(group) => self.status_of(&group).await?,
                None => self.stored_status(record).await?,
            };
            statuses.push(status);
        }
        Ok(statuses)
    }

    /// A group's status from the store alone.
    async fn stored_status(&self, record: GroupRecord) -> Result<GroupStatus, StoreError> {
        let head_position = self.store.head_position().await?;
        let parked = self.store.list_parked(&record.name, 0, usize::MAX).await?;
        Ok(GroupStatus {
            lag: head_position.saturating_sub(record.checkpoint),
            name: record.name,
            settings: record.settings,
            checkpoint: record.checkpoint,
            head_position,
            in_flight: 0,
            waiting: 0,
            parked: parked.iter().filter(|p| !p.replaying).count() as u64,
        })
    }

    /// Creates a group, or updates an existing one's settings (its checkpoint stays;
    /// `from_position` only matters on creation).
    pub async fn put(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> Result<GroupStatus, StoreError> {
        let mut groups = self.groups.write().await;
        if let Some(group) = groups.get(name) {
            let checkpoint = {
                let mut state = group.state.lock().await;
                let saved = match (&self.leases, group.epoch) {
                    // Shared: only while this instance still owns the group.
                    (Some(leases), Some(epoch)) => {
                        leases.save_settings(name, epoch, &settings).await
                    }
                    _ => self
                        .store
                        .save_group(name, &settings, state.checkpoint)
                        .await
                        .map(drop),
                };
                if let Err(error) = saved {
                    if let StoreError::GroupMoved(_) = error {
                        let group = Arc::clone(group);
                        drop(state);
                        drop(groups);
                        self.abandon(&group, "another instance took it over").await;
                    }
                    return Err(error);
                }
                let filter_changed = state.settings.filter != settings.filter;
                state.settings = settings;
                if filter_changed {
                    // Read again through the new filter. Events in flight stay in
                    // flight and settled ones stay settled: `read_ahead` skips both.
                    state.waiting.clear();
                    state.cursor = state.checkpoint + 1;
                }
                state.checkpoint
            };
            group.changed.notify_waiters();
            tracing::info!(group = name, checkpoint, "consumer group updated");
        } else {
            let checkpoint = settings.from_position.saturating_sub(1);
            let record = self.store.save_group(name, &settings, checkpoint).await?;
            if self.leases.is_some() {
                // Shared: the creating instance takes the new group's lease, unless
                // another instance was faster.
                drop(groups);
                tracing::info!(group = name, checkpoint, "consumer group created");
                if !self.acquire(name).await? {
                    return self.stored_status(record).await;
                }
                return self.status(name).await;
            }
            let group = Group::new(
                name.to_owned(),
                record.settings,
                record.checkpoint,
                0,
                BTreeMap::new(),
            );
            groups.insert(name.to_owned(), Arc::new(group));
            tracing::info!(group = name, checkpoint, "consumer group created");
        }
        drop(groups);
        self.status(name).await
    }

    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let group = self.groups.write().await.remove(name);
        let Some(group) = group else {
            return Err(self.not_here(name).await);
        };
        group.state.lock().await.deleted = true;
        group.changed.notify_waiters();
        self.store.delete_group(name).await?;
        if let Some(leases) = &self.leases {
            leases.release(name).await;
        }
        Ok(())
    }

    pub async fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.groups.read().await.keys().cloned().collect();
        names.sort();
        names
    }

    async fn group(&self, name: &str) -> Result<Arc<Group>, StoreError> {
        let group = self.groups.read().await.get(name).cloned();
        match group {
            Some(group) => Ok(group),
            None => Err(self.not_here(name).await),
        }
    }

    /// Why a group is not driven here: there is no such group, or (on a shared store)
    /// another instance drives it.
    async fn not_here(&self, name: &str) -> StoreError {
        match &self.leases {
            Some(leases) if !matches!(leases.owner(name).await, Ok(None)) => {
                StoreError::GroupMoved(name.to_owned())
            }
            _ => StoreError::GroupNotFound(name.to_owned()),
        }
    }

    pub async fn status(&self, name: &str) -> Result<GroupStatus, StoreError> {
        let group = self.group(name).await?;
        self.status_of(&group).await
    }

    async fn status_of(&self, group: &Group) -> Result<GroupStatus, StoreError> {
        let head_position = self.store.head_position().await?;
        let state = group.state.lock().await;
        if state.moved || self.session_lost(group) {
            return Err(StoreError::GroupMoved(group.name.clone()));
        }
        let lag = head_position.saturating_sub(state.checkpoint);
        metrics::gauge!(m::GROUP_LAG, "group" => group.name.clone()).set(lag as f64);
        Ok(GroupStatus {
            name: group.name.clone(),
            settings: state.settings.clone(),
            checkpoint: state.checkpoint,
            head_position,
            lag,
            in_flight: state.in_flight.len(),
            waiting: state.waiting.len() + state.replays.len(),
            parked: state.parked,
        })
    }

    /// Up to `max` events for `consumer`, waiting up to `wait` for some to arrive.
    pub async fn claim(
        &self,
        name: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let group = self.group(name).await?;
        let claimed = self.claim_from(&group, max, wait).await;
        self.unless_moved(&group, claimed).await
    }

    async fn claim_from(
        &self,
        group: &Arc<Group>,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        let name = group.name.as_str();
        let wait_until = Instant::now() + wait;
        // A waiting claim ends as soon as the lease session is lost, whatever the
        // ownership task is doing.
        let mut session = self.leases.as_ref().map(|leases| leases.session());
        let mut head = self.store.watch_head();
        loop {
            head.borrow_and_update();
            let notified = group.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (deliveries, wake_at) = {
                let mut state = group.state.lock().await;
                if state.deleted {
                    return Err(StoreError::GroupNotFound(name.to_owned()));
                }
                if state.moved || self.session_lost(group) {
                    return Err(StoreError::GroupMoved(name.to_owned()));
                }
                let now = Instant::now();
                let expired = state.expire(now);
                self.park(group, &mut state, expired).await?;
                if state.waiting.len() < READ_AHEAD {
                    self.read_ahead(&mut state).await?;
                }
                let deliveries = state.select(max.max(1), now);
                let wake_at = state.next_wake(now);
                (deliveries, wake_at)
            };
            self.save_checkpoint(group).await;
            if !deliveries.is_empty() {
                let redeliveries = deliveries.iter().filter(|d| d.attempt > 1).count();
                metrics::counter!(m::GROUP_DELIVERIES, "group" => group.name.clone())
                    .increment(deliveries.len() as u64);
                if redeliveries > 0 {
                    metrics::counter!(m::GROUP_REDELIVERIES, "group" => group.name.clone())
                        .increment(redeliveries as u64);
                }
                return Ok(deliveries);
            }
            let now = Instant::now();
            if now >= wait_until {
                return Ok(Vec::new());
            }
            let wake_at = wake_at.map_or(wait_until, |at| at.min(wait_until));
            tokio::select! {
                _ = head.changed() => {}
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
                () = session_moved(&mut session) => {}
            }
        }
    }

    /// Acknowledges deliveries: they are done.
    pub async fn ack(&self, name: &str, positions: &[Position]) -> Result<Settled, StoreError> {
        let group = self.group(name).await?;
        let settled = self.ack_in(&group, positions).await;
        self.unless_moved(&group, settled).await
    }

    async fn ack_in(
        &self,
        group: &Arc<Group>,
        positions: &[Position],
    ) -> Result<Settled, StoreError> {
        let mut settled = Settled::default();
        let mut replays_done = Vec::new();
        {
            let mut state = group.state.lock().await;
            if state.moved || self.session_lost(group) {
                return Err(StoreError::GroupMoved(group.name.clone()));
            }
            for &position in positions {
                if let Some(flight) = state.in_flight.remove(&position) {
                    if flight.replay {
                        replays_done.push(position);
                    } else {
                        state.done.insert(position);
                    }
                } else if state.waiting.remove(&position).is_some() {
                    // Its ack timeout passed but the answer came before a redelivery.
                    state.done.insert(position);
                } else if state.replays.remove(&position).is_some() {
                    replays_done.push(position);
                } else {
                    settled.ignored += 1;
                    continue;
                }
                settled.settled += 1;
            }
            state.advance_checkpoint();
        }
        group.changed.notify_waiters();
        if !replays_done.is_empty() {
            self.remove_parked(group, replays_done).await?;
        }
        self.save_checkpoint(group).await;
        Ok(settled)
    }

    /// Gives deliveries back: they are delivered again after `retry_after` (at once
    /// when zero), or parked when they have had their deliveries.
    pub async fn nack(
        &self,
        name: &str,
        positions: &[Position],
        retry_after: Duration,
    ) -> Result<Settled, StoreError> {
        let group = self.group(name).await?;
        let settled = self.nack_in(&group, positions, retry_after).await;
        self.unless_moved(&group, settled).await
    }

    async fn nack_in(
        &self,
        group: &Arc<Group>,
        positions: &[Position],
        retry_after: Duration,
    ) -> Result<Settled, StoreError> {
        let mut settled = Settled::default();
        {
            let mut state = group.state.lock().await;
            if state.moved || self.session_lost(group) {
                return Err(StoreError::GroupMoved(group.name.clone()));
            }
            let not_before = (!retry_after.is_zero()).then(|| Instant::now() + retry_after);
            let mut to_park = Vec::new();
            for &position in positions {
                let Some(flight) = state.in_flight.remove(&position) else {
                    settled.ignored += 1;
                    continue;
                };
                settled.settled += 1;
                if flight.deliveries >= state.settings.max_deliveries {
                    to_park.push((position, flight, "nacked on its last delivery"));
                } else {
                    state.give_back(position, flight, not_before);
                }
            }
            settled.parked = to_park.len();
            self.park(group, &mut state, to_park).await?;
            state.advance_checkpoint();
        }
        group.changed.notify_waiters();
        self.save_checkpoint(group).await;
        Ok(settled)
    }

    /// The group's parked events after `after`.
    pub async fn parked(
        &self,
        name: &str,
        after: Position,
        limit: usize,
    ) -> Result<Vec<ParkedEvent>, StoreError> {
        self.group(name).await?;
        self.store.list_parked(name, after, limit).await
    }

    /// Brings parked events (all, or those at `positions`) back into delivery. Returns
    /// how many came back.
    pub async fn replay_parked(
        &self,
        name: &str,
        positions: Option<Vec<Position>>,
    ) -> Result<usize, StoreError> {
        let group = self.group(name).await?;
        let replayed = self.replay_parked_in(&group, positions).await;
        self.unless_moved(&group, replayed).await
    }

    async fn replay_parked_in(
        &self,
        group: &Arc<Group>,
        positions: Option<Vec<Position>>,
    ) -> Result<usize, StoreError> {
        let mut state = group.state.lock().await;
        if state.moved || self.session_lost(group) {
            return Err(StoreError::GroupMoved(group.name.clone()));
        }
        let marked = match (&self.leases, group.epoch) {
            (Some(leases), Some(epoch)) => {
                leases.replay_parked(&group.name, epoch, positions).await?
            }
            _ => self.store.replay_parked(&group.name, positions).await?,
        };
        let mut replayed = 0;
        for position in marked {
            if state.replays.contains_key(&position) || state.in_flight.contains_key(&position) {
                continue;
            }
            if let Some(event) = self.store.read_event(position).await? {
                state.replays.insert(
                    position,
                    Waiting {
                        event: Arc::new(event),
                        deliveries: 0,
                        not_before: None,
                    },
                );
                state.parked = state.parked.saturating_sub(1);
                replayed += 1;
            }
        }
        drop(state);
        group.changed.notify_waiters();
        Ok(replayed)
    }

    async fn read_ahead(&self, state: &mut GroupState) -> Result<(), StoreError> {
        let slice = self
            .store
            .read_all(state.cursor, &state.settings.filter, READ_AHEAD)
            .await?;
        for event in slice.events {
            if state.in_flight.contains_key(&event.position) || state.done.contains(&event.position)
            {
                continue;
            }
            state.waiting.insert(
                event.position,
                Waiting {
                    event: Arc::new(event),
                    deliveries: 0,
                    not_before: None,
                },
            );
        }
        state.cursor = state.cursor.max(slice.next_from_position);
        state.advance_checkpoint();
        Ok(())
    }

    async fn park(
        &self,
        group: &Group,
        state: &mut GroupState,
        entries: Vec<(Position, InFlight, &str)>,
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let name = group.name.as_str();
        let now = now_micros();
        let mut parked = Vec::with_capacity(entries.len());
        for (position, flight, reason) in entries {
            if !flight.replay {
                state.done.insert(position);
            }
            parked.push(ParkedEvent {
                position,
                deliveries: flight.deliveries,
                reason: reason.to_owned(),
                parked_at: now,
                replaying: false,
            });
        }
        state.parked += parked.len() as u64;
        metrics::counter!(m::GROUP_PARKED, "group" => name.to_owned())
            .increment(parked.len() as u64);
        tracing::warn!(
            group = name,
            count = parked.len(),
            "events parked after their last delivery"
        );
        match (&self.leases, group.epoch) {
            (Some(leases), Some(epoch)) => leases.park_events(name, epoch, parked).await,
            _ => self.store.park_events(name, parked).await,
        }
    }

    /// Forgets parked events whose replay was acknowledged (fenced on a shared store).
    async fn remove_parked(
        &self,
        group: &Group,
        positions: Vec<Position>,
    ) -> Result<(), StoreError> {
        match (&self.leases, group.epoch) {
            (Some(leases), Some(epoch)) => {
                leases.remove_parked(&group.name, epoch, positions).await
            }
            _ => self.store.remove_parked(&group.name, positions).await,
        }
    }

    /// Stores the checkpoint when it moved. A failure is logged, not returned: the
    /// checkpoint is saved again on the next move, and until then a restart only
    /// redelivers (at least once). A refusal because another instance took the group
    /// over (fencing) makes this one stop driving it.
    async fn save_checkpoint(&self, group: &Arc<Group>) {
        let checkpoint = {
            let state = group.state.lock().await;
            if state.checkpoint <= state.saved_checkpoint {
                return;
            }
            state.checkpoint
        };
        let saved = match (&self.leases, group.epoch) {
            (Some(leases), Some(epoch)) => {
                leases.save_checkpoint(&group.name, epoch, checkpoint).await
            }
            _ => self.store.save_checkpoint(&group.name, checkpoint).await,
        };
        match saved {
            Ok(()) => {
                let mut state = group.state.lock().await;
                state.saved_checkpoint = state.saved_checkpoint.max(checkpoint);
            }
            Err(StoreError::GroupMoved(_)) => {
                self.abandon(group, "another instance took it over").await;
            }
            Err(error) => {
                tracing::warn!(group = group.name, %error, "could not save the checkpoint")
            }
        }
    }
}

/// The group's parked events as loaded at start or takeover: how many are parked, and
/// those being replayed, back in delivery.
async fn load_parked(
    store: &SharedStore,
    name: &str,
) -> Result<(u64, BTreeMap<Position, Waiting>), StoreError> {
    let parked = store.list_parked(name, 0, usize::MAX).await?;
    let mut replays = BTreeMap::new();
    for entry in parked.iter().filter(|p| p.replaying) {
        if let Some(event) = store.read_event(entry.position).await? {
            replays.insert(
                entry.position,
                Waiting {
                    event: Arc::new(event),
                    deliveries: 0,
                    not_before: None,
                },
            );
        }
    }
    let parked_count = parked.iter().filter(|p| !p.replaying).count() as u64;
    Ok((parked_count, replays))
}

/// Resolves when the lease session changes; never without leases (or once the
/// leases are gone).
async fn session_moved(session: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    let changed = match session {
        Some(receiver) => receiver.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}

/// The ownership task of an instance sharing its store: a round every
/// [`OWNERSHIP_ROUND`], when a lease may have become free, and at once when the lease
/// session is lost. Ends when the groups are dropped.
async fn drive_ownership(groups: Weak<ConsumerGroups>, leases: Arc<dyn GroupLeases>) {
    let mut session = leases.session();
    let mut ticks = tokio::time::interval(OWNERSHIP_ROUND);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = leases.changed() => {}
            changed = session.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let Some(groups) = groups.upgrade() else {
            return;
        };
        groups.ownership_round(&leases).await;
    }
}

impl Group {
    fn new(
        name: String,
        settings: GroupSettings,
        checkpoint: Position,
        parked: u64,
        replays: BTreeMap<Position, Waiting>,
    ) -> Self {
        Self {
            name,
            epoch: None,
            session: 0,
            state: Mutex::new(GroupState {
                settings,
                checkpoint,
                saved_checkpoint: checkpoint,
                cursor: checkpoint + 1,
                waiting: BTreeMap::new(),
                replays,
                in_flight: BTreeMap::new(),
                done: BTreeSet::new(),
                parked,
                deleted: false,
                moved: false,
            }),
            changed: Notify::new(),
        }
    }
}

impl GroupState {
    /// In-flight events whose ack timeout passed go back to waiting, or are returned
    /// for parking when they have had their deliveries.
    fn expire(&mut self, now: Instant) -> Vec<(Position, InFlight, &'static str)> {
        let expired: Vec<Position> = self
            .in_flight
            .iter()
            .filter(|(_, flight)| flight.deadline <= now)
            .map(|(position, _)| *position)
            .collect();
        let mut to_park = Vec::new();
        for position in expired {
            let Some(flight) = self.in_flight.remove(&position) else {
                continue;
            };
            if flight.deliveries >= self.settings.max_deliveries {
                to_park.push((position, flight, "ack timeout on its last delivery"));
            } else {
                self.give_back(position, flight, None);
            }
        }
        to_park
    }

    fn give_back(&mut self, position: Position, flight: InFlight, not_before: Option<Instant>) {
        let waiting = Waiting {
            event: flight.event,
            deliveries: flight.deliveries,
            not_before,
        };
        if flight.replay {
            self.replays.insert(position, waiting);
        } else {
            self.waiting.insert(position, waiting);
        }
    }

    /// Picks up to `max` events to deliver now: replays first, then in log order,
    /// honouring per-stream ordering.
    fn select(&mut self, max: usize, now: Instant) -> Vec<Delivery> {
        let per_stream = self.settings.ordering == GroupOrdering::PerStream;
        let mut blocked: HashSet<StreamName> = if per_stream {
            self.in_flight
                .values()
                .map(|f| f.event.stream.clone())
                .collect()
        } else {
            HashSet::new()
        };
        let mut chosen: Vec<(Position, bool)> = Vec::new();
        for (replay, queue) in [(true, &self.replays), (false, &self.waiting)] {
            for (position, waiting) in queue {
                if chosen.len() >= max {
                    break;
                }
                let stream = &waiting.event.stream;
                if per_stream && blocked.contains(stream) {
                    continue;
                }
                let ready = waiting.not_before.is_none_or(|at| at <= now);
                if per_stream {
                    // Whether or not it goes now, later events of its stream wait.
                    blocked.insert(stream.clone());
                }
                if ready {
                    chosen.push((*position, replay));
                }
            }
        }
        let deadline = now + self.settings.ack_timeout;
        let mut deliveries = Vec::with_capacity(chosen.len());
        for (position, replay) in chosen {
            let queue = if replay {
                &mut self.replays
            } else {
                &mut self.waiting
            };
            let Some(waiting) = queue.remove(&position) else {
                continue;
            };
            let attempt = waiting.deliveries + 1;
            deliveries.push(Delivery {
                event: Arc::clone(&waiting.event),
                attempt,
            });
            self.in_flight.insert(
                position,
                InFlight {
                    event: waiting.event,
                    deliveries: attempt,
                    deadline,
                    replay,
                },
            );
        }
        deliveries
    }

    /// When something may become deliverable without anyone acting: an ack timeout or
    /// a retry delay running out.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let deadlines = self.in_flight.values().map(|f| f.deadline);
        let delays = self
            .waiting
            .values()
            .chain(self.replays.values())
            .filter_map(|w| w.not_before)
            .filter(|at| *at > now);
        deadlines.chain(delays).min()
    }

    /// Moves the checkpoint up to just before the first event still awaiting an answer.
    fn advance_checkpoint(&mut self) {
        let first_waiting = self.waiting.keys().next().copied();
        let first_in_flight = self
            .in_flight
            .iter()
            .find(|(_, f)| !f.replay)
            .map(|(p, _)| *p);
        let floor = match (first_waiting, first_in_flight) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => self.cursor,
        };
        let checkpoint = floor.saturating_sub(1);
        if checkpoint > self.checkpoint {
            self.checkpoint = checkpoint;
            self.done = self.done.split_off(&(checkpoint + 1));
        }
    }
}
