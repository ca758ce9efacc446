//! `ferry-control`: the control plane binary. Its subcommands (serve, up,
//! apply, get, delete, autoscale simulate) land with their issues; until
//! then it says so instead of pretending.

use clap::Parser;

#[derive(Parser)]
#[command(name = "ferry-control", version, about = "Ferry control plane")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("ferry-control: no subcommands are implemented yet; see the project's open issues");
    std::process::exit(2);
}
