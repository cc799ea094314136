//! `mamoru init [DIR]`: a commented config and fresh keys, never overwriting.

use std::io::Write as _;

use anyhow::Context as _;
use mamoru_core::config::TEMPLATE;

use crate::cli::InitArgs;
use crate::setup::DEFAULT_CONFIG;

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let config = args.dir.join(DEFAULT_CONFIG);
    let data = args.dir.join("data");
    if config.exists() {
        anyhow::bail!("{} already exists; not overwriting it", config.display());
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&data)
            .with_context(|| format!("create {}", data.display()))?;
    }
    mamoru_store::keys::create_new(&data).context("create keys")?;
    // The DKIM key too, so it can be published in DNS before the first start
    // (the record file is rewritten with the configured domain at start).
    let defaults = mamoru_core::Config::default();
    mamoru_relay::dkim::Dkim::load_or_create(&mamoru_store::keys::keys_dir(&data), &defaults.domain, &defaults.relay.dkim_selector)
        .context("create DKIM key")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&config)
        .with_context(|| format!("create {}", config.display()))?;
    f.write_all(TEMPLATE.as_bytes()).and_then(|()| f.sync_all()).with_context(|| format!("write {}", config.display()))?;
    println!("wrote {}", config.display());
    println!("wrote keys in {} (mode 0600; back them up: without them the addresses cannot be read)", mamoru_store::keys::keys_dir(&data).display());
    println!("next: edit domain and public_url, then run: mamoru -c {} serve", config.display());
    Ok(())
}
