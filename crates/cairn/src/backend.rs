//! Which event store `cairn serve` runs on: the embedded SQLite in `--data-dir` (the
//! default) or PostgreSQL (`--database-url`, `--replica-url`, `--pool-size`), and how
//! connection URLs are shown (never with their password).
//!
//! With PostgreSQL, events, streams and consumer groups (settings, checkpoints, parked
//! events) live in the database and are shared by every instance on it, and so does
//! the read side: projections write into the `cairn_readmodels` schema of the same
//! database (each projection driven by one instance at a time, under an advisory
//! lock) and queries run on replicas that have replayed far enough
//! (`cairn_projection::PostgresReadModels`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_store::SharedStore;
use cairn_store::postgres::{PostgresOptions, PostgresStore};

/// Connections to the primary (and to each replica) at most.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// The longest `cairn serve` waits for PostgreSQL at start (connect, migrations, first
/// read) before it gives up with an error.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(20);

/// The event store on PostgreSQL. `Debug` shows the URLs without their passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseSettings {
    pub url: String,
    pub replica_urls: Vec<String>,
    pub pool_size: usize,
    /// Where the other instances reach this one (`--advertise-url`); `None`: the
    /// address it binds, as `http://<listen address>`.
    pub advertise_url: Option<String>,
    /// The schema of the read models (`--readmodel-schema`).
    pub readmodel_schema: String,
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.redacted_url())
            .field("replica_urls", &self.redacted_replica_urls())
            .field("pool_size", &self.pool_size)
            .field("advertise_url", &self.advertise_url)
            .field("readmodel_schema", &self.readmodel_schema)
            .finish()
    }
}

impl DatabaseSettings {
    /// Checks the winning values (each with the setting it came from, for errors):
    /// no URL means the embedded store, and then replicas are an error.
    pub fn resolve(
        url: Option<(&str, String)>,
        replicas: Option<(&[String], String)>,
        pool_size: usize,
    ) -> anyhow::Result<Option<Self>> {
        let Some((url, url_origin)) = url else {
            if let Some((urls, origin)) = replicas
                && !urls.is_empty()
            {
                bail!(
                    "invalid {origin}: read replicas need a PostgreSQL primary; set --database-url \
                     (or CAIRN_DATABASE_URL, or `database_url` in the file) too"
                );
            }
            return Ok(None);
        };
        check(url, &url_origin)?;
        let replica_urls = match replicas {
            Some((urls, origin)) => {
                for replica in urls {
                    check(replica, &origin)?;
                }
                urls.iter().map(|url| url.trim().to_owned()).collect()
            }
            None => Vec::new(),
        };
        Ok(Some(Self {
            url: url.trim().to_owned(),
            replica_urls,
            pool_size,
            advertise_url: None,
            readmodel_schema: cairn_projection::DEFAULT_READ_MODEL_SCHEMA.to_owned(),
        }))
    }

    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    pub fn redacted_replica_urls(&self) -> Vec<String> {
        self.replica_urls.iter().map(|url| redact(url)).collect()
    }

    /// Connects (with a deadline), applies the migrations the database lacks and
    /// starts the store's writer, LISTEN connection and replica probes.
    pub async fn open(&self, idempotency_window: Duration) -> anyhow::Result<SharedStore> {
        let mut options = PostgresOptions::new(self.url.clone());
        options.replica_urls = self.replica_urls.clone();
        options.pool_size = self.pool_size;
        options.replica_pool_size = self.pool_size;
        options.idempotency_window = idempotency_window;
        let place = || {
            format!(
                "cannot open the event store on PostgreSQL at {} (--database-url)",
                self.redacted_url()
            )
        };
        let store = tokio::time::timeout(CONNECT_DEADLINE, PostgresStore::connect(options))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no answer within {}s; is the database running and reachable?",
                    CONNECT_DEADLINE.as_secs()
                )
            })
            .with_context(place)?
            .with_context(place)?;
        Ok(Arc::new(store))
    }
}

