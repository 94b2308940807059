//! Named queries on PostgreSQL: read-only transactions, on a replica that has
//! replayed far enough for the query, else on the primary.

use std::time::{Duration, Instant};

use cairn_core::Position;
use deadpool_postgres::{Pool, Transaction};
use tokio_postgres::IsolationLevel;

use super::values::{TextParam, as_params, param_text, row_to_json};
use super::{PgReadModels, describe, is_statement_error, to_position};
use crate::config::ParamValue;
use crate::error::ReadSideError;
use crate::query::Row;

/// What running a query gave: its rows, how long it ran, its plan when it was slow.
pub(crate) type Answer = (Vec<Row>, Duration, Option<String>);

impl PgReadModels {
    /// Runs a query whose rows must reflect, for each projection it reads, at least the
    /// stored checkpoint given in `needed`. A replica answers in a `REPEATABLE READ`
    /// snapshot whose checkpoints it reads first: only when they have all reached
    /// `needed` (else the next replica is asked, then the primary). Replicas the
    /// event store has seen replay less than the highest of them are not asked.
    pub(crate) async fn query(
        &self,
        sql: &str,
        values: &[ParamValue],
        needed: &[(String, Position)],
        health: &[cairn_store::ReplicaHealth],
        slow: Duration,
    ) -> Result<Answer, ReadSideError> {
        let params: Vec<TextParam> = values.iter().map(param_text).collect();
        let highest = needed.iter().map(|(_, p)| *p).max().unwrap_or(0);
        for index in self.replica_order(highest, health) {
            let replica = &self.replicas[index];
            match run_on(&replica.pool, sql, &params, Some(needed), slow).await {
                Ok(Some(answer)) => {
                    self.count_replica_read(index);
                    return Ok(answer);
                }
                Ok(None) => {
                    tracing::debug!(replica = %replica.label, "replica behind the read models; next");
                }
                Err(RunError::Statement(message)) => return Err(ReadSideError::Storage(message)),
                Err(RunError::Unavailable(message)) => {
                    tracing::debug!(replica = %replica.label, error = %message, "replica cannot answer a query; next");
                }
            }
        }
        match run_on(&self.primary, sql, &params, None, slow).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(ReadSideError::Storage(
                "the primary is behind its own read models".into(),
            )),
            Err(RunError::Statement(message) | RunError::Unavailable(message)) => {
                Err(ReadSideError::Storage(message))
            }
        }
    }
}

enum RunError {
    /// The statement itself failed: the same everywhere.
    Statement(String),
    /// The server could not answer (connection, recovery conflict, …).
    Unavailable(String),
}

impl From<tokio_postgres::Error> for RunError {
    fn from(error: tokio_postgres::Error) -> Self {
        if is_statement_error(&error) {
            RunError::Statement(describe(&error))
        } else {
            RunError::Unavailable(describe(&error))
        }
    }
}

/// Runs the query in a read-only transaction; with `needed`, first checks in the
/// same snapshot that the checkpoints have reached it (`None` when not).
async fn run_on(
    pool: &Pool,
    sql: &str,
    params: &[TextParam],
    needed: Option<&[(String, Position)]>,
    slow: Duration,
) -> Result<Option<Answer>, RunError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| RunError::Unavailable(e.to_string()))?;
    let isolation = if needed.is_some() {
        IsolationLevel::RepeatableRead
    } else {
        IsolationLevel::ReadCommitted
    };
    let transaction = client
        .build_transaction()
        .read_only(true)
        .isolation_level(isolation)
        .start()
        .await?;
    if let Some(needed) = needed
        && !reached(&transaction, needed).await?
    {
        return Ok(None);
    }
    let statement = transaction.prepare_cached(sql).await?;
    let started = Instant::now();
    let rows = transaction.query(&statement, &as_params(params)).await?;
    let ran_for = started.elapsed();
    let rows = rows
        .iter()
        .map(row_to_json)
        .collect::<Result<Vec<Row>, String>>()
        .map_err(RunError::Statement)?;
    let plan = if ran_for >= slow {
        Some(super::plans::one_line_plan(&*transaction, sql, params).await)
    } else {
        None
    };
    transaction.commit().await?;
    Ok(Some((rows, ran_for, plan)))
}

/// Whether this snapshot's checkpoints have reached `needed`.
async fn reached(
    transaction: &Transaction<'_>,
    needed: &[(String, Position)],
) -> Result<bool, RunError> {
    if needed.is_empty() {
        return Ok(true);
    }
    let names: Vec<&str> = needed.iter().map(|(name, _)| name.as_str()).collect();
    let rows = transaction
        .query(
            "SELECT name, position FROM cairn_projections WHERE name = ANY($1)",
            &[&names],
        )
        .await?;
    Ok(needed.iter().all(|(name, position)| {
        rows.iter().any(|row| {
            row.get::<_, &str>(0) == name && to_position(row.get::<_, i64>(1)) >= *position
        }) || *position == 0
    }))
}
