//! One module per subcommand, plus what the client commands share.

pub mod append;
pub mod bench;
pub mod groups;
pub mod projections;
pub mod query;
pub mod read;
pub mod serve;
pub mod streams;
pub mod tail;
pub mod token;

use std::io::{BufWriter, Stdout, Write};

use anyhow::Context;
use cairn_client::Client;
use serde::Serialize;

use crate::cli::ClientArgs;

/// The client the client commands use, with the client's default timeout and retries.
pub fn client(args: &ClientArgs) -> anyhow::Result<Client> {
    Client::new(&args.url).with_context(|| format!("cannot use --url {}", args.url))
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
