//! `cloud-expert` binary: parse, set up logging, run.
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cloud_expert::config::Cli::parse();
    let telemetry = match cloud_expert::telemetry::init(cli.log_json, cli.otlp_endpoint.as_deref())
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = cloud_expert::run(cli);
    telemetry.flush();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
