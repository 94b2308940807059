//! Consumer-group leases on PostgreSQL: which of the instances sharing a database
//! drives which group.
//!
//! Each instance keeps one dedicated connection, the *lock session*. It drives a group
//! while that session holds `pg_try_advisory_lock(key)`, the key derived from the
//! group's name. PostgreSQL releases a session's advisory locks the moment the session
//! ends, and a killed process's session ends as soon as the server sees its socket
//! close; the server-side TCP keep-alives set on the session bound how long a vanished
//! host (no FIN, no RST) holds its locks.
//!
//! On taking a lock, the instance moves the group's `owner_epoch` up (to the next value
//! of one sequence, so an epoch is never reused) and records its advertised URL, in one `UPDATE … RETURNING` that also hands back the group's stored
//! state. Every later checkpoint or parked-event write of that owner names the epoch:
//! the checkpoint `UPDATE … WHERE owner_epoch = $epoch`; parked-event writes in a
//! transaction that first takes `FOR SHARE` on the group's row at that epoch. The
//! takeover's epoch increment waits for such a transaction and makes any later one
//! find no row, so an owner that lost its lock without noticing can never change the
//! durable state its successor loaded.
//!
//! The session also LISTENs on [`CHANNEL`]: a created or released group is announced
//! there, so other instances try to take it at once instead of at their next round.
//! When the session breaks, the session generation moves on: every lease taken in it
//! is void, and the next call opens a new session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_core::{Position, now_micros};
use deadpool_postgres::Pool;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Notify, watch};
use tokio::task::JoinHandle;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls};

use super::PostgresOptions;
use super::groups as sql;
use super::pool::{build_pool, checkout, connection_config, label};
use super::read::{from_db, to_db};
use super::schema::pg_error;
use crate::groups::{GroupLeases, GroupOwner, Lease};
use crate::{GroupRecord, GroupSettings, ParkedEvent, StoreError};

/// The NOTIFY channel announcing groups whose lease may be free; the payload is the
/// group's name.
pub(crate) const CHANNEL: &str = "cairn_groups";

/// The longest a liveness check of the lock session may take before the session is
/// given up (and with it every lease).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Server-side TCP keep-alives of the lock session: a host that vanished without
/// closing its connections loses its locks after about idle + interval × count.
const SERVER_KEEPALIVES: &str =
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3";

/// How often the lock session is checked, whatever else the instance is doing.
const LIVENESS_INTERVAL: Duration = Duration::from_secs(1);

/// Connections for owner look-ups and fenced writes.
const POOL_SIZE: usize = 4;

/// The advisory-lock key of a group: the first 8 bytes of a SHA-256 of its name in a
/// namespace of its own, so that it cannot meet the migration lock or another kind of
/// lock by more than chance (2⁻⁶⁴).
pub fn group_lock_key(name: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"cairn/consumer-group/")
        .chain_update(name.as_bytes())
        .finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

/// One lock session: its connection, and the locks it holds.
struct Session {
    client: Arc<tokio_postgres::Client>,
    generation: u64,
    held: HashMap<String, i64>,
    driver: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Ends the connection, and with it the session's locks.
        self.driver.abort();
    }
}

/// [`GroupLeases`] on a PostgreSQL database.
pub struct PgGroupLeases {
    config: tokio_postgres::Config,
    pool: Pool,
    advertise_url: String,
    session: Mutex<Option<Session>>,
    generation: Arc<watch::Sender<u64>>,
    wake: Arc<Notify>,
    timeout: Duration,
    label: String,
}

