//! The live SQL functions of a service (docs/design.md, SQL functions).
//!
//! Each function has one definition, `<service>/sql/functions/<name>.sql`,
//! embedded in the binary ([`sql_functions!`](crate::sql_functions)). The
//! migration runner applies them after the pending schema migrations, under
//! the same advisory lock, as repeatable definitions: a function is
//! (re)created when its text differs from the one recorded in
//! `schema_functions`, when it is missing, or when any migration ran in this
//! call (a migration may have replaced or dropped it); a recorded function
//! whose file is gone is dropped.
use diesel::{
    QueryableByName, RunQueryDsl,
    connection::LoadConnection,
    pg::Pg,
    sql_types::{Bool, Text},
};
use sha2::{Digest, Sha256};

/// One function's definition: `name` is the function's name and the file's
/// stem; `sql` is one `CREATE OR REPLACE FUNCTION name(...)` statement.
#[derive(Debug, Clone, Copy)]
pub struct SqlFunction {
    /// The function's name, and its file's stem.
    pub name: &'static str,
    /// The file's text: one `CREATE OR REPLACE FUNCTION` statement.
    pub sql: &'static str,
}

impl SqlFunction {
    /// Whether [`bootstrap`] may create it before the migrations: a shared
    /// function, or a trigger function (its body's tables are resolved when
    /// it fires, not when it is created).
    fn creatable_before_migrations(&self) -> bool {
        common::ALL.iter().any(|c| c.name == self.name && c.sql == self.sql)
            || self.sql.to_ascii_lowercase().contains("returns trigger")
    }

