//! The `datarun` binary's library half: configuration, application assembly and the
//! subcommands, so the end-to-end tests drive the same code the binary runs.

pub mod app;
pub mod bench;
pub mod cli;
pub mod config;
pub mod setup;
