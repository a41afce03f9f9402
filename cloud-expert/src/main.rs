//! `cloud-expert` binary: parse, set up logging, run.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cloud_expert::config::Cli::parse();
    cloud_expert::init_telemetry(cli.log_json);
    match cloud_expert::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
