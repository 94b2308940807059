//! The decider pattern over one stream: load the state by folding the stream's events,
//! decide what new events a command produces, append them with the expected version the
//! state was built from, and on a conflict catch up and decide again.

use std::time::Duration;

use cairn_api::{AppendResponse, ErrorCode, Event, EventInput, ExpectedVersion};

use crate::{Client, ClientError, Direction, ReadStreamOptions};

/// How a decision is retried.
#[derive(Debug, Clone)]
pub struct DecideOptions {
    /// The most times the decision is made (and appended); at least 1. Default 5.
    pub max_attempts: u32,
    /// Events read per page while folding. Default 1000.
    pub page_size: usize,
}

impl Default for DecideOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            page_size: 1000,
        }
    }
}

/// The outcome of a decision.
#[derive(Debug)]
pub struct Decided<S> {
    /// The state the decision was made on (before the new events).
    pub state: S,
    /// The stream's version that state reflects; `None` when the stream had no events.
    pub version: Option<u64>,
    /// Where the new events landed; `None` when the decision produced no events.
    pub appended: Option<AppendResponse>,
    /// How many times the decision was made.
    pub attempts: u32,
}

/// Why a decision failed.
#[derive(Debug, thiserror::Error)]
pub enum DecideError<E> {
    /// `evolve` or `decide` refused.
    #[error("{0}")]
    Domain(E),
    /// Every attempt met a concurrent writer.
    #[error("gave up after {attempts} attempts, each losing to a concurrent writer: {last}")]
    TooManyConflicts { attempts: u32, last: ClientError },
    #[error(transparent)]
    Client(ClientError),
}

impl Client {
    /// Runs a decision on `stream` with the default [`DecideOptions`]: folds the stream
    /// with `evolve` from `initial`, asks `decide` for new events and appends them
    /// expecting the version the state was built from; on `wrong_expected_version`
    /// reads the events it missed and decides again.
    ///
    /// ```no_run
    /// # async fn example(client: cairn_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use cairn_client::{event, EventExt};
    /// // A counter that refuses to go above 10.
    /// let decided = client
    ///     .decide(
    ///         "counter-1",
    ///         0u64,
    ///         |count: &mut u64, e| {
    ///             *count += e.data_as::<u64>()?;
    ///             Ok::<_, cairn_client::ClientError>(())
    ///         },
    ///         |count| {
    ///             if *count >= 10 {
    ///                 return Ok(vec![]);
    ///             }
    ///             Ok(vec![event("Incremented", serde_json::json!(1))])
    ///         },
    ///     )
    ///     .await?;
    /// println!("count was {}", decided.state);
    /// # Ok(()) }
    /// ```
    pub async fn decide<S, E, F, D>(
        &self,
        stream: &str,
        initial: S,
        evolve: F,
        decide: D,
    ) -> Result<Decided<S>, DecideError<E>>
    where
        F: FnMut(&mut S, &Event) -> Result<(), E>,
        D: FnMut(&S) -> Result<Vec<EventInput>, E>,
    {
        self.decide_with(stream, &DecideOptions::default(), initial, evolve, decide)
            .await
    }

    /// [`Client::decide`] with explicit options.
    pub async fn decide_with<S, E, F, D>(
        &self,
        stream: &str,
        options: &DecideOptions,
        initial: S,
        mut evolve: F,
        mut decide: D,
    ) -> Result<Decided<S>, DecideError<E>>
    where
        F: FnMut(&mut S, &Event) -> Result<(), E>,
        D: FnMut(&S) -> Result<Vec<EventInput>, E>,
    {
        let max_attempts = options.max_attempts.max(1);
        let mut state = initial;
        // The last version folded into `state`.
        let mut version: Option<u64> = None;
        let mut attempts = 0;
        loop {
            attempts += 1;
            version = self
                .fold(stream, options.page_size, &mut state, version, &mut evolve)
                .await?;
            let events = decide(&state).map_err(DecideError::Domain)?;
            if events.is_empty() {
                return Ok(Decided {
                    state,
                    version,
                    appended: None,
                    attempts,
                });
            }
            let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
            match self.append(stream, expected, events).await {
                Ok(appended) => {
                    return Ok(Decided {
                        state,
                        version,
                        appended: Some(appended),
                        attempts,
                    });
                }
                Err(error) if error.code() == Some(ErrorCode::WrongExpectedVersion) => {
                    if attempts >= max_attempts {
                        return Err(DecideError::TooManyConflicts {
                            attempts,
                            last: error,
                        });
                    }
                    // Spread competing deciders apart a little before they catch up.
                    let jitter = uuid::Uuid::new_v4().as_u128() % 10;
                    let millis = u64::from(attempts) * 5 + u64::try_from(jitter).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                }
                Err(error) => return Err(DecideError::Client(error)),
            }
        }
    }

    /// Folds the events after `version` into `state`; returns the last version folded.
    async fn fold<S, E, F>(
        &self,
        stream: &str,
        page_size: usize,
        state: &mut S,
        mut version: Option<u64>,
        evolve: &mut F,
    ) -> Result<Option<u64>, DecideError<E>>
    where
        F: FnMut(&mut S, &Event) -> Result<(), E>,
    {
        let mut from = version.map_or(0, |v| v + 1);
        loop {
            let options = ReadStreamOptions {
                from: Some(from),
                limit: Some(page_size.max(1)),
                direction: Direction::Forward,
            };
            let page = match self.read_stream(stream, &options).await {
                Ok(page) => page,
                Err(error) if error.code() == Some(ErrorCode::StreamNotFound) => {
                    return Ok(version);
                }
                Err(error) => return Err(DecideError::Client(error)),
            };
            for event in &page.events {
                evolve(state, event).map_err(DecideError::Domain)?;
                version = Some(event.version);
            }
            match page.next {
                Some(next) if !page.events.is_empty() => from = next,
                _ => return Ok(version),
            }
        }
    }
}
