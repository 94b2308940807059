//! The load loops' HTTP client: each client owns one keep-alive HTTP/1.1 connection,
//! as `wrk` and `pgbench` clients do. Nothing is shared between clients (no pool to
//! take a connection from and give it back to, no lock) and the base URL is split
//! once, not for every request, so the load generator takes as little as it can of the
//! CPU it shares with the server on one machine.
//!
//! The exchange is written by hand, as `wrk` writes it: a request is formatted into a
//! buffer the connection keeps and written at once, and the answer is read straight
//! from the socket and parsed in place (`httparse`). There is no connection task to
//! hand the request to and take the answer back from, which a general client needs and
//! which cost the load generator a task switch per request on each side. `https://`
//! targets go through reqwest, which has the certificate handling.

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most headers an answer may have.
const MAX_HEADERS: usize = 64;
/// The longest an answer's head (status line and headers) may be.
const MAX_HEAD_BYTES: usize = 64 * 1024;

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
    /// The open connection, if any: dropped when a request on it fails or the server
    /// ends it, reopened by the next request.
    connection: Option<Connection>,
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
        let kept = self
            .connection
            .take()
            .filter(|connection| !connection.ended_by_peer());
        let mut connection = match kept {
            Some(connection) => connection,
            None => Connection::open(authority).await?,
        };
        let head = RequestHead {
            path: (prefix, path),
            host,
            authorization: authorization.as_ref(),
        };
        let answer = connection.exchange(&head, body.as_deref()).await?;
        // Only a connection whose exchange went through whole is kept, unless the
        // server said it closes it.
        if answer.keep_alive {
            self.connection = Some(connection);
        }
        Ok((answer.status, answer.body))
    }
}

/// What every request of a client carries besides its body.
struct RequestHead<'a> {
    /// The base URL's path, then the request's own.
    path: (&'a str, &'a str),
    host: &'a HeaderValue,
    authorization: Option<&'a HeaderValue>,
}

/// An answer read whole.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Bytes,
    /// The server keeps the connection open for the next request.
    keep_alive: bool,
}

/// How an answer's body is delimited.
#[derive(Debug, PartialEq)]
enum Framing {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

/// One keep-alive HTTP/1.1 connection, with the buffers it reuses for every request.
struct Connection {
    stream: TcpStream,
    /// The request being written.
    out: Vec<u8>,
    /// What was read and not yet parsed.
    read: Vec<u8>,
}

impl Connection {
    async fn open(authority: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|error| format!("cannot connect to {authority}: {error}"))?;
        stream
            .set_nodelay(true)
            .map_err(|error| format!("cannot set TCP_NODELAY: {error}"))?;
        Ok(Self {
            stream,
            out: Vec::with_capacity(1024),
            read: Vec::with_capacity(8 * 1024),
        })
    }

    /// Whether the server closed the connection (or sent something unasked) since the
    /// last answer. Asks the socket without waiting.
    fn ended_by_peer(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.try_read(&mut probe) {
            Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
            Ok(_) => true,
        }
    }

