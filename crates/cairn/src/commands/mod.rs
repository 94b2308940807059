//! One module per subcommand, plus what the client commands share.

pub mod append;
pub mod archive;
pub mod bench;
pub mod export;
pub mod groups;
pub mod import;
pub mod migrate;
pub mod projections;
pub mod query;
pub mod read;
pub mod serve;
pub mod streams;
pub mod tail;
pub mod token;
pub mod top;

use std::io::{BufWriter, Stdout, Write};

use anyhow::Context;
use cairn_client::Client;
use serde::Serialize;

use crate::cli::ClientArgs;

/// The client the client commands use, with the client's default timeout and retries,
/// trusting `--ca-cert` besides the system's root certificates and sending `--token`.
pub fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    build_client(Client::builder(&args.url), args)
}

/// Finishes `builder` with the connection settings every client command shares.
pub fn build_client(
    mut builder: cairn_client::ClientBuilder,
    args: &ClientArgs,
) -> anyhow::Result<Client> {
    if let Some(path) = &args.credentials.ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --ca-cert {}", path.display()))?;
        builder = builder.ca_certificate_pem(pem);
    }
    if let Some(token) = &args.credentials.token {
        builder = builder.bearer_token(token.clone());
    }
    builder
        .build()
        .with_context(|| match &args.credentials.ca_cert {
            Some(path) => format!(
                "cannot use --url {} with --ca-cert {}",
                args.url,
                path.display()
            ),
            None => format!("cannot use --url {}", args.url),
        })
}

/// JSON Lines on stdout, buffered.
pub struct JsonLines {
    out: BufWriter<Stdout>,
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self {
            out: BufWriter::new(std::io::stdout()),
        }
    }

    pub fn write<T: Serialize>(&mut self, value: &T) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.out, value).context("cannot write to stdout")?;
        self.out.write_all(b"\n").context("cannot write to stdout")
    }

    pub fn write_str(&mut self, line: &str) -> anyhow::Result<()> {
        self.out
            .write_all(line.as_bytes())
            .context("cannot write to stdout")?;
        self.out.write_all(b"\n").context("cannot write to stdout")
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.out.flush().context("cannot write to stdout")
    }
}
