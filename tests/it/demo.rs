//! The demo page at `/demo` and the supabase-js build it loads (`/vendor/supabase.js`, vendored
//! in static/vendor/). The page in a real browser is tests/browser/demo.test.mjs.

use crate::inspector::get;
use crate::support::*;

const DEMO: &str = include_str!("../../static/demo.html");
const VENDORED: &str = include_str!("../../static/vendor/supabase.js");
const JS_LOCK: &str = include_str!("../js/package-lock.json");

#[tokio::test]
async fn demo_and_the_vendored_supabase_js_are_served() {
    let relay = start_relay().await;
    let (status, headers, body) = get(relay.addr, "/demo").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: text/html; charset=utf-8"),
        "{headers}"
    );
    assert!(body == DEMO, "/demo is static/demo.html");

    let (status, headers, body) = get(relay.addr, "/vendor/supabase.js").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("content-type: application/javascript"),
        "{headers}"
    );
    assert!(
        body == VENDORED,
        "/vendor/supabase.js is static/vendor/supabase.js"
    );
    relay.stop().await;
}

/// The page loads the vendored build, nothing from elsewhere, and uses the relay's names.
#[test]
fn demo_is_self_contained_and_speaks_the_app_names() {
    assert!(DEMO.contains(r#"<script src="vendor/supabase.js"></script>"#));
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "<link "] {
        assert!(!DEMO.contains(external), "external resource: {external}");
    }
    for needle in [
        "\"polls-changes\"",
        "\"button-presence\"",
        "\"active-holds\"",
        "\"statistics\"",
        "api/v1/polls?status=active",
        "api/v1/holds/active",
        "api/v1/stats",
        "api/v1/profiles",
        "\"poll_ms\"",
        "HOLD_MS = 3000",
        // The empty state says how to get a poll to vote on.
        r#"curl -X POST http://127.0.0.1:4000/api/v1/polls -H 'Content-Type: application/json' -d '{"question": "Tabs or spaces?", "options": ["Tabs", "Spaces"], "status": "active"}'"#,
        "POST /api/v1/polls/{id}/open",
    ] {
        assert!(DEMO.contains(needle), "{needle} missing from the page");
    }
}

/// The vendored build is the version the supabase-js suite tests, so the two cannot drift:
/// update both together (`npm ci` in tests/js, then copy dist/umd/supabase.js with the header).
#[test]
fn vendored_supabase_js_is_the_tested_version() {
    let header = VENDORED.lines().next().expect("a header line");
    let lock: serde_json::Value = serde_json::from_str(JS_LOCK).expect("package-lock.json");
    let version = lock["packages"]["node_modules/@supabase/supabase-js"]["version"]
        .as_str()
        .expect("supabase-js in tests/js/package-lock.json");
    assert!(
        header.starts_with(&format!("/*! @supabase/supabase-js {version} ")),
        "the vendored header {header:?} does not name version {version}"
    );
    assert!(header.contains("MIT License"), "{header}");
}
