//! The `qbroker` command: parse the command line, load the configuration, bind
//! the sockets, and run the broker until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use qbroker::config::{Overrides, RawConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "Qumulo audit syslog in, batched Varonis events out over HTTPS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Run(Box<RunArgs>),
    /// Check a configuration file and print what it resolves to.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML configuration file (every field is optional).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Syslog TCP listen address (`listen`).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// URL of the default target (creates it when the file has none).
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    /// PEM CA file for the default target.
    #[arg(long, value_name = "PEM")]
    target_ca: Option<PathBuf>,
    /// Bearer token for the default target (prefer `token_file` in the config).
    #[arg(long, value_name = "TOKEN")]
    target_token: Option<String>,
    /// Parse worker threads (`workers`).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Address of /metrics and /healthz (`metrics_listen`).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Directory of the spool and dead letters (`data_dir`).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Spool directory (`spool.dir`).
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Spool fsync policy (`spool.fsync`).
    #[arg(long, value_name = "always|interval|never")]
    spool_fsync: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(*args),
        Command::CheckConfig { file } => check_config(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("qbroker: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Warn about credential files that other users can read.
fn warn_exposed(raw: &RawConfig, file: Option<&std::path::Path>) {
    for path in raw.exposed_secret_files(file) {
        tracing::warn!(path = %path.display(), "this file holds a credential and others may read it: chmod 600 it");
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let raw = RawConfig::load(file)?;
    let cfg = raw.validate()?;
    warn_exposed(&raw, Some(file));
    println!("{} is valid", file.display());
    println!("listen          {}", cfg.listen);
    if let Some(tls) = &cfg.syslog_tls {
        println!(
            "syslog tls      {} (client certificates {})",
            tls.listen,
            if tls.require_client_cert {
                "required"
            } else {
                "not required"
            }
        );
    }
    println!("workers         {}", cfg.workers);
    println!(
        "queue           {} messages, {} bytes",
        cfg.queue.size, cfg.queue.max_bytes
    );
    let budget = cfg.memory_budget();
    println!(
        "memory budget   {} bytes{}",
        budget.total(),
        cfg.max_memory_bytes
            .map_or(String::new(), |c| format!(" (ceiling {c})"))
    );
    for (part, bytes) in &budget.parts {
        println!("  {part:<24}{bytes}");
    }
    println!(
        "spool           {} ({:?}, cap {} bytes)",
        cfg.spool.dir.display(),
        cfg.spool.fsync,
        cfg.spool.max_bytes
    );
    for (i, t) in cfg.targets.iter().enumerate() {
        let default = if cfg.default_target == Some(i) {
            " (default)"
        } else {
            ""
        };
        println!(
            "target          {}{default}: {} in_flight={} gzip={}",
            t.name,
            t.url_for_logs(),
            t.in_flight,
            t.gzip
        );
    }
    if let Some(api) = &cfg.api {
        println!(
            "api             https://{} (certificate {}, admin token {})",
            api.listen,
            if api.cert.is_some() {
                "from cert_file"
            } else {
                "self-signed"
            },
            if api.admin_token.is_some() {
                "set"
            } else {
                "not set"
            }
        );
    }
    if let Some(store) = &cfg.store {
        let kind = store.url.expose().split(':').next().unwrap_or_default();
        println!(
            "registry        {kind} (read again every {}s)",
            store.poll.as_secs()
        );
    }
    for c in &cfg.clusters {
        println!(
            "cluster         {} -> {} ({} source ranges)",
            c.name,
            cfg.targets[c.target].name,
            c.sources.len()
        );
    }
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut raw = match &args.config {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    warn_exposed(&raw, args.config.as_deref());
    raw.apply(Overrides {
        listen: args.listen,
        target_url: args.target,
        target_ca: args.target_ca,
        target_token: args.target_token,
        workers: args.workers,
        metrics_listen: args.metrics_listen,
        data_dir: args.data_dir,
        spool_dir: args.spool_dir,
        spool_fsync: args.spool_fsync,
    });
    let cfg = raw.validate()?;
    let listeners = qbroker::Listeners::bind(&cfg)?;
    let threads = (cfg.workers.get() / 4).clamp(2, 4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("qbroker-rt")
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(qbroker::run(cfg, listeners, shutdown_signal()))?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
