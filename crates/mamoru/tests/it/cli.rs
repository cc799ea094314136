//! `mamoru init`, configuration errors, `--help`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::*;

#[test]
fn init_writes_config_and_private_keys_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("site");
    let out = Command::new(BIN).arg("init").arg(&target).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(target.join("mamoru.toml")).unwrap();
    assert!(config.contains("音戸・倉橋地区") && config.contains("lmtp_listen"), "{config}");
    for k in ["token.key", "address.key", "index.key"] {
        let meta = std::fs::metadata(target.join("data/keys").join(k)).unwrap();
        assert_eq!(meta.len(), 32);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{k}");
    }
    let key_before = std::fs::read(target.join("data/keys/token.key")).unwrap();

    let again = Command::new(BIN).arg("init").arg(&target).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(target.join("data/keys/token.key")).unwrap(), key_before);
    assert_eq!(std::fs::read_to_string(target.join("mamoru.toml")).unwrap(), config);

    // The written config is valid as it stands.
    let q = Command::new(BIN).arg("-c").arg(target.join("mamoru.toml")).args(["queue", "--json"]).output().unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_eq!(String::from_utf8_lossy(&q.stdout).trim(), r#"{"age_buckets_min":[5,10,20,40,80,160,320,640,1280],"deferred":[],"holders":[],"imap":[],"learned":[],"outbox":[],"pools":[],"suspended":[],"unfinished_registrations_7d":[]}"#);
}

#[test]
fn a_bad_config_fails_at_start_naming_the_key() {
    for (text, key) in [
        ("[web]\nlisten = \"nowhere\"\n", "web.listen"),
        ("[ingest]\nlmtp_lisen = \"127.0.0.1:1\"\n", "lmtp_lisen"),
        ("[relay]\ntransport = \"carrier-pigeon\"\n", "relay.transport"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mamoru.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(BIN).arg("-c").arg(&config).arg("serve").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{text}: {err}");
        assert!(!dir.path().join("data").exists(), "nothing created before the config is valid");
    }
    let out = Command::new(BIN).args(["-c", "/nonexistent/mamoru.toml", "serve"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mamoru.toml"));
}

/// A carrier route or an alert authentication policy that does not parse
/// stops the program like any bad value (exit 1; the pipe command 75): the
/// route never becomes the relay's transport, the policy never a default.
/// The message names the key and the shape, not the value.
#[test]
fn a_bad_route_or_alert_policy_stops_the_program_without_repeating_the_value() {
    for (text, key, shape, value) in [
        ("[carriers.au]\nroute = \"smtp://relay.example\"\n", "carriers.au.route", "smtp://HOST:PORT", "relay.example"),
        ("[alerts]\nrequire = \"SASL\"\n", "alerts.require", "\"sasl-or-dkim\", \"sasl\" or \"dkim\"", "SASL"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mamoru.toml");
        std::fs::write(&config, text).unwrap();
        for (args, code) in [(&["serve"][..], 1), (&["relay"], 1), (&["ingest", "--sender", "a@b.test", "--recipient", "ans@localhost"], 75)] {
            let out = Command::new(BIN).arg("-c").arg(&config).args(args).stdin(std::process::Stdio::null()).output().unwrap();
            assert_eq!(out.status.code(), Some(code), "{text} {args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&format!("config key `{key}`")) && err.contains(shape), "{text} {args:?}: {err}");
            assert!(!err.contains(value), "{text} {args:?}: {err}");
        }
        assert!(!dir.path().join("data").exists(), "nothing created before the config is valid");
    }
}

#[test]
fn every_command_has_help() {
    for args in [&["--help"][..], &["init", "--help"], &["serve", "--help"], &["ingest", "--help"], &["relay", "--help"], &["queue", "--help"]] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"), "{args:?}");
    }
}
