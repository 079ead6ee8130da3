//! The `qbroker` command: parse the command line, load the configuration, bind
//! the sockets, and run the broker until SIGTERM or SIGINT; or run it fed by
//! stdin (`qbroker stdin`, for rsyslog's omprog and for one line by hand), or
//! check its surroundings (`qbroker doctor`). What a command prints is made in
//! [`cli`] from the library's APIs; the library holds no command's output.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use qbroker::config::{Overrides, RawConfig};

mod cli;
mod top;

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
    /// Read syslog messages on stdin, one per line, through the same pipeline:
    /// what rsyslog's omprog runs in place of the reference broker binary
    /// (confirmMessages and useTransactions protocol); with --once, explain
    /// (and deliver) lines given by hand.
    Stdin(Box<StdinArgs>),
    /// Check the clusters' audit settings (REST API), each target of the file
    /// and of the registry (DNS, TCP, TLS, a test POST), the API (certificate,
    /// port) and this host (syslog port, spool disk); exit 1 if any check
    /// fails.
    Doctor(Box<DoctorArgs>),
    /// Put batches a target refused for good (the dead-letter directory's
    /// batches/) back into their target's spool, to be sent again once the
    /// cause is fixed; run it with the broker stopped.
    Replay(Box<ReplayArgs>),
    /// A live view of the running broker (per cluster: nodes, frames/s,
    /// events/s, parse errors, queue share, route; per target: state, spool,
    /// oldest unacknowledged batch, delivered/s), read from its `/stats`;
    /// with --once, one view as text.
    Top(Box<top::TopArgs>),
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// TOML configuration file.
    #[arg(long, short, default_value = "/etc/qbroker/qbroker.toml")]
    config: PathBuf,
    /// Only this target's batches (`[[targets]] name`, or `@<cluster>` for a
    /// registered one).
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// Only batches refused at or after this time (RFC 3339 or Unix seconds).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only batches refused before this time (RFC 3339 or Unix seconds).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// List what would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(clap::Args)]
struct StdinArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Read the messages given on stdin (a message may span lines, as a
    /// pretty-printed JSON payload does), print what each becomes (the event,
    /// or why it is filtered or invalid), deliver the events through a private
    /// temporary spool, report, and exit: 0 when every message became an
    /// event (and was delivered), 3 when one was filtered, 1 on an invalid
    /// message or a failed delivery.
    #[arg(long)]
    once: bool,
    /// With --once: explain only; deliver nothing.
    #[arg(long, requires = "once")]
    dry_run: bool,
    /// With --once: how long to wait for the targets to acknowledge.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout_secs: u64,
    /// Write no answers on stdout (omprog without confirmMessages, as in the
    /// reference rsyslog configuration).
    #[arg(long)]
    no_confirm: bool,
    /// omprog's beginTransactionMark.
    #[arg(long, value_name = "LINE", default_value = "BEGIN TRANSACTION")]
    begin_mark: String,
    /// omprog's commitTransactionMark.
    #[arg(long, value_name = "LINE", default_value = "COMMIT TRANSACTION")]
    commit_mark: String,
    /// A keep-alive `.` goes out this often while an answer is pending (a
    /// commit waiting on a full spool); keep it below omprog's confirmTimeout.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    keepalive_ms: u64,
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// TOML configuration file.
    #[arg(long, short, default_value = "/etc/qbroker/qbroker.toml")]
    config: PathBuf,
    /// This broker's address as the clusters see it (a name or an IP,
    /// optionally :PORT; the port defaults to listen's). Repeatable. Default:
    /// the listen address, or any address of this host when it listens on all.
    #[arg(long, value_name = "HOST[:PORT]")]
    advertise: Vec<String>,
    /// Timeout of each network step.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout_secs: u64,
    /// Do not POST a test batch (an empty one) to the targets.
    #[arg(long)]
    no_post: bool,
    /// qbroker runs behind rsyslog as `qbroker stdin` (omprog): skip the
    /// syslog port check (rsyslog holds it). Give rsyslog's address and port
    /// with --advertise.
    #[arg(long)]
    behind_rsyslog: bool,
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
    let cli = Cli::parse();
    // The commands a person runs by hand say only what goes wrong, unless RUST_LOG says otherwise.
    let quiet = match &cli.command {
        Command::Stdin(a) => a.once,
        Command::Doctor(_) | Command::Top(_) => true,
        _ => false,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // lapin's own lines are Rust debug strings of what egress::amqp
                // already reports in words (connection lost, refused login).
                tracing_subscriber::EnvFilter::new(if quiet {
                    "warn,lapin=off"
                } else {
                    "info,lapin=off"
                })
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run(args) => run(*args).map(|()| ExitCode::SUCCESS),
        Command::CheckConfig { file } => {
            cli::check_config::check_config(&file).map(|()| ExitCode::SUCCESS)
        }
        Command::Stdin(args) => stdin(*args),
        Command::Doctor(args) => doctor(*args),
        Command::Replay(args) => replay(*args),
        Command::Top(args) => top::top(*args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("qbroker: {}", error_text(&err));
            ExitCode::FAILURE
        }
    }
}

