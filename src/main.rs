//! `synchrod`: environment and arguments in, a validated `Config` handed to the library.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

use synchro::config::{help_text, Config};
use synchro::{dev, logging, server, store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // --help and --version win wherever they stand, so `synchrod dev --help` explains rather
    // than starts a cluster.
    if args.iter().any(|a| matches!(*a, "-h" | "--help" | "help")) {
        print!("{}", help_text());
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| matches!(*a, "-V" | "--version" | "version")) {
        println!("{}", version_line());
        return ExitCode::SUCCESS;
    }
    match args.as_slice() {
        [] | ["serve"] => serve(std::env::vars().collect()),
        ["dev"] => run_dev(),
        ["migrate"] => migrate(false),
        ["migrate", "--print"] => migrate(true),
        ["rls"] => print_rls(),
        ["compact"] => compact(),
        ["check"] => check(),
        _ => {
            eprintln!("synchrod: unknown command or argument in {:?} (run `synchrod --help`)", args.join(" "));
            ExitCode::from(2)
        }
    }
}

/// `synchrod 0.1.0 (features: tls, jwks)`: what `--version` prints.
fn version_line() -> String {
    let features: Vec<&str> = [("tls", cfg!(feature = "tls")), ("jwks", cfg!(feature = "jwks"))]
        .into_iter()
        .filter(|f| f.1)
        .map(|f| f.0)
        .collect();
    let features = if features.is_empty() { "none".to_string() } else { features.join(", ") };
    format!("synchrod {} (features: {features})", env!("CARGO_PKG_VERSION"))
}

fn load_config(vars: &HashMap<String, String>) -> Result<Config, ExitCode> {
    Config::from_vars(vars).map_err(|e| {
        eprintln!("synchrod: configuration error: {e}\n(run `synchrod --help` for every variable)");
        ExitCode::from(2)
    })
}

fn serve(vars: HashMap<String, String>) -> ExitCode {
    let config = match load_config(&vars) {
        Ok(c) => c,
        Err(code) => return code,
    };
    install_logger(std::io::stdout(), config.log_level);
    match server::run(config, None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            synchro::error!("synchrod stopped", error = e.to_string());
            eprintln!("synchrod: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_dev() -> ExitCode {
    let env = match dev::prepare(Path::new(".synchro"), std::env::vars().collect()) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("synchrod dev: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match load_config(&env.vars) {
        Ok(c) => c,
        Err(code) => return code,
    };
    install_logger(std::io::stdout(), config.log_level);
    let banner = move |base_url: &str| println!("{}", dev::banner(base_url, &env));
    match server::run(config, Some(Box::new(banner))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("synchrod dev: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the JSON-lines logger: on stdout for the servers, on stderr for the one-shot
/// commands, whose stdout is their result (`synchrod rls | psql`).
fn install_logger(out: impl std::io::Write + Send + 'static, level: synchro::config::LogLevel) {
    if let Err(e) = logging::install_json_logger(out, level) {
        eprintln!("synchrod: {e}");
    }
}

/// Loads the configuration from the environment and runs `f` with it, logging to stderr.
fn with_config(f: impl FnOnce(Config) -> ExitCode) -> ExitCode {
    let vars: HashMap<String, String> = std::env::vars().collect();
    match load_config(&vars) {
        Ok(config) => {
            install_logger(std::io::stderr(), config.log_level);
            f(config)
        }
        Err(code) => code,
    }
}

fn check() -> ExitCode {
    with_config(|config| {
        let results = synchro::check::run(&config);
        for r in &results {
            println!("{}", r.line());
        }
        let failed = results.iter().filter(|r| !r.ok).count();
        println!("{} passed, {failed} failed", results.len() - failed);
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

fn compact() -> ExitCode {
    with_config(|config| match server::compact_once(&config) {
        Ok(r) => {
            println!(
                "synchrod compact: deactivated {} stale clients, safe sequence {}, deleted {} changelog rows, compacted through {}",
                r.deactivated, r.safe_seq, r.deleted, r.compacted_through
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synchrod compact: {e}");
            ExitCode::FAILURE
        }
    })
}

fn print_rls() -> ExitCode {
    with_config(|config| match server::rls_statements(&config) {
        Ok(statements) => {
            println!("-- Row-level security for the synced tables; review, then apply as the tables' owner.");
            for s in statements {
                println!("{s}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synchrod rls: {e}");
            ExitCode::FAILURE
        }
    })
}

fn migrate(print_only: bool) -> ExitCode {
    if print_only {
        for statement in store::migrations::statements() {
            println!("{statement}\n");
        }
        return ExitCode::SUCCESS;
    }
    with_config(|config| match server::migrate(&config) {
        Ok(applied) if applied.is_empty() => {
            println!("synchrod migrate: already up to date");
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            println!("synchrod migrate: applied steps {applied:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("synchrod migrate: {e}");
            ExitCode::FAILURE
        }
    })
}
