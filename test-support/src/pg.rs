//! Finding or starting PostgreSQL for `stack` and the tests (docs/design.md,
//! "Development PostgreSQL").
//!
//! Order: `DATABASE_URL` if set; else a server answering on 127.0.0.1:5432;
//! else a private throwaway cluster under `target/` started with the system
//! `initdb`/`pg_ctl` (as the `postgres` OS user when we run as root, since
//! PostgreSQL refuses to run as root).
//!
//! It lives in `test-support`, which only the `tests` crate and the
//! services' own tests depend on: the service binaries never link it, so a
//! pod without a database URL fails at once instead of running `initdb` and
//! `chown -R` (see `shared::config::require_database_url`).

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// A reachable server. Stops the private cluster, if it started one, on drop.
#[derive(Debug)]
pub struct PgServer {
    /// URL of the maintenance database (`…/postgres`) on that server.
    pub admin_url: String,
    private: Option<PrivateCluster>,
}

#[derive(Debug)]
struct PrivateCluster {
    bindir: PathBuf,
    data: PathBuf,
    run_as: Option<String>,
}

impl PgServer {
    /// Resolves the server in the order the module comment gives. `scratch`
    /// is where a private cluster lives (e.g. `target/pg`).
    pub async fn resolve(scratch: &Path) -> anyhow::Result<Self> {
        if let Some(url) = shared::config::env_opt("DATABASE_URL") {
            return Ok(Self { admin_url: with_database(&url, "postgres"), private: None });
        }
        let local: SocketAddr = ([127, 0, 0, 1], 5432).into();
        if TcpStream::connect_timeout(&local, Duration::from_millis(300)).is_ok() {
            return Ok(Self { admin_url: "postgres://postgres@127.0.0.1:5432/postgres".into(), private: None });
        }
        Self::private(scratch).await
    }

    /// The private cluster under `scratch`, started unless it runs already
    /// (whatever answers on 127.0.0.1:5432 or DATABASE_URL names).
    pub async fn private(scratch: &Path) -> anyhow::Result<Self> {
        let cluster = PrivateCluster::start(scratch)?;
        let port = cluster.port;
        // Only the process that started the cluster stops it; others (test
        // processes, a second stack) share it.
        let private = cluster.owned.then_some(cluster.inner);
        let server = Self { admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), private };
        server.wait_ready(Duration::from_secs(20)).await?;
        Ok(server)
    }

    pub fn is_private(&self) -> bool {
        self.private.is_some()
    }

    /// `host:port` of the server, for a log line (no user or password).
    pub fn address(&self) -> String {
        let rest = self.admin_url.split_once("://").map_or(self.admin_url.as_str(), |(_, r)| r);
        let host = rest.split(['/', '?']).next().unwrap_or(rest);
        host.rsplit_once('@').map_or(host, |(_, h)| h).to_owned()
    }

    /// The comment on database `name`: `None` when there is no such
    /// database, `Some(None)` when it has no comment.
    pub async fn database_comment(&self, name: &str) -> anyhow::Result<Option<Option<String>>> {
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            comment: Option<String>,
        }
        let mut c = AsyncPgConnection::establish(&self.admin_url).await?;
        let rows: Vec<Row> =
            diesel::sql_query("SELECT shobj_description(oid, 'pg_database') AS comment FROM pg_database WHERE datname = $1")
                .bind::<diesel::sql_types::Text, _>(name)
                .load(&mut c)
                .await?;
        Ok(rows.into_iter().next().map(|r| r.comment))
    }

    /// Sets the comment on database `name` (how `stack` marks its own).
    pub async fn set_database_comment(&self, name: &str, comment: &str) -> anyhow::Result<()> {
        let mut c = AsyncPgConnection::establish(&self.admin_url).await?;
        let quoted = comment.replace('\'', "''");
        diesel::sql_query(format!("COMMENT ON DATABASE {} IS '{quoted}'", ident(name)?)).execute(&mut c).await?;
        Ok(())
    }

    async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match AsyncPgConnection::establish(&self.admin_url).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() > deadline => bail!("PostgreSQL did not come up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        with_database(&self.admin_url, name)
    }

    /// Creates `name` unless it exists (optionally from a template).
    pub async fn ensure_database(&self, name: &str, template: Option<&str>) -> anyhow::Result<bool> {
        let mut c = AsyncPgConnection::establish(&self.admin_url).await?;
        #[derive(diesel::QueryableByName)]
        struct Found {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            #[allow(dead_code)]
            one: i32,
        }
        let exists: Vec<Found> = diesel::sql_query("SELECT 1 AS one FROM pg_database WHERE datname = $1")
            .bind::<diesel::sql_types::Text, _>(name)
            .load(&mut c)
            .await?;
        if !exists.is_empty() {
            return Ok(false);
        }
        let sql = match template {
            Some(t) => format!("CREATE DATABASE {} TEMPLATE {}", ident(name)?, ident(t)?),
            None => format!("CREATE DATABASE {}", ident(name)?),
        };
        diesel::sql_query(sql).execute(&mut c).await.with_context(|| format!("creating database {name}"))?;
        Ok(true)
    }

    /// Drops `name`, disconnecting anyone still on it.
    pub async fn drop_database(&self, name: &str) -> anyhow::Result<()> {
        let mut c = AsyncPgConnection::establish(&self.admin_url).await?;
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)?)).execute(&mut c).await?;
        Ok(())
    }

    /// Runs `f` while holding a server-wide advisory lock, so several test
    /// processes can build one shared template database without racing.
    pub async fn with_lock<F, T>(&self, key: i64, f: F) -> anyhow::Result<T>
    where
        F: AsyncFnOnce() -> anyhow::Result<T>,
    {
        let mut c = AsyncPgConnection::establish(&self.admin_url).await?;
        diesel::sql_query("SELECT pg_advisory_lock($1)").bind::<diesel::sql_types::BigInt, _>(key).execute(&mut c).await?;
        let out = f().await;
        // The lock also ends with the session; unlock to be quick about it.
        let _ =
            diesel::sql_query("SELECT pg_advisory_unlock($1)").bind::<diesel::sql_types::BigInt, _>(key).execute(&mut c).await;
        out
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(p) = &self.private {
            let _ = p.pg_ctl(&["stop", "-m", "fast", "-w"]).status();
        }
    }
}

