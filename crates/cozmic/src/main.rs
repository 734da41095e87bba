//! `cargo run --release -p cozmic`: serves CozmicLearning on
//! http://127.0.0.1:8080 with SQLite in `./cozmic-data`, no services and no
//! keys needed. See the README for the configuration table.

use std::io::IsTerminal;
use std::process::ExitCode;

use cozmic::config::LogFormat;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // The configuration first (it reads `.env`, which may set the log
    // variables); its errors go to stderr as they are.
    let config = match cozmic::config::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cozmic: {error}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_format);
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {}
        [command @ ("promote" | "demote"), email] => {
            return promote(config, email, *command == "promote").await;
        }
        ["review"] => return review(config, 30).await,
        ["review", "--days", days] if days.parse::<u32>().is_ok_and(|d| (1..=730).contains(&d)) => {
            return review(config, days.parse().unwrap_or(30)).await;
        }
        _ => {
            eprintln!(
                "usage: cozmic                     serve the app\n       cozmic promote EMAIL       make a student an admin\n       cozmic demote EMAIL        take it back\n       cozmic review [--days N]   the health review of the last N days (30), as Markdown"
            );
            return ExitCode::from(2);
        }
    }
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
    // The banner goes where the logs do not, when they are JSON lines for
    // a shipper: stdout stays one JSON object per line.
    let json = config.log_format == LogFormat::Json;
    macro_rules! banner {
        ($($arg:tt)*) => {
            if json { eprintln!($($arg)*) } else { println!($($arg)*) }
        };
    }
    banner!("CozmicLearning is running at {}", running.url());
    banner!(
        "  database: {}",
        if state.db().sqlite().is_some() {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    );
    banner!(
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
    banner!(
        "  admin: {}/admin/health ({})",
        running.url(),
        if config.admin_token.is_some() {
            "ADMIN_TOKEN, or students made admin with `cozmic promote EMAIL`"
        } else {
            "set ADMIN_TOKEN, or run `cozmic promote EMAIL`"
        }
    );
    banner!(
        "  health: {0}/healthz  {0}/readyz  {0}/metrics",
        running.url()
    );
    running.wait_for_signal().await;
    ExitCode::SUCCESS
}

/// Logs to stdout, filtered by `COZMIC_LOG` (default `info`): JSON lines
/// with `COZMIC_LOG_FORMAT=json`, else text, coloured only on a terminal.
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt().with_env_filter(
        EnvFilter::try_from_env("COZMIC_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
    );
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}

/// `cozmic promote EMAIL`: flags a student as admin (they then see
/// `/admin/health` when signed in). An operator's command on the server, on
/// purpose: no web request can grant it.
async fn promote(config: cozmic::config::Config, email: &str, admin: bool) -> ExitCode {
    let result = async {
        let monitor = selfheal::health::Monitor::builder()
            .with_global(false)
            .build()?;
        let db = cozmic::db::Db::open(&config, &monitor).await?;
        let found = db.set_admin(email, admin).await?;
        db.close().await;
        anyhow::Ok(found)
    }
    .await;
    match result {
        Ok(true) => {
            println!(
                "{email} is {}an admin",
                if admin { "now " } else { "no longer " }
            );
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("cozmic: no student signed up with {email}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("cozmic: {}", selfheal::web::redact(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}

/// `cozmic review --days N`: the guide's monthly review ("review health
/// logs monthly; look for recurring error patterns") of the whole fleet,
/// from the health ledger in the app's database, as Markdown on stdout.
async fn review(config: cozmic::config::Config, days: u32) -> ExitCode {
    let result = async {
        let monitor = selfheal::health::Monitor::builder()
            .with_global(false)
            .build()?;
        let db = cozmic::db::Db::open(&config, &monitor).await?;
        let ledger = selfheal::health::ledger::Ledger::builder(db.ledger_pool(), &monitor)
            .with_instance("cozmic-review")
            .build()?;
        let review = ledger.review(days).await?;
        db.close().await;
        anyhow::Ok(review.markdown)
    }
    .await;
    match result {
        Ok(markdown) => {
            print!("{markdown}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cozmic: {}", selfheal::web::redact(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}
