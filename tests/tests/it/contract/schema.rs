//! The `diesel::table!` definitions cannot drift from the migrations: each
//! service's migrated database and its table definitions must list the same
//! tables, columns, types, nullability and primary keys. A migration that
//! adds, drops or changes a column without the matching `table!` change (or
//! the reverse) fails here, not in production.
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
          WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations' ORDER BY table_name, ordinal_position",
    )
    .load(&mut db)
    .await
    .unwrap();
    let keys: Vec<KeyPart> = diesel::sql_query(
        "SELECT k.table_name::text, k.column_name::text FROM information_schema.table_constraints c \
           JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema \
          WHERE c.table_schema = 'public' AND c.constraint_type = 'PRIMARY KEY' AND c.table_name <> '__diesel_schema_migrations' \
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
