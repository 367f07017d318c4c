//! The `mlgw` command: `serve` runs the gateway; the other subcommands are a client of the
//! gRPC API (the same one notebooks and CI use).

mod client;
mod pack;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "mlgw",
    version,
    about = "ML platform gateway: one API for training and serving on any target"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Args, Clone)]
pub struct Conn {
    /// Gateway address: host:port or an http(s):// URL.
    #[arg(
        long,
        env = "MLGW_SERVER",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub server: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway. With no --config: data under ~/.local/share/mlgw, 127.0.0.1:50051,
    /// one target `local` (the default).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run a process for the process capability (what to run comes on stdin) and record its
    /// output and exit status beneath the root.
    #[command(hide = true)]
    Supervise {
        #[arg(long)]
        root: PathBuf,
    },
    /// Submit a training job; prints its id.
    Submit(client::SubmitArgs),
    /// Show one job.
    Get { id: String },
    /// List jobs, newest first.
    List {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        state: Option<client::StateArg>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print a job's logs; -f follows until the job ends.
    Logs {
        id: String,
        #[arg(short, long)]
        follow: bool,
    },
    /// Wait for a job to end; exits 0 only if it succeeded.
    Wait {
        id: String,
        /// Give up after this many seconds (exit 3).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Cancel a job.
    Cancel { id: String },
    /// Deploy a model as an endpoint.
    Deploy(client::DeployArgs),
    /// Roll an endpoint to a new model or settings.
    Update(client::UpdateArgs),
    /// Delete an endpoint.
    Undeploy { endpoint: String },
    /// List endpoints.
    Endpoints {
        #[arg(long)]
        all: bool,
    },
    /// Show one endpoint (by id or name).
    Endpoint { endpoint: String },
    /// Send a prediction: --data takes a JSON array (rows of features) or an OIP V2 request.
    Predict(client::PredictArgs),
    /// List targets and what each supports.
    Targets,
    /// Upload, download and list artifacts (code and model files every target can read).
    Artifacts {
        #[command(subcommand)]
        command: client::ArtifactsCommand,
    },
}

pub fn main() -> ExitCode {
    run(Cli::parse())
}

fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Supervise { root } => {
            let code = crate::capabilities::process::supervise(&root);
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Command::Serve {
            config,
            data_dir,
            listen,
        } => serve(config, data_dir, listen),
        other => client::run(&cli.conn, other),
    }
}

fn serve(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
) -> ExitCode {
    let mut cfg = match config {
        Some(p) => match Config::load(&p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::embedded(),
    };
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    // Again: the flags may have changed what the file (or the embedded defaults) allowed.
    if let Err(e) = cfg.check() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter is a tonic client.
    let telemetry = {
        let _in_runtime = rt.enter();
        match crate::observability::telemetry::init(&cfg.observability) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        }
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let served = rt.block_on(crate::server::serve(cfg, shutdown, |addr| {
        // Scripts wait for this line to know the gateway is up and where.
        println!("mlgw listening on {addr}");
    }));
    {
        let _in_runtime = rt.enter();
        telemetry.shutdown();
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
