//! Consumer groups: competing consumers with at-least-once delivery
//! (`/v1/groups/{group}/…`).
//!
//! Every call here is safe to retry, and is retried like a read after a transport error
//! or a 503/429: settings are put whole, acks and nacks of settled positions are
//! ignored, and a claim whose answer was lost only leaves its events in flight until
//! their ack timeout, after which they are delivered again.

use std::time::Duration;

use bytes::Bytes;
use cairn_api::{
    AckRequest, ClaimRequest, ClaimResponse, ErrorCode, GroupList, GroupRequest, GroupStatus,
    NackRequest, ParkedList, ReplayParkedRequest, ReplayParkedResponse, SettleResponse,
};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::decode;
use crate::{Client, ClientError};

/// Time allowed for a long-poll claim beyond its `wait_ms`, on top of the client's own
/// timeout.
const CLAIM_SLACK: Duration = Duration::from_secs(5);

/// What `PUT /v1/groups/{group}` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPut {
    /// The group as it now stands.
    pub status: GroupStatus,
    /// True when the group was created (201), false when an existing group's settings
    /// were updated (200).
    pub created: bool,
}

impl Client {
    /// Creates a consumer group, or updates an existing one's settings (it keeps its
    /// checkpoint; `from_position` only applies on creation).
    pub async fn put_group(
        &self,
        group: &str,
        request: &GroupRequest,
    ) -> Result<GroupPut, ClientError> {
        let url = self.url(&["v1", "groups", group]);
        let answer = self
            .execute(Method::PUT, url, Some(json_body(request)?), None, true)
            .await?;
        Ok(GroupPut {
            status: decode(&answer.body)?,
            created: answer.status == StatusCode::CREATED,
        })
    }

    /// Every consumer group with its status.
    pub async fn list_groups(&self) -> Result<GroupList, ClientError> {
        self.group_get(self.url(&["v1", "groups"])).await
    }

    /// A group's checkpoint, lag, in-flight, waiting and parked counts and settings.
    pub async fn group_status(&self, group: &str) -> Result<GroupStatus, ClientError> {
        self.group_get(self.url(&["v1", "groups", group])).await
    }

    /// Deletes a group with its checkpoint and parked events.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        let url = self.url(&["v1", "groups", group]);
        let (outcome, attempts) = self
            .execute_counting(Method::DELETE, url, None, None, true, None)
            .await;
        match outcome {
            Ok(_) => Ok(()),
            // A retry answered `not_found`: the earlier attempt, whose answer was lost,
            // did the deletion.
            Err(ClientError::Api { body, .. })
                if attempts > 1 && body.error.code == ErrorCode::NotFound =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Claims up to `request.max` events for `request.consumer`, waiting up to
    /// `request.wait_ms` for some when none are ready (a long poll; the request's
    /// timeout is stretched to cover it). Each must then be acked or nacked.
    pub async fn claim(
        &self,
        group: &str,
        request: &ClaimRequest,
    ) -> Result<ClaimResponse, ClientError> {
        let url = self.url(&["v1", "groups", group, "claim"]);
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let timeout = self
            .request_timeout()
            .map(|timeout| timeout + wait + CLAIM_SLACK);
        let (outcome, _) = self
            .execute_counting(
                Method::POST,
                url,
                Some(json_body(request)?),
                None,
                true,
                timeout,
            )
            .await;
        decode(&outcome?.body)
    }

    /// Acknowledges claimed events: they are done.
    pub async fn ack(&self, group: &str, positions: &[u64]) -> Result<SettleResponse, ClientError> {
        let request = AckRequest {
            positions: positions.to_vec(),
        };
        self.group_post(self.url(&["v1", "groups", group, "ack"]), &request)
            .await
    }

    /// Gives claimed events back: delivered again at once, or after `retry_after`; an
    /// event on its last delivery is parked instead.
    pub async fn nack(
        &self,
        group: &str,
        positions: &[u64],
        retry_after: Option<Duration>,
    ) -> Result<SettleResponse, ClientError> {
        let request = NackRequest {
            positions: positions.to_vec(),
            retry_after_ms: retry_after
                .map(|after| u64::try_from(after.as_millis()).unwrap_or(u64::MAX)),
        };
        self.group_post(self.url(&["v1", "groups", group, "nack"]), &request)
            .await
    }

    /// One page of the group's parked events, after position `after`.
    pub async fn parked(
        &self,
        group: &str,
        after: Option<u64>,
        limit: Option<usize>,
    ) -> Result<ParkedList, ClientError> {
        let mut url = self.url(&["v1", "groups", group, "parked"]);
        if after.is_some() || limit.is_some() {
            let mut query = url.query_pairs_mut();
            if let Some(after) = after {
                query.append_pair("after", &after.to_string());
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        self.group_get(url).await
    }

    /// Brings parked events back into delivery: all of them, or those at `positions`.
    pub async fn replay_parked(
        &self,
        group: &str,
        positions: Option<Vec<u64>>,
    ) -> Result<ReplayParkedResponse, ClientError> {
        let request = ReplayParkedRequest { positions };
        self.group_post(
            self.url(&["v1", "groups", group, "parked", "replay"]),
            &request,
        )
        .await
    }

    async fn group_get<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        let answer = self.execute(Method::GET, url, None, None, true).await?;
        decode(&answer.body)
    }

    async fn group_post<B: Serialize, T: DeserializeOwned>(
        &self,
        url: Url,
        body: &B,
    ) -> Result<T, ClientError> {
        let answer = self
            .execute(Method::POST, url, Some(json_body(body)?), None, true)
            .await?;
        decode(&answer.body)
    }
}

fn json_body<B: Serialize>(body: &B) -> Result<Bytes, ClientError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|error| ClientError::Invalid(format!("request is not JSON: {error}")))
}
