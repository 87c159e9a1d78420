//! The `drawbridge` command line: thin, everything lives in the library.

use clap::{Parser, Subcommand};
use drawbridge::admin::ctl::CtlArgs;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "drawbridge",
    version,
    about = "Take sites and servers out of service without hurting users"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve with a configuration file
    Run {
        #[arg(short, long, default_value = "conf/drawbridge.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running instance
        #[arg(long)]
        upgrade: bool,
        /// Run in the background
        #[arg(long)]
        daemon: bool,
    },
    /// Check FILE, start a new process on it that takes over the listening
    /// sockets of the running one, which then finishes its requests and exits
    Reload {
        #[arg(short, long, default_value = "conf/drawbridge.yaml")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit
    Check {
        #[arg(short, long, default_value = "conf/drawbridge.yaml")]
        config: PathBuf,
    },
    /// Two demo upstreams and the proxy on conf/demo.yaml
    Demo {
        /// Keep the runtime state (maintenance, server states) of the last
        /// demo run instead of starting from the demo's configuration
        #[arg(long)]
        keep_state: bool,
    },
    /// One demo upstream app
    DemoUpstream {
        #[arg(long)]
        name: String,
        #[arg(long)]
        listen: String,
        /// Exit when the process with this pid is gone
        #[arg(long, hide = true)]
        exit_with: Option<u32>,
    },
    /// The admin API client
    Ctl(CtlArgs),
    /// Write a self-signed certificate (DIR/cert.pem, DIR/key.pem) for a
    /// first start, unless both files exist
    SelfSignedCert {
        dir: PathBuf,
        /// DNS names or IP addresses it is for
        #[arg(long = "name", default_values = ["localhost"])]
        names: Vec<String>,
    },
}

fn main() {
    // Usage errors exit 1, not clap's 2: for `ctl wait-drained`, 2 means
    // "timed out", and a typo must not read as that.
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 1 } else { 0 });
    });
    if !matches!(
        cli.cmd,
        Cmd::Ctl(_) | Cmd::Check { .. } | Cmd::SelfSignedCert { .. } | Cmd::Reload { .. }
    ) {
        drawbridge::logging::init();
    }
    let code = match cli.cmd {
        Cmd::Run {
            config,
            upgrade,
            daemon,
        } => drawbridge::server::run(&config, upgrade, daemon),
        Cmd::Check { config } => drawbridge::server::check(&config),
        Cmd::Reload { config } => drawbridge::reload::reload(&config),
        Cmd::Demo { keep_state } => drawbridge::demo::demo(keep_state),
        Cmd::DemoUpstream {
            name,
            listen,
            exit_with,
        } => drawbridge::demo::upstream(&name, &listen, exit_with),
        Cmd::Ctl(args) => drawbridge::admin::ctl::run(args),
        Cmd::SelfSignedCert { dir, names } => match drawbridge::demo::self_signed(&dir, &names) {
            Ok(cert) => {
                println!("{}", cert.display());
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}
