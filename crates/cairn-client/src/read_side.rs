//! The read side (CQRS): projections' status, restart and rebuild, and named queries
//! with read-your-writes (`min_position`).

use std::time::Duration;

use cairn_api::{
    ProjectionList, ProjectionStatus, QueryList, QueryPlan, QueryResponse, QueryStatus,
};
use reqwest::{Method, Url};

use crate::client::decode;
use crate::{Client, ClientError};

/// Time allowed for a query beyond its wait, on top of the client's own timeout.
const QUERY_SLACK: Duration = Duration::from_secs(5);

impl Client {
    /// Every projection with its state, position, lag, rate and last error.
    pub async fn projections(&self) -> Result<ProjectionList, ClientError> {
        self.read_side_get(self.url(&["v1", "projections"])).await
    }

    /// One projection's status.
    pub async fn projection(&self, name: &str) -> Result<ProjectionStatus, ClientError> {
        self.read_side_get(self.url(&["v1", "projections", name]))
            .await
    }

    /// Resumes a projection from its checkpoint (after a failure: retries the failing
    /// event). Retried like a read: restarting twice is restarting once.
    pub async fn restart_projection(&self, name: &str) -> Result<ProjectionStatus, ClientError> {
        let url = self.url(&["v1", "projections", name, "restart"]);
        let answer = self.execute(Method::POST, url, None, None, true).await?;
        decode(&answer.body)
    }

    /// Rebuilds a projection's read model from the whole log. Sent once, never retried
    /// (a retry would start the replay over).
    pub async fn rebuild_projection(&self, name: &str) -> Result<ProjectionStatus, ClientError> {
        let url = self.url(&["v1", "projections", name, "rebuild"]);
        let answer = self.execute(Method::POST, url, None, None, false).await?;
        decode(&answer.body)
    }

    /// Runs the named query with `params` (`name=value` pairs, typed and checked by the
    /// server). With `min_position`, the rows reflect at least that log position (for
    /// example an append's `last_position`): the server waits up to `wait` for its
    /// projections to get there, else the answer is `consistency_timeout` (504). The
    /// request's timeout is stretched to cover the wait.
    pub async fn query<K, V>(
        &self,
        name: &str,
        params: impl IntoIterator<Item = (K, V)>,
        min_position: Option<u64>,
        wait: Duration,
    ) -> Result<QueryResponse, ClientError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut url = self.url(&["v1", "queries", name]);
        {
            let mut query = url.query_pairs_mut();
            for (key, value) in params {
                query.append_pair(key.as_ref(), value.as_ref());
            }
            if let Some(min_position) = min_position {
                query.append_pair("min_position", &min_position.to_string());
                if !wait.is_zero() {
                    let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    query.append_pair("wait_ms", &millis.to_string());
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let timeout = self
            .request_timeout()
            .map(|timeout| timeout + wait + QUERY_SLACK);
        let (outcome, _) = self
            .execute_counting(Method::GET, url, None, None, true, timeout)
            .await;
        decode(&outcome?.body)
    }

    /// Every named query with its plan warnings and counters.
    pub async fn queries(&self) -> Result<QueryList, ClientError> {
        self.read_side_get(self.url(&["v1", "queries"])).await
    }

    /// A named query's plan warnings and counters.
    pub async fn query_status(&self, name: &str) -> Result<QueryStatus, ClientError> {
        self.read_side_get(self.url(&["v1", "queries", name, "status"]))
            .await
    }

    /// The plan SQLite would use for the named query with `params` (a required one
    /// left out takes a representative value), with its warnings. With `analyze` the
    /// query is also run (every required parameter must be given) and its duration and
    /// row count come back in `analysis`. Needs the `admin` scope.
    pub async fn query_plan<K, V>(
        &self,
        name: &str,
        params: impl IntoIterator<Item = (K, V)>,
        analyze: bool,
    ) -> Result<QueryPlan, ClientError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut url = self.url(&["v1", "queries", name, "plan"]);
        {
            let mut query = url.query_pairs_mut();
            for (key, value) in params {
                query.append_pair(key.as_ref(), value.as_ref());
            }
            if analyze {
                query.append_pair("analyze", "true");
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.read_side_get(url).await
    }

    async fn read_side_get<T: serde::de::DeserializeOwned>(
        &self,
        url: Url,
    ) -> Result<T, ClientError> {
        let answer = self.execute(Method::GET, url, None, None, true).await?;
        decode(&answer.body)
    }
}
