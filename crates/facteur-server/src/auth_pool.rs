//! A small, fixed pool of threads for password checks.
//!
//! Memory-hard hashes (ARGON2ID: 19 MiB per check by default) must not run on tokio's blocking
//! pool, which grows to hundreds of threads: the allocator keeps a per-thread arena for each
//! of them, and a login flood leaves gigabytes resident. Here at most `threads` checks run at
//! once, always on the same threads, so that memory stays bounded by `threads` times the cost
//! of one hash; further logins wait in the queue.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

pub struct AuthPool {
    queue: mpsc::Sender<Job>,
}

/// The pool's threads are gone (only at process exit).
#[derive(Debug, thiserror::Error)]
#[error("the password-check threads are gone")]
pub struct PoolGone;

impl AuthPool {
    /// Start `threads` worker threads (at least one).
    pub fn new(threads: usize) -> Self {
        let (queue, jobs) = mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..threads.max(1) {
            let jobs = jobs.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("facteur-auth-{i}"))
                .spawn(move || loop {
                    let job = {
                        let jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
                        jobs.recv()
                    };
                    match job {
                        // A panic in a check is a bug; it must not take the worker with it.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                        }
                        Err(_) => break,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-check thread");
            }
        }
        Self { queue }
    }

    /// Run `f` on a pool thread and wait for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolGone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| PoolGone)?;
        rx.await.map_err(|_| PoolGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_on_named_threads_and_survives_panics() {
        let pool = AuthPool::new(2);
        let name = pool
            .run(|| std::thread::current().name().map(str::to_owned))
            .await
            .unwrap();
        assert!(name.unwrap().starts_with("facteur-auth-"));
        assert!(pool.run(|| panic!("bug in a check")).await.is_err());
        // Both workers are still there.
        let results = futures_join(&pool).await;
        assert_eq!(results, vec![1, 2, 3, 4]);
    }

    async fn futures_join(pool: &AuthPool) -> Vec<u32> {
        let mut out = Vec::new();
        for i in 1..=4u32 {
            out.push(pool.run(move || i).await.unwrap());
        }
        out
    }
}