/// Warn about credential files that other users can read.
pub(crate) fn warn_exposed(raw: &RawConfig, file: Option<&std::path::Path>) {
    for path in raw.exposed_secret_files(file) {
        tracing::warn!(path = %path.display(), "this file holds a credential and others may read it: chmod 600 it");
    }
}

/// The configuration of the file and the flags.
fn load_config(args: RunArgs) -> anyhow::Result<qbroker::config::Config> {
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
    Ok(raw.validate()?)
}

fn runtime(cfg: &qbroker::config::Config) -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = (cfg.workers.get() / 4).clamp(2, 4);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("qbroker-rt")
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = load_config(args)?;
    let listeners = qbroker::Listeners::bind(&cfg)?;
    runtime(&cfg)?.block_on(qbroker::run(cfg, listeners, shutdown_signal()))?;
    Ok(())
}

fn stdin(args: StdinArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = load_config(args.run)?;
    let opts = qbroker::stdin::Options {
        confirm: !args.no_confirm,
        begin_mark: args.begin_mark,
        commit_mark: args.commit_mark,
        keepalive: std::time::Duration::from_millis(args.keepalive_ms.max(10)),
        report_delivery: None,
    };
    if args.once {
        return stdin_once(cfg, opts, args.dry_run, args.timeout_secs);
    }
    let metrics = cfg
        .metrics_listen
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot bind the metrics listener to {addr}"))
        })
        .transpose()?;
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let input = Box::new(std::io::BufReader::with_capacity(
        256 * 1024,
        std::io::stdin(),
    ));
    let (feed, ended) = qbroker::stdin::Feed::new(opts, input, Box::new(std::io::stdout()))?;
    let rt = runtime(&cfg)?;
    rt.block_on(qbroker::run_input(
        cfg,
        qbroker::Input::Stdin(feed),
        metrics,
        None,
        async {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = ended => tracing::info!("end of stdin"),
            }
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `qbroker stdin --once`: explain each message, then deliver the events
/// through a private spool (the running broker's spool is not touched).
fn stdin_once(
    mut cfg: qbroker::config::Config,
    mut opts: qbroker::stdin::Options,
    dry_run: bool,
    timeout_secs: u64,
) -> anyhow::Result<ExitCode> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    std::io::stdin()
        .read_to_end(&mut raw)
        .context("cannot read stdin")?;
    // As on the TCP path: invalid UTF-8 sequences become U+FFFD, the rest stands.
    let text = String::from_utf8_lossy(&raw);
    let records = cli::explain::records(&text);
    if records.is_empty() {
        anyhow::bail!(
            "no message on stdin: give one line, e.g. echo '<line>' | qbroker stdin --once"
        );
    }
    // The clusters registered through the API: their events go to their
    // registered target, as in the running broker.
    let registered: Vec<String> = match &cfg.store {
        Some(s) => runtime(&cfg)?
            .block_on(async {
                let store = qbroker::store::Store::open(s).await?;
                let list = store.list().await;
                store.close().await;
                list
            })
            .context("cannot read the registry")?
            .into_iter()
            .map(|r| r.cluster_name)
            .collect(),
        None => Vec::new(),
    };
    let mut verdicts = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let e = cli::explain::explain_with(&cfg, &registered, r);
        if records.len() > 1 {
            println!("#{}", i + 1);
        }
        print!("{}", e.text);
        verdicts.push(e.verdict);
    }
    use cli::explain::Verdict;
    let code = if verdicts.contains(&Verdict::Invalid) {
        ExitCode::FAILURE
    } else if verdicts.contains(&Verdict::Filtered) {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    };
    if dry_run || !verdicts.contains(&Verdict::Event) {
        return Ok(code);
    }
    let tmp = std::env::temp_dir().join(format!(
        "qbroker-once-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    cfg.data_dir = tmp.clone();
    cfg.spool.dir = tmp.join("spool");
    cfg.dead_letter.dir = tmp.join("dead-letter");
    cfg.shutdown_grace = std::time::Duration::from_secs(1);
    cfg.metrics_listen = None;
    opts.confirm = false;
    opts.report_delivery = Some(std::time::Duration::from_secs(timeout_secs));
    let mut input = format!("{}\n", opts.begin_mark);
    for r in records {
        input.push_str(&r);
        input.push('\n');
    }
    input.push_str(&opts.commit_mark);
    input.push('\n');
    let out = SharedOut::default();
    let (feed, ended) = qbroker::stdin::Feed::new(
        opts,
        Box::new(std::io::Cursor::new(input.into_bytes())),
        Box::new(out.clone()),
    )?;
    let result = runtime(&cfg)?.block_on(qbroker::run_input(
        cfg,
        qbroker::Input::Stdin(feed),
        None,
        None,
        async {
            let _ = ended.await;
        },
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    let report =
        String::from_utf8_lossy(&out.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    print!("{report}");
    // An event that reached no target was not delivered, whatever was meant.
    if report.contains("NOT DELIVERED")
        || report.contains("refused")
        || report.contains("not spooled")
        || report.contains("nothing to deliver")
    {
        return Ok(ExitCode::FAILURE);
    }
    Ok(code)
}

/// Output kept in memory (the delivery report of `--once`).
#[derive(Clone, Default)]
struct SharedOut(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An error and its causes, each said once: a cause whose text the message
/// already holds (many errors quote their source) is not repeated.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let cfg = RawConfig::load(&args.config)
        .and_then(|raw| raw.validate())
        .with_context(|| format!("{}", args.config.display()))?;
    let time = |what: &str, v: &Option<String>| -> anyhow::Result<Option<i64>> {
        v.as_deref()
            .map(|s| {
                qbroker::replay::parse_time(s).with_context(|| {
                    format!("--{what} {s:?}: give RFC 3339 (2026-12-01T10:00:00Z) or Unix seconds")
                })
            })
            .transpose()
    };
    let opts = qbroker::replay::Options {
        target: args.target,
        since_unix_ms: time("since", &args.since)?,
        until_unix_ms: time("until", &args.until)?,
        dry_run: args.dry_run,
    };
    let items = qbroker::replay::replay(&cfg, &opts)?;
    let events: u64 = items.iter().map(|i| u64::from(i.events)).sum();
    for i in &items {
        println!(
            "{} target {} batch {} cluster {} events {} refused with {} at {}",
            if i.replayed {
                "replayed"
            } else {
                "would replay"
            },
            i.target,
            i.batch_id,
            i.cluster,
            i.events,
            i.status,
            i.time_unix_ms
        );
    }
    let verb = if opts.dry_run {
        "would be put back"
    } else {
        "put back"
    };
    println!(
        "{} batch(es), {events} event(s) {verb} into their spools{}",
        items.len(),
        if opts.dry_run || items.is_empty() {
            ""
        } else {
            "; start the broker to send them"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn doctor(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let opts = cli::doctor::Options {
        advertise: args.advertise,
        timeout: std::time::Duration::from_secs(args.timeout_secs.max(1)),
        post: !args.no_post,
        behind_rsyslog: args.behind_rsyslog,
    };
    let cfg = match RawConfig::load(&args.config).and_then(|raw| raw.validate()) {
        Ok(cfg) => cfg,
        Err(err) => {
            println!("config {}: FAIL {err}", args.config.display());
            return Ok(ExitCode::FAILURE);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let report = rt.block_on(cli::doctor::run(&cfg, &opts));
    println!("config {}: valid", args.config.display());
    print!("{}", report.render());
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