struct Started {
    inner: PrivateCluster,
    port: u16,
    owned: bool,
}

/// A cross-process mutex: a directory that exists while it is held (test
/// processes may try to set the cluster up at the same time).
struct DirLock(PathBuf);

impl DirLock {
    fn acquire(path: PathBuf) -> Self {
        for _ in 0..600 {
            if std::fs::create_dir(&path).is_ok() {
                return Self(path);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // A holder that died left it behind: take it over.
        Self(path)
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl PrivateCluster {
    fn start(scratch: &Path) -> anyhow::Result<Started> {
        let bindir = find_bindir()?;
        std::fs::create_dir_all(scratch)?;
        let scratch = scratch.canonicalize()?;
        let data = scratch.join("data");
        let run_as = running_as_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            chown_to(&scratch, user)?;
        }
        let _lock = DirLock::acquire(scratch.join("setup.lock"));
        let cluster = PrivateCluster { bindir, data: data.clone(), run_as };
        if let Some(port) = cluster.running_port() {
            return Ok(Started { inner: cluster, port, owned: false });
        }
        if !data.join("PG_VERSION").exists() {
            let status = cluster
                .cmd("initdb")
                .args(["-D", &path_str(&data)?, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
                .status()
                .context("running initdb")?;
            if !status.success() {
                bail!("initdb failed ({status})");
            }
        }
        let port = free_port()?;
        let opts =
            format!("-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=300", path_str(&scratch)?);
        let log = scratch.join("postgres.log");
        let status =
            cluster.pg_ctl(&["start", "-w", "-o", &opts, "-l", &path_str(&log)?]).status().context("running pg_ctl start")?;
        if !status.success() {
            bail!("pg_ctl start failed ({status}); see {}", log.display());
        }
        Ok(Started { inner: cluster, port, owned: true })
    }

    /// The port of a server already running on this data directory.
    fn running_port(&self) -> Option<u16> {
        let running = self.pg_ctl(&["status"]).stdout(std::process::Stdio::null()).status().ok()?.success();
        if !running {
            return None;
        }
        // postmaster.pid: line 4 is the port.
        std::fs::read_to_string(self.data.join("postmaster.pid")).ok()?.lines().nth(3)?.trim().parse().ok()
    }

    fn cmd(&self, program: &str) -> Command {
        let exe = self.bindir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = self.cmd("pg_ctl");
        c.arg("-D").arg(&self.data).args(args);
        c
    }
}

fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("which").arg("initdb").output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(dir) = p.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        return Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    for dir in std::fs::read_dir("/usr/lib/postgresql").into_iter().flatten().flatten() {
        let bin = dir.path().join("bin");
        if bin.join("initdb").exists() {
            return Ok(bin);
        }
    }
    bail!("no PostgreSQL found: set DATABASE_URL, start a server on 127.0.0.1:5432, or put initdb/pg_ctl on PATH")
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn chown_to(dir: &Path, user: &str) -> anyhow::Result<()> {
    let status = Command::new("chown").args(["-R", user]).arg(dir).status()?;
    if !status.success() {
        bail!("chown {user} {} failed", dir.display());
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str().map(str::to_owned).context("non-UTF-8 path")
}

/// Replaces the database name in a `postgres://` URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_and_path = &base[scheme_end..];
    let host = host_and_path.split('/').next().unwrap_or(host_and_path);
    let mut out = format!("{}{}/{}", &base[..scheme_end], host, name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Quotes a database name after checking it is a plain identifier.
fn ident(name: &str) -> anyhow::Result<String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        bail!("refusing odd database name {name:?}");
    }
    Ok(format!("\"{name}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_database_name() {
        assert_eq!(with_database("postgres://u@h:5/a", "b"), "postgres://u@h:5/b");
        assert_eq!(with_database("postgres://u@h:5", "b"), "postgres://u@h:5/b");
        assert_eq!(with_database("postgres://u:p@h/a?sslmode=disable", "b"), "postgres://u:p@h/b?sslmode=disable");
    }
}
