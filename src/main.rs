//! The `hookd` binary: parses arguments, loads the config, and hands over to [`hookd::app`].
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hookd::config::Config;
use hookd::telemetry::{self, LogFormat};

/// sysexits' EX_CONFIG-adjacent EX_USAGE: the configuration is wrong, retrying will not help.
const EXIT_CONFIG: u8 = 64;

/// sysexits' EX_DATAERR: the data dir holds damage that would lose or hide acknowledged events; hookd
/// refuses to start on it until `hookd repair` has run (docs/operators.md, "Damaged files").
const EXIT_DAMAGED: u8 = 65;

/// mimalloc instead of glibc's malloc: per-thread free lists without locks or consolidation passes.
/// Measured in docs/DECISIONS.md ("The allocator is mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hookd",
    version,
    about = "Webhook delivery daemon: durable ingest, fan-out, signed delivery with retries."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (embedded defaults when no --config is given).
    Serve {
        /// TOML config file; every key can also be set with HOOKD_<SECTION>__<KEY>.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Human, env = "HOOKD_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Validate a config (file + environment) and print the effective values, secrets redacted.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Create an API key directly in the data dir (the daemon must be stopped), e.g. the first key of a
    /// fresh install. Prints the key once.
    CreateApiKey {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A name to recognize the key by.
        #[arg(long)]
        name: String,
        /// A scope it holds; repeat for several: read, write, delete, admin.
        #[arg(long = "scope", required = true, value_parser = hookd::offline::parse_scope)]
        scopes: Vec<hookd::model::Scope>,
        /// Bind the key to this tenant (default: a global key).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Print what the data dir holds (the daemon must be stopped).
    Inspect {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Repair a damaged data dir (the daemon must be stopped): quarantine the damaged bytes of the log's
    /// segments under <data_dir>/quarantine/, drop the index entries that cannot be read back, rebuild
    /// the index from the segments, and print what was lost. Exits 0 when nothing was damaged.
    Repair {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

/// Runs an offline admin command: its output on stdout, or its error and exit code 1.
fn offline(
    config: Option<&std::path::Path>,
    run: impl FnOnce(&Config) -> anyhow::Result<String>,
) -> ExitCode {
    let config = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(&config) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookd: {e:#}");
            failure_code(&e)
        }
    }
}

/// The exit code of a failed command: [`EXIT_DAMAGED`] when the data dir is damaged, else 1.
fn failure_code(e: &anyhow::Error) -> ExitCode {
    let damaged = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<hookd::store::StoreError>(),
            Some(hookd::store::StoreError::DamagedStore(_))
        )
    });
    if damaged {
        eprintln!(
            "hookd: refusing to start on a damaged data dir. `hookd repair` quarantines the damaged bytes, rebuilds \
             the index from the segments and reports what was lost (docs/operators.md, \"Damaged files\")."
        );
        ExitCode::from(EXIT_DAMAGED)
    } else {
        ExitCode::FAILURE
    }
}

fn load(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    // vars_os: a variable that is not UTF-8 (not ours, then) must not panic the daemon.
    let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    Config::load(path, env).map_err(|e| {
        eprintln!("hookd: invalid configuration: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("hookd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CreateApiKey { config, name, scopes, tenant } => offline(config.as_deref(), |c| {
            hookd::offline::create_api_key(c, &name, &scopes, tenant.as_deref())
        }),
        Command::Inspect { config } => offline(config.as_deref(), hookd::offline::inspect),
        Command::Repair { config } => offline(config.as_deref(), hookd::offline::repair),
        Command::CheckConfig { config } => match load(config.as_deref()) {
            Ok(c) => {
                print!("{}", c.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Serve { config, log_format } => {
            let config = match load(config.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            telemetry::init(log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("hookd: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let served = runtime.block_on(async {
                let signal = hookd::shutdown::install()?;
                hookd::app::run(config, signal).await
            });
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "hookd stopped on an error");
                    eprintln!("hookd: {e:#}");
                    failure_code(&e)
                }
            }
        }
    }
}