impl PgGroupLeases {
    /// Opens the lock session (and a small pool for fenced writes) on the primary of
    /// `options`, for an instance that other instances reach at `advertise_url`.
    pub async fn connect(
        options: &PostgresOptions,
        advertise_url: String,
    ) -> Result<Arc<Self>, StoreError> {
        let mut config = connection_config(&options.url, options, TargetSessionAttrs::ReadWrite)?;
        let combined = match config.get_options() {
            Some(given) => format!("{given} {SERVER_KEEPALIVES}"),
            None => SERVER_KEEPALIVES.to_owned(),
        };
        config.options(combined);
        let pool = build_pool(config.clone(), POOL_SIZE, options)?;
        let leases = Arc::new(Self {
            label: label(&config),
            config,
            pool,
            advertise_url,
            session: Mutex::new(None),
            generation: Arc::new(watch::channel(0).0),
            wake: Arc::new(Notify::new()),
            timeout: options.statement_timeout + options.pool_wait_timeout,
        });
        leases.check().await?;
        // The session is checked on its own schedule, so that a lost one is noticed
        // (and its leases voided) within a few seconds even while the ownership round
        // waits on something else.
        let monitored = Arc::downgrade(&leases);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(LIVENESS_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(leases) = monitored.upgrade() else {
                    return;
                };
                if let Err(error) = leases.check().await {
                    tracing::debug!(%error, "consumer groups: lock session check failed");
                }
            }
        });
        Ok(leases)
    }

    /// The lock session's client and generation, opening a session when there is none
    /// (or the last one broke).
    async fn client(&self) -> Result<(Arc<tokio_postgres::Client>, u64), StoreError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            if !session.client.is_closed() && session.generation == *self.generation.borrow() {
                return Ok((Arc::clone(&session.client), session.generation));
            }
            let generation = session.generation;
            *slot = None;
            self.lost(generation, "the lock session closed");
        }
        let session = self.open_session().await?;
        let answer = (Arc::clone(&session.client), session.generation);
        *slot = Some(session);
        Ok(answer)
    }

    async fn open_session(&self) -> Result<Session, StoreError> {
        let connect = tokio::time::timeout(CHECK_TIMEOUT * 2, self.config.connect(NoTls));
        let (client, mut connection) = connect
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "PostgreSQL {}: the lock session could not connect in time",
                    self.label
                ))
            })?
            .map_err(pg_error)?;
        let generation = *self.generation.borrow();
        let wake = Arc::clone(&self.wake);
        let generations = Arc::clone(&self.generation);
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "consumer groups: the lock session failed");
                        break;
                    }
                }
            }
            // The connection is gone, and with it every lock of this session.
            void_generation(&generations, generation, "the lock session ended");
            wake.notify_one();
        });
        let session = Session {
            client: Arc::new(client),
            generation,
            held: HashMap::new(),
            driver,
        };
        let listen = format!("LISTEN {CHANNEL}");
        tokio::time::timeout(CHECK_TIMEOUT, session.client.batch_execute(&listen))
            .await
            .map_err(|_| StoreError::Unavailable("the lock session did not answer".into()))?
            .map_err(pg_error)?;
        tracing::info!(generation, "consumer groups: lock session open");
        Ok(session)
    }

    /// Voids the leases of session `generation` (once) and drops the session.
    fn lost(&self, generation: u64, why: &str) {
        void_generation(&self.generation, generation, why);
    }

    /// Forgets the session of `generation` after a failure on it.
    async fn drop_session(&self, generation: u64, why: &str) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| s.generation == generation) {
            *slot = None;
        }
        drop(slot);
        self.lost(generation, why);
    }

    /// Runs `work` on a pooled connection with the store's time limit.
    /// Runs `sql`, an `UPDATE` of the group's row with `$1` its name, `$2` `value`, `$3`
    /// now and `$4` `epoch`, which matches only while `epoch` is the group's: no row
    /// updated means another instance took the group over.
    async fn fenced_update(
        &self,
        sql: &str,
        name: &str,
        value: &(dyn ToSql + Sync),
        epoch: u64,
    ) -> Result<(), StoreError> {
        self.timed(async {
            let client = checkout(&self.pool, "groups").await?;
            let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
            let updated = client
                .execute(&statement, &[&name, value, &now_micros(), &to_db(epoch)])
                .await
                .map_err(pg_error)?;
            if updated == 0 {
                return Err(StoreError::GroupMoved(name.to_owned()));
            }
            Ok(())
        })
        .await
    }

    async fn timed<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "PostgreSQL: a consumer-group write timed out".into(),
                ))
            })
    }
}

