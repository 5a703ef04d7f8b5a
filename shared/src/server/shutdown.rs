//! Stopping: the shutdown every task of a service watches, and the
//! signals that fire it.
use std::future::Future;

use tokio::sync::watch;

/// A shutdown signal shared by the server and the service's jobs.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown not triggered yet.
    pub fn new() -> Self {
        Self { tx: watch::channel(false).0 }
    }

    /// Fires the shutdown (repeats are no-ops).
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Whether [`Shutdown::trigger`] was called.
    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once [`Shutdown::trigger`] has been called.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C. The SIGTERM handler is
/// installed when this is called, not when the future is first polled: a
/// process that says it is ready after calling it never dies of the
/// signal's default action in between.
pub fn termination_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
