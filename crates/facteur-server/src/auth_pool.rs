//! A small, fixed pool of threads for password checks.
//!
//! Memory-hard hashes (ARGON2ID: 19 MiB per check by default) must not run on tokio's blocking
//! pool, which grows to hundreds of threads: the allocator keeps a per-thread arena for each
//! of them, and a login flood leaves gigabytes resident. Here at most `threads` checks run at
//! once, always on the same threads, so that memory stays bounded by `threads` times the cost
//! of one hash; further logins wait in the queue.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

/// The jobs waiting for a thread, and whether the pool is gone.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

/// One queue and one condition variable: a job wakes at most one sleeping thread, and none
/// while all of them are busy (a channel behind a mutex woke a second thread at each job,
/// to take the mutex over and sleep again).
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

pub struct AuthPool {
    shared: Arc<Shared>,
}

/// The pool's threads are gone (only at process exit).
#[derive(Debug, thiserror::Error)]
#[error("the password-check threads are gone")]
pub struct PoolGone;

impl AuthPool {
    /// Start `threads` worker threads (at least one).
    pub fn new(threads: usize) -> Self {
        let shared = Arc::new(Shared::default());
        for i in 0..threads.max(1) {
            let shared = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("facteur-auth-{i}"))
                .spawn(move || loop {
                    let job = {
                        let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
                        loop {
                            if let Some(job) = queue.jobs.pop_front() {
                                break job;
                            }
                            if queue.closed {
                                return;
                            }
                            queue = shared
                                .ready
                                .wait(queue)
                                .unwrap_or_else(PoisonError::into_inner);
                        }
                    };
                    // A panic in a check is a bug; it must not take the worker with it.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password-check thread");
            }
        }
        Self { shared }
    }

    /// Run `f` on a pool thread and wait for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolGone> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if queue.closed {
                return Err(PoolGone);
            }
            queue.jobs.push_back(Box::new(move || {
                let _ = tx.send(f());
            }));
        }
        self.shared.ready.notify_one();
        rx.await.map_err(|_| PoolGone)
    }
}

impl Drop for AuthPool {
    /// The threads finish the jobs queued, then end.
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.shared.ready.notify_all();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_jobs_at_once_all_run_on_at_most_the_pools_threads() {
        let pool = Arc::new(AuthPool::new(2));
        let mut handles = Vec::new();
        for i in 0..200u32 {
            let pool = pool.clone();
            handles.push(tokio::spawn(async move {
                pool.run(move || (i, std::thread::current().id()))
                    .await
                    .unwrap()
            }));
        }
        let mut threads = std::collections::HashSet::new();
        for (i, h) in handles.into_iter().enumerate() {
            let (got, thread) = h.await.unwrap();
            assert_eq!(got as usize, i);
            threads.insert(thread);
        }
        assert!(!threads.is_empty() && threads.len() <= 2, "{threads:?}");
    }

    async fn futures_join(pool: &AuthPool) -> Vec<u32> {
        let mut out = Vec::new();
        for i in 1..=4u32 {
            out.push(pool.run(move || i).await.unwrap());
        }
        out
    }
}
