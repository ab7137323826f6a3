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
    /// Print a client token (JWT) for a user, signed with the configured secret. The token is
    /// alone on the last line of stdout.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// How long the token is valid, e.g. `24h`, `30m`, `7days`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}
