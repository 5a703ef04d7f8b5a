//! What the services add to a connection string: session limits as
//! start-up options, and TCP settings that notice a vanished host.
use std::time::Duration;

/// TCP settings that bound how long a connection to a vanished database host
/// (a crash or a partition, no reset) can hold a call, since pooled
/// connections are not pinged when handed out: a statement sent into it
/// fails after `tcp_user_timeout` seconds unacknowledged (UNAVAILABLE), and
/// an idle one is found dead by keepalives within about a minute and
/// replaced. Settings the operator already wrote in the connection string
/// are left alone. They do not apply to Unix-domain sockets.
const DEAD_PEER: [(&str, u32); 4] =
    [("keepalives_idle", 30), ("keepalives_interval", 10), ("keepalives_retries", 3), ("tcp_user_timeout", 10)];

/// Adds the TCP settings that notice a vanished host (keepalives after 30 s
/// idle, `tcp_user_timeout` 10 s) that the connection string does not set.
pub fn with_dead_peer_detection(url: &str) -> String {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let set = |key: &str| {
        let prefix = format!("{key}=");
        if is_url {
            url.split_once('?').is_some_and(|(_, q)| q.split('&').any(|p| p.starts_with(&prefix)))
        } else {
            url.split_whitespace().any(|kv| kv.starts_with(&prefix))
        }
    };
    let missing: Vec<String> = DEAD_PEER.iter().filter(|(k, _)| !set(k)).map(|(k, v)| format!("{k}={v}")).collect();
    if missing.is_empty() {
        return url.to_owned();
    }
    if !is_url {
        return format!("{url} {}", missing.join(" "));
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", missing.join("&"))
}

/// Adds `lock_timeout` and `statement_timeout` to a connection string as
/// start-up options (libpq's `options`), so they are the session defaults:
/// `SET LOCAL ... TO DEFAULT` returns to them, and no round trip is spent.
/// Options the operator already set are kept (ours are appended to theirs).
/// A zero duration leaves the server's default.
pub fn with_session_limits(url: &str, lock_timeout: Duration, statement_timeout: Duration) -> String {
    let mut opts = Vec::new();
    if !lock_timeout.is_zero() {
        opts.push(format!("-c lock_timeout={}", lock_timeout.as_millis()));
    }
    if !statement_timeout.is_zero() {
        opts.push(format!("-c statement_timeout={}", statement_timeout.as_millis()));
    }
    if opts.is_empty() {
        return url.to_owned();
    }
    let opts = opts.join(" ");
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // key=value form: a later `options` would replace an earlier one.
        if url.split_whitespace().any(|kv| kv.starts_with("options=")) {
            tracing::warn!(
                "the database connection string sets `options`; DB_LOCK_TIMEOUT_MS/DB_STATEMENT_TIMEOUT_MS not applied"
            );
            return url.to_owned();
        }
        return format!("{url} options='{opts}'");
    }
    let encoded = opts.replace(' ', "%20").replace('=', "%3D");
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = query.split('&').filter(|p| !p.is_empty()).map(str::to_owned).collect();
    match params.iter_mut().find(|p| p.starts_with("options=")) {
        Some(existing) => {
            existing.push_str("%20");
            existing.push_str(&encoded);
        }
        None => params.push(format!("options={encoded}")),
    }
    format!("{base}?{}", params.join("&"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn dead_peer_settings_are_added_unless_set() {
        assert_eq!(
            with_dead_peer_detection("postgres://h/db"),
            "postgres://h/db?keepalives_idle=30&keepalives_interval=10&keepalives_retries=3&tcp_user_timeout=10"
        );
        assert_eq!(
            with_dead_peer_detection("postgres://h/db?options=x&tcp_user_timeout=3"),
            "postgres://h/db?options=x&tcp_user_timeout=3&keepalives_idle=30&keepalives_interval=10&keepalives_retries=3",
            "an operator's own value is kept"
        );
        assert_eq!(
            with_dead_peer_detection("host=h dbname=db keepalives_idle=5"),
            "host=h dbname=db keepalives_idle=5 keepalives_interval=10 keepalives_retries=3 tcp_user_timeout=10"
        );
        // That the driver accepts these keys is shown by every system test:
        // each connects through `pool`.
    }

    #[test]
    fn multi_host_connection_strings_keep_their_hosts_and_target_session_attrs() {
        // libpq's multi-host forms, as tokio-postgres reads them: the hosts
        // are tried in order, and `target_session_attrs=read-write` skips
        // one that takes no writes (a standby, a demoted primary).
        let ms = Duration::from_millis;
        let url = "postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write";
        assert_eq!(
            with_dead_peer_detection(&with_session_limits(url, ms(500), ms(5000))),
            "postgres://u@h1:5432,h2:5433/db?target_session_attrs=read-write\
             &options=-c%20lock_timeout%3D500%20-c%20statement_timeout%3D5000\
             &keepalives_idle=30&keepalives_interval=10&keepalives_retries=3&tcp_user_timeout=10"
        );
        let kv = "host=h1,h2 port=5432,5433 dbname=db target_session_attrs=read-write";
        assert_eq!(
            with_dead_peer_detection(&with_session_limits(kv, ms(500), Duration::ZERO)),
            "host=h1,h2 port=5432,5433 dbname=db target_session_attrs=read-write options='-c lock_timeout=500' \
             keepalives_idle=30 keepalives_interval=10 keepalives_retries=3 tcp_user_timeout=10"
        );
        // That the driver connects through such a string, skipping a dead
        // host and a read-only one, is shown by the system test
        // `ops::read_only_server::a_multi_host_url_skips_a_dead_host_and_a_read_only_one`.
    }

    #[test]
    fn session_limits_become_startup_options() {
        let ms = Duration::from_millis;
        assert_eq!(
            with_session_limits("postgres://h/db", ms(500), ms(5000)),
            "postgres://h/db?options=-c%20lock_timeout%3D500%20-c%20statement_timeout%3D5000"
        );
        assert_eq!(
            with_session_limits("postgres://h/db?sslmode=disable", ms(1), Duration::ZERO),
            "postgres://h/db?sslmode=disable&options=-c%20lock_timeout%3D1"
        );
        assert_eq!(with_session_limits("postgres://h/db", Duration::ZERO, Duration::ZERO), "postgres://h/db");
        assert_eq!(
            with_session_limits("postgres://h/db?options=-c%20search_path%3Dbilling&x=1", ms(5), Duration::ZERO),
            "postgres://h/db?options=-c%20search_path%3Dbilling%20-c%20lock_timeout%3D5&x=1",
            "an operator's own options are kept"
        );
        assert_eq!(
            with_session_limits("host=h dbname=db", ms(5), ms(6)),
            "host=h dbname=db options='-c lock_timeout=5 -c statement_timeout=6'"
        );
    }
}
