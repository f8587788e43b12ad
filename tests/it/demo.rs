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

/// The demo page's token handling, run in Node against the page the relay serves: a JWT in
/// the fragment is taken and removed from the address bar; one in the query is ignored and
/// removed too, so the token never stays in the URL (it used to be read from `?token=`).
#[tokio::test]
async fn the_demo_takes_its_token_from_the_fragment_and_strips_it() {
    let relay = start_relay().await;
    let (_, _, page) = get(relay.addr, "/demo").await;
    relay.stop().await;
    assert!(
        !page.contains("params.get(\"token\")"),
        "the page still reads the token from the query"
    );
    let start = page
        .find("function takeToken()")
        .expect("takeToken in the page");
    let end = start + page[start..].find("\n}\n").expect("end of takeToken") + 3;
    let function = &page[start..end];
    let harness = r#"
        const run = (url, stored) => {
          const u = new URL(url);
          const store = new Map(stored ? [["pgrelay-demo-token", stored]] : []);
          const location = { search: u.search, hash: u.hash, pathname: u.pathname };
          let replaced = null;
          const history = { state: null, replaceState: (_s, _t, to) => { replaced = to; } };
          const sessionStorage = {
            getItem: (k) => store.has(k) ? store.get(k) : null,
            setItem: (k, v) => store.set(k, String(v)),
            removeItem: (k) => store.delete(k),
          };
          const console = { warn: () => {} };
          const params = new URLSearchParams(u.search);
          const TOKEN_KEY = "pgrelay-demo-token";
          const takeToken = new Function(
            "location", "history", "sessionStorage", "console", "params", "TOKEN_KEY",
            FUNCTION + "\nreturn takeToken();");
          const token = takeToken(location, history, sessionStorage, console, params, TOKEN_KEY);
          return { token, replaced, stored: store.get("pgrelay-demo-token") ?? null };
        };
        process.stdout.write(JSON.stringify([
          run("http://r/demo?poll_ms=500#token=abc.def.ghi&x=1"),
          run("http://r/demo?token=leaked&poll_ms=500"),
          run("http://r/demo", "kept"),
          run("http://r/demo#token=", "kept"),
        ]));
    "#
    .replace("FUNCTION", &serde_json::to_string(function).unwrap());
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(&harness)
        .output()
        .expect("node runs (the JS suites need it too)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got,
        serde_json::json!([
            {"token": "abc.def.ghi", "replaced": "/demo?poll_ms=500#x=1", "stored": "abc.def.ghi"},
            {"token": null, "replaced": "/demo?poll_ms=500", "stored": null},
            {"token": "kept", "replaced": null, "stored": "kept"},
            {"token": null, "replaced": "/demo", "stored": null},
        ])
    );
}