    /// Writes the request in one piece and reads its answer.
    async fn exchange(
        &mut self,
        head: &RequestHead<'_>,
        body: Option<&[u8]>,
    ) -> Result<Answer, String> {
        write_request(&mut self.out, head, body);
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|error| format!("request failed: {error}"))?;
        self.read_answer().await
    }

    /// Reads one answer: its head, then its body as the head frames it.
    async fn read_answer(&mut self) -> Result<Answer, String> {
        let (status, framing, mut keep_alive, head_len) = loop {
            if let Some(head) = parse_head(&self.read)? {
                break head;
            }
            if self.read.len() > MAX_HEAD_BYTES {
                return Err(format!("an answer's head is over {MAX_HEAD_BYTES} bytes"));
            }
            if !self.fill().await? {
                return Err("the server closed the connection before answering".into());
            }
        };
        let body = match framing {
            Framing::Length(length) => {
                while self.read.len() < head_len + length {
                    if !self.fill().await? {
                        return Err("the server closed the connection mid-answer".into());
                    }
                }
                let body = Bytes::copy_from_slice(&self.read[head_len..head_len + length]);
                self.read.drain(..head_len + length);
                body
            }
            Framing::Chunked => {
                let mut body = Vec::new();
                let mut at = head_len;
                loop {
                    match dechunk(&self.read[at..], &mut body)? {
                        Dechunked::Done(used) => {
                            self.read.drain(..at + used);
                            break;
                        }
                        Dechunked::More(used) => {
                            at += used;
                            if !self.fill().await? {
                                return Err("the server closed the connection mid-answer".into());
                            }
                        }
                    }
                }
                Bytes::from(body)
            }
            Framing::Close => {
                while self.fill().await? {}
                keep_alive = false;
                let body = Bytes::copy_from_slice(&self.read[head_len..]);
                self.read.clear();
                body
            }
        };
        Ok(Answer {
            status,
            body,
            keep_alive,
        })
    }

    /// Reads what the socket has into `read`; `false` when the server closed it.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.read.capacity() - self.read.len() < 4096 {
            self.read.reserve(8 * 1024);
        }
        let read = self
            .stream
            .read_buf(&mut self.read)
            .await
            .map_err(|error| format!("cannot read the answer: {error}"))?;
        Ok(read > 0)
    }
}

