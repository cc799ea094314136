//! DKIM signatures checked by an independent verifier: Debian's
//! python3-dkim (dkimpy), with the public keys served by a DNS callback, so
//! no DNS is used. Both algorithms: ed25519 (our generated key) and
//! rsa-sha256 (a key made by openssl, as an operator would).

use std::process::Command;

use mamoru_relay::dkim::{Dkim, RSA_FILE};

use super::*;

/// Debian's python, where python3-dkim is installed (a pyenv python on the
/// PATH would not see it).
const PYTHON: &str = "/usr/bin/python3";

const VERIFY: &str = r#"
import sys, dkim
msg = open(sys.argv[1], 'rb').read()
records = {sys.argv[2].encode(): sys.argv[3].encode(), sys.argv[4].encode(): sys.argv[5].encode()}
def dns(name, timeout=5):
    return records.get(name.rstrip(b'.'), None)
d = dkim.DKIM(msg)
sigs = [l for l in msg.split(b'\r\n\r\n')[0].split(b'\r\n') if l.lower().startswith(b'dkim-signature:')]
print(' '.join(str(d.verify(idx=i, dnsfunc=dns)) for i in range(len(sigs))))
"#;

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().expect("openssl (scripts/install-test-deps installs it)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn verify(eml: &Path, rsa: &(String, String), ed: &(String, String)) -> String {
    let out = Command::new(PYTHON)
        .args(["-c", VERIFY])
        .arg(eml)
        .args([&rsa.0, &rsa.1, &ed.0, &ed.1])
        .output()
        .expect("python3 with python3-dkim (scripts/install-test-deps installs it)");
    assert!(out.status.success(), "dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_dkimpy_for_rsa_and_ed25519() {
    let env = Env::new();
    let keys = mamoru_store::keys::keys_dir(env.dir.path());
    let rsa_path = keys.join(RSA_FILE);
    let rsa_path = rsa_path.to_str().expect("utf-8 path");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER", "-out", rsa_path]);
    let spki = openssl(&["pkey", "-inform", "DER", "-in", rsa_path, "-pubout", "-outform", "DER"]);
    let rsa_record = (format!("mamoru._domainkey.{DOMAIN}"), format!("v=DKIM1; k=rsa; p={}", base64_std(&spki)));

    let dkim = Dkim::load_or_create(&keys, DOMAIN, "mamoru").expect("dkim keys");
    assert!(dkim.has_rsa());
    let ed_record = dkim.ed25519_record().clone();
    assert_eq!(ed_record.0, format!("mamoru-ed25519._domainkey.{DOMAIN}"));
    let mode = fs::metadata(keys.join(mamoru_relay::dkim::ED25519_FILE)).expect("key file").permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);

    let q = env.queue_rendered("taro..yamada.@docomo.ne.jp");
    let relay = Arc::new(Relay {
        store: Arc::clone(&env.store),
        transport: Transport::File,
        data_dir: env.dir.path().to_path_buf(),
        settings: fast(1),
        hostname: DOMAIN.into(),
        pools: mamoru_core::carriers::default_carriers(),
        verp_key: None,
        dkim: Some(dkim),
        alerts: env.app(),
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(mamoru_relay::run(relay, Arc::new(Notify::new()), shutdown.clone()));
    env.wait_state(q.id, "sent", Duration::from_secs(15)).await;
    shutdown.cancel();
    task.await.expect("join").expect("relay");

    let eml = env.dir.path().join("mail").join(mamoru_relay::file::file_name(q.id, &q.message_id));
    let signed = fs::read(&eml).expect("eml");
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=rsa-sha256;"), "{}", String::from_utf8_lossy(&signed[..80]));
    assert!(signed.ends_with(&q.content), "the message itself is unchanged");
    // The signature headers are folded: no line beyond RFC 5322's 998.
    assert!(signed.split(|&b| b == b'\n').all(|l| l.len() <= 998), "a signature line is too long");
    assert_eq!(verify(&eml, &rsa_record, &ed_record), "True True");

    // The check can fail: a changed subject breaks both signatures.
    let text = String::from_utf8_lossy(&signed).replacen("\r\nSubject:", "\r\nSubject: X", 1);
    let forged = env.dir.path().join("forged.eml");
    fs::write(&forged, text).expect("write");
    assert_eq!(verify(&forged, &rsa_record, &ed_record), "False False");
}

pub fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
