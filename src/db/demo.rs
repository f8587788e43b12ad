//! The demo polls. A relay started with the built-in default URL (its own database, or the
//! private PostgreSQL of a zero-configuration start, see [`super::home`]) seeds a few active
//! polls when `public.polls` is empty, so `/demo` shows something to vote on at once. A
//! database named by `DATABASE_URL` is never seeded: it holds someone's real data.

use deadpool_postgres::Pool;

use crate::db::{client, DbError};

/// The seeded polls: question and option labels. All `active`, without `closes_at`.
pub const DEMO_POLLS: &[(&str, &[&str])] = &[
    (
        "Which way do you take your coffee?",
        &["Black", "With milk", "Tea, thanks"],
    ),
    ("Tabs or spaces?", &["Tabs", "Spaces"]),
    (
        "Best time for the weekly meeting?",
        &["9:00", "11:00", "14:00", "16:00"],
    ),
];

/// Insert [`DEMO_POLLS`] when `public.polls` has no row at all; returns how many were inserted
/// (0 when it had rows). Relays starting at once seed once: the check and the insert run
/// under a lock that only one transaction holds at a time.
///
/// # Errors
/// The database's, e.g. a schema without `public.polls` (run the migrations first).
pub async fn seed_when_empty(pool: &Pool) -> Result<u64, DbError> {
    let mut obj = client(pool).await?;
    let tx = obj.transaction().await?;
    // SHARE ROW EXCLUSIVE conflicts with itself and with writers, not with readers.
    tx.batch_execute("LOCK TABLE public.polls IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let mut inserted = 0;
    let empty = tx
        .query_opt("SELECT 1 FROM public.polls LIMIT 1", &[])
        .await?
        .is_none();
    if empty {
        // Oldest first, so the API's newest-first list shows them in the order above.
        for (question, options) in DEMO_POLLS.iter().rev() {
            let options = serde_json::json!(options);
            inserted += tx
                .execute(
                    "INSERT INTO public.polls (question, options, status) \
                     VALUES ($1, $2, 'active')",
                    &[question, &options],
                )
                .await?;
        }
    }
    tx.commit().await?;
    Ok(inserted)
}
