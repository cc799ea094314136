//! The `file` transport: each message becomes `DATA_DIR/mail/<id>-<message-id>.eml`,
//! so a newcomer sees the mail without any MTA.
//!
//! **Invariant:** a file under its final name is complete and on disk. It is
//! written under a temporary name in the same directory, synced, renamed into
//! place and the directory synced, so a crash leaves either nothing or the
//! whole message. Files are 0600 in a 0700 directory: they hold an address.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mamoru_store::{OutboxId, QueuedMail};

use crate::DeliveryOutcome;

/// Name of the directory under the data dir.
pub const MAIL_DIR: &str = "mail";

pub struct FileHop {
    dir: PathBuf,
}

impl FileHop {
    /// Creates `DATA_DIR/mail` (0700) if needed.
    pub fn new(data_dir: &Path) -> io::Result<Self> {
        let dir = data_dir.join(MAIL_DIR);
        create_dir(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub async fn deliver(&self, mail: &QueuedMail) -> DeliveryOutcome {
        let dir = self.dir.clone();
        let name = file_name(mail.id, &mail.message_id);
        let content = mail.content.clone();
        let shown = name.clone();
        match tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &content)).await {
            Ok(Ok(())) => DeliveryOutcome::Sent,
            Ok(Err(e)) => DeliveryOutcome::Retry { reason: format!("cannot write {shown}: {e}") },
            Err(e) => DeliveryOutcome::Retry { reason: format!("file writer task failed: {e}") },
        }
    }
}

fn create_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// `<outbox id>-<message id>.eml`, the Message-ID reduced to characters that
/// are harmless in a file name (no `/`, no leading dot) and bounded in length.
pub fn file_name(id: OutboxId, message_id: &str) -> String {
    let safe: String = message_id
        .chars()
        .take(100)
        .map(|c| if c.is_ascii_alphanumeric() || "._@+=-".contains(c) { c } else { '_' })
        .collect();
    format!("{id}-{safe}.eml")
}

fn write_atomically(dir: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    // The directory may have been removed while the relay ran.
    create_dir(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover from a crash mid-write is garbage; `create_new` below then
    // guarantees the mode we ask for is the mode the file gets.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_name(OutboxId::new(7), "ab12@mamoru.example"), "7-ab12@mamoru.example.eml");
        assert_eq!(file_name(OutboxId::new(8), "../../etc/passwd"), "8-.._.._etc_passwd.eml");
        assert_eq!(file_name(OutboxId::new(9), "a b\r\n<c>"), "9-a_b___c_.eml");
        assert!(file_name(OutboxId::new(1), &"x".repeat(500)).len() < 120);
    }
}
