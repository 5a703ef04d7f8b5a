//! The `diesel::table!` definitions cannot drift from the migrations: each
//! service's migrated database and its table definitions must list the same
//! tables, columns, types, nullability and primary keys. A migration that
//! adds, drops or changes a column without the matching `table!` change (or
//! the reverse) fails here, not in production. The event stream's tables
//! (`events`, `event_versions`, `event_stream`) have no `table!`: only the
//! SQL of shared/src/events/store.rs and the triggers use them (their `xid8`
//! has no diesel type), and the event tests exercise every query.
use diesel::{QueryableByName, sql_types::Text};
use diesel_async::RunQueryDsl;
use std::collections::BTreeMap;
use tests::harness::{connect, fresh_database, workspace_root};

/// table → (primary key columns, column → diesel type).
type Schema = BTreeMap<String, (Vec<String>, BTreeMap<String, String>)>;

/// The `diesel::table!` blocks of a Rust source file.
fn declared(path: &str) -> Schema {
    let text = std::fs::read_to_string(workspace_root().join(path)).unwrap();
    let mut out = Schema::new();
    for block in text.split("diesel::table! {").skip(1) {
        let lines: Vec<&str> = block.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("//")).collect();
        let head = lines[0].trim_end_matches('{').trim();
        let (name, pk) = head.split_once('(').unwrap();
        let pk = pk.trim_end_matches(')').split(',').map(|c| c.trim().to_owned()).collect();
        let mut columns = BTreeMap::new();
        for line in &lines[1..] {
            if line.starts_with('}') {
                break;
            }
            let (col, ty) = line.trim_end_matches(',').split_once("->").unwrap();
            columns.insert(col.trim().to_owned(), ty.trim().to_owned());
        }
        out.insert(name.trim().to_owned(), (pk, columns));
    }
    out
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    udt_name: String,
    #[diesel(sql_type = Text)]
    is_nullable: String,
}

#[derive(QueryableByName)]
struct KeyPart {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
}

fn diesel_type(udt: &str) -> String {
    match udt {
        "text" => "Text",
        "uuid" => "Uuid",
        "int8" => "BigInt",
        "int4" => "Integer",
        "int2" => "SmallInt",
        "bool" => "Bool",
        "bytea" => "Bytea",
        "bpchar" => "Bpchar",
        "date" => "Date",
        "timestamptz" => "Timestamptz",
        "jsonb" => "Jsonb",
        other => other,
    }
    .to_owned()
}

/// What the migrated database says, in `table!` terms.
async fn migrated(url: &str) -> Schema {
    let mut db = connect(url).await;
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT table_name::text, column_name::text, udt_name::text, is_nullable::text FROM information_schema.columns \
          WHERE table_schema = 'public' AND table_name NOT IN ('__diesel_schema_migrations', 'schema_functions', 'events', 'event_versions', 'event_stream') ORDER BY table_name, ordinal_position",
    )
    .load(&mut db)
    .await
    .unwrap();
    let keys: Vec<KeyPart> = diesel::sql_query(
        "SELECT k.table_name::text, k.column_name::text FROM information_schema.table_constraints c \
           JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema \
          WHERE c.table_schema = 'public' AND c.constraint_type = 'PRIMARY KEY' AND c.table_name NOT IN ('__diesel_schema_migrations', 'schema_functions', 'events', 'event_versions', 'event_stream') \
          ORDER BY k.table_name, k.ordinal_position",
    )
    .load(&mut db)
    .await
    .unwrap();
    let mut out = Schema::new();
    for c in columns {
        let ty = diesel_type(&c.udt_name);
        let ty = if c.is_nullable == "YES" { format!("Nullable<{ty}>") } else { ty };
        out.entry(c.table_name).or_default().1.insert(c.column_name, ty);
    }
    for k in keys {
        out.entry(k.table_name).or_default().0.push(k.column_name);
    }
    out
}

