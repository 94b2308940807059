//! The load loops' HTTP client: each client owns one keep-alive HTTP/1.1 connection,
//! as `wrk` and `pgbench` clients do. Nothing is shared between clients (no pool to
//! take a connection from and give it back to, no lock) and the base URL is split
//! once, not for every request, so the load generator takes as little as it can of the
//! CPU it shares with the server on one machine. `https://` targets go through reqwest, which has the
//! certificate handling.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the load goes: a base URL split once into what each request needs.
#[derive(Clone)]
pub(super) enum Target {
    /// `http://host:port[/prefix]`: requests go over connections of the client's own.
    Plain {
        /// `host:port`, for connecting and for the `Host` header.
        authority: String,
        host: HeaderValue,
        /// The base URL's path without its trailing slash (usually empty).
        prefix: String,
        /// `Bearer <token>` (`--token`), sent with every request.
        authorization: Option<HeaderValue>,
    },
    /// Anything else (`https://`): reqwest's pooled client.
    Pooled {
        http: reqwest::Client,
        base_url: String,
    },
}

impl Target {
    /// `http` is used for what is not plain HTTP (and sends `authorization` itself).
    pub(super) fn new(
        base_url: &str,
        http: &reqwest::Client,
        authorization: Option<HeaderValue>,
    ) -> anyhow::Result<Self> {
        let uri: Uri = base_url
            .parse()
            .map_err(|error| anyhow::anyhow!("{base_url} is not a URL: {error}"))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(authority)) => {
                let port = authority.port_u16().unwrap_or(80);
                let authority = format!("{}:{port}", authority.host());
                let host = HeaderValue::from_str(&authority)
                    .map_err(|error| anyhow::anyhow!("{base_url}: bad host: {error}"))?;
                Ok(Self::Plain {
                    authority,
                    host,
                    prefix: uri.path().trim_end_matches('/').to_owned(),
                    authorization,
                })
            }
            _ => Ok(Self::Pooled {
                http: http.clone(),
                base_url: base_url.trim_end_matches('/').to_owned(),
            }),
        }
    }

    /// A client's connection; it connects on its first request.
    pub(super) fn client(&self) -> Client {
        Client {
            target: self.clone(),
            connection: None,
        }
    }
}

/// One load client's way to the server.
pub(super) struct Client {
    target: Target,
    /// The open connection, if any: dropped when a request on it fails, reopened by the
    /// next request.
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// Sends a request (`body`: a JSON POST, else a GET) for `path` (with its query)
    /// and reads the whole answer. `Err` says what went wrong.
    pub(super) async fn send(
        &mut self,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(path, body)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.connection = None;
                Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
            }
        }
    }

    async fn exchange(
        &mut self,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), String> {
        let (authority, host, prefix, authorization) = match &self.target {
            Target::Plain {
                authority,
                host,
                prefix,
                authorization,
            } => (authority, host, prefix, authorization),
            Target::Pooled { http, base_url } => {
                return pooled(http, &format!("{base_url}{path}"), body).await;
            }
        };
        // A kept connection the server has closed since (`Connection: close`, an idle
        // timeout) is replaced before anything is sent on it.
        let kept = match self.connection.take() {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match kept {
            Some(sender) => sender,
            None => connect(authority).await?,
        };
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{prefix}{path}"))
            .header(header::HOST, host.clone());
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|error| format!("cannot build the request for {path}: {error}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| format!("cannot read the answer: {error}"))?
            .to_bytes();
        // Only a connection whose exchange went through whole is kept.
        self.connection = Some(sender);
        Ok((status, body))
    }
}

async fn connect(authority: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|error| format!("cannot connect to {authority}: {error}"))?;
    stream
        .set_nodelay(true)
        .map_err(|error| format!("cannot set TCP_NODELAY: {error}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("cannot open an HTTP connection to {authority}: {error}"))?;
    // The connection task ends when the sender is dropped or the server closes it.
    tokio::spawn(connection);
    let mut sender = sender;
    sender
        .ready()
        .await
        .map_err(|error| format!("the connection to {authority} closed at once: {error}"))?;
    Ok(sender)
}

async fn pooled(
    http: &reqwest::Client,
    url: &str,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), String> {
    let request = match body {
        Some(body) => http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body),
        None => http.get(url),
    };
    let response = request.send().await.map_err(|error| error.to_string())?;
    let status = StatusCode::from_u16(response.status().as_u16())
        .map_err(|error| format!("bad status: {error}"))?;
    let body = response.bytes().await.map_err(|error| error.to_string())?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_are_split_once_and_others_go_pooled() {
        let http = reqwest::Client::new();
        let bearer = HeaderValue::from_static("Bearer cairn_x");
        let Ok(Target::Plain {
            authority,
            host,
            prefix,
            authorization,
        }) = Target::new("http://localhost:7171/base/", &http, Some(bearer.clone()))
        else {
            panic!("http:// goes over connections of its own");
        };
        assert_eq!(authority, "localhost:7171");
        assert_eq!(host, "localhost:7171");
        assert_eq!(prefix, "/base");
        assert_eq!(authorization, Some(bearer));
        let Ok(Target::Plain { authority, .. }) = Target::new("http://127.0.0.1", &http, None)
        else {
            panic!("http:// goes over connections of its own");
        };
        assert_eq!(authority, "127.0.0.1:80");
        assert!(matches!(
            Target::new("https://cairn.example:443", &http, None),
            Ok(Target::Pooled { .. })
        ));
        assert!(Target::new("not a url", &http, None).is_err());
    }
}
