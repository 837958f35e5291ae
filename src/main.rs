//! The `orapush` binary: parse the command line, load the settings, then
//! either serve (`orapush` / `orapush serve`), publish one message
//! (`orapush publish`), subscribe (`orapush subscribe`), or check that
//! Oracle Instant Client loads (`orapush check-client`).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use orapush::config::{Overrides, Settings, SourceKind};
use orapush::source::sqlite::SqliteOutbox;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "orapush", version, about = "Carries database events to browsers over WebSockets")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
    /// Log lines as text (coloured only on a terminal) or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ORAPUSH_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// TOML configuration file: the orapush to reach is its `server.listen`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// WebSocket URL of the orapush protocol endpoint (default: ws://<server.listen>/ws).
    #[arg(long)]
    url: Option<String>,
    /// A token, for `auth.mode = "jwt"` (sent as ?token=).
    #[arg(long, env = "ORAPUSH_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
    /// Create the SQLite outbox when the file does not exist (refused otherwise:
    /// a message in a new file reaches no orapush).
    #[arg(long)]
    create: bool,
    /// The payload (JSON, or text that becomes {"message": ...}); `-` reads standard input.
    payload: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
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

/// Logs go to standard error, at `RUST_LOG` (default `info`); colour only
/// when that is a terminal, so files and pipes get plain text.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides { listen: args.listen, sqlite_path: args.sqlite };
    let settings = Settings::load(args.config.as_deref(), &overrides)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let addr = settings.listen_addr()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on `server.listen` = {addr}"))?;
        let bound = listener.local_addr()?;
        // Scripts and tests read this line to find the port.
        let scheme = if settings.server.tls_cert.is_some() { "https" } else { "http" };
        println!("orapush listening on {scheme}://{bound}");
        orapush::run(listener, settings, shutdown_signal()).await
    });
    // `run` kept to the shutdown deadline; tasks still running (a socket
    // cut off mid-write) are dropped now, not waited for.
    runtime.shutdown_timeout(std::time::Duration::ZERO);
    result
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
    let url = match args.url {
        Some(url) => url,
        None => {
            let settings = Settings::load(args.config.as_deref(), &Overrides::default())?;
            orapush::subscribe::url_for(&settings)?
        }
    };
    let options = orapush::subscribe::SubscribeOptions {
        url,
        token: args.token,
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
        strip_one_newline(buf)
    } else {
        args.payload
    };
    let sqlite = (settings.source.kind == SourceKind::Sqlite).then_some(&settings.sqlite.path);
    if let Some(path) = sqlite {
        if !args.create && !path.exists() {
            anyhow::bail!(
                "the SQLite outbox `sqlite.path` = {} does not exist, so no orapush drains it: run this \
                 where orapush runs, point --sqlite or --config at its file, or pass --create to make it",
                path.display()
            );
        }
    }
    let mut publisher = orapush::source::open_publisher(&settings)?;
    let id = publisher.publish(&args.channel, &payload, args.user.as_deref())?;
    println!("{id}");
    if let Some(path) = sqlite {
        if !SqliteOutbox::drainer_running(path) {
            eprintln!(
                "orapush: warning: no orapush is draining {} right now; the message waits there until one does",
                path.display()
            );
        }
    }
    Ok(())
}

/// Standard input without its one trailing newline, as shells treat `$(…)`.
fn strip_one_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One trailing newline goes (LF or CRLF); the rest of the payload stays.
    #[test]
    fn stdin_loses_one_trailing_newline() {
        assert_eq!(strip_one_newline("REFRESH\n".into()), "REFRESH");
        assert_eq!(strip_one_newline("REFRESH\r\n".into()), "REFRESH");
        assert_eq!(strip_one_newline("a\n\n".into()), "a\n");
        assert_eq!(strip_one_newline("a".into()), "a");
    }
}
