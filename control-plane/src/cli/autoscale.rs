//! `ferry-control autoscale …`: the autoscaler's command-line tools.
//!
//! - `simulate SCENARIO.json` runs the control plane's autoscaler on a
//!   manual clock over a scenario and prints one JSON object per decision
//!   (`docs/autoscaling.md`); `-` reads the scenario from stdin.
//! - `bench` (hidden) times one decision tick over many revisions, for
//!   `bench/autoscaler.sh`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use ferry_control_plane::autoscaler::{bench_tick, simulate};

#[derive(clap::Args)]
pub struct AutoscaleArgs {
    #[command(subcommand)]
    command: AutoscaleCommand,
}

#[derive(clap::Subcommand)]
enum AutoscaleCommand {
    /// Run the autoscaler over a scenario and print each decision as a JSON line.
    Simulate {
        /// Scenario file (`{"config": …, "samples": […]}` or `{"config": …,
        /// "ticks": […]}`), or `-` for stdin.
        #[arg(value_name = "SCENARIO.json")]
        scenario: PathBuf,
    },
    /// Time the decision tick over many revisions.
    #[command(hide = true)]
    Bench {
        #[arg(long, default_value_t = 1000)]
        revisions: usize,
        #[arg(long, default_value_t = 500)]
        ticks: usize,
    },
}

pub fn run(args: AutoscaleArgs) -> ExitCode {
    match args.command {
        AutoscaleCommand::Simulate { scenario } => simulate_cmd(&scenario),
        AutoscaleCommand::Bench { revisions, ticks } => {
            let r = bench_tick(revisions, ticks);
            println!(
                "{{\"revisions\":{},\"ticks\":{},\"mean_us\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1}}}",
                r.revisions,
                r.ticks,
                r.mean.as_secs_f64() * 1e6,
                r.p50.as_secs_f64() * 1e6,
                r.p99.as_secs_f64() * 1e6,
                r.max.as_secs_f64() * 1e6,
            );
            ExitCode::SUCCESS
        }
    }
}

fn simulate_cmd(path: &PathBuf) -> ExitCode {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map(|_| s)
    } else {
        std::fs::read_to_string(path)
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "ferry-control autoscale simulate: reading {}: {e}",
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    match simulate::run_scenario(&text) {
        Ok(lines) => {
            let out = simulate::to_json_lines(&lines);
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry-control autoscale simulate: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}