/// Begins a transaction on `client` that holds (`FOR SHARE`) the group's row at
/// `epoch`, so that no takeover commits before it does; `GroupMoved` when `epoch` is no
/// longer the group's.
async fn fence<'c>(
    client: &'c mut deadpool_postgres::Client,
    name: &str,
    epoch: u64,
) -> Result<deadpool_postgres::Transaction<'c>, StoreError> {
    let transaction = client.transaction().await.map_err(pg_error)?;
    let statement = transaction
        .prepare_cached(
            "SELECT 1 FROM consumer_groups WHERE name = $1 AND owner_epoch = $2 FOR SHARE",
        )
        .await
        .map_err(pg_error)?;
    let held = transaction
        .query_opt(&statement, &[&name, &to_db(epoch)])
        .await
        .map_err(pg_error)?;
    if held.is_none() {
        return Err(StoreError::GroupMoved(name.to_owned()));
    }
    Ok(transaction)
}

fn void_generation(generation: &watch::Sender<u64>, voided: u64, why: &str) {
    let moved = generation.send_if_modified(|current| {
        if *current == voided {
            *current += 1;
            true
        } else {
            false
        }
    });
    if moved {
        tracing::warn!(
            generation = voided,
            why,
            "consumer groups: lock session lost; every group it held is released"
        );
    }
}

impl Drop for PgGroupLeases {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.session.try_lock() {
            slot.take();
        }
    }
}

#[async_trait]
impl GroupLeases for PgGroupLeases {
    fn advertise_url(&self) -> &str {
        &self.advertise_url
    }

    fn session(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    async fn changed(&self) {
        self.wake.notified().await;
    }

    async fn check(&self) -> Result<(), StoreError> {
        let (client, generation) = self.client().await?;
        match tokio::time::timeout(CHECK_TIMEOUT, client.simple_query("SELECT 1")).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => {
                self.drop_session(generation, "the liveness check failed")
                    .await;
                Err(pg_error(error))
            }
            Err(_) => {
                self.drop_session(generation, "the liveness check timed out")
                    .await;
                Err(StoreError::Unavailable(
                    "the lock session did not answer in time".into(),
                ))
            }
        }
    }

    async fn try_acquire(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        let (client, generation) = self.client().await?;
        let key = group_lock_key(name);
        let already = {
            let slot = self.session.lock().await;
            slot.as_ref()
                .is_some_and(|s| s.generation == generation && s.held.contains_key(name))
        };
        let outcome = async {
            if !already {
                let row = client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .await
                    .map_err(pg_error)?;
                let locked: bool = row.try_get(0).map_err(pg_error)?;
                if !locked {
                    return Ok(None);
                }
                let mut slot = self.session.lock().await;
                match slot.as_mut() {
                    Some(session) if session.generation == generation => {
                        session.held.insert(name.to_owned(), key);
                    }
                    // The session was replaced meanwhile: this lock died with it.
                    _ => return Ok(None),
                }
            }
            let row = client
                .query_opt(
                    "UPDATE consumer_groups
                     SET owner_epoch = nextval('cairn_group_owner_epochs'), owner_url = $2
                     WHERE name = $1
                     RETURNING owner_epoch, name, settings, checkpoint, created_at, updated_at",
                    &[&name, &self.advertise_url],
                )
                .await
                .map_err(pg_error)?;
            let Some(row) = row else {
                return Ok(Some(None)); // deleted: give the lock back
            };
            let corrupt = |e: tokio_postgres::Error| StoreError::Internal(format!("{e}"));
            let settings: String = row.try_get(2).map_err(corrupt)?;
            Ok(Some(Some(Lease {
                epoch: from_db(row.try_get(0).map_err(corrupt)?),
                session: generation,
                record: GroupRecord {
                    name: row.try_get(1).map_err(corrupt)?,
                    settings: GroupSettings::from_stored(&settings)?,
                    checkpoint: from_db(row.try_get(3).map_err(corrupt)?),
                    created_at: row.try_get(4).map_err(corrupt)?,
                    updated_at: row.try_get(5).map_err(corrupt)?,
                },
            })))
        }
        .await;
        match outcome {
            Ok(Some(Some(lease))) => Ok(Some(lease)),
            Ok(Some(None)) => {
                self.release(name).await;
                Ok(None)
            }
            Ok(None) => Ok(None),
            Err(error) => {
                if client.is_closed() {
                    self.drop_session(generation, "the lock session closed")
                        .await;
                } else {
                    // Whether the lock was taken is unknown: give it back.
                    self.release(name).await;
                }
                Err(error)
            }
        }
    }

