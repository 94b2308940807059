//! `cairn token create`: a new API token's secret, and the block that configures it.

use anyhow::Context;
use cairn_server::auth::{Scope, generate_secret, hash_secret, to_hex};

use crate::auth_settings::token_block;
use crate::cli::{TokenArgs, TokenCommand};

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create {
            name,
            scopes,
            streams,
        } => {
            print!("{}", create(&name, &scopes, &streams)?);
            Ok(())
        }
    }
}

/// The output of `cairn token create`: `token: <secret>`, a blank line, then the
/// `[[auth.tokens]]` block holding only the secret's hash.
pub fn create(name: &str, scopes: &[String], streams: &[String]) -> anyhow::Result<String> {
    if name.trim().is_empty() {
        anyhow::bail!("--name must not be empty");
    }
    if streams.iter().any(String::is_empty) {
        anyhow::bail!("--streams must not be empty; leave it out to grant every stream");
    }
    let mut parsed: Vec<Scope> = scopes
        .iter()
        .map(|scope| Scope::parse(scope.trim()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    parsed.sort();
    parsed.dedup();
    if parsed.is_empty() {
        anyhow::bail!("--scopes needs at least one of read, append, admin");
    }
    let secret = generate_secret().context("cannot get random bytes for the token")?;
    let hash = to_hex(&hash_secret(&secret));
    Ok(format!(
        "token: {secret}\n\n# Paste into cairn.toml; the secret above is not stored anywhere.\n{}",
        token_block(name, &parsed, streams, &hash)
    ))
}

/// Re-reads the API tokens from `config`, and the TLS certificate and key when serving
/// HTTPS, on every SIGHUP; a file that does not load is logged and what is in force
/// stays.
pub async fn reload_on_hangup(
    config: Option<std::path::PathBuf>,
    auth: std::sync::Arc<cairn_server::auth::Auth>,
    tls: Option<std::sync::Arc<cairn_server::tls::TlsCertificates>>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => hangup,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot listen for SIGHUP; tokens and TLS certificates reload only on restart"
                );
                return;
            }
        };
        while hangup.recv().await.is_some() {
            if let Some(tls) = &tls {
                reload_tls(tls);
            }
            let Some(path) = &config else {
                if tls.is_none() {
                    tracing::warn!("SIGHUP: no --config file; nothing to reload");
                }
                continue;
            };
            match crate::auth_settings::reload(path) {
                Ok(tokens) if tokens.is_empty() && auth.is_enabled() => tracing::error!(
                    config = %path.display(),
                    "SIGHUP: the file has no API tokens left, which would turn authentication off; \
                     the previous tokens stay in force (restart to serve without tokens)"
                ),
                Ok(tokens) => {
                    let count = tokens.len();
                    auth.replace(tokens);
                    tracing::info!(tokens = count, config = %path.display(), "SIGHUP: API tokens reloaded");
                }
                Err(error) => tracing::error!(
                    error = format!("{error:#}"),
                    "SIGHUP: cannot reload the API tokens; the previous ones stay in force"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (config, auth, tls);
    }
}

/// Re-reads the TLS certificate and key; a pair that does not load is logged and the
/// certificate in force stays.
fn reload_tls(tls: &cairn_server::tls::TlsCertificates) {
    match tls.reload() {
        Ok(()) => tracing::info!(
            tls_cert = %tls.certificate_path().display(),
            tls_key = %tls.key_path().display(),
            "SIGHUP: TLS certificate reloaded"
        ),
        Err(error) => tracing::error!(
            error = %error,
            "SIGHUP: cannot reload the TLS certificate; the previous one stays in force"
        ),
    }
}
