//! `cargo run --release -p cozmic`: serves CozmicLearning on
//! http://127.0.0.1:8080 with SQLite in `./cozmic-data`, no services and no
//! keys needed. See the README for the configuration table.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("COZMIC_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = match cozmic::config::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cozmic: {error}");
            return ExitCode::from(2);
        }
    };
    let running = match cozmic::start(config).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!(
                "cozmic: cannot start: {}",
                selfheal::web::redact(&format!("{error:#}"))
            );
            return ExitCode::FAILURE;
        }
    };
    let state = running.state();
    let config = state.config();
    println!("CozmicLearning is running at {}", running.url());
    println!(
        "  database: {}",
        if state.db().sqlite().is_some() {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    );
    println!(
        "  AI tutor: {}   payments: {}   email: {}",
        if config.openai.is_some() {
            "on"
        } else {
            "off (set OPENAI_API_KEY)"
        },
        if config.stripe.is_some() {
            "on"
        } else {
            "off (set STRIPE_API_KEY)"
        },
        if config.smtp_url.is_some() {
            "SMTP".to_owned()
        } else {
            format!("files in {}", config.mail_dir().display())
        },
    );
    println!(
        "  admin: {}/admin/health ({})",
        running.url(),
        if config.admin_token.is_some() {
            "ADMIN_TOKEN or an admin student"
        } else {
            "set ADMIN_TOKEN, or COZMIC_ADMIN_EMAILS"
        }
    );
    println!(
        "  health: {0}/healthz  {0}/readyz  {0}/metrics",
        running.url()
    );
    running.wait_for_signal().await;
    ExitCode::SUCCESS
}