async fn assert_in_step(
    service: &str,
    migrate: fn(String) -> futures::future::BoxFuture<'static, anyhow::Result<Vec<String>>>,
    files: &[&str],
) {
    let url = fresh_database(service, migrate).await.unwrap();
    let db = migrated(&url).await;
    let mut code = Schema::new();
    for f in files {
        code.extend(declared(f));
    }
    let mut drift = Vec::new();
    for table in db.keys().chain(code.keys()).collect::<std::collections::BTreeSet<_>>() {
        match (db.get(table), code.get(table)) {
            (Some(d), Some(c)) if d == c => {}
            (Some(d), Some(c)) => drift.push(format!("{table}: database {d:?}\n   table! {c:?}")),
            (Some(_), None) => drift.push(format!("{table}: in the database, no table! definition")),
            (None, _) => drift.push(format!("{table}: table! definition, not in the database")),
        }
    }
    assert!(drift.is_empty(), "{service}: table! definitions and migrations disagree:\n{}", drift.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_table_definitions_match_the_migrations() {
    assert_in_step(
        "billing-svc",
        |u| Box::pin(async move { billing_svc::app::migrate(&u).await }),
        &["billing-svc/src/schema.rs", "shared/src/idempotency.rs"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_table_definitions_match_the_migrations() {
    assert_in_step(
        "checkout-svc",
        |u| Box::pin(async move { checkout_svc::app::migrate(&u).await }),
        &["checkout-svc/src/schema.rs", "shared/src/idempotency.rs"],
    )
    .await;
}

// The SQL functions (docs/design.md, SQL functions): the migrated database
// runs exactly the definitions of `sql/functions/`, an existing database
// converges to them, and a changed signature or a removed file leaves no
// stale function behind.

#[derive(QueryableByName)]
struct Function {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    signature: String,
    #[diesel(sql_type = Text)]
    body: String,
}

#[derive(QueryableByName)]
struct Recorded {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    sha256: String,
}

/// Every function of the database's schema: name, signature, body.
async fn functions(url: &str) -> Vec<Function> {
    let mut db = connect(url).await;
    diesel::sql_query(
        "SELECT p.proname::text AS name, p.oid::regprocedure::text AS signature, p.prosrc AS body FROM pg_proc p \
          WHERE p.pronamespace = 'public'::regnamespace ORDER BY 2",
    )
    .load(&mut db)
    .await
    .unwrap()
}

async fn recorded(url: &str) -> Vec<Recorded> {
    let mut db = connect(url).await;
    diesel::sql_query("SELECT name, sha256 FROM schema_functions ORDER BY name").load(&mut db).await.unwrap()
}

/// The body (between the dollar quotes) of a function file.
fn body(sql: &str) -> &str {
    let start = sql.find("$$").unwrap() + 2;
    let end = sql.rfind("$$").unwrap();
    &sql[start..end]
}

/// Each function of the database is one file's, and each file's function is
/// in the database once, recorded with the file's hash.
async fn assert_functions_are_the_files(url: &str, files: &[shared::db::SqlFunction]) {
    let db = functions(url).await;
    let names: Vec<&str> = db.iter().map(|f| f.name.as_str()).collect();
    let mut expected: Vec<&str> = files.iter().map(|f| f.name).collect();
    expected.sort();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "the database's functions are the files' (one overload each)");
    for f in files {
        let live = db.iter().find(|d| d.name == f.name).unwrap();
        assert_eq!(live.body, body(f.sql), "{} ({}) is not its file's definition", f.name, live.signature);
    }
    let rec = recorded(url).await;
    let mut want: Vec<(String, String)> = files.iter().map(|f| (f.name.to_owned(), f.sha256())).collect();
    want.sort();
    assert_eq!(rec.into_iter().map(|r| (r.name, r.sha256)).collect::<Vec<_>>(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrated_databases_run_the_function_files() {
    let url = fresh_database("billing-svc", |u| Box::pin(async move { billing_svc::app::migrate(&u).await })).await.unwrap();
    assert_functions_are_the_files(&url, billing_svc::app::FUNCTIONS).await;
    let url = fresh_database("checkout-svc", |u| Box::pin(async move { checkout_svc::app::migrate(&u).await })).await.unwrap();
    assert_functions_are_the_files(&url, checkout_svc::app::FUNCTIONS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_before_the_function_files_converges_to_them() {
    let url = fresh_database("billing-svc", |u| Box::pin(async move { billing_svc::app::migrate(&u).await })).await.unwrap();
    let mut db = connect(&url).await;
    // As a database migrated by an older release: no record of function
    // files, and definitions that differ from them (an older body, a
    // changed one, a missing one).
    diesel::sql_query("DROP TABLE schema_functions").execute(&mut db).await.unwrap();
    diesel::sql_query(
        "CREATE OR REPLACE FUNCTION billing_roll_period(p_sub uuid, p_now timestamptz) RETURNS boolean \
         LANGUAGE sql AS 'SELECT false'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    diesel::sql_query("DROP FUNCTION billing_period_at(timestamptz, boolean, timestamptz, integer)")
        .execute(&mut db)
        .await
        .unwrap();
    assert!(billing_svc::app::migrate(&url).await.unwrap().is_empty(), "no migration was pending");
    assert_functions_are_the_files(&url, billing_svc::app::FUNCTIONS).await;

    // A function changed behind the runner's back but recorded as applied
    // is left alone until its file changes or a migration runs; a recorded
    // hash that differs from the file's re-applies it.
    diesel::sql_query("UPDATE schema_functions SET sha256 = 'stale' WHERE name = 'billing_charge_many'")
        .execute(&mut db)
        .await
        .unwrap();
    diesel::sql_query("ALTER FUNCTION billing_charge RENAME TO billing_charge_renamed").execute(&mut db).await.unwrap();
    billing_svc::app::migrate(&url).await.unwrap();
    let after = functions(&url).await;
    assert!(after.iter().any(|f| f.name == "billing_charge"), "a recorded function that went missing is created again");
    diesel::sql_query("DROP FUNCTION billing_charge_renamed").execute(&mut db).await.unwrap();
    assert_functions_are_the_files(&url, billing_svc::app::FUNCTIONS).await;
}

#[derive(QueryableByName)]
struct Xmin {
    #[diesel(sql_type = Text)]
    xmin: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_functions_are_not_recreated_and_changed_signatures_leave_no_stale_overload() {
    let url = fresh_database("billing-svc", |u| Box::pin(async move { billing_svc::app::migrate(&u).await })).await.unwrap();
    let mut db = connect(&url).await;
    let xmin = async |db: &mut diesel_async::AsyncPgConnection| {
        let x: Xmin = diesel::sql_query("SELECT xmin::text AS xmin FROM pg_proc WHERE proname = 'billing_charge_many'")
            .get_result(db)
            .await
            .unwrap();
        x.xmin
    };
    let before = xmin(&mut db).await;
    billing_svc::app::migrate(&url).await.unwrap();
    assert_eq!(xmin(&mut db).await, before, "a start with nothing changed re-creates nothing");

    // A test function beside the service's: its signature changes, then its
    // file goes away.
    let with = |sql: &'static str| -> &'static [shared::db::SqlFunction] {
        let mut list = billing_svc::app::FUNCTIONS.to_vec();
        list.push(shared::db::SqlFunction { name: "test_fn", sql });
        Box::leak(list.into_boxed_slice())
    };
    let run = async |list: &'static [shared::db::SqlFunction]| {
        shared::db::migrate(&url, billing_svc::MIGRATIONS, list, 0x7e57_f00d).await.unwrap();
    };
    let test_fns = async |db: &mut diesel_async::AsyncPgConnection| -> Vec<String> {
        let rows: Vec<Xmin> = diesel::sql_query(
            "SELECT oid::regprocedure::text || ' -> ' || pg_get_function_result(oid) AS xmin FROM pg_proc \
              WHERE proname = 'test_fn' ORDER BY 1",
        )
        .load(db)
        .await
        .unwrap();
        rows.into_iter().map(|r| r.xmin).collect()
    };
    run(with("CREATE OR REPLACE FUNCTION test_fn(a int) RETURNS int LANGUAGE sql AS $$ SELECT a $$;")).await;
    assert_eq!(test_fns(&mut db).await, ["test_fn(integer) -> integer"]);
    run(with("CREATE OR REPLACE FUNCTION test_fn(a int, b int) RETURNS int LANGUAGE sql AS $$ SELECT a + b $$;")).await;
    assert_eq!(test_fns(&mut db).await, ["test_fn(integer,integer) -> integer"], "the old signature is dropped");
    run(with("CREATE OR REPLACE FUNCTION test_fn(a int, b int) RETURNS text LANGUAGE sql AS $$ SELECT (a + b)::text $$;")).await;
    assert_eq!(test_fns(&mut db).await, ["test_fn(integer,integer) -> text"], "a changed return type is applied");
    run(billing_svc::app::FUNCTIONS).await;
    assert!(test_fns(&mut db).await.is_empty(), "a function whose file is gone is dropped");
    assert_functions_are_the_files(&url, billing_svc::app::FUNCTIONS).await;
}