    /// Hex SHA-256 of the definition's text, as recorded in `schema_functions`.
    pub fn sha256(&self) -> String {
        Sha256::digest(self.sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Functions both services' databases need, each defined once in
/// `shared/sql/functions/<name>.sql`. A service names the ones it uses
/// first in its list: `sql_functions![shared touch_updated_at; billing_charge]`.
#[allow(non_upper_case_globals)] // named as the SQL function, for the macro
pub mod common {
    use super::SqlFunction;

    /// Every function of this module, for [`check_listed`](super::check_listed).
    pub const ALL: &[SqlFunction] = &[touch_updated_at, events_emit];

    /// The trigger function of the tables with an `updated_at` column.
    pub const touch_updated_at: SqlFunction = SqlFunction {
        name: "touch_updated_at",
        sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/functions/touch_updated_at.sql")),
    };

    /// Writes one event row of the event stream (docs/design.md, "Events"),
    /// called by the services' trigger functions.
    pub const events_emit: SqlFunction = SqlFunction {
        name: "events_emit",
        sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/functions/events_emit.sql")),
    };
}

/// The definitions of `sql/functions/<name>.sql` of the calling crate, in the
/// order given (the order they are applied in: a `LANGUAGE sql` function is
/// checked against what exists when it is created), after the shared ones
/// ([`common`]) named before the `;`.
///
/// `sql_functions![shared touch_updated_at; billing_charge]`
#[macro_export]
macro_rules! sql_functions {
    (shared $($common:ident),* ; $($name:ident),* $(,)?) => {
        &[
            $($crate::db::common::$common,)*
            $($crate::db::SqlFunction {
                name: stringify!($name),
                sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/sql/functions/", stringify!($name), ".sql")),
            },)*
        ]
    };
    ($($name:ident),* $(,)?) => {
        $crate::sql_functions!(shared ; $($name),*)
    };
}

#[derive(QueryableByName)]
struct Recorded {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    sha256: String,
    #[diesel(sql_type = Bool)]
    present: bool,
}

#[derive(QueryableByName)]
struct Overload {
    #[diesel(sql_type = Text)]
    signature: String,
}

/// The overloads of `name` in the current schema, as `regprocedure` text;
/// with `droppable`, only those no other object depends on (a trigger
/// depends on its function).
fn overloads<C: LoadConnection<Backend = Pg>>(conn: &mut C, name: &str, droppable: bool) -> diesel::QueryResult<Vec<String>> {
    let rows: Vec<Overload> = diesel::sql_query(
        "SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
          WHERE p.proname = $1 AND p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
            AND (NOT $2 OR NOT EXISTS (SELECT 1 FROM pg_depend d
                                        WHERE d.refclassid = 'pg_proc'::regclass AND d.refobjid = p.oid AND d.deptype = 'n'))
          ORDER BY 1",
    )
    .bind::<Text, _>(name)
    .bind::<Bool, _>(droppable)
    .load(conn)?;
    Ok(rows.into_iter().map(|r| r.signature).collect())
}

/// Before pending migrations run: creates the trigger functions among
/// `functions` (the shared ones of [`common`], and every `RETURNS trigger`
/// function: PL/pgSQL resolves tables only when a trigger fires) that the
/// database lacks, so that a migration's `CREATE TRIGGER` can name them and
/// no migration has to define them. One that exists is left to [`apply`]
/// (nothing touched when nothing changed); [`apply`] records them all.
pub(crate) fn bootstrap<C: LoadConnection<Backend = Pg>>(conn: &mut C, functions: &[SqlFunction]) -> anyhow::Result<()> {
    for f in functions.iter().filter(|f| f.creatable_before_migrations()) {
        if overloads(conn, f.name, false)?.is_empty() {
            conn.batch_execute(f.sql)?;
        }
    }
    Ok(())
}

/// Applies `functions` (see the module docs) in one transaction; `force`
/// re-creates every one (a migration ran). Returns the names (re)created or
/// dropped.
pub(crate) fn apply<C: LoadConnection<Backend = Pg>>(
    conn: &mut C,
    functions: &[SqlFunction],
    force: bool,
) -> anyhow::Result<Vec<String>> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_functions (
           name       text PRIMARY KEY,
           sha256     text NOT NULL,
           applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    conn.transaction(|c| {
        let recorded: Vec<Recorded> = diesel::sql_query(
            "SELECT f.name, f.sha256, EXISTS (SELECT 1 FROM pg_proc p
                     WHERE p.proname = f.name
                       AND p.pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())) AS present
               FROM schema_functions f ORDER BY f.name",
        )
        .load(c)?;
        let mut changed = Vec::new();
        // Functions whose file is gone (dropped or renamed): drop what the
        // runner created, never with CASCADE (a dependent object stops the
        // migration instead of vanishing).
        for r in recorded.iter().filter(|r| !functions.iter().any(|f| f.name == r.name)) {
            for sig in overloads(c, &r.name, false)? {
                c.batch_execute(&format!("DROP FUNCTION {sig}"))?;
            }
            diesel::sql_query("DELETE FROM schema_functions WHERE name = $1").bind::<Text, _>(&r.name).execute(c)?;
            changed.push(format!("dropped {}", r.name));
        }
        for f in functions {
            let sha = f.sha256();
            let current = recorded.iter().find(|r| r.name == f.name);
            if !force && current.is_some_and(|r| r.sha256 == sha && r.present) {
                continue;
            }
            // Drop the old definition first, so that a changed signature or
            // return type leaves no stale overload behind. A function another
            // object depends on (a trigger function) is replaced in place by
            // CREATE OR REPLACE instead, so it must keep its signature.
            for sig in overloads(c, f.name, true)? {
                c.batch_execute(&format!("DROP FUNCTION {sig}"))?;
            }
            c.batch_execute(f.sql).map_err(|e| anyhow::anyhow!("function {}: {e}", f.name))?;
            if overloads(c, f.name, false)?.len() != 1 {
                anyhow::bail!("function {}: its file must define exactly one function of that name", f.name);
            }
            diesel::sql_query(
                "INSERT INTO schema_functions (name, sha256, applied_at) VALUES ($1, $2, now())
                 ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = EXCLUDED.applied_at",
            )
            .bind::<Text, _>(f.name)
            .bind::<Text, _>(&sha)
            .execute(c)?;
            changed.push(f.name.to_owned());
        }
        Ok(changed)
    })
}

/// Checks that `functions` lists exactly the files of `dir` (`<name>.sql`),
/// each defining the function it is named after: for a unit test of each
/// service, so that a file added but not listed (never applied) fails the
/// build's tests. The shared functions ([`common`]) in the list are files of
/// `shared/sql/functions/`, not of `dir`; a service with none of its own
/// may have no `dir` at all.
pub fn check_listed(dir: &std::path::Path, functions: &[SqlFunction]) -> Result<(), String> {
    let mut files: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    files.sort();
    let own = functions.iter().filter(|f| !common::ALL.iter().any(|c| c.name == f.name && c.sql == f.sql));
    let mut listed: Vec<String> = own.map(|f| format!("{}.sql", f.name)).collect();
    listed.sort();
    if files != listed {
        return Err(format!("{} holds {files:?}, the list names {listed:?}", dir.display()));
    }
    for f in functions {
        let head = format!("CREATE OR REPLACE FUNCTION {}(", f.name);
        if f.sql.matches("CREATE OR REPLACE FUNCTION").count() != 1 || !f.sql.contains(&head) {
            return Err(format!("{}.sql must hold one `{head}...` statement", f.name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_directory_holds_exactly_the_common_functions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/functions");
        let mut files: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        let mut names: Vec<String> = common::ALL.iter().map(|f| format!("{}.sql", f.name)).collect();
        names.sort();
        assert_eq!(files, names);
        for f in common::ALL {
            assert_eq!(f.sql.matches("CREATE OR REPLACE FUNCTION").count(), 1, "{}", f.name);
            assert!(f.sql.contains(&format!("CREATE OR REPLACE FUNCTION {}(", f.name)), "{}", f.name);
        }
    }

    #[test]
    fn a_service_list_with_only_shared_functions_needs_no_directory() {
        let list: &[SqlFunction] = crate::sql_functions![shared touch_updated_at;];
        assert_eq!(list.len(), 1);
        assert!(check_listed(std::path::Path::new("/nonexistent/sql/functions"), list).is_ok());
    }
}
