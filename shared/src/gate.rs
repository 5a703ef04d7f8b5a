//! Per-key admission: at most `per_key` requests (see [`Gate::new`]) that name the same
//! row (a user, a usage session, an order) hold a pooled connection at once.
//! The rest wait here, without a connection, for at most the lock bound, and
//! then answer ABORTED. Without it, one row held for long (an operator's
//! open transaction, a stuck client) collects a queue of waiters that takes
//! every pooled connection, and unrelated callers get UNAVAILABLE.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-key admission (see the module docs).
#[derive(Debug)]
pub struct Gate {
    per_key: usize,
    wait: Duration,
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held while the request runs; frees its slot (and the key) on drop.
#[derive(Debug)]
pub struct Pass {
    _permit: OwnedSemaphorePermit,
}

/// The key stayed busy for the whole wait.
#[derive(Debug, thiserror::Error)]
#[error("{0} is busy (other requests for it are waiting on a lock), retry")]
pub struct Busy(pub String);

impl Gate {
    /// At most `per_key` requests per key at once; the rest wait at most `wait`.
    pub fn new(per_key: usize, wait: Duration) -> Self {
        Self { per_key: per_key.max(1), wait, keys: Mutex::new(HashMap::new()) }
    }

    /// Waits for a slot of `key`'s; [`Busy`] when none frees within the wait.
    pub async fn enter(&self, key: &str) -> Result<Pass, Busy> {
        let sem = {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            // Forget keys nobody holds or waits for, so the map stays small.
            if keys.len() > 1024 {
                keys.retain(|_, s| Arc::strong_count(s) > 1);
            }
            keys.entry(key.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_key))).clone()
        };
        match tokio::time::timeout(self.wait, sem.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Pass { _permit: permit }),
            _ => Err(Busy(key.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_key_refuses_after_the_wait_and_other_keys_pass() {
        let gate = Gate::new(2, Duration::from_millis(50));
        let a1 = gate.enter("a").await;
        let a2 = gate.enter("a").await;
        assert!(a1.is_ok() && a2.is_ok());
        assert!(gate.enter("a").await.is_err(), "a third holder of one key waits, then is refused");
        assert!(gate.enter("b").await.is_ok(), "another key is unaffected");
        drop(a1);
        assert!(gate.enter("a").await.is_ok(), "a freed slot is reused");
    }
}
