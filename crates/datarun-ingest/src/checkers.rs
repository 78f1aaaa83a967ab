//! The threads that run ingest's checks (signatures, payloads), below the rest of the
//! hub's scheduling priority.
//!
//! The checks are most of ingest's CPU work and can run on every core; the store stage
//! is serial and the whole pipeline moves at its pace once the checks keep up. Run at the
//! same priority, checks slowed the store stage; given a fixed share of the cores, they
//! left a core idle whenever the store stage waited on something else (5–14 % idle on a
//! 2-core machine). At a lower priority (a higher nice value) the kernel runs them on
//! whatever the store stage, the reader, the HTTP API and librdkafka's threads leave
//! idle, and preempts them as soon as one of those has work.

use crate::IngestError;
use std::sync::{mpsc, Arc, Mutex};

/// How much lower than the hub's own priority the check threads run (nice values; at +10
/// a thread gets about a tenth of a core that a normal-priority thread wants).
pub const CHECK_NICENESS: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

pub(crate) struct CheckPool {
    jobs: mpsc::Sender<Job>,
    pub(crate) threads: usize,
}

impl CheckPool {
    /// Starts `threads` check threads; they end when the pool is dropped.
    pub(crate) fn start(threads: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for n in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ingest-check-{n}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = next else {
                            return;
                        };
                        // A check that panics fails its batch's checks (which are
                        // retried), not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                Err(error) => tracing::error!(%error, "could not start an ingest check thread"),
            }
        }
        Self {
            jobs,
            threads: started.max(1),
        }
    }

    /// Queues `work` for a check thread; the receiver gets its result, or an error if it
    /// panicked.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<T>, IngestError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work());
            }))
            .map_err(|_| IngestError::Worker("no ingest check thread is running".into()))?;
        Ok(result)
    }
}

/// Lowers the calling thread's priority by `CHECK_NICENESS` (on Linux, a nice value
/// belongs to a thread). Where that is refused, checks run at the hub's priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        let thread = Some(rustix::thread::gettid());
        let lowered = rustix::process::getpriority_process(thread).and_then(|nice| {
            rustix::process::setpriority_process(thread, (nice + CHECK_NICENESS).min(19))
        });
        if let Err(error) = lowered {
            tracing::warn!(%error, "could not lower an ingest check thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowering a thread's priority is done on Linux only (see `lower_priority`).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn checks_run_below_the_callers_priority() {
        let pool = CheckPool::start(2);
        let ours = rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let theirs = pool
            .run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())))
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert_eq!(theirs, (ours + CHECK_NICENESS).min(19));
    }

    #[tokio::test]
    async fn a_panicking_check_fails_its_piece_and_the_threads_go_on() {
        let pool = CheckPool::start(1);
        let panicked = pool.run(|| -> u32 { panic!("a check failed") }).unwrap();
        assert!(panicked.await.is_err(), "the piece reports its failure");
        let next = pool.run(|| 7).unwrap().await;
        assert_eq!(next.unwrap(), 7, "the one thread still runs checks");
    }
}