/// Formats a request into `out`: a POST of a JSON body, or a GET without one.
fn write_request(out: &mut Vec<u8>, head: &RequestHead<'_>, body: Option<&[u8]>) {
    out.clear();
    out.extend_from_slice(if body.is_some() { b"POST " } else { b"GET " });
    out.extend_from_slice(head.path.0.as_bytes());
    out.extend_from_slice(head.path.1.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(head.host.as_bytes());
    if let Some(authorization) = head.authorization {
        out.extend_from_slice(b"\r\nauthorization: ");
        out.extend_from_slice(authorization.as_bytes());
    }
    if let Some(body) = body {
        out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        // Formatted straight into the kept buffer (writing to a `Vec` cannot fail).
        let _ = write!(out, "{}\r\n\r\n", body.len());
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// The answer's status, framing, whether the connection stays open, and the head's
/// length, once the whole head is in `read`; `None` while it is not.
fn parse_head(read: &[u8]) -> Result<Option<(StatusCode, Framing, bool, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(read) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("unreadable answer: {error}")),
    };
    let code = response.code.unwrap_or_default();
    let status =
        StatusCode::from_u16(code).map_err(|error| format!("bad status {code}: {error}"))?;
    // HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 closes it.
    let mut keep_alive = response.version == Some(1);
    let mut framing = Framing::Close;
    for header in response.headers.iter() {
        let value = header.value;
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|value| value.trim().parse().ok())
                .ok_or_else(|| {
                    format!(
                        "bad content-length: {}",
                        String::from_utf8_lossy(&value[..value.len().min(40)])
                    )
                })?;
            if framing != Framing::Chunked {
                framing = Framing::Length(length);
            }
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            if value
                .rsplit(|&byte| byte == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
            {
                framing = Framing::Chunked;
            }
        } else if header.name.eq_ignore_ascii_case("connection") {
            for option in value.split(|&byte| byte == b',') {
                let option = option.trim_ascii();
                if option.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    // These never have a body, whatever the headers say.
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        framing = Framing::Length(0);
    }
    Ok(Some((status, framing, keep_alive, head_len)))
}

/// How far decoding a chunked body got.
#[derive(Debug, PartialEq)]
enum Dechunked {
    /// The last chunk and the trailer were read: this many bytes were used.
    Done(usize),
    /// The chunks that were whole were appended; this many bytes were used, and more
    /// must be read.
    More(usize),
}

/// Appends the whole chunks at the start of `read` to `body`.
fn dechunk(read: &[u8], body: &mut Vec<u8>) -> Result<Dechunked, String> {
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&read[at..]) else {
            return Ok(Dechunked::More(at));
        };
        let line = &read[at..at + line_end];
        // A chunk's size, in hex, may be followed by extensions after ';'.
        let digits = line
            .split(|&byte| byte == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let size = std::str::from_utf8(digits)
            .ok()
            .and_then(|digits| usize::from_str_radix(digits, 16).ok())
            .ok_or_else(|| {
                format!(
                    "bad chunk size: {}",
                    String::from_utf8_lossy(&line[..line.len().min(40)])
                )
            })?;
        let data = at + line_end + 2;
        if size == 0 {
            // The trailer: header lines, then an empty line.
            let mut trailer = data;
            loop {
                match find_crlf(&read[trailer..]) {
                    None => return Ok(Dechunked::More(at)),
                    Some(0) => return Ok(Dechunked::Done(trailer + 2)),
                    Some(length) => trailer += length + 2,
                }
            }
        }
        let end = data
            .checked_add(size)
            .and_then(|end| end.checked_add(2))
            .ok_or("a chunk too large")?;
        if read.len() < end {
            return Ok(Dechunked::More(at));
        }
        if &read[end - 2..end] != b"\r\n" {
            return Err("a chunk does not end where its size says".into());
        }
        body.extend_from_slice(&read[data..end - 2]);
        at = end;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|pair| pair == b"\r\n")
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

    #[test]
    fn requests_are_written_whole() {
        let host = HeaderValue::from_static("127.0.0.1:7171");
        let bearer = HeaderValue::from_static("Bearer cairn_x");
        let mut out = Vec::new();
        let head = RequestHead {
            path: ("/base", "/v1/streams/s-1/events"),
            host: &host,
            authorization: Some(&bearer),
        };
        write_request(&mut out, &head, Some(b"{\"a\":1}"));
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /base/v1/streams/s-1/events HTTP/1.1\r\nhost: 127.0.0.1:7171\r\n\
             authorization: Bearer cairn_x\r\ncontent-type: application/json\r\n\
             content-length: 7\r\n\r\n{\"a\":1}"
        );
        let head = RequestHead {
            path: ("", "/v1/events?limit=10"),
            host: &host,
            authorization: None,
        };
        write_request(&mut out, &head, None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /v1/events?limit=10 HTTP/1.1\r\nhost: 127.0.0.1:7171\r\n\r\n"
        );
    }

    #[test]
    fn heads_give_status_framing_and_whether_the_connection_stays() {
        let head = b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\n{\"ok\":true}";
        assert_eq!(parse_head(&head[..20]).unwrap().map(|h| h.0), None);
        let (status, framing, keep, length) = parse_head(head).unwrap().unwrap();
        assert_eq!(
            (status, framing, keep, length),
            (StatusCode::CREATED, Framing::Length(11), true, 44)
        );
        let (_, framing, keep, _) = parse_head(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((framing, keep), (Framing::Chunked, false));
        let (_, framing, keep, _) = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((framing, keep), (Framing::Close, false));
        let (status, framing, _, _) =
            parse_head(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            (status, framing),
            (StatusCode::NO_CONTENT, Framing::Length(0))
        );
        for bad in [
            &b"HTTP/1.1 20x OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: many\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn chunked_bodies_are_decoded_as_they_arrive() {
        let whole = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        // Fed a byte more at a time, it waits for whole chunks and never reads past
        // the body's end.
        let mut at = 0;
        let mut body = Vec::new();
        for end in 0..=whole.len() {
            match dechunk(&whole[at..end], &mut body).unwrap() {
                Dechunked::More(used) => at += used,
                Dechunked::Done(used) => {
                    assert_eq!(at + used, whole.len() - 4, "stopped before NEXT");
                    assert_eq!(body, b"hello, world");
                    return;
                }
            }
        }
        panic!("never finished: {}", String::from_utf8_lossy(&body));
    }

    #[test]
    fn bad_chunks_are_errors() {
        let mut body = Vec::new();
        assert!(dechunk(b"zz\r\nhello\r\n", &mut body).is_err());
        assert!(dechunk(b"3\r\nhello\r\n", &mut body).is_err());
        assert!(dechunk(b"ffffffffffffffff\r\n", &mut body).is_err());
    }

    /// A server that accepts one connection per script and, on each, reads a request
    /// and writes the next answer, then closes the connection. Gives back its address
    /// and, at the end, the requests it read.
    async fn scripted(
        scripts: Vec<Vec<Vec<u8>>>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for script in scripts {
                let (mut socket, _) = listener.accept().await.unwrap();
                for answer in script {
                    let mut request = Vec::new();
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut buffer = [0u8; 1024];
                        let read = socket.read(&mut buffer).await.unwrap();
                        assert!(read > 0, "the client closed before its request");
                        request.extend_from_slice(&buffer[..read]);
                    }
                    seen.push(String::from_utf8(request).unwrap());
                    socket.write_all(&answer).await.unwrap();
                }
            }
            seen
        });
        (address, server)
    }

    fn client_of(address: std::net::SocketAddr) -> Client {
        let http = reqwest::Client::new();
        Target::new(&format!("http://{address}"), &http, None)
            .unwrap()
            .client()
    }

    /// Every framing is read whole on one kept connection; a `Connection: close`
    /// answer and one delimited by the close are not kept, and the next request
    /// connects again.
    #[tokio::test]
    async fn a_client_reads_every_framing_and_reconnects_after_a_close() {
        let (address, server) = scripted(vec![
            vec![
                b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n"
                    .to_vec(),
                b"HTTP/1.1 409 Conflict\r\nconnection: close\r\ncontent-length: 4\r\n\r\nnope"
                    .to_vec(),
            ],
            vec![b"HTTP/1.0 200 OK\r\n\r\nuntil the end".to_vec()],
            vec![b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()],
        ])
        .await;
        let mut client = client_of(address);
        let (status, body) = client
            .send("/a", Some(Bytes::from_static(b"{}")))
            .await
            .unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CREATED, &b"{}"[..]));
        assert!(
            client.connection.is_some(),
            "a whole answer keeps its connection"
        );
        let (status, body) = client.send("/b", None).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"[1,2]"[..]));
        let (status, body) = client.send("/c", None).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::CONFLICT, &b"nope"[..]));
        assert!(
            client.connection.is_none(),
            "a closed connection is not kept"
        );
        let (status, body) = client.send("/d", None).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"until the end"[..]));
        assert!(client.connection.is_none());
        let (status, body) = client.send("/e", None).await.unwrap();
        assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 5);
        assert!(seen[0].starts_with("POST /a HTTP/1.1\r\n"), "{}", seen[0]);
        assert!(seen[0].contains("\r\ncontent-length: 2\r\n"), "{}", seen[0]);
        assert!(seen[4].starts_with("GET /e HTTP/1.1\r\n"), "{}", seen[4]);
    }

    /// A kept connection the server closed while idle is replaced before the next
    /// request is written on it.
    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced() {
        let (address, server) = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()],
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n2".to_vec()],
        ])
        .await;
        let mut client = client_of(address);
        client.send("/a", None).await.unwrap();
        assert!(client.connection.is_some());
        // The server closes its end after the first answer.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !client
            .connection
            .as_ref()
            .is_some_and(Connection::ended_by_peer)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the close never showed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (status, body) = client.send("/b", None).await.unwrap();
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"2"[..]));
        assert_eq!(server.await.unwrap().len(), 2);
    }

    /// Answers that end early or never end their head are errors, and the connection
    /// is dropped.
    #[tokio::test]
    async fn cut_and_endless_answers_are_errors() {
        let mut endless = b"HTTP/1.1 200 OK\r\nx-padding: ".to_vec();
        endless.resize(MAX_HEAD_BYTES + 1024, b'x');
        let (address, _server) = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec()],
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab".to_vec()],
            vec![endless],
            vec![Vec::new()],
        ])
        .await;
        let mut client = client_of(address);
        for expected in [
            "closed the connection mid-answer",
            "closed the connection mid-answer",
            "head is over",
            "closed the connection before answering",
        ] {
            let error = client.send("/a", None).await.unwrap_err();
            assert!(error.contains(expected), "{error}: expected {expected}");
            assert!(client.connection.is_none());
        }
    }
}
