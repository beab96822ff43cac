//! The `smsfence` command line: `run` (the default), `check-rules`.
//!
//! Everything here is wiring: parse flags, set up logging, build the runtime, call the
//! library, turn errors into messages with `anyhow`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use smsfence::clock::SystemClock;
use smsfence::config::{Config, Upstream};
use smsfence::providers::Preset;
use smsfence::proxy::{Instance, Options};
use smsfence::rules::reload::Source;
use smsfence::rules::RuleSet;

/// A fraud-aware SMS gateway proxy: point your SMS SDK's base URL at it.
#[derive(Debug, Parser)]
#[command(
    name = "smsfence",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default when no subcommand is given).
    Run(RunArgs),
    /// Validate a rules directory like `nginx -t`: every mistake as file:line: rule: message.
    CheckRules {
        /// The rules directory.
        #[arg(default_value = "rules", env = "SMSFENCE_RULES")]
        dir: PathBuf,
    },
    /// Run recorded traffic (JSON lines, e.g. the audit log) through a rule set, offline.
    Replay {
        /// The rules directory to evaluate.
        #[arg(long, default_value = "rules")]
        rules: PathBuf,
        /// The recorded traffic: one JSON event per line.
        file: PathBuf,
        /// A second rules directory: print the sends it decides differently.
        #[arg(long)]
        compare: Option<PathBuf>,
        /// Write one {"line","decision","reasons"} line per send here.
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// Print refusal shares per `label` (the simulator labels its traffic).
        #[arg(long)]
        by_label: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Service config (TOML). Without one, every provider routes to the built-in sandbox.
    #[arg(long, env = "SMSFENCE_CONFIG")]
    config: Option<PathBuf>,
    /// Proxy listen address [default: 127.0.0.1:8080, or the config's server.listen].
    #[arg(long, env = "SMSFENCE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Admin listen address [default: 127.0.0.1:9090, or the config's admin.listen].
    #[arg(long, env = "SMSFENCE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Rules directory [default: rules; the embedded defaults when ./rules does not exist].
    #[arg(long, env = "SMSFENCE_RULES")]
    rules: Option<PathBuf>,
    /// Do not watch the rules directory (reload with SIGHUP or POST /v1/reload).
    #[arg(long, env = "SMSFENCE_NO_WATCH", value_parser = clap::builder::BoolishValueParser::new())]
    no_watch: bool,
    /// Log format.
    #[arg(
        long,
        value_enum,
        default_value = "pretty",
        env = "SMSFENCE_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

// mimalloc: per-thread free lists suit a thread-per-core proxy that allocates a few
// small buffers per request (glibc's malloc cost ~7% of the CPU per request here).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::CheckRules { dir }) => check_rules(&dir),
        Some(Command::Run(args)) => run(args),
        Some(Command::Replay {
            rules,
            file,
            compare,
            decisions,
            by_label,
        }) => replay(
            &rules,
            &file,
            compare.as_deref(),
            decisions.as_deref(),
            by_label,
        ),
        None => run(cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smsfence: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_rules(dir: &Path) -> anyhow::Result<ExitCode> {
    match RuleSet::load_dir(dir) {
        Ok(set) => {
            let count = |k: &str| set.summaries.iter().filter(|s| s.kind == k).count();
            let shadow = set.summaries.iter().filter(|s| s.mode == "shadow").count();
            println!(
                "{}: ok — {} limits, {} heuristics, {} allow lists, {} deny lists, {} policies ({} in shadow){}",
                dir.display(),
                count("limit"),
                count("heuristic"),
                count("allow"),
                count("deny"),
                count("policy"),
                shadow,
                if set.summaries.is_empty() {
                    "; there is no rule here (no *.toml file, or none with a rule): nothing will be checked"
                } else if set.shadow_all {
                    "; global shadow is ON: nothing will be refused"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} mistake(s); nothing was changed",
                dir.display(),
                errors.len()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn load_rules(dir: &Path) -> anyhow::Result<RuleSet> {
    RuleSet::load_dir(dir).map_err(|errors| {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "{} has {} mistake(s):\n{}",
            dir.display(),
            errors.len(),
            list.join("\n")
        )
    })
}

fn replay(
    rules_dir: &Path,
    file: &Path,
    compare: Option<&Path>,
    decisions: Option<&Path>,
    by_label: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let rules = load_rules(rules_dir)?;
    let other = compare.map(load_rules).transpose()?;
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let show_progress = std::io::stderr().is_terminal() && size > 1 << 20;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the runtime")?;
    let run = |rules: &RuleSet, name: &str| -> anyhow::Result<smsfence::replay::Summary> {
        let input = std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        );
        let summary = runtime.block_on(smsfence::replay::replay(rules, input, |read| {
            if show_progress {
                eprint!("\r{name}: {:>3}%", read * 100 / size.max(1));
            }
        }))?;
        if show_progress {
            eprintln!("\r{name}: done");
        }
        Ok(summary)
    };
    let a = run(&rules, &rules_dir.display().to_string())?;
    let currency = rules.prices.as_ref().map_or("USD", |p| p.currency.as_str());
    println!("== {} against {}", file.display(), rules_dir.display());
    print!("{}", a.report(currency, by_label));
    if let Some(out) = decisions {
        let f =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        smsfence::replay::write_decisions(&a, std::io::BufWriter::new(f))?;
    }
    if let (Some(other), Some(dir)) = (other, compare) {
        let b = run(&other, &dir.display().to_string())?;
        println!("== {} against {}", file.display(), dir.display());
        print!("{}", b.report(currency, by_label));
        let diff = smsfence::replay::compare(&a, &b);
        println!(
            "== {} sends decided differently ({} → {})",
            diff.len(),
            rules_dir.display(),
            dir.display()
        );
        for (x, y) in diff.iter().take(1000) {
            println!(
                "line {}: {} [{}] → {} [{}]",
                x.line,
                x.decision,
                x.reasons.join(","),
                y.decision,
                y.reasons.join(",")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format);
    let json_logs = matches!(args.log_format, LogFormat::Json);
    match run_logged(args) {
        // Keep stderr pure JSON lines in this mode, to the last one.
        Err(e) if json_logs => {
            tracing::error!("{e:#}");
            Ok(ExitCode::FAILURE)
        }
        result => result,
    }
}

fn run_logged(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        config.server.listen = l;
    }
    if let Some(l) = args.admin_listen {
        config.admin.listen = l;
    }
    let rules = match &args.rules {
        Some(dir) => {
            anyhow::ensure!(
                dir.is_dir(),
                "the rules directory {} does not exist",
                dir.display()
            );
            Source::Dir(dir.clone())
        }
        None if Path::new("rules").is_dir() => Source::Dir(PathBuf::from("rules")),
        None => Source::Embedded,
    };
    // The main thread runs the admin listener, the background tasks and proxy worker 0;
    // `Instance::start` gives every other proxy worker a thread of its own (see
    // `server.worker_threads`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let json_logs = matches!(args.log_format, LogFormat::Json);
    runtime.block_on(serve(config, rules, !args.no_watch, json_logs))
}

async fn serve(
    config: Config,
    rules: Source,
    watch: bool,
    json_logs: bool,
) -> anyhow::Result<ExitCode> {
    // Installed before start-up, which can take up to the store's connect timeout: until
    // then a SIGHUP (a reload, to smsfence) would have killed the process.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let admin_token = config.admin.token.is_some();
    let instance = Instance::start(Options {
        config,
        rules: rules.clone(),
        watch_rules: watch,
        clock: Arc::new(SystemClock::new()),
    })
    .await?;
    // Numbering metadata and the busiest countries' tables, off the request path.
    tokio::task::spawn_blocking(smsfence::phone::warm_up);
    banner(&instance, &rules, json_logs, admin_token);

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading rules");
                let _ = instance.app.rules.reload_async().await;
                instance.app.reload_tls();
            }
        }
    }
    // A second signal cuts the shutdown delay short.
    tokio::select! {
        _ = instance.stop() => {}
        _ = term.recv() => instance.shutdown(),
        _ = tokio::signal::ctrl_c() => instance.shutdown(),
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    instance.wait().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The start-up log line, the routes, and (on a Twilio sandbox route) commands to try.
/// With `admin_token` set, the `/v1/check` command carries a placeholder for it (a token
/// is never printed).
fn banner(instance: &Instance, rules: &Source, json_logs: bool, admin_token: bool) {
    let app = &instance.app;
    let set = app.rules.snapshot();
    let source = match rules {
        Source::Dir(d) => d.display().to_string(),
        Source::Embedded => "embedded defaults".to_owned(),
    };
    tracing::info!(
        proxy = %instance.proxy_addr,
        tls = app.tls.is_some(),
        admin = %instance.admin_addr,
        admin_tls = app.admin_tls.is_some(),
        rules = %source,
        generation = set.generation,
        rule_count = set.summaries.len(),
        "smsfence is listening"
    );
    for r in &app.routes {
        let upstream = match &r.upstream {
            Upstream::Sandbox => "the built-in sandbox (nothing is sent)".to_owned(),
            Upstream::Url {
                scheme,
                authority,
                base_path,
            } => format!("{scheme}://{authority}{base_path}"),
        };
        tracing::info!(route = %r.name, preset = r.preset.as_str(), "route → {upstream}");
    }
    // The examples send to a Twilio route's sandbox: with no such route they would reach a
    // real provider (with made-up credentials) or no route at all, so none are printed.
    let Some(twilio) = app
        .routes
        .iter()
        .find(|r| r.preset == Preset::Twilio && matches!(r.upstream, Upstream::Sandbox))
    else {
        return;
    };
    let scheme = if app.tls.is_some() { "https" } else { "http" };
    let p = format!("{scheme}://{}{}", instance.proxy_addr, twilio.path_prefix);
    let a = format!(
        "{}://{}",
        if app.admin_tls.is_some() {
            "https"
        } else {
            "http"
        },
        instance.admin_addr
    );
    let auth = if admin_token {
        "-H 'Authorization: Bearer <admin.token>' "
    } else {
        ""
    };
    let send = format!(
        "curl -i -u ACtest:secret {p}/2010-04-01/Accounts/ACtest/Messages.json \\\n    \
         --data-urlencode To=+14155550123 --data-urlencode From=+15005550006 --data-urlencode 'Body=Your code is 123456'"
    );
    if json_logs {
        // Keep stderr pure JSON lines in this mode.
        tracing::info!(example = %send, "try it: repeat the send to see the per-number cooldown answer 429");
        return;
    }
    eprintln!(
        "\nTry it (a Twilio-style send; repeat it to see the per-number cooldown answer 429):\n\n  {send}\n\n\
         A premium-rate number is refused outright:\n\n  \
         curl -i -u ACtest:secret {p}/2010-04-01/Accounts/ACtest/Messages.json \\\n    \
         --data-urlencode To=+449098790123 --data-urlencode From=+15005550006 --data-urlencode 'Body=hi'\n\n\
         Ask what would happen, without sending:  curl -s {auth}{a}/v1/check -d '{{\"number\":\"+18765550123\"}}'\n\
         Metrics:                                 curl -s {a}/metrics | grep smsfence_decisions\n"
    );
}
