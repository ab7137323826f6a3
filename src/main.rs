//! The `rampart` binary: parse the command line, load the configuration, run.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use rampart::app::{self, EXIT_CONFIG};
use rampart::cli::{Cli, Command};
use rampart::config::Config;

fn main() -> ExitCode {
    rampart::tls::install_crypto_provider();
    if let Err(error) = rampart::system_monitor::return_freed_memory_in_background() {
        eprintln!("rampart: jemalloc background purging unavailable: {error}");
    }
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("rampart: invalid configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            let mut shown = config.clone();
            for secret in [
                &mut shown.admin.token,
                &mut shown.alerts.slack_webhook_url,
                &mut shown.alerts.webhook_url,
                &mut shown.auth.jwt_secret,
                &mut shown.elasticsearch.password,
                &mut shown.elasticsearch.api_key,
                &mut shown.sfu.turn.secret,
                &mut shown.sfu.cluster.secret,
            ] {
                if !secret.is_empty() {
                    *secret = "<redacted>".into();
                }
            }
            shown.mongodb.uri = shown.mongodb.redacted_uri();
            shown.kafka.redact();
            match serde_json::to_string_pretty(&shown) {
                Ok(text) => println!("{text}"),
                Err(error) => eprintln!("rampart: {error}"),
            }
            ExitCode::SUCCESS
        }
        Command::Token { user, ttl } => token(&config, &user, ttl),
        Command::Serve => serve(config),
    }
}

fn token(config: &Config, user: &str, ttl: std::time::Duration) -> ExitCode {
    if let Err(error) = rampart::auth::validate_user_id(user) {
        eprintln!("rampart: --user: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let issued =
        rampart::auth::Tokens::load(&config.auth, &config.storage.data_dir).and_then(|tokens| tokens.issue(user, ttl));
    match issued {
        Ok(token) => {
            println!("# token for user {user}, valid for {}", humantime::format_duration(ttl));
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("rampart: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(mut config: Config) -> ExitCode {
    // Decided once, so the subscriber and the log writer's own lines agree.
    config.log.format = config.log.format.resolve();
    if let Err(error) = rampart::logging::init(&config.log) {
        eprintln!("rampart: cannot set up logging: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let log_config = config.log.clone();
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let shutdown = app::shutdown_signal()?;
        app::run(config, shutdown).await
    });
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "rampart failed to start");
    }
    // Whatever the writer actor did not get to (the last lines, or everything if start-up failed).
    rampart::logging::shutdown(&log_config);
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(error) => {
            eprintln!("rampart: {error:#}");
            ExitCode::FAILURE
        }
    }
}
