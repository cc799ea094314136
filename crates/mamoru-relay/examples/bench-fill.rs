//! Fills an outbox for the relay benchmarks (`scripts/bench-relay`):
//! `bench-fill DATA_DIR COUNT BYTES DOMAIN[,DOMAIN...] [UNKNOWN_FRACTION]`
//! queues COUNT single-recipient messages of about BYTES each, spread over
//! the domains in turn, in one transaction. Message-IDs are `bench{N}@bench.test`.

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        return Err("usage: bench-fill DATA_DIR COUNT BYTES DOMAIN[,DOMAIN...]".into());
    }
    let dir = std::path::Path::new(&args[1]);
    let count: usize = args[2].parse()?;
    let size: usize = args[3].parse()?;
    let domains: Vec<&str> = args[4].split(',').collect();
    std::fs::create_dir_all(dir)?;
    let keys = mamoru_store::keys::load_or_create(dir)?;
    let store = mamoru_store::Store::open(dir, &keys, Duration::from_secs(30))?;
    let body_line = "不審者情報：本日午後、中央小学校付近で声かけ事案がありました。\r\n";
    let now = mamoru_core::now();
    let mut batch = Vec::with_capacity(1000);
    for i in 0..count {
        let domain = domains[i % domains.len()];
        let to = mamoru_core::EmailAddress::parse(&format!("parent{i}@{domain}"))?;
        let mid = format!("bench{i}@bench.test");
        let mut text = format!(
            "From: <alert@bench.test>\r\nTo: <{to}>\r\nSubject: bench\r\nMessage-ID: <{mid}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        );
        while text.len() + body_line.len() < size {
            text.push_str(body_line);
        }
        batch.push(mamoru_core::mail::OutgoingMail {
            kind: mamoru_core::mail::MailKind::RegistrationReceived,
            sender: "alert@bench.test".into(),
            to,
            message_id: mid,
            bytes: text.into_bytes(),
        });
        if batch.len() == 1000 {
            store.queue_many(&batch, 0, now, now + 86_400)?;
            batch.clear();
        }
    }
    store.queue_many(&batch, 0, now, now + 86_400)?;
    println!("queued {count} messages");
    Ok(())
}
