//! The `cairn` binary's behaviour: settings, the CLI end to end, crash recovery and the
//! load generator. Hermetic: temporary directories, ephemeral ports, servers the tests
//! start themselves.

mod auth;
mod bench;
mod cli;
mod crash;
mod groups;
mod metrics_catalogue;
mod plans;
mod postgres;
mod projection_crash;
mod read_side;
mod settings;
mod support;
mod tail;
