//! Clickpulse's webhook signatures verified by the Standard Webhooks spec's own library (npm
//! `standardwebhooks`, what a shop's receiver uses): a message signed with one secret, one
//! signed during a rotation with two, and tampered ones, which it must refuse.

use clickpulse_components::sinks::webhook::signature::{Secret, signature_header};
use serde_json::json;

#[test]
fn the_spec_s_library_verifies_what_clickpulse_signs_and_refuses_tampering() {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (current, previous) = (Secret::generate(), Secret::generate());
    let body = r#"{"type":"offer","offer_id":"3f2a","visitor":"v-1","pattern":"cart-abandonment"}"#;
    let message = |secrets: &[Secret], verify_with: &Secret, id: &str, ts: i64, sent: &str| {
        json!({
            "secret": verify_with.to_text(),
            "headers": {
                "webhook-id": id,
                "webhook-timestamp": ts.to_string(),
                "webhook-signature": signature_header(secrets, id, ts, body.as_bytes()),
            },
            "body": sent,
        })
    };
    let both = [current.clone(), previous.clone()];
    let messages = json!([
        message(
            std::slice::from_ref(&current),
            &current,
            "3f2a",
            now_s,
            body
        ),
        // During a rotation the receiver may still hold the previous secret, or already the new.
        message(&both, &previous, "3f2a", now_s, body),
        message(&both, &current, "3f2a", now_s, body),
        // Tampered: another body, another id, an old timestamp, a secret it was not signed with.
        message(&both, &current, "3f2a", now_s, &body.replace("v-1", "v-2")),
        json!({
            "secret": current.to_text(),
            "headers": {
                "webhook-id": "other",
                "webhook-timestamp": now_s.to_string(),
                "webhook-signature": signature_header(&both, "3f2a", now_s, body.as_bytes()),
            },
            "body": body,
        }),
        message(&both, &current, "3f2a", now_s - 3600, body),
        message(
            std::slice::from_ref(&previous),
            &current,
            "3f2a",
            now_s,
            body
        ),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("messages.json");
    std::fs::write(&file, messages.to_string()).unwrap();
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let out = std::process::Command::new("node")
        .arg(browser.join("verify-webhook.mjs"))
        .arg(&file)
        .current_dir(&browser)
        .output()
        .expect("node runs (scripts/test.sh installs the npm packages)");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 7, "{stdout}");
    assert_eq!(&lines[..3], ["ok", "ok", "ok"], "{stdout}");
    for refused in &lines[3..] {
        assert!(refused.starts_with("refused: "), "{stdout}");
    }
}
