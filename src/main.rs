//! The `fleet-authz` binary: parse flags, load configuration, wire the parts,
//! wait for a signal, drain. Logic lives in the library.

use std::process::ExitCode;

use clap::Parser;
use fleet_authz::{
    cli::{self, Cli, Command, EXIT_CONFIG},
    config::Config,
    policy,
    server::{self, Preloaded},
    telemetry,
};

/// mimalloc hands freed memory back to the OS soon after a sync drops the
/// previous posture; glibc's malloc kept the peak of every sync resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config } => {
            let (config, preloaded) = match load(&config) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            serve(config, preloaded).await
        }
        Command::Check {
            cert,
            context,
            addr,
            host,
            path,
            xfcc,
            verbose,
        } => cli::run_check(&cert, &context, &addr, &host, &path, xfcc, verbose).await,
        Command::Explain {
            sha1,
            context,
            addr,
            token_file,
            host,
            path,
        } => cli::run_explain(&addr, token_file.as_deref(), &sha1, &context, &host, &path).await,
    }
}

/// Loads and validates the config, its policy file and its posture file;
/// prints one message naming the file, the key and the problem, and gives
/// exit code 64. What was read is kept for `serve`.
fn load(path: &std::path::Path) -> Result<(Config, Preloaded), ExitCode> {
    let config = Config::load(path).map_err(|e| {
        eprintln!("invalid configuration: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let policy = policy::load_policy(&config.policy_file).map_err(|e| {
        eprintln!("invalid policy: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    let posture = match &config.posture_file {
        Some(posture) => Some(
            fleet_authz::posture::load_posture_file(posture, std::time::SystemTime::now())
                .map_err(|e| {
                    eprintln!("invalid posture file: {e}");
                    ExitCode::from(EXIT_CONFIG)
                })?,
        ),
        None => None,
    };
    Ok((config, Preloaded { policy, posture }))
}

async fn serve(config: Config, preloaded: Preloaded) -> ExitCode {
    let _telemetry = telemetry::init(&config.telemetry);
    let ext = server::Extensions {
        preloaded: Some(preloaded),
        ..Default::default()
    };
    let mut running = match server::start_with(config, ext).await {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "cannot start");
            eprintln!("cannot start: {error:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut hangups = server::signal::hangups();
    let code = loop {
        tokio::select! {
            _ = server::signal::signal() => break ExitCode::SUCCESS,
            error = running.wait_for_failure() => {
                tracing::error!(error = %format!("{error:#}"), "a service task failed; shutting down");
                break ExitCode::FAILURE;
            }
            Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading");
                let reloader = std::sync::Arc::clone(&running.reloader);
                let _ = tokio::task::spawn_blocking(move || reloader.reload_all()).await;
            }
        }
    };
    running.shutdown().await;
    code
}
