//! One benchmark run: database, relay, clients, writers, the measured window, the drain, and
//! an orderly teardown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clients;
use crate::cpu::{cpu_between, sample};
use crate::db::{self, BenchDb, WriteCounts, WritePlan, HOLD_END, HOLD_START};
use crate::params::{Kind, Params};
use crate::procfs;
use crate::relay::{self, Relay};
use crate::report::Report;
use crate::spec::{client_spec, expected, Interest, PressSchedule};
use crate::stats::{AppStats, ClientStats, RecvStats, Shared};
use crate::ts::now_us;

/// The NOTIFY channel (the relay's default).
const CHANNEL: &str = "pgrelay";
/// Delay between planning the writes and the first write (writers connect meanwhile).
const WRITE_LEAD: Duration = Duration::from_millis(300);
/// The drain ends early when no in-window delivery arrived for this long.
const DRAIN_STALL: Duration = Duration::from_secs(2);
/// How long clients get to close after the run.
const CLIENT_STOP: Duration = Duration::from_secs(30);

/// Run one scenario end to end. The database is dropped whatever happens.
pub(crate) async fn run(p: Params) -> Result<Report, String> {
    let bin = relay::resolve_bin(p.relay_bin.as_deref())?;
    if p.clients > 0 {
        // Our sockets, and the relay (which inherits the limit) holds as many.
        let limit = procfs::ensure_nofile(p.clients as u64 + 1024)?;
        eprintln!("open-files limit: {limit}");
    }
    let db = BenchDb::create(&p.database_url).await?;
    eprintln!("database {}", db.name);
    let result = tokio::select! {
        r = run_in(&p, &bin, &db) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    if let Err(e) = db.drop_db().await {
        eprintln!("warning: {e}");
    }
    result
}

/// Receivers: WebSocket clients, or the baseline's LISTEN session.
enum Receivers {
    Clients(Vec<(Interest, JoinHandle<ClientStats>)>),
    Listen(JoinHandle<(RecvStats, Option<String>)>),
}

async fn run_in(p: &Params, bin: &std::path::Path, db: &BenchDb) -> Result<Report, String> {
    let tck = procfs::clk_tck();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = procfs::loadavg();

    relay::prepare_schema(bin, &db.url).await?;
    let seed = db::seed(&db.url, p.profiles, p.polls).await?;
    let polls = Arc::new(seed.polls);
    let profiles = Arc::new(seed.profiles);

    let relay = if p.kind == Kind::Baseline {
        None
    } else {
        let r = Relay::start(bin, &db.url, &p.relay_log, &p.relay_args).await?;
        eprintln!("relay pid {} listening on {}", r.pid, r.addr);
        Some(r)
    };
    let relay_pid = relay.as_ref().map(|r| r.pid);
    // Let the relay finish starting before the "before" figure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = relay_pid.and_then(procfs::rss_kib);

    let shared = Arc::new(Shared::new(p.workload.keys()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (schedule_tx, schedule_rx) = watch::channel(None::<PressSchedule>);

    // Receivers.
    let setup_start = Instant::now();
    let mut join_failures = 0u64;
    let mut first_setup_error: Option<String> = None;
    let receivers = match &relay {
        None => {
            let (ready_tx, ready_rx) = oneshot::channel();
            let h = tokio::spawn(db::listen(
                db.url.clone(),
                CHANNEL.into(),
                shared.clone(),
                ready_tx,
                stop_rx.clone(),
            ));
            match tokio::time::timeout(Duration::from_secs(30), ready_rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e),
                _ => return Err("the LISTEN session did not start".into()),
            }
            Receivers::Listen(h)
        }
        Some(r) => {
            eprintln!("connecting {} clients", p.clients);
            let sem = Arc::new(Semaphore::new(p.connect_concurrency));
            let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
            let mut handles = Vec::with_capacity(p.clients);
            for i in 0..p.clients {
                let permit = sem
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| e.to_string())?;
                let spec = client_spec(p, i, &polls, &profiles, &schedule_rx);
                let interest = spec.interest;
                let h = tokio::spawn(clients::run_client(
                    r.addr,
                    (i as u32).wrapping_mul(2_654_435_761).wrapping_add(1),
                    spec,
                    shared.clone(),
                    ready_tx.clone(),
                    stop_rx.clone(),
                    permit,
                ));
                handles.push((interest, h));
            }
            drop(ready_tx);
            let mut ready = 0usize;
            for _ in 0..p.clients {
                match tokio::time::timeout(Duration::from_secs(90), ready_rx.recv()).await {
                    Ok(Some(Ok(()))) => ready += 1,
                    Ok(Some(Err(e))) => {
                        join_failures += 1;
                        first_setup_error.get_or_insert(e);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            eprintln!(
                "{ready}/{} clients subscribed in {:.1} s",
                p.clients,
                setup_start.elapsed().as_secs_f64()
            );
            shared
                .presence_members
                .store(ready as u64, Ordering::Relaxed);
            if ready == 0 {
                let _ = stop_tx.send(true);
                return Err(format!(
                    "no client could subscribe: {}",
                    first_setup_error.unwrap_or_else(|| "timed out".into())
                ));
            }
            Receivers::Clients(handles)
        }
    };
    let setup_s = setup_start.elapsed().as_secs_f64();
    tokio::time::sleep(p.settle).await;
    let rss_ready = relay_pid.and_then(procfs::rss_kib);

    // The write plan and the window.
    // `mixed`: presses start one hold time before the writers, so that hold starts and hold
    // ends both run at their steady rate when the writes (and the warmup) begin.
    let lead = WRITE_LEAD + p.press.map_or(Duration::ZERO, |press| press.hold);
    let base_inst = Instant::now();
    let base_us = now_us();
    let start = base_inst + lead;
    let t0 = start + p.warmup;
    let t1 = t0 + p.duration;
    let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    let window = (
        base_us + us(lead + p.warmup),
        base_us + us(lead + p.warmup + p.duration),
    );
    shared.set_window(window.0, window.1);
    shared.set_writes_start(base_us + us(lead));
    if p.press.is_some() {
        let _ = schedule_tx.send(Some(PressSchedule {
            start: base_inst + WRITE_LEAD,
            stop: t1,
        }));
    }
    let plan = WritePlan {
        workload: p.workload,
        writers: p.writers,
        rate: p.press.map_or(p.rate, |press| press.vote_rate),
        profiles: profiles.clone(),
        polls: polls.clone(),
        start,
        stop: t1,
        window,
        synchronous_commit: p.synchronous_commit.clone(),
        votes_only: p.press.is_some(),
    };
    let writers: Vec<JoinHandle<WriteCounts>> = (0..p.writers)
        .map(|w| tokio::spawn(db::writer(db.url.clone(), w, plan.clone())))
        .collect();

    tokio::time::sleep_until(t0).await;
    let s0 = sample(relay_pid, &db.name);
    let mut rss_peak = relay_pid.and_then(procfs::rss_kib);
    while Instant::now() < t1 {
        tokio::time::sleep_until((Instant::now() + Duration::from_millis(250)).min(t1)).await;
        let r = relay_pid.and_then(procfs::rss_kib);
        rss_peak = rss_peak.max(r);
    }
    let s1 = sample(relay_pid, &db.name);
    let rss_end = relay_pid.and_then(procfs::rss_kib);
    let cpu = cpu_between(&s0, &s1, tck, cores);
    let window_s = (s1.at - s0.at).as_secs_f64();

    let mut counts = WriteCounts {
        per_poll: vec![0; polls.len()],
        ..WriteCounts::default()
    };
    for h in writers {
        match h.await {
            Ok(c) => counts.merge(&c),
            Err(e) => {
                counts.errors += 1;
                counts.first_error.get_or_insert(e.to_string());
            }
        }
    }

    // Relay-run holds (`mixed`): wait until every press is released, then count the hold
    // changes the relay made, by the rows' own timestamps.
    let mut holds_open_at_end = 0;
    if let Some(press) = p.press {
        let deadline = Instant::now() + press.hold + p.drain;
        while shared.holds_open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        holds_open_at_end = shared.holds_open.load(Ordering::Relaxed).max(0) as u64;
        match db::hold_counts(&db.url, window).await {
            Ok(([starts, ends], all)) => {
                counts.window[HOLD_START] += starts;
                counts.window[HOLD_END] += ends;
                counts.committed += all;
            }
            Err(e) => {
                counts.errors += 1;
                counts.first_error.get_or_insert(e);
            }
        }
    }

    // Drain: wait for in-window changes (and presence diffs) still in flight.
    let total_expected: u64 = match &receivers {
        Receivers::Listen(_) => counts.window_total(),
        Receivers::Clients(hs) => hs.iter().map(|(i, _)| expected(*i, &counts)).sum(),
    };
    let presence_expected = shared.presence_expected.load(Ordering::Relaxed);
    let received = || {
        shared.window_frames.load(Ordering::Relaxed)
            + shared.presence_window.load(Ordering::Relaxed)
    };
    let drain_start = Instant::now();
    let mut last = received();
    let mut last_change = Instant::now();
    while drain_start.elapsed() < p.drain {
        let got = received();
        if got >= total_expected + presence_expected {
            break;
        }
        if got != last {
            last = got;
            last_change = Instant::now();
        } else if last_change.elapsed() >= DRAIN_STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();

    // Stop the receivers and collect what they saw.
    let _ = stop_tx.send(true);
    let mut report = Report::new(p);
    report.polls = polls.len();
    report.setup_s = setup_s;
    report.window_s = window_s;
    report.drain_s = drain_s;
    report.load_before = load_before;
    report.cpu = cpu;
    report.rss_before_kib = rss_before;
    report.rss_ready_kib = rss_ready;
    report.rss_end_kib = rss_end;
    report.rss_peak_kib = rss_peak;
    report.committed = counts.window_total();
    report.committed_all = counts.committed;
    report.committed_by_kind = counts.window;
    report.vote_conflicts = counts.vote_conflicts;
    report.write_errors = counts.errors;
    report.first_write_error = counts.first_error.clone();
    report.join_failures = join_failures;
    report.first_setup_error = first_setup_error;
    let mut recv = RecvStats::default();
    let mut app = AppStats::default();
    // Per ready client of `mixed`: presence diffs about in-window presses, last statistics.
    let mut per_client: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
    match receivers {
        Receivers::Listen(h) => {
            let (stats, end) = h.await.map_err(|e| e.to_string())?;
            report.ready = 1;
            report.expected = total_expected;
            report.drops = total_expected.saturating_sub(stats.window);
            report.extra = stats.window.saturating_sub(total_expected);
            if let Some(e) = end {
                report.transport_errors += 1;
                report.first_client_error = Some(e);
            }
            recv.merge(&stats);
        }
        Receivers::Clients(handles) => {
            let collect = async {
                let mut out = Vec::with_capacity(handles.len());
                for (interest, h) in handles {
                    out.push((interest, h.await));
                }
                out
            };
            let results = tokio::time::timeout(CLIENT_STOP, collect)
                .await
                .map_err(|_| "clients did not stop in time".to_owned())?;
            for (interest, r) in results {
                let s = match r {
                    Ok(s) => s,
                    Err(e) => {
                        report.client_errors += 1;
                        report.first_client_error.get_or_insert(e.to_string());
                        continue;
                    }
                };
                if !s.ready {
                    continue;
                }
                report.ready += 1;
                let exp = expected(interest, &counts);
                report.expected += exp;
                report.drops += exp.saturating_sub(s.recv.window);
                report.extra += s.recv.window.saturating_sub(exp);
                if exp > s.recv.window {
                    report.clients_with_drops += 1;
                }
                report.client_errors += s.errors;
                if let Some(e) = &s.first_error {
                    report.first_client_error.get_or_insert(e.clone());
                }
                if let Some(code) = s.closed {
                    report.closes += 1;
                    if code == 1008 {
                        report.cutoffs += 1;
                    }
                    report
                        .first_client_error
                        .get_or_insert(format!("closed by the relay with {code}"));
                }
                if let Some(e) = &s.transport_error {
                    report.transport_errors += 1;
                    report.first_client_error.get_or_insert(e.clone());
                }
                recv.merge(&s.recv);
                app.merge(&s.app);
                if p.press.is_some() {
                    per_client.push((s.app.diffs_window, s.last_update));
                }
            }
        }
    }
    report.set_recv(&recv);
    if let Some(a) = report.app.as_mut() {
        a.holds_open_at_end = holds_open_at_end;
        a.set(&app, &per_client, report.duration_s);
    }
    report.deliveries_all_per_s = report.deliveries_per_s
        + report
            .app
            .as_ref()
            .map_or(0.0, |a| a.presence_diffs_per_s + a.statistics_updates_per_s);

    if let Some(r) = relay {
        report.relay_warnings = r.warnings.load(Ordering::Relaxed);
        if let Err(e) = r.stop().await {
            eprintln!("warning: {e}");
        }
    }
    Ok(report)
}
