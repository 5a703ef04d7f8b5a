//! The gRPC server every service runs: health, reflection (v1 and v1alpha),
//! request tracing and metrics, load shedding, HTTP/2 connection ageing, and
//! graceful shutdown (NOT_SERVING first, then a bounded drain).
use std::{convert::Infallible, future::Future, io, net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpSocket};
use tonic::{server::NamedService, transport::Server};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{BoxError, ServiceBuilder};

use crate::config::CommonConfig;

mod shutdown;

pub use shutdown::{Shutdown, termination_signal};

/// A tonic service the server routes: what `Routes::add_service` asks of
/// it, named once for every place that takes one.
pub trait GrpcService<B>:
    tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible, Future: Send + 'static>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> GrpcService<B> for S where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>, Error = Infallible, Future: Send + 'static>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The response body of a [`GrpcService`].
pub trait GrpcBody: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> GrpcBody for B where B: http_body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static {}

/// Binds a listener ([`listen`]) on the first address `addr` resolves to
/// that binds, with a one-line error naming the variable on failure.
pub async fn bind(addr: &str, var: &str) -> anyhow::Result<TcpListener> {
    let fail = |e: io::Error| {
        // Linux refuses a port that an outbound connection left in TIME-WAIT
        // (up to 60 s) whatever the listener sets; only ports in the
        // kernel's ephemeral range are ever used for outbound connections.
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            "; a listener holds it, or (for a port in net.ipv4.ip_local_port_range) a closed outbound connection for up to 60 s"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {addr} ({var}): {e}{hint}")
    };
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "the address resolves to nothing");
    for a in tokio::net::lookup_host(addr).await.map_err(fail)? {
        match listen(a) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(fail(last))
}

/// The listen backlog, as `TcpListener::bind` of std and tokio has it.
const LISTEN_BACKLOG: u32 = 128;

/// A listener on `addr` with SO_REUSEADDR, set here rather than left to
/// whatever `TcpListener::bind` does: a server restarted on its port binds
/// while the connections its predecessor closed sit in TIME-WAIT. (It does
/// not help against a TIME-WAIT left by another program's outbound
/// connection from that port: Linux refuses that bind unless the outbound
/// socket set SO_REUSEADDR too.)
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = reusable_socket(addr)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn reusable_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    Ok(socket)
}

/// Readiness of the named health service.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    names: Vec<&'static str>,
}

impl Readiness {
    /// Reports the named health services SERVING or NOT_SERVING.
    pub async fn set(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in &self.names {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}

/// Services a binary serves beside its main one and its event stream
/// (billing's plan catalogue), on the same listener, layers and drain:
/// health reports each one as it reports the main one, and reflection
/// lists them.
#[derive(Debug, Default)]
pub struct MoreServices {
    routes: tonic::service::Routes,
    names: Vec<&'static str>,
}

impl MoreServices {
    /// No further service.
    pub fn none() -> Self {
        Self::default()
    }

    /// These services and `svc` (its auth interceptor applied).
    pub fn with<S, B>(mut self, svc: S) -> Self
    where
        S: GrpcService<B>,
        B: GrpcBody,
    {
        self.names.push(S::NAME);
        self.routes = self.routes.add_service(svc);
        self
    }
}

/// Serves `svc`, `events` and `more` plus health and reflection on
/// `listener` until `shutdown` fires, then reports NOT_SERVING and drains
/// in-flight RPCs for at most `config.shutdown_grace`.
///
/// The named health service (and each of `more`) turns SERVING once
/// `migrate(database_url)` has run and `pool` answers a ping (retried with
/// backoff while the database is unreachable).
#[allow(clippy::too_many_arguments)]
pub async fn serve<S, B, V, VB, M, MF>(
    service_name: &'static str,
    listener: TcpListener,
    svc: S,
    events: V,
    more: MoreServices,
    config: &CommonConfig,
    shutdown: Shutdown,
    database_url: String,
    pool: crate::db::Pool,
    migrate: M,
) -> anyhow::Result<()>
where
    S: GrpcService<B>,
    B: GrpcBody,
    V: GrpcService<VB>,
    VB: GrpcBody,
    M: Fn(String) -> MF + Send + 'static,
    MF: Future<Output = anyhow::Result<Vec<String>>> + Send + 'static,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    let names = std::iter::once(service_name).chain(more.names.iter().copied()).collect();
    let readiness = Readiness { reporter: reporter.clone(), names };
    readiness.set(false).await;
    tokio::spawn(become_ready(readiness.clone(), shutdown.clone(), move || {
        let (migrated, pool) = (migrate(database_url.clone()), pool.clone());
        async move {
            migrated.await?;
            crate::db::ping(&pool).await?;
            Ok(())
        }
    }));

    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(service_name)
            .with_service_name(V::NAME)
            .with_service_name("grpc.health.v1.Health");
        for name in &more.names {
            b = b.with_service_name(*name);
        }
        b
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let max_in_flight = config.max_concurrent_requests;
    // A shed request is retried after this (likely on another replica).
    const OVERLOAD_RETRY: Duration = Duration::from_secs(1);
    const MAX_RESET_STREAMS: usize = 4096;
    // Beyond the global limit a request is shed at once with UNAVAILABLE
    // OVERLOADED and RetryInfo (retryable, maybe on another replica) instead
    // of queueing unbounded.
    // RPC metrics sit outside, so shed requests are counted too. The
    // caller's deadline is answered here, with its reason (crate::deadline).
    let layers = ServiceBuilder::new()
        .layer(crate::metrics::RpcMetricsLayer)
        .layer(crate::deadline::DeadlineLayer)
        .map_err(move |e: BoxError| -> BoxError {
            if e.is::<tower::load_shed::error::Overloaded>() {
                Box::new(crate::status::unavailable(
                    crate::status::ErrorReason::Overloaded,
                    format!("server overloaded ({max_in_flight} requests in flight), retry"),
                    OVERLOAD_RETRY,
                    [("max_in_flight", max_in_flight.to_string())],
                ))
            } else {
                e
            }
        })
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(max_in_flight))
        .into_inner();

