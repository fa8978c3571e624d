//! The `tickgate` binary: settings, logging, build, run until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use tickgate::settings::Settings;
use tickgate::startup::Application;

const USAGE: &str = "usage: tickgate [--config PATH] [--config-dir DIR]
       tickgate hash-password   (reads a password on stdin, prints its argon2 hash for [[auth.users]])
       tickgate hash-api-secret (reads an API key secret on stdin, prints its secret_sha256 for [[auth.api_keys]])

Loads DIR/default.toml (DIR defaults to ./config), then PATH if given, then
TICKGATE__SECTION__KEY environment variables (e.g. TICKGATE__SERVER__BIND=0.0.0.0:8080).";

fn main() -> ExitCode {
    let mut config_dir = PathBuf::from("config");
    let mut extra = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => extra = args.next().map(PathBuf::from),
            "--config-dir" => {
                if let Some(dir) = args.next() {
                    config_dir = PathBuf::from(dir);
                }
            }
            "hash-password" => return hash_password(),
            "hash-api-secret" => return hash_api_secret(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let settings = match Settings::load(&config_dir, extra.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    tickgate::telemetry::init(&settings.log);
    let defaults = config_dir.join("default.toml");
    if defaults.is_file() {
        tracing::info!(file = %defaults.display(), "configuration loaded");
    } else {
        tracing::info!(
            "configuration: built-in defaults ({} not found), then --config and TICKGATE__ variables",
            defaults.display()
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("could not start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error)
            if error
                .chain()
                .any(|cause| cause.is::<tickgate::auth::api_keys::HashKeyMismatch>()) =>
        {
            // A configuration error found only once the store is open: exit 2 like the
            // configuration errors found before.
            eprintln!("{error:#}");
            ExitCode::from(2)
        }
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                "tickgate stopped with an error"
            );
            ExitCode::FAILURE
        }
    }
}

/// Reads one line from stdin and prints the PHC string to put in `[[auth.users]]`.
fn hash_password() -> ExitCode {
    let mut password = String::new();
    if std::io::stdin().read_line(&mut password).is_err() {
        eprintln!("could not read a password from stdin");
        return ExitCode::from(2);
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("the password is empty");
        return ExitCode::from(2);
    }
    match tickgate::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("could not hash the password: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Reads one line from stdin and prints the `secret_sha256` to put in `[[auth.api_keys]]`.
fn hash_api_secret() -> ExitCode {
    let mut secret = String::new();
    if std::io::stdin().read_line(&mut secret).is_err() {
        eprintln!("could not read a secret from stdin");
        return ExitCode::from(2);
    }
    let secret = secret.trim_end_matches(['\r', '\n']);
    if secret.len() < 8 {
        eprintln!("the secret is shorter than 8 characters");
        return ExitCode::from(2);
    }
    println!("{}", tickgate::auth::api_keys::secret_sha256_hex(secret));
    ExitCode::SUCCESS
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let web_root = settings.server.web_root.clone();
    let data_dir = settings
        .store
        .enabled
        .then(|| settings.store.data_dir.clone());
    let host = match settings.server.bind.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    let app = Application::build(settings)?;
    let url = format!("http://{host}:{}/", app.port());
    tracing::info!(
        port = app.port(),
        %url,
        dashboard = if web_root.is_dir() { "from web_root" } else { "built in" },
        data_dir = data_dir
            .map(|dir| std::path::absolute(&dir).unwrap_or(dir).display().to_string())
            .unwrap_or_else(|| "store disabled".to_owned()),
        "tickgate listening on {url}"
    );
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        shutdown.cancel();
    });
    app.run_until_stopped().await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C will stop");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
}
