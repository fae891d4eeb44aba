//! The `pylon` binary: parse the command line, set up logging, load the
//! configuration, run. A configuration error exits with status 64.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use pylon::{
    Gateway, config,
    generation::{Generation, Shared},
    server::StartError,
    telemetry,
};

// Measured on the proxy path: glibc malloc was about a seventh of the
// instructions per request; mimalloc's thread-local free lists halve that.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// pylon: an API gateway whose policies are sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log line format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PYLON_LOG_FORMAT"
    )]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM; SIGHUP reloads the configuration.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short, default_value = "pylon.toml", env = "PYLON_CONFIG")]
        config: PathBuf,
        /// How long in-flight requests may take to finish on shutdown.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace: Duration,
    },
    /// Validate a configuration, compile its plugins and let each plugin
    /// check its per-route config, without serving. Exits 0 when valid,
    /// 64 with every problem listed otherwise.
    Check {
        /// The configuration file (TOML).
        #[arg(long, short, env = "PYLON_CONFIG")]
        config: PathBuf,
    },
    /// Start, build and test plugins without a gateway: `pylon plugin new|build|test`.
    Plugin {
        #[command(subcommand)]
        command: pylon::kit::cli::PluginCommand,
    },
    /// Run a demo upstream that echoes each request as JSON (for examples and benchmarks).
    DemoUpstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// A name echoed in every answer.
        #[arg(long, default_value = "demo")]
        name: String,
        /// Wait this long before each answer, e.g. "100ms".
        #[arg(long, default_value = "0ms", value_parser = parse_duration)]
        delay: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s)
}

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.command {
            Command::Check { config } => check(config).await,
            Command::Run { config, grace } => run(config, grace).await,
            Command::Plugin { command } => pylon::kit::cli::run(command).await,
            Command::DemoUpstream {
                listen,
                name,
                delay,
            } => match pylon::demo::run(listen, name, delay).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: demo upstream on {listen}: {err}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

async fn check(path: PathBuf) -> ExitCode {
    let result = async {
        let config = config::load(&path)?;
        pylon::tls::listeners(&config)?;
        let warnings = pylon::tls::expiry_warnings(&config);
        let shared = Shared::new(&config).await?;
        Generation::build(config, &shared).await.map(|_| warnings)
    }
    .await;
    match result {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprint!("{err}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn run(path: PathBuf, grace: Duration) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the gateway starts serving: a signal that arrives
    // during start-up must not kill the process with its default action
    // (SIGTERM, SIGINT and SIGHUP all terminate); it is seen once running.
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    pylon::server::fds::raise_nofile_limit();
    let gateway = match Gateway::start_from_file(path).await {
        Ok(g) => g,
        Err(StartError::Config(err)) => {
            eprint!("{err}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(err) => {
            eprintln!("error: {}", pylon::error::ErrorChain(&err));
            return ExitCode::FAILURE;
        }
    };
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            // The reloader logs and counts the outcome either way.
            _ = hup.recv() => { let _ = gateway.reload().await; }
        }
    }
    tracing::info!(?grace, "shutting down");
    gateway.shutdown(grace).await;
    ExitCode::SUCCESS
}
