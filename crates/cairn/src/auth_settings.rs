//! The `[auth]` table of the settings file (file only): the API tokens, each with its
//! name, scopes, stream grants and the SHA-256 of its secret (the secret itself is never
//! stored). `cairn token create` prints a block in this form.

use std::path::Path;

use anyhow::Context;
use cairn_server::auth::{ApiToken, Scope, Tokens, parse_sha256};
use serde::Deserialize;

/// `[auth]` as written; unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub tokens: Vec<RawToken>,
}

/// One `[[auth.tokens]]` entry as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: String,
    pub scopes: Vec<String>,
    /// Stream-name prefixes; absent: every stream.
    #[serde(default)]
    pub streams: Vec<String>,
    /// Lower- or upper-case hex of the SHA-256 of the secret.
    pub sha256: String,
}

/// Checks `[auth]` into the server's token set: known scopes, 64-hex hashes, unique
/// names. Errors name the token.
pub fn tokens_from(raw: Option<&RawAuth>) -> anyhow::Result<Tokens> {
    let Some(raw) = raw else {
        return Ok(Tokens::default());
    };
    let mut tokens = Vec::with_capacity(raw.tokens.len());
    for token in &raw.tokens {
        let scopes = token
            .scopes
            .iter()
            .map(|scope| Scope::parse(scope))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| anyhow::anyhow!("token {:?}: {error}", token.name))?;
        let sha256 = parse_sha256(&token.sha256)
            .map_err(|error| anyhow::anyhow!("token {:?}: sha256: {error}", token.name))?;
        tokens.push(ApiToken {
            name: token.name.clone(),
            scopes,
            streams: token.streams.clone(),
            sha256,
        });
    }
    Tokens::new(tokens).map_err(|error| anyhow::anyhow!("{error}"))
}

/// Re-reads the tokens of the settings file at `path` (SIGHUP).
pub fn reload(path: &Path) -> anyhow::Result<Tokens> {
    let raw = crate::settings::RawSettings::load(path)?;
    tokens_from(raw.auth.as_ref()).with_context(|| format!("invalid [auth] in {}", path.display()))
}

/// The `[[auth.tokens]]` block for a token, ready to paste into `cairn.toml`.
pub fn token_block(name: &str, scopes: &[Scope], streams: &[String], sha256_hex: &str) -> String {
    let quote = |text: &str| toml::Value::String(text.to_owned()).to_string();
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    let mut block = String::from("[[auth.tokens]]\n");
    block.push_str(&format!("name = {}\n", quote(name)));
    block.push_str(&format!(
        "scopes = {}\n",
        list(scopes.iter().map(|scope| quote(scope.as_str())).collect())
    ));
    if !streams.is_empty() {
        block.push_str(&format!(
            "streams = {}\n",
            list(streams.iter().map(|stream| quote(stream)).collect())
        ));
    }
    block.push_str(&format!("sha256 = {}\n", quote(sha256_hex)));
    block
}
