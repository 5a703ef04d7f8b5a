//! The configuration table (docs/configuration.md) held to what the
//! binaries declare.

/// An environment variable a command declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredEnv {
    /// The variable, e.g. `DB_POOL_SIZE`.
    pub name: String,
    /// Its default, if it has one.
    pub default: Option<String>,
    /// How clap names the argument in errors (`--db-pool-size <DB_POOL_SIZE>`).
    pub(super) arg: String,
}

/// Every environment variable `cmd` and its subcommands declare.
pub fn declared_env(cmd: &clap::Command) -> Vec<DeclaredEnv> {
    fn collect(cmd: &clap::Command, out: &mut Vec<DeclaredEnv>) {
        out.extend(cmd.get_arguments().filter_map(|a| {
            let name = a.get_env()?.to_string_lossy().into_owned();
            // An empty default (a secret, a list) means none.
            let default = a.get_default_values().first().map(|d| d.to_string_lossy().into_owned()).filter(|d| !d.is_empty());
            Some(DeclaredEnv { name, default, arg: a.to_string() })
        }));
        for sub in cmd.get_subcommands() {
            collect(sub, out);
        }
    }
    // An argument can be displayed (as in clap's errors) once it is built.
    let mut cmd = cmd.clone();
    cmd.build();
    let mut out = Vec::new();
    collect(&cmd, &mut out);
    out
}

/// Checks the configuration table (docs/configuration.md) against what `cmd` (the binary
/// `binary`: `billing`, `checkout` or `stack`) declares; returns the
/// disagreements. The table has one variable a row; its service column
/// names the binaries (`both` = billing and checkout, `all` = those and
/// stack); its default column starts with the default in backticks, or with
/// a word when there is none, and a stack default that differs is given as
/// ``(stack: `value`)``.
pub fn check_env_table(readme: &str, binary: &str, cmd: &clap::Command) -> Vec<String> {
    let mut problems = Vec::new();
    let rows: Vec<Vec<String>> = readme
        .lines()
        .skip_while(|l| !l.starts_with("# Configuration"))
        .skip(1)
        .take_while(|l| !l.starts_with("# ") && !l.starts_with("## "))
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim().trim_matches('|').split(" | ").map(|c| c.trim().to_owned()).collect())
        .collect();
    if rows.is_empty() {
        problems.push("no table under \"# Configuration\" (docs/configuration.md)".into());
    }
    let ticked = |cell: &str| cell.strip_prefix('`').and_then(|c| c.split('`').next()).map(str::to_owned);
    let mut table = Vec::new();
    for row in &rows {
        let [var, services, default, ..] = row.as_slice() else {
            problems.push(format!("table row {row:?} has fewer than 4 columns"));
            continue;
        };
        let Some(name) = ticked(var).filter(|n| var == &format!("`{n}`")) else {
            problems.push(format!("table row {var}: one variable a row, in backticks"));
            continue;
        };
        let mut binaries = Vec::new();
        for s in services.split(',').map(str::trim) {
            match s {
                "billing" | "checkout" | "stack" => binaries.push(s),
                "both" => binaries.extend(["billing", "checkout"]),
                "all" => binaries.extend(["billing", "checkout", "stack"]),
                other => problems.push(format!("table row {name}: unknown service {other:?}")),
            }
        }
        if !binaries.contains(&binary) {
            continue;
        }
        let expected = match default.split_once("(stack: `") {
            Some((_, rest)) if binary == "stack" => rest.split('`').next().map(str::to_owned),
            _ => ticked(default),
        };
        table.push((name, expected));
    }
    let declared = declared_env(cmd);
    for d in &declared {
        match table.iter().find(|(n, _)| *n == d.name) {
            None => problems.push(format!("{} is declared by {binary} but not in the table for {binary}", d.name)),
            Some((_, expected)) if *expected != d.default => {
                problems.push(format!("{}: {binary} declares default {:?}, the table says {:?}", d.name, d.default, expected))
            }
            Some(_) => {}
        }
    }
    for (name, _) in &table {
        if !declared.iter().any(|d| d.name == *name) {
            problems.push(format!("the table lists {name} for {binary}, which {binary} does not declare"));
        }
    }
    problems
}
