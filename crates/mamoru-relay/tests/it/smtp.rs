//! The `smtp://` transport against Postfix's smtp-sink.

use super::*;

const T: Duration = Duration::from_secs(15);

/// Waits until the row has been tried at least once and put back in the queue.
async fn wait_deferred(env: &Env, id: mamoru_core::OutboxId) -> Row {
    wait_for(&format!("row {id} to be deferred"), T, || {
        let row = env.row(id);
        if row.state == "queued" && row.attempts >= 1 { Ok(row) } else { Err(format!("last seen: {row:?}")) }
    })
    .await
}

/// Waits until the sink has seen a session end, and returns its counters.
async fn wait_session_end(sink: &Sink) -> (u32, u32, u32) {
    wait_for("the relay to end its session", T, || match sink.counters() {
        Some(c) if c.0 >= 1 => Ok(c),
        other => Err(format!("counters: {other:?}")),
    })
    .await
}

async fn assert_delivered_intact(sink: &Sink, q: &Queued, rcpt: &str) {
    let expected = as_dumped(&q.content);
    let dump = sink.wait_dump(&q.message_id, &expected).await;
    assert_eq!(String::from_utf8_lossy(&dump.message), String::from_utf8_lossy(&expected));
    assert_eq!(dump.message, expected);
    assert!(dump.envelope.contains(&format!("X-Rcpt-Args: <{rcpt}>")), "{:?}", dump.envelope);
    assert!(dump.envelope.contains(&format!("X-Helo-Args: {DOMAIN}")), "{:?}", dump.envelope);
    let mail_args = format!("X-Mail-Args: <{SENDER}>");
    assert!(dump.envelope.iter().any(|l| l.starts_with(&mail_args)), "{:?}", dump.envelope);
    if !q.content.is_ascii() {
        assert!(dump.envelope.contains(&format!("{mail_args} BODY=8BITMIME")), "{:?}", dump.envelope);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_carrier_addresses_byte_for_byte_over_one_session() {
    let env = Env::new();
    let rcpts = ["taro..yamada.@docomo.ne.jp", "hanako.@ezweb.ne.jp", "Parent@i.softbank.jp"];
    let rows = [env.queue_tricky(rcpts[0]), env.queue_rendered(rcpts[1]), env.queue_tricky(rcpts[2])];
    let port = free_port();
    let sink = Sink::start(port, &[]).await;
    let relay = env.relay(smtp(port), fast(1));
    for r in &rows {
        let row = env.wait_state(r.id, "sent", T).await;
        assert_eq!((row.attempts, row.last_error.as_str()), (1, ""));
    }
    for (r, rcpt) in rows.iter().zip(rcpts) {
        assert_delivered_intact(&sink, r, rcpt).await;
    }
    // The drain reused one connection and ended it with QUIT when idle.
    assert_eq!(wait_session_end(&sink).await, (1, 1, 3));
    relay.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_defers_with_backoff_and_the_retry_delivers() {
    let env = Env::new();
    let q = env.queue_tricky("a..b.@docomo.ne.jp");
    let port = free_port();
    let refusing = Sink::start(port, &["-r", "RCPT"]).await;
    // A base of 2 s: with ±20 % jitter the first delay rounds to exactly 2 s.
    let relay = env.relay(smtp(port), fast(2));
    let deferred = wait_deferred(&env, q.id).await;
    let seen_at = mamoru_core::now();
    assert_eq!(deferred.attempts, 1);
    assert_eq!(deferred.last_error, "450 4.3.0 Error: command failed (after RCPT TO)");
    assert!(deferred.next_attempt_at > seen_at, "{deferred:?} seen at {seen_at}");
    refusing.stop();

    let sink = Sink::start(port, &[]).await;
    let sent = env.wait_state(q.id, "sent", T).await;
    assert!(sent.attempts >= 2, "{sent:?}");
    assert!(sent.done_at >= deferred.next_attempt_at, "sent before the retry time: {sent:?} vs {deferred:?}");
    assert_delivered_intact(&sink, &q, "a..b.@docomo.ne.jp").await;
    relay.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_fails_with_the_reply_kept_masked_and_the_session_survives() {
    let env = Env::new();
    let rcpt = "taro..yamada.@docomo.ne.jp";
    let rows = [env.queue_tricky(rcpt), env.queue_tricky(rcpt)];
    let port = free_port();
    let reply = format!("550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown");
    let sink = Sink::start(port, &["-f", "RCPT", "-B", &reply]).await;
    let relay = env.relay(smtp(port), fast(1));
    for r in &rows {
        let row = env.wait_state(r.id, "failed", T).await;
        assert_eq!(row.attempts, 1);
        // The reply is kept, with the echoed address masked (no address in
        // clear in the database).
        assert_eq!(
            row.last_error,
            "550 5.1.1 <t***@docomo.ne.jp>: Recipient address rejected: User unknown (after RCPT TO)"
        );
    }
    // Both refusals in one session: RSET after a 550, not a reconnect.
    assert_eq!(wait_session_end(&sink).await, (1, 1, 0));
    relay.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_defers_until_the_server_is_up() {
    let env = Env::new();
    let q = env.queue_tricky("hanako.@ezweb.ne.jp");
    let port = free_port();
    let relay = env.relay(smtp(port), fast(1));
    let deferred = wait_deferred(&env, q.id).await;
    assert!(deferred.last_error.contains("Connection refused"), "{deferred:?}");

    let sink = Sink::start(port, &[]).await;
    let sent = env.wait_state(q.id, "sent", T).await;
    assert!(sent.attempts >= 2, "{sent:?}");
    assert_delivered_intact(&sink, &q, "hanako.@ezweb.ne.jp").await;
    relay.stop(Duration::from_secs(5)).await;
}

/// Starts a sink with `args`, queues one message and checks that the relay
/// defers it with a reason containing `reason`.
async fn check_deferred(args: &[&str], reason: &str) {
    let env = Env::new();
    let q = env.queue_tricky("x@au.com");
    let port = free_port();
    let _sink = Sink::start(port, args).await;
    let relay = env.relay(smtp(port), fast(1));
    let deferred = wait_deferred(&env, q.id).await;
    assert!(deferred.last_error.contains(reason), "{deferred:?}");
    assert!(deferred.next_attempt_at > deferred.done_at);
    relay.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_defers() {
    check_deferred(&["-Q", "RCPT"], "421").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_the_final_dot_defers() {
    check_deferred(&["-q", "."], "(after end of data)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_message_in_flight_and_requeues_the_rest() {
    let env = Env::new();
    let first = env.queue_tricky("a@docomo.ne.jp");
    let second = env.queue_tricky("b@docomo.ne.jp");
    let port = free_port();
    // The sink holds its reply to DATA for a second.
    let sink = Sink::start(port, &["-w", "1"]).await;
    let relay = env.relay(smtp(port), fast(1));
    // The sink opens a dump file at MAIL FROM: the first transaction is under way.
    wait_for("a transaction to begin", T, || {
        if sink.dump_files().is_empty() { Err("no transaction yet".into()) } else { Ok(()) }
    })
    .await;
    relay.stop(Duration::from_secs(10)).await;

    assert_eq!(env.row(first.id).state, "sent");
    assert_delivered_intact(&sink, &first, "a@docomo.ne.jp").await;
    let rest = env.row(second.id);
    assert_eq!((rest.state.as_str(), rest.last_error.as_str()), ("queued", "relay stopped before trying this message"));
    assert!(rest.next_attempt_at <= mamoru_core::now(), "due at once for the next start: {rest:?}");
    assert_eq!(sink.dump_files().len(), 1, "the second message was not started");
}
