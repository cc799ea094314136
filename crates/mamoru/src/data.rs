//! `mamoru backup`: the operator's commands on the data itself.

use anyhow::Context as _;
use mamoru_core::Config;

use crate::cli::BackupArgs;
use crate::setup;

pub fn backup(cfg: Config, args: BackupArgs) -> anyhow::Result<()> {
    let (store, _keys) = setup::open_store(&cfg)?;
    store.backup_to(&args.file).with_context(|| format!("back up the database to {}", args.file.display()))?;
    eprintln!("mamoru: database copied to {}; keep DATA_DIR/keys/ too (and apart from it)", args.file.display());
    Ok(())
}
