//! The `orapush` binary: parse the command line, load the settings, then
//! either serve (`orapush` / `orapush serve`), publish one message
//! (`orapush publish`), subscribe (`orapush subscribe`), or check that
//! Oracle Instant Client loads (`orapush check-client`).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use orapush::config::{Overrides, Settings};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "orapush", version, about = "Carries database events to browsers over WebSockets")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (the default).
    Serve(ServeArgs),
    /// Write one message into the configured source and exit.
    Publish(PublishArgs),
    /// Subscribe to channels on a running orapush and print its frames.
    Subscribe(SubscribeArgs),
    /// Check that Oracle Instant Client loads (honouring oracle.client_lib_dir); exit 1 if not.
    CheckClient(CheckClientArgs),
}

#[derive(Args)]
struct CheckClientArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct SubscribeArgs {
    /// WebSocket URL of the orapush protocol endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Channel to subscribe to (repeatable).
    #[arg(long = "channel", required = true)]
    channels: Vec<String>,
    /// Exit 0 after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Exit 1 if the messages did not all come within this many milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on (server.listen), e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// SQLite outbox file (sqlite.path).
    #[arg(long, value_name = "PATH")]
    sqlite: Option<PathBuf>,
}

#[derive(Args)]
struct PublishArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// SQLite outbox file (sqlite.path).
    #[arg(long, value_name = "PATH")]
    sqlite: Option<PathBuf>,
    /// Channel to publish on.
    #[arg(long)]
    channel: String,
    /// Deliver only to connections authenticated as this user.
    #[arg(long)]
    user: Option<String>,
    /// The payload (JSON, or text that becomes {"message": ...}); `-` reads standard input.
    payload: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Publish(args)) => publish(args),
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Subscribe(args)) => subscribe(args),
        Some(Command::CheckClient(args)) => check_client(args),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orapush: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides { listen: args.listen, sqlite_path: args.sqlite };
    let settings = Settings::load(args.config.as_deref(), &overrides)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let addr = settings.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on `server.listen` = {addr}"))?;
        let bound = listener.local_addr()?;
        // Scripts and tests read this line to find the port.
        let scheme = if settings.server.tls_cert.is_some() { "https" } else { "http" };
        println!("orapush listening on {scheme}://{bound}");
        orapush::run(listener, settings, shutdown_signal()).await
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let options = orapush::subscribe::SubscribeOptions {
        url: args.url,
        channels: args.channels,
        count: args.count,
        timeout: args.timeout_ms.map(std::time::Duration::from_millis),
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(orapush::subscribe::subscribe(options))
}

fn check_client(args: CheckClientArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref(), &Overrides::default())?;
    let version = orapush::source::oracle::check_client(&settings.oracle)?;
    println!("Oracle Instant Client {version} loads");
    Ok(())
}

fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let overrides = Overrides { listen: None, sqlite_path: args.sqlite };
    let settings = Settings::load(args.config.as_deref(), &overrides)?;
    let payload = if args.payload == "-" {
        let mut buf = String::new();
        std::io::stdin().read_to_string(&mut buf).context("reading the payload from standard input")?;
        buf
    } else {
        args.payload
    };
    let mut publisher = orapush::source::open_publisher(&settings)?;
    let id = publisher.publish(&args.channel, &payload, args.user.as_deref())?;
    println!("{id}");
    Ok(())
}
