//! The `cairn` binary's behaviour: settings, the CLI end to end, crash recovery and the
//! load generator. Hermetic: temporary directories, ephemeral ports, servers the tests
//! start themselves.

mod auth;
mod bench;
mod cli;
mod crash;
mod export_import;
mod group_failover;
mod groups;
mod logs;
mod metrics_catalogue;
mod observability;
mod plans;
mod postgres;
mod projection_crash;
mod read_models_pg;
mod read_side;
mod redis_cache;
mod scale_out;
mod settings;
mod support;
mod tail;
mod tls;
mod top;
