use crate::{DurableQueue, Job, QueueError};
use std::future::Future;
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, StateStore};

/// Options of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker's name (lease holder). Default `worker`.
    pub name: String,
    /// Jobs leased at a time. Default 16.
    pub batch: usize,
    /// How long a lease lasts before the job is due again. Default 30 s.
    pub visibility: Duration,
    /// Attempts before a job becomes a dead letter. Default 5.
    pub max_attempts: u32,
    /// The first retry's delay; doubles per attempt. Default 1 s.
    pub backoff: Duration,
    /// How long to wait when there is nothing to do. Default 100 ms.
    pub idle: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            name: "worker".into(),
            batch: 16,
            visibility: Duration::from_secs(30),
            max_attempts: 5,
            backoff: Duration::from_secs(1),
            idle: Duration::from_millis(100),
        }
    }
}

/// Drains a queue through a handler: lease, run, ack — or reschedule with backoff, or
/// dead-letter. While the target's breaker (if given) is open, it waits and calls nothing.
pub struct Worker<P, S: StateStore> {
    queue: DurableQueue,
    name: String,
    options: WorkerOptions,
    breaker: Option<CircuitBreaker<P, S>>,
}

impl<P, S: StateStore> std::fmt::Debug for Worker<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<P, S: StateStore> Worker<P, S> {
    /// A worker for `queue`'s jobs of the queue named `name`.
    pub fn new(
        queue: DurableQueue,
        name: &str,
        options: WorkerOptions,
        breaker: Option<CircuitBreaker<P, S>>,
    ) -> Self {
        Worker {
            queue,
            name: name.to_owned(),
            options,
            breaker,
        }
    }

    /// Runs one round: waits while the breaker is open, leases a batch, handles each job.
    /// Returns how many jobs it handled (0: nothing was due).
    pub async fn run_once<F, Fut>(&self, handle: &F) -> Result<usize, QueueError>
    where
        F: Fn(Job) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        if let Some(breaker) = &self.breaker {
            // An open circuit means the target is down: waiting costs nothing, calling
            // would fail and burn an attempt.
            while breaker.state().is_degraded()
                && breaker.state() != stormwall::circuit_breaker::CircuitState::HalfOpen
            {
                tokio::time::sleep(self.options.idle).await;
            }
        }
        let jobs = self
            .queue
            .lease(
                &self.name,
                &self.options.name,
                self.options.batch,
                self.options.visibility,
            )
            .await?;
        let handled = jobs.len();
        let mut done = Vec::with_capacity(jobs.len());
        for job in jobs {
            let outcome = handle(job.clone()).await;
            match outcome {
                Ok(()) => done.push(job),
                Err(error) => {
                    let factor = 1u32 << job.attempts.saturating_sub(1).min(16);
                    let backoff = self.options.backoff.saturating_mul(factor);
                    self.queue
                        .fail(&job, &error, backoff, self.options.max_attempts)
                        .await?
                }
            }
        }
        // One commit for the batch's successes (a crash before it re-runs them: at least
        // once, which the target's idempotency key turns into once).
        self.queue.ack_all(&done).await?;
        Ok(handled)
    }

    /// Runs rounds until `stop` resolves.
    pub async fn run_until<F, Fut>(
        &self,
        handle: F,
        stop: impl Future<Output = ()>,
    ) -> Result<(), QueueError>
    where
        F: Fn(Job) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                handled = self.run_once(&handle) => {
                    if handled? == 0 {
                        tokio::time::sleep(self.options.idle).await;
                    }
                }
            }
        }
    }
}
