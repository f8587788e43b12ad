//! Trust boundaries on the database side: what a role other than the relay's can make the
//! relay's SQL do.

use crate::support::*;

/// The owner of a published table gives a column type a cast to `json` that makes its caller
/// superuser, then writes a row. `to_jsonb(NEW)` in the trigger calls that cast; it must run
/// with the writer's rights, never the trigger function owner's.
#[tokio::test]
async fn a_table_owner_cannot_become_superuser_through_a_json_cast() {
    let relay = start_relay().await;
    let db = relay.db().await;
    let name = format!("owner_{}", relay.db.name.rsplit('_').next().unwrap_or("x"));
    db.batch_execute(&format!(
        "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; \
         GRANT USAGE, CREATE ON SCHEMA public TO {name}"
    ))
    .await
    .unwrap();
    let mut cfg: tokio_postgres::Config = relay.db.url.parse().unwrap();
    cfg.user(&name);
    let (owner, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    owner
        .batch_execute(&format!(
            "CREATE TABLE public.{name}_t (id int PRIMARY KEY); \
             CREATE TRIGGER pgrelay_notify AFTER INSERT OR UPDATE OR DELETE ON public.{name}_t \
                 FOR EACH ROW EXECUTE FUNCTION pgrelay.notify_change(); \
             CREATE TYPE public.{name}_mood AS ENUM ('x'); \
             CREATE FUNCTION public.{name}_json(public.{name}_mood) RETURNS json \
                 LANGUAGE plpgsql AS $f$ BEGIN \
                     EXECUTE format('ALTER ROLE %I SUPERUSER', '{name}'); \
                     RETURN '\"x\"'::json; \
                 END $f$; \
             CREATE CAST (public.{name}_mood AS json) WITH FUNCTION public.{name}_json(public.{name}_mood); \
             ALTER TABLE public.{name}_t ADD COLUMN m public.{name}_mood"
        ))
        .await
        .unwrap();
    // The write itself fails (the cast runs as the owner, who may not ALTER ROLE), or
    // succeeds without the cast's effect: either way the owner is not superuser.
    let _ = owner
        .batch_execute(&format!("INSERT INTO public.{name}_t VALUES (1, 'x')"))
        .await;
    let superuser: bool = db
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert!(!superuser, "the table owner became superuser");
    // A plain row of the owner's table still reaches the log, logged as the owner.
    owner
        .batch_execute(&format!("INSERT INTO public.{name}_t (id) VALUES (2)"))
        .await
        .unwrap();
    let logged: i64 = db
        .query_one(
            "SELECT count(*) FROM pgrelay.change_log WHERE table_name = $1",
            &[&format!("{name}_t")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 1);
    drop(owner);
    db.batch_execute(&format!("DROP OWNED BY {name} CASCADE; DROP ROLE {name}"))
        .await
        .unwrap();
    relay.stop().await;
}
