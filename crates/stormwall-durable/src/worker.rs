use crate::{DurableQueue, Job, QueueError};
use std::future::Future;
use std::time::Duration;
use stormwall::circuit_breaker::{CircuitBreaker, CircuitState, StateStore};

/// Options of a [`Worker`].
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker's name (lease holder). Default `worker`.
    pub name: String,
    /// Jobs leased at a time. Default 16; valid ≥ 1. A job whose lease ran out (its
    /// worker died or hung during its batch) is leased alone afterwards, so a job that
    /// kills its worker costs only its own attempts.
    pub batch: usize,
    /// How long a lease lasts before the job is due again. Default 30 s.
    pub visibility: Duration,
    /// Attempts before a job becomes a dead letter: failed that many times, or leased that
    /// many times with the lease running out (the process died on the job). Default 5;
    /// valid ≥ 1.
    pub max_attempts: u32,
    /// The first retry's delay; doubles per attempt. Default 1 s.
    pub backoff: Duration,
    /// How long to wait when there is nothing to do. Default 100 ms.
    pub idle: Duration,
    /// How often the worker exports its queue's depth and oldest-job age (the gauges of
    /// [`DurableQueue::depth`]): on a timer while [`Worker::run_until`] runs (also while a
    /// handler is slow or hung), and checked after each round of [`Worker::run_once`];
    /// `None`: never (call `depth` yourself). Default every 5 s; `Duration::ZERO`: after
    /// every round only.
    pub metrics_every: Option<Duration>,
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
            metrics_every: Some(Duration::from_secs(5)),
        }
    }
}

impl WorkerOptions {
    /// Checks every option is in its documented range; the error names the option.
    pub fn validate(&self) -> Result<(), QueueError> {
        use crate::storage::InvalidOption;
        if self.name.is_empty() {
            return Err(InvalidOption::new("WorkerOptions::name", &self.name, "not empty").into());
        }
        if self.batch == 0 {
            return Err(InvalidOption::new("WorkerOptions::batch", self.batch, "≥ 1").into());
        }
        if self.max_attempts == 0 {
            return Err(InvalidOption::new(
                "WorkerOptions::max_attempts",
                self.max_attempts,
                "≥ 1",
            )
            .into());
        }
        for (field, value) in [
            ("WorkerOptions::visibility", self.visibility),
            ("WorkerOptions::idle", self.idle),
        ] {
            crate::storage::check_duration(field, value)?;
        }
        Ok(())
    }
}

/// Drains a queue through a handler: lease, run, ack — or reschedule with backoff, or
/// dead-letter. With the target's breaker, every job runs through one of its permits (the
/// outcomes feed it); while it is open the worker waits and calls nothing, and when the
/// break ends it sends one job as the probe.
pub struct Worker<P, S: StateStore> {
    queue: DurableQueue,
    name: String,
    options: WorkerOptions,
    breaker: Option<CircuitBreaker<P, S>>,
    /// When the queue's gauges were last exported; `None` until the first round.
    exported_at: std::sync::Mutex<Option<tokio::time::Instant>>,
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
            exported_at: std::sync::Mutex::new(None),
        }
    }

    /// Exports the queue's depth gauges when `metrics_every` has passed since the last
    /// time (a failure to read them is logged: it must not stop the work).
    async fn export_metrics_when_due(&self) {
        let Some(every) = self.options.metrics_every else {
            return;
        };
        let now = tokio::time::Instant::now();
        {
            let mut exported_at = self.exported_at.lock().unwrap_or_else(|p| p.into_inner());
            if exported_at.is_some_and(|at| now.duration_since(at) < every) {
                return;
            }
            *exported_at = Some(now);
        }
        if let Err(e) = self.queue.depth(&self.name).await {
            tracing::warn!(queue = %self.name, error = %e, "stormwall-durable: could not read the queue's depth");
        }
    }

    /// Runs one round: waits while the breaker rejects calls, leases a batch (one job while
    /// the breaker is half-open: the probe), runs each job through a breaker permit — its
    /// outcome feeds the breaker — and gives back untouched the jobs the breaker no longer
    /// admits; then exports the queue's gauges if `metrics_every` is due. Returns how many
    /// jobs it ran (0: nothing was due).
    pub async fn run_once<F, Fut>(&self, handle: &F) -> Result<usize, QueueError>
    where
        F: Fn(Job) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        self.options.validate()?;
        let mut batch = self.options.batch;
        if let Some(breaker) = &self.breaker {
            // An open circuit means the target is down: waiting costs nothing, calling
            // would fail and burn an attempt. Asking for a permit (and handing it back
            // unused) is what moves an elapsed break to half-open.
            loop {
                match breaker.try_acquire() {
                    Ok(permit) => {
                        drop(permit);
                        break;
                    }
                    Err(rejected) => {
                        let wait = rejected
                            .retry_after
                            .unwrap_or(self.options.idle)
                            .clamp(Duration::from_millis(1), self.options.idle);
                        tokio::time::sleep(wait).await;
                        // The queue grows while the target is down: keep its gauges current.
                        self.export_metrics_when_due().await;
                    }
                }
            }
            if breaker.state() == CircuitState::HalfOpen {
                batch = 1;
            }
        }
        let jobs = self
            .queue
            .lease_at_most(
                &self.name,
                &self.options.name,
                batch,
                self.options.visibility,
                self.options.max_attempts,
            )
            .await?;
        let mut ran = 0;
        let mut done = Vec::with_capacity(jobs.len());
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            let permit = match &self.breaker {
                None => None,
                Some(breaker) => match breaker.try_acquire() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        // The circuit opened during the batch: the rest waits, uncounted.
                        for job in std::iter::once(job).chain(jobs.by_ref()) {
                            self.queue.release(&job).await?;
                        }
                        break;
                    }
                },
            };
            ran += 1;
            let outcome = handle(job.clone()).await;
            if let Some(mut permit) = permit {
                permit.record(outcome.is_err());
            }
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
        self.export_metrics_when_due().await;
        Ok(ran)
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
        // The gauges on their own timer too: a slow or hung handler must not leave them
        // stale (they matter most then). `Duration::ZERO`: after every round only.
        let export = async {
            match self.options.metrics_every {
                Some(every) if !every.is_zero() => loop {
                    tokio::time::sleep(every).await;
                    self.export_metrics_when_due().await;
                },
                _ => std::future::pending().await,
            }
        };
        tokio::pin!(export);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                () = &mut export => {}
                handled = self.run_once(&handle) => {
                    if handled? == 0 {
                        tokio::time::sleep(self.options.idle).await;
                    }
                }
            }
        }
    }
}