    async fn release(&self, name: &str) {
        let (client, key) = {
            let mut slot = self.session.lock().await;
            let Some(session) = slot.as_mut() else {
                return;
            };
            if session.generation != *self.generation.borrow() {
                return;
            }
            let key = session
                .held
                .remove(name)
                .unwrap_or_else(|| group_lock_key(name));
            (Arc::clone(&session.client), key)
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&key, &CHANNEL, &name];
        let unlock = client.query_one("SELECT pg_advisory_unlock($1), pg_notify($2, $3)", &params);
        match tokio::time::timeout(CHECK_TIMEOUT, unlock).await {
            Ok(Ok(_)) => tracing::debug!(group = name, "consumer group lease released"),
            Ok(Err(error)) => {
                tracing::warn!(group = name, %error, "could not release a consumer group's lease")
            }
            Err(_) => tracing::warn!(group = name, "releasing a consumer group's lease timed out"),
        }
    }

    async fn owner(&self, name: &str) -> Result<Option<GroupOwner>, StoreError> {
        self.timed(async {
            let client = checkout(&self.pool, "groups").await?;
            let statement = client
                .prepare_cached(
                    "SELECT owner_url, owner_epoch FROM consumer_groups WHERE name = $1",
                )
                .await
                .map_err(pg_error)?;
            let row = client
                .query_opt(&statement, &[&name])
                .await
                .map_err(pg_error)?;
            row.map(|row| {
                Ok(GroupOwner {
                    url: row.try_get(0).map_err(pg_error)?,
                    epoch: from_db(row.try_get(1).map_err(pg_error)?),
                })
            })
            .transpose()
        })
        .await
    }

    async fn save_settings(
        &self,
        name: &str,
        epoch: u64,
        settings: &GroupSettings,
    ) -> Result<(), StoreError> {
        self.fenced_update(
            "UPDATE consumer_groups SET settings = $2, updated_at = $3
             WHERE name = $1 AND owner_epoch = $4",
            name,
            &settings.to_stored(),
            epoch,
        )
        .await
    }

    async fn save_checkpoint(
        &self,
        name: &str,
        epoch: u64,
        checkpoint: Position,
    ) -> Result<(), StoreError> {
        self.fenced_update(
            "UPDATE consumer_groups SET checkpoint = GREATEST(checkpoint, $2), updated_at = $3
             WHERE name = $1 AND owner_epoch = $4",
            name,
            &to_db(checkpoint),
            epoch,
        )
        .await
    }

    async fn park_events(
        &self,
        name: &str,
        epoch: u64,
        events: Vec<ParkedEvent>,
    ) -> Result<(), StoreError> {
        self.timed(async {
            let mut client = checkout(&self.pool, "groups").await?;
            let transaction = fence(&mut client, name, epoch).await?;
            let outcome = sql::park_events(&transaction, name, events).await?;
            transaction.commit().await.map_err(pg_error)?;
            Ok(outcome)
        })
        .await
    }

    async fn replay_parked(
        &self,
        name: &str,
        epoch: u64,
        positions: Option<Vec<Position>>,
    ) -> Result<Vec<Position>, StoreError> {
        self.timed(async {
            let mut client = checkout(&self.pool, "groups").await?;
            let transaction = fence(&mut client, name, epoch).await?;
            let outcome = sql::replay_parked(&transaction, name, positions).await?;
            transaction.commit().await.map_err(pg_error)?;
            Ok(outcome)
        })
        .await
    }

    async fn remove_parked(
        &self,
        name: &str,
        epoch: u64,
        positions: Vec<Position>,
    ) -> Result<(), StoreError> {
        self.timed(async {
            let mut client = checkout(&self.pool, "groups").await?;
            let transaction = fence(&mut client, name, epoch).await?;
            let outcome = sql::remove_parked(&transaction, name, positions).await?;
            transaction.commit().await.map_err(pg_error)?;
            Ok(outcome)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::group_lock_key;

    #[test]
    fn lock_keys_are_stable_and_differ_by_name() {
        assert_eq!(group_lock_key("orders"), group_lock_key("orders"));
        assert_ne!(group_lock_key("orders"), group_lock_key("orders2"));
        assert_ne!(group_lock_key("a"), group_lock_key("b"));
    }
}