impl DatabaseSettings {
    /// The consumer-group leases of this instance (its lock session on the primary),
    /// advertising `advertise_url` to the other instances, which forward requests for
    /// the groups it drives there.
    pub async fn group_leases(
        &self,
        advertise_url: String,
    ) -> anyhow::Result<Arc<dyn cairn_store::groups::GroupLeases>> {
        let options = PostgresOptions::new(self.url.clone());
        let leases = tokio::time::timeout(
            CONNECT_DEADLINE,
            cairn_store::postgres::PgGroupLeases::connect(&options, advertise_url),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {}s", CONNECT_DEADLINE.as_secs()))
        .and_then(|connected| connected.map_err(anyhow::Error::from))
        .with_context(|| {
            format!(
                "cannot open the consumer groups' lock session on PostgreSQL at {}",
                self.redacted_url()
            )
        })?;
        Ok(leases)
    }
}

/// Refuses what is not a PostgreSQL connection URL (`postgres://` or `postgresql://`)
/// or `key=value` string, naming the setting and never the password.
fn check(url: &str, origin: &str) -> anyhow::Result<()> {
    let url = url.trim();
    if url.is_empty() {
        bail!("invalid {origin}: it must not be empty");
    }
    let shown = redact(url);
    if let Some((scheme, _)) = url.split_once("://")
        && scheme != "postgres"
        && scheme != "postgresql"
    {
        bail!(
            "invalid {origin}: {shown:?} is not a PostgreSQL URL; write \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        );
    }
    if !url.contains("://") && !url.contains('=') {
        bail!(
            "invalid {origin}: {shown:?} is not a PostgreSQL URL; write \
             postgres://USER:PASSWORD@HOST:PORT/DATABASE"
        );
    }
    cairn_store::postgres::check_url(url).map_err(|error| {
        anyhow::anyhow!("invalid {origin}: {shown:?} is not a valid PostgreSQL URL: {error}")
    })
}

/// The URL (or `key=value` string) with its password replaced by `***`, in the
/// user-info part and in a `password` parameter.
pub fn redact(url: &str) -> String {
    let url = url.trim();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, hosts)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***@{hosts}"),
                    None => format!("{userinfo}@{hosts}"),
                },
                None => authority.to_owned(),
            };
            let tail = match tail.split_once('?') {
                Some((path, query)) => {
                    let query: Vec<String> = query
                        .split('&')
                        .map(|pair| match pair.split_once('=') {
                            Some((key, _)) if is_secret(key) => format!("{key}=***"),
                            _ => pair.to_owned(),
                        })
                        .collect();
                    format!("{path}?{}", query.join("&"))
                }
                None => tail.to_owned(),
            };
            format!("{scheme}://{authority}{tail}")
        }
        None => redact_key_values(url).unwrap_or_else(|| "(unparsable)".to_owned()),
    }
}

fn is_secret(key: &str) -> bool {
    key.trim().eq_ignore_ascii_case("password")
}

/// `key=value key='quoted value'` with the password's value replaced; `None` when the
/// text does not scan (then nothing of it is shown).
fn redact_key_values(text: &str) -> Option<String> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest.find(|c: char| c == '=' || c.is_whitespace())?;
        let key = &rest[..key_end];
        rest = rest[key_end..].trim_start().strip_prefix('=')?.trim_start();
        let value_end = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut escaped = false;
            let close = quoted.char_indices().find_map(|(index, c)| {
                let found = !escaped && c == '\'';
                escaped = !escaped && c == '\\';
                found.then_some(index)
            })?;
            close + 2
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        let value = &rest[..value_end];
        pairs.push(if is_secret(key) {
            format!("{key}=***")
        } else {
            format!("{key}={value}")
        });
        rest = rest[value_end..].trim_start();
    }
    Some(pairs.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for (url, shown) in [
            (
                "postgres://cairn:s3cret@db:5432/cairn",
                "postgres://cairn:***@db:5432/cairn",
            ),
            (
                "postgresql://cairn:p%40ss@db/cairn?sslmode=disable&password=again",
                "postgresql://cairn:***@db/cairn?sslmode=disable&password=***",
            ),
            ("postgres://cairn@db/cairn", "postgres://cairn@db/cairn"),
            ("postgres://db:5432", "postgres://db:5432"),
            ("postgres://u:a@b@h1,h2/db", "postgres://u:***@h1,h2/db"),
            (
                "host=db user=cairn password=s3cret dbname=cairn",
                "host=db user=cairn password=*** dbname=cairn",
            ),
            (
                "host=db password = 'a \\' b' dbname=x",
                "host=db password=*** dbname=x",
            ),
            ("host=db password='unclosed", "(unparsable)"),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn bad_urls_name_the_setting_and_hide_the_password() {
        let origin = "--database-url (or CAIRN_DATABASE_URL)".to_owned();
        for bad in [
            "mysql://u:s3cret@db/x",
            "s3cret",
            "postgres://u:s3cret@db:notaport/x",
            " ",
        ] {
            let error = DatabaseSettings::resolve(Some((bad, origin.clone())), None, 16)
                .unwrap_err()
                .to_string();
            assert!(error.contains("--database-url"), "{error}");
            assert!(!error.contains("s3cret"), "{error}");
        }
        let replicas = vec!["postgres://db2/x".to_owned()];
        let error = DatabaseSettings::resolve(None, Some((&replicas, "--replica-url".into())), 16)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--replica-url"), "{error}");
        let settings = DatabaseSettings::resolve(
            Some(("postgres://u:s3cret@db/x", origin)),
            Some((&replicas, "--replica-url".into())),
            4,
        )
        .unwrap()
        .unwrap();
        assert!(!format!("{settings:?}").contains("s3cret"));
        assert_eq!(settings.replica_urls, replicas);
    }
}
