//! Server-side filters end to end: every operator, `not.`, AND, quoting and typed comparison,
//! evaluated against rows the real triggers produce.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A table with one column per interesting type, published by attaching the trigger.
const PROBE_TABLE: &str = "
    CREATE TABLE public.probe (
        id      int8 PRIMARY KEY,
        n       int4,
        label   text,
        price   numeric,
        at      timestamptz,
        day     date,
        flag    bool,
        uid     uuid,
        meta    jsonb
    );
    CREATE TRIGGER pgrelay_notify AFTER INSERT OR UPDATE OR DELETE ON public.probe
        FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change();";

const ROWS: &str = "
    INSERT INTO probe VALUES
      (1, 9,    'apple',     1.50, '2026-01-01T10:00:00Z', '2026-01-01', true,  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\":1}'),
      (2, 10,   'Banana',    2.5,  '2026-01-01T12:00:00+02:00', '2026-01-02', false, 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '{\"k\":2}'),
      (3, 100,  'a,b',       10,   '2026-06-01T00:00:00Z', '2026-06-01', null,  null, null),
      (4, null, null,        null, null, null, null, null, null),
      (5, -3,   'say \"hi\"', 0.1,  '2025-12-31T23:59:59.999Z', '2025-12-31', true, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '[1,2]')";

#[tokio::test]
async fn every_operator_matches_like_sql() {
    let relay = start_relay().await;
    let db = relay.db().await;
    db.batch_execute(PROBE_TABLE).await.unwrap();

    // filter → ids of ROWS it must match (as SQL would, with NULL failing all but is/isdistinct).
    let cases: Vec<(&str, Vec<i64>)> = vec![
        ("n=eq.10", vec![2]),
        ("n=neq.10", vec![1, 3, 5]),
        ("n=not.eq.10", vec![1, 3, 5]),
        ("n=gt.9", vec![2, 3]), // numeric, not text ('10' < '9' as text)
        ("label=gt.a", vec![1, 3, 5]), // text, byte order: 'B' < 'a'
        ("n=gte.10", vec![2, 3]),
        ("n=lt.10", vec![1, 5]),
        ("n=lte.-3", vec![5]),
        ("n=not.lt.10", vec![2, 3]),
        ("n=in.(9,100)", vec![1, 3]),
        ("n=not.in.(9,100)", vec![2, 5]),
        ("label=in.(apple, \"a,b\")", vec![1, 3]),
        ("label=eq.\"a,b\"", vec![3]),
        ("label=eq.\"say \\\"hi\\\"\"", vec![5]),
        ("label=like.a%", vec![1, 3]),
        ("label=ilike.b%", vec![2]),
        ("label=not.like.a%", vec![2, 5]),
        ("label=match.^[ab]", vec![1, 3]),
        ("label=imatch.^B", vec![2]),
        ("label=is.null", vec![4]),
        ("label=not.is.null", vec![1, 2, 3, 5]),
        ("flag=is.true", vec![1, 5]),
        ("flag=is.false", vec![2]),
        ("flag=is.unknown", vec![3, 4]),
        ("flag=eq.true", vec![1, 5]),
        ("n=isdistinct.10", vec![1, 3, 4, 5]),
        ("n=not.isdistinct.10", vec![2]),
        ("price=eq.2.50", vec![2]), // numeric equality ignores scale
        ("price=gt.1.5", vec![2, 3]),
        ("at=eq.2026-01-01T10:00:00Z", vec![1, 2]), // same instant, other zone
        ("at=lt.2026-01-01", vec![5]),
        ("at=gte.2026-01-01 10:00:00+00", vec![1, 2, 3]),
        ("day=eq.2026-01-02", vec![2]),
        ("uid=eq.A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", vec![1, 5]),
        ("meta=eq.{\"k\":1}", vec![1]),
        ("n=gt.0,n=lt.50", vec![1, 2]), // AND
        ("n=gt.0,label=like.%a%", vec![1, 2, 3]),
        ("id=eq.4", vec![4]),
    ];
    let mut ws = relay.ws("2.0.0").await;
    let mut topics = BTreeMap::new();
    for (i, (filter, _)) in cases.iter().enumerate() {
        let topic = format!("realtime:f{i}");
        ws.subscribe(
            &topic,
            json!([{"event":"INSERT","schema":"public","table":"probe","filter":filter}]),
        )
        .await;
        topics.insert(topic, i);
    }
    db.batch_execute(ROWS).await.unwrap();

    let mut got: BTreeMap<usize, BTreeSet<i64>> = BTreeMap::new();
    while let Some(f) = ws.try_recv(Duration::from_millis(1500)).await {
        assert_eq!(f.event, "postgres_changes", "{f:?}");
        let i = topics[&f.topic];
        let id = f.payload["data"]["record"]["id"].as_i64().unwrap();
        assert!(got.entry(i).or_default().insert(id), "duplicate delivery");
    }
    let mut failures = Vec::new();
    for (i, (filter, want)) in cases.iter().enumerate() {
        let want: BTreeSet<i64> = want.iter().copied().collect();
        let have = got.remove(&i).unwrap_or_default();
        if have != want {
            failures.push(format!("{filter}: want {want:?}, got {have:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "filter mismatches:\n{}",
        failures.join("\n")
    );
    relay.stop().await;
}

#[tokio::test]
async fn filter_limits_and_type_errors_are_reported() {
    let relay = start_relay().await;
    let db = relay.db().await;
    db.batch_execute(PROBE_TABLE).await.unwrap();
    let hundred: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let hundred_one: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let exception = |f: &str, e: &str| {
        format!(
            "Unable to subscribe to changes with given parameters. An exception happened so please check your connect parameters: [event: *, schema: public, table: probe, filters: [{f}]]. Exception: ERROR P0001 (raise_exception) {e}"
        )
    };
    let f101 = format!("n=in.({})", hundred_one.join(","));
    let cases = vec![
        (format!("n=in.({})", hundred.join(",")), None),
        (f101.clone(), Some(exception(&f101, "too many values for `in` filter. Maximum 100"))),
        ("n=eq.abc".into(), Some(exception("n=eq.abc", "invalid input for type int4: \"abc\""))),
        (
            "n=like.1%".into(),
            Some(exception(
                "n=like.1%",
                "operator like requires a text-compatible column type, got int4",
            )),
        ),
        ("n=in.1,2".into(), Some("Error parsing `filter` params: `in` filter value must be wrapped by parentheses".into())),
        ("n=eq.1,,n=eq.2".into(), Some("Error parsing `filter` params: filter must not contain empty segments (check for extra commas)".into())),
        ("undefined".into(), Some("Error parsing `filter` params: [\"undefined\"]".into())),
        ("   ".into(), None),
    ];
    let mut ws = relay.ws("2.0.0").await;
    for (i, (filter, error)) in cases.into_iter().enumerate() {
        let (_, reply) = ws
            .join(
                &format!("realtime:e{i}"),
                json!([{"event":"*","schema":"public","table":"probe","filter":filter}]),
            )
            .await;
        assert_eq!(reply["status"], "ok");
        let sys = ws.recv().await;
        assert_eq!(sys.event, "system");
        match error {
            None => assert_eq!(sys.payload["status"], "ok", "{filter}: {sys:?}"),
            Some(msg) => {
                assert_eq!(sys.payload["status"], "error", "{filter}");
                assert_eq!(sys.payload["message"], msg.as_str(), "{filter}");
            }
        }
    }
    // 10,000 conditions: refused with a clear message, socket unaffected.
    let huge: Vec<String> = (0..10_000).map(|i| format!("n=neq.{i}")).collect();
    let (_, reply) = ws
        .join(
            "realtime:huge",
            json!([{"event":"*","schema":"public","table":"probe","filter":huge.join(",")}]),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let sys = ws.recv().await;
    assert_eq!(sys.payload["status"], "error");
    assert!(
        sys.payload["message"].as_str().unwrap().contains("Maximum"),
        "{sys:?}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn wildcard_schema_and_table_bindings() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let mut ws = relay.ws("2.0.0").await;
    ws.subscribe(
        "realtime:everything",
        json!([{"event":"INSERT","schema":"public","table":"*"}]),
    )
    .await;
    ws.subscribe(
        "realtime:schema-only",
        json!([{"event":"*","schema":"public"}]),
    )
    .await;
    ws.subscribe(
        "realtime:table-only",
        json!([{"event":"*","table":"profiles"}]),
    )
    .await;
    db.execute("INSERT INTO profiles (username) VALUES ('w')", &[])
        .await
        .unwrap();
    let mut topics = BTreeSet::new();
    for _ in 0..3 {
        let f = ws.recv_event("postgres_changes").await;
        assert_eq!(f.payload["data"]["table"], "profiles");
        topics.insert(f.topic);
    }
    assert_eq!(
        topics,
        [
            "realtime:everything",
            "realtime:schema-only",
            "realtime:table-only"
        ]
        .map(String::from)
        .into_iter()
        .collect()
    );
    db.execute("INSERT INTO polls (question) VALUES ('w?')", &[])
        .await
        .unwrap();
    let mut topics = BTreeSet::new();
    for _ in 0..2 {
        let f = ws.recv_event("postgres_changes").await;
        assert_eq!(f.payload["data"]["table"], "polls");
        topics.insert(f.topic);
    }
    assert!(!topics.contains("realtime:table-only"));
    ws.expect_silence(Duration::from_millis(300)).await;
    relay.stop().await;
}
