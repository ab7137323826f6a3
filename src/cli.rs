//! Command-line interface. Parsing only; `main` acts on it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "rampart", version, about = "Realtime chat and SFU backend built from supervised actors")]
pub struct Cli {
    /// Configuration file (TOML) applied over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Validate the configuration and print the effective values (secrets redacted).
    CheckConfig,
}