    let mut builder = Server::builder()
        .trace_fn(crate::telemetry::server_span)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Callers are internal and authenticated. A caller that gives up on
        // many calls at once (a deadline during a stall) resets many streams;
        // h2's default of 20 pending resets answers that with GOAWAY
        // ENHANCE_YOUR_CALM and fails every call on the connection.
        .http2_max_pending_accept_reset_streams(Some(MAX_RESET_STREAMS))
        .http2_max_local_error_reset_streams(Some(MAX_RESET_STREAMS));
    if let Some(age) = config.max_connection_age {
        builder = builder.max_connection_age(age).max_connection_age_grace(config.shutdown_grace);
    }
    // The event service's watchers hold no slot of the limit while they
    // stream: a slot is held until a call's response starts, and a stream's
    // starts with its first message (the watchers have a cap of their own).
    let mut layered = builder.layer(layers);
    let router = layered
        .add_routes(more.routes)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(svc)
        .add_service(events);

    let addr = listener.local_addr()?;
    tracing::info!(%addr, service = service_name, "listening");
    // TCP_NODELAY: without it, a response written as several small frames
    // waits for the client's delayed ACK (~40 ms per RPC).
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let stop = shutdown.wait();
    let draining = readiness.clone();
    let signal = async move {
        stop.await;
        // Load balancers stop sending before we stop accepting.
        draining.set(false).await;
        reporter.set_service_status("", ServingStatus::NotServing).await;
        tracing::info!("shutting down: draining in-flight requests");
    };
    let server = router.serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    let grace = config.shutdown_grace;
    let stop = shutdown.wait();
    tokio::select! {
        res = &mut server => res?,
        _ = stop => {
            match tokio::time::timeout(grace, &mut server).await {
                Ok(res) => res?,
                Err(_) => tracing::warn!(grace_secs = grace.as_secs(), "drain timed out; closing remaining connections"),
            }
        }
    }
    tracing::info!(service = service_name, "stopped");
    Ok(())
}

/// Flips readiness to SERVING once `check` succeeds, retrying with backoff
/// (capped at 10 s) while the database is unreachable.
pub async fn become_ready<F, Fut>(readiness: Readiness, shutdown: Shutdown, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        match check().await {
            Ok(()) => {
                readiness.set(true).await;
                tracing::info!("ready: database migrated and answering");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "not ready yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Runs a handler's effect on its own task (keeping the handler's span), so
/// a cancelled RPC cannot stop a transaction halfway (docs/design.md,
/// Idempotency), maps the domain error to a status, and wakes the event
/// tails ([`crate::events::nudge`]).
pub async fn run_effect<T, E, F>(f: F) -> Result<T, tonic::Status>
where
    T: Send + 'static,
    E: Into<tonic::Status> + Send + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
{
    let done = tokio::spawn(tracing::Instrument::in_current_span(f)).await;
    // Whatever it committed may have written events: wake the tails.
    crate::events::nudge();
    match done {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(crate::status::internal(&e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::{io, net::SocketAddr};

    use tokio::{io::AsyncReadExt, net::TcpSocket};

    use super::{listen, reusable_socket};

    #[test]
    fn listener_sockets_set_so_reuseaddr() {
        let socket = reusable_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(socket.reuseaddr().unwrap());
    }

    /// A server restarted on its port while the connections the previous one
    /// closed (the server closing first, as at shutdown) sit in TIME-WAIT:
    /// [`listen`] binds it; a socket without SO_REUSEADDR is refused, which
    /// shows the port was held.
    #[tokio::test]
    async fn a_restarted_server_binds_its_port_held_in_time_wait() {
        let first = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr: SocketAddr = first.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server_side, _) = first.accept().await.unwrap();
        drop(server_side);
        // The client reads the server's FIN and closes: the server's side
        // of the connection, on `addr`'s port, goes to TIME-WAIT.
        assert_eq!(client.read(&mut [0u8; 1]).await.unwrap(), 0);
        drop(client);
        drop(first);

        let plain = TcpSocket::new_v4().unwrap();
        plain.set_reuseaddr(false).unwrap();
        let refused = plain.bind(addr).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse, "the closed connection holds the port: {refused}");
        let again = listen(addr).expect("SO_REUSEADDR binds beside the TIME-WAIT");
        assert_eq!(again.local_addr().unwrap(), addr);
    }
}
