//! What every command needs: the configuration, logging, the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mamoru_core::Config;
use mamoru_core::config::LogFormat;
use mamoru_store::{Keys, Store};

pub const DEFAULT_CONFIG: &str = "mamoru.toml";

/// Loads `path`, or `./mamoru.toml` if it exists, or the built-in defaults.
pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
    let (path, explicit) = match path {
        Some(p) => (p.to_path_buf(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    if !explicit && !path.exists() {
        return Ok(Config::defaults(&std::env::current_dir().context("working directory")?));
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("read config {}", path.display()))?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = std::path::absolute(base).context("resolve config directory")?;
    Config::from_toml(&text, &base).with_context(|| format!("invalid config {}", path.display()))
}

/// Logs go to stderr, one line per event; `RUST_LOG` filters (default
/// `default`). `format` is `[log] format`, which `MAMORU_LOG_FORMAT`
/// (`text` or `json`) overrides; a value of it that is neither is ignored
/// with a warning.
pub fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let env = std::env::var("MAMORU_LOG_FORMAT").ok();
    let from_env = env.as_deref().map(LogFormat::parse);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match from_env.flatten().unwrap_or(format) {
        // One JSON object per line: the event's fields flattened next to
        // `timestamp`, `level` and `message`, the spans' fields in `spans`.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(true).try_init(),
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
    };
    if from_env == Some(None) {
        tracing::warn!("MAMORU_LOG_FORMAT must be \"text\" or \"json\"; using [log] format");
    }
}

/// Creates the data dir if needed (0700), loads or creates the keys, opens
/// and migrates the database.
pub fn open_store(cfg: &Config) -> anyhow::Result<(Arc<Store>, Keys)> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.data_dir)
        .with_context(|| format!("create data dir {}", cfg.data_dir.display()))?;
    let keys = mamoru_store::keys::load_or_create(&cfg.data_dir).context("load keys")?;
    let wait = Duration::from_millis(cfg.store.busy_timeout_ms);
    let store = if cfg.store.url.is_empty() {
        Store::open(&cfg.data_dir, &keys, wait).context("open database")?
    } else {
        // The URL may hold a password: it is never part of a message.
        let ca = Some(std::path::Path::new(&cfg.store.tls_ca_file)).filter(|p| !p.as_os_str().is_empty());
        Store::open_postgres_with(&cfg.store.url, ca, &keys, wait).context("open the PostgreSQL database of [store] url")?
    };
    Ok((Arc::new(store), keys))
}
