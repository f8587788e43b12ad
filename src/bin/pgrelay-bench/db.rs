//! The database side: a fresh database per run, seed rows, the writers, and the baseline's
//! bare LISTEN session.

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::stats::{RecvStats, Shared};
use crate::ts::now_us;

/// Connect and drive the connection in the background.
pub(crate) async fn connect(url: &str) -> Result<Client, String> {
    connect_with(url, None).await
}

/// Connect with a `synchronous_commit` setting for the session, if given.
async fn connect_with(url: &str, synchronous_commit: Option<&str>) -> Result<Client, String> {
    let mut cfg: tokio_postgres::Config =
        url.parse().map_err(|e| format!("bad database URL: {e}"))?;
    if let Some(sc) = synchronous_commit {
        cfg.options(format!("-c synchronous_commit={sc}"));
    }
    let (client, conn) = cfg
        .connect(NoTls)
        .await
        .map_err(|e| format!("connect to PostgreSQL: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A database created for one run; [`BenchDb::drop_db`] removes it.
#[derive(Debug)]
pub(crate) struct BenchDb {
    admin_url: String,
    pub(crate) name: String,
    pub(crate) url: String,
}

impl BenchDb {
    pub(crate) async fn create(admin_url: &str) -> Result<BenchDb, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("pgrelay_bench_{}_{nanos}", std::process::id());
        let admin = connect(admin_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("CREATE DATABASE {name}: {e}"))?;
        let mut cfg: tokio_postgres::Config = admin_url
            .parse()
            .map_err(|e| format!("bad --database-url: {e}"))?;
        cfg.dbname(&name);
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let user = cfg.get_user().unwrap_or("postgres");
        let pass = cfg
            .get_password()
            .map(|p| format!(":{}", String::from_utf8_lossy(p)))
            .unwrap_or_default();
        let url = format!("postgres://{user}{pass}@{host}:{port}/{name}");
        Ok(BenchDb {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    pub(crate) async fn drop_db(&self) -> Result<(), String> {
        let admin = connect(&self.admin_url).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .map_err(|e| format!("DROP DATABASE {}: {e}", self.name))
    }
}

/// Seeded rows: profile ids (uuid text) and poll ids.
#[derive(Debug)]
pub(crate) struct Seed {
    pub(crate) profiles: Vec<String>,
    pub(crate) polls: Vec<i64>,
}

/// Insert `profiles` profiles and `polls` active polls, with triggers off (replica role), so
/// seeding sends no notification.
pub(crate) async fn seed(url: &str, profiles: usize, polls: usize) -> Result<Seed, String> {
    let c = connect(url).await?;
    let err = |e: tokio_postgres::Error| format!("seeding: {e}");
    c.batch_execute("SET session_replication_role = replica")
        .await
        .map_err(err)?;
    let profiles: Vec<String> = c
        .query(
            "INSERT INTO public.profiles (username, display_name) \
             SELECT 'bench_user_' || g, 'Bench user ' || g FROM generate_series(1, $1::int) g \
             RETURNING id::text",
            &[&i32::try_from(profiles).unwrap_or(i32::MAX)],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut polls: Vec<i64> = c
        .query(
            "INSERT INTO public.polls (question, options, status) \
             SELECT 'Benchmark question ' || g || '?', '[\"yes\",\"no\"]'::jsonb, 'active' \
             FROM generate_series(1, $1::int) g RETURNING id",
            &[&i32::try_from(polls).unwrap_or(i32::MAX)],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    polls.sort_unstable();
    c.batch_execute("ANALYZE").await.map_err(err)?;
    Ok(Seed { profiles, polls })
}

/// What the writers do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Workload {
    /// `INSERT INTO button_holds` only (one change per write).
    Holds,
    /// The reference app: hold start (INSERT button_holds), hold end (UPDATE button_holds),
    /// vote (INSERT user_votes), in turn.
    App,
}

impl Workload {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Workload::Holds => "holds",
            Workload::App => "app",
        }
    }

    /// Record keys holding the change's send timestamp, first match wins (an ended hold's
    /// `ended_at`, a new hold's `started_at`, a vote's `created_at`).
    pub(crate) fn keys(self) -> &'static [&'static [u8]] {
        match self {
            Workload::Holds => &[b"\"started_at\""],
            Workload::App => &[b"\"ended_at\"", b"\"started_at\"", b"\"created_at\""],
        }
    }
}

/// Kinds of change, for expected-delivery counts.
pub(crate) const HOLD_START: usize = 0;
pub(crate) const HOLD_END: usize = 1;
pub(crate) const VOTE: usize = 2;

#[derive(Debug, Clone)]
pub(crate) struct WritePlan {
    pub(crate) workload: Workload,
    pub(crate) writers: usize,
    /// Total changes per second over all writers; 0: as fast as possible.
    pub(crate) rate: f64,
    pub(crate) profiles: Arc<Vec<String>>,
    pub(crate) polls: Arc<Vec<i64>>,
    pub(crate) start: Instant,
    /// No write is started at or after this instant.
    pub(crate) stop: Instant,
    /// The measured window by the database's timestamp, µs since the epoch.
    pub(crate) window: (i64, i64),
    /// `synchronous_commit` for the writers' sessions (`None`: the server's setting).
    pub(crate) synchronous_commit: Option<String>,
    /// `App` only: write the votes only (`mixed`, where the relay runs the holds that clients
    /// press through presence).
    pub(crate) votes_only: bool,
}

/// What the writers committed.
#[derive(Debug, Default, Clone)]
pub(crate) struct WriteCounts {
    /// Every committed change, warmup included.
    pub(crate) committed: u64,
    /// Committed changes inside the window, by kind.
    pub(crate) window: [u64; 3],
    /// In-window hold starts per poll (index into the seeded polls).
    pub(crate) per_poll: Vec<u64>,
    /// Votes that hit an existing (poll, user) pair and changed nothing.
    pub(crate) vote_conflicts: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl WriteCounts {
    pub(crate) fn window_total(&self) -> u64 {
        self.window.iter().sum()
    }

    pub(crate) fn merge(&mut self, o: &WriteCounts) {
        self.committed += o.committed;
        for (a, b) in self.window.iter_mut().zip(o.window) {
            *a += b;
        }
        if self.per_poll.len() < o.per_poll.len() {
            self.per_poll.resize(o.per_poll.len(), 0);
        }
        for (a, b) in self.per_poll.iter_mut().zip(&o.per_poll) {
            *a += b;
        }
        self.vote_conflicts += o.vote_conflicts;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
    }

    fn error(&mut self, e: &tokio_postgres::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    fn committed(&mut self, kind: usize, ts: i64, window: (i64, i64), poll: usize) {
        self.committed += 1;
        if ts >= window.0 && ts < window.1 {
            self.window[kind] += 1;
            if kind == HOLD_START {
                if let Some(c) = self.per_poll.get_mut(poll) {
                    *c += 1;
                }
            }
        }
    }
}

/// How far a writer may fall behind its schedule before it skips turns.
const MAX_BEHIND: Duration = Duration::from_millis(100);

const INSERT_HOLD: &str = "INSERT INTO public.button_holds (user_id, poll_id, started_at) \
     VALUES ($1::text::uuid, $2, clock_timestamp()) \
     RETURNING (extract(epoch FROM started_at) * 1000000)::int8";
const START_HOLD: &str = "INSERT INTO public.button_holds (user_id, poll_id, started_at) \
     VALUES ($1::text::uuid, $2, clock_timestamp()) \
     RETURNING id::text, (extract(epoch FROM started_at) * 1000000)::int8";
const END_HOLD: &str = "UPDATE public.button_holds \
     SET ended_at = clock_timestamp(), is_active = false WHERE id = $1::text::uuid \
     RETURNING (extract(epoch FROM ended_at) * 1000000)::int8";
const VOTE_SQL: &str = "INSERT INTO public.user_votes \
     (poll_id, user_id, option_index, hold_ms, created_at) \
     VALUES ($1, $2::text::uuid, $3, 3000, clock_timestamp()) \
     ON CONFLICT (poll_id, user_id) DO NOTHING \
     RETURNING (extract(epoch FROM created_at) * 1000000)::int8";

/// One writer connection: its share of the rate, until `plan.stop`.
pub(crate) async fn writer(url: String, w: usize, plan: WritePlan) -> WriteCounts {
    let mut counts = WriteCounts {
        per_poll: vec![0; plan.polls.len()],
        ..WriteCounts::default()
    };
    let client = match connect_with(&url, plan.synchronous_commit.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            counts.errors += 1;
            counts.first_error = Some(e);
            return counts;
        }
    };
    let prepared = async {
        Ok::<_, tokio_postgres::Error>((
            client.prepare(INSERT_HOLD).await?,
            client.prepare(START_HOLD).await?,
            client.prepare(END_HOLD).await?,
            client.prepare(VOTE_SQL).await?,
        ))
    }
    .await;
    let (insert_hold, start_hold, end_hold, vote) = match prepared {
        Ok(s) => s,
        Err(e) => {
            counts.error(&e);
            return counts;
        }
    };
    let m = plan.writers.max(1) as u64;
    let n_profiles = plan.profiles.len().max(1);
    let n_polls = plan.polls.len().max(1);
    let mut pending_hold: Option<String> = None;
    // `i` numbers the writes (it drives the hold start → end → vote cycle); `slot` numbers
    // this writer's turns in the schedule.
    let mut i: u64 = 0;
    let mut slot: u64 = 0;
    let period = m as f64 / plan.rate.max(f64::MIN_POSITIVE);
    loop {
        if plan.rate > 0.0 {
            // Writers interleave so the total is evenly spaced.
            let offset =
                |slot: u64| Duration::from_secs_f64((slot * m + w as u64) as f64 / plan.rate);
            let mut due = plan.start + offset(slot);
            let now = Instant::now();
            if due + MAX_BEHIND < now {
                // PostgreSQL fell behind: skip the missed turns instead of bursting to catch
                // up, so the window sees the target rate or less, never a catch-up spike.
                let elapsed = (now - plan.start).as_secs_f64() - w as f64 / plan.rate;
                slot = (elapsed / period).ceil().max(0.0) as u64;
                due = plan.start + offset(slot);
            }
            if due >= plan.stop {
                break;
            }
            tokio::time::sleep_until(due).await;
            slot += 1;
        } else if Instant::now() >= plan.stop {
            break;
        }
        let (g, step) = match plan.workload {
            Workload::Holds => (i * m + w as u64, HOLD_START),
            Workload::App if plan.votes_only => (i * m + w as u64, VOTE),
            Workload::App => ((i / 3) * m + w as u64, (i % 3) as usize),
        };
        let user = &plan.profiles[(g as usize) % n_profiles];
        let poll_idx = match plan.workload {
            Workload::Holds => (g as usize) % n_polls,
            // A user votes once per poll: walk the (user, poll) pairs.
            Workload::App => ((g as usize) / n_profiles) % n_polls,
        };
        let poll = plan.polls.get(poll_idx).copied().unwrap_or(1);
        match (plan.workload, step) {
            (Workload::Holds, _) => match client.query_one(&insert_hold, &[user, &poll]).await {
                Ok(row) => counts.committed(HOLD_START, row.get(0), plan.window, poll_idx),
                Err(e) => counts.error(&e),
            },
            (Workload::App, HOLD_START) => {
                match client.query_one(&start_hold, &[user, &poll]).await {
                    Ok(row) => {
                        pending_hold = Some(row.get(0));
                        counts.committed(HOLD_START, row.get(1), plan.window, poll_idx);
                    }
                    Err(e) => counts.error(&e),
                }
            }
            (Workload::App, HOLD_END) => {
                if let Some(id) = pending_hold.take() {
                    match client.query_opt(&end_hold, &[&id]).await {
                        Ok(Some(row)) => counts.committed(HOLD_END, row.get(0), plan.window, 0),
                        Ok(None) => {}
                        Err(e) => counts.error(&e),
                    }
                }
            }
            (Workload::App, _) => {
                let option = (g % 2) as i32;
                match client.query_opt(&vote, &[&poll, user, &option]).await {
                    Ok(Some(row)) => counts.committed(VOTE, row.get(0), plan.window, 0),
                    Ok(None) => counts.vote_conflicts += 1,
                    Err(e) => counts.error(&e),
                }
            }
        }
        if client.is_closed() {
            break;
        }
        i += 1;
    }
    counts
}

/// Hold changes the relay made (relay-run holds of `mixed`), counted by the rows' own
/// timestamps as the writers count theirs: `(starts, ends)` inside the window, and every start
/// and end so far.
pub(crate) async fn hold_counts(url: &str, window: (i64, i64)) -> Result<([u64; 2], u64), String> {
    let c = connect(url).await?;
    let row = c
        .query_one(
            "WITH h AS (SELECT (extract(epoch FROM started_at) * 1000000)::int8 AS s, \
                               (extract(epoch FROM ended_at) * 1000000)::int8 AS e \
                          FROM public.button_holds) \
             SELECT count(*) FILTER (WHERE s >= $1 AND s < $2), \
                    count(*) FILTER (WHERE e >= $1 AND e < $2), \
                    count(*) + count(e) \
               FROM h",
            &[&window.0, &window.1],
        )
        .await
        .map_err(|e| format!("counting holds: {e}"))?;
    let n = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(([n(0), n(1)], n(2)))
}

/// The baseline's receiver: a bare LISTEN session on the triggers' channel, counting what a
/// relay would receive. Sends on `ready` once LISTEN is active; returns at `stop`.
pub(crate) async fn listen(
    url: String,
    channel: String,
    shared: Arc<Shared>,
    ready: oneshot::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> (RecvStats, Option<String>) {
    let mut stats = RecvStats::default();
    let (client, mut conn) = match tokio_postgres::connect(&url, NoTls).await {
        Ok(c) => c,
        Err(e) => {
            let e = format!("LISTEN connection: {e}");
            let _ = ready.send(Err(e.clone()));
            return (stats, Some(e));
        }
    };
    let keys = shared.keys;
    let driver = async {
        loop {
            match poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let before = stats.window;
                    stats.on_change(n.payload().as_bytes(), now_us(), shared.window(), keys);
                    // One session at a few thousand notifications/s: publishing each is cheap.
                    if stats.window > before {
                        shared.window_frames.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err::<(), String>(e.to_string()),
                None => return Err("connection closed".to_owned()),
            }
        }
    };
    let control = async {
        match client.batch_execute(&format!("LISTEN {channel}")).await {
            Ok(()) => {
                let _ = ready.send(Ok(()));
            }
            Err(e) => {
                let e = format!("LISTEN: {e}");
                let _ = ready.send(Err(e.clone()));
                return Err(e);
            }
        }
        let _ = stop.wait_for(|s| *s).await;
        Ok(())
    };
    let end = tokio::select! {
        r = driver => r.err(),
        r = control => r.err(),
    };
    (stats, end)
}
