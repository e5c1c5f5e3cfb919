//! Sagas: a business flow across services as steps, each with an action and a
//! compensation. Every step runs through a stormwall pipeline (retry, timeout, breaker);
//! the saga's state is persisted after every step; a failed step compensates the
//! completed ones in reverse order; an unfinished saga resumes after a restart from its
//! last persisted step.

use crate::store::{SagaRow, Store};
use crate::SagaError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stormwall::pipeline::Strategy;
use stormwall::Pipeline;

/// What a step (or compensation) gets.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The saga's id.
    pub saga_id: String,
    /// The step's name.
    pub step: String,
    /// Unique per saga, step and direction (`<saga>:<step>` or `<saga>:<step>:compensate`):
    /// pass it to the target so that a step repeated after a crash is not done twice.
    pub idempotency_key: String,
    /// The saga's input.
    pub input: Value,
    /// The outputs of the steps completed so far, by name.
    pub outputs: HashMap<String, Value>,
}

/// A boxed step future (definitions are built at the configuration edge).
pub type StepFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;
type StepFn = Arc<dyn Fn(StepContext) -> StepFuture + Send + Sync>;

struct Step {
    name: String,
    action: StepFn,
    compensation: Option<StepFn>,
}

/// The steps of a kind of saga, in order.
pub struct SagaDefinition {
    name: String,
    steps: Vec<Step>,
}

impl std::fmt::Debug for SagaDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("name", &self.name)
            .field(
                "steps",
                &self.steps.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn boxed<F, Fut>(f: F) -> StepFn
where
    F: Fn(StepContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, String>> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(f(ctx)))
}

impl SagaDefinition {
    /// A saga kind named `name` (stored with each saga; resumed sagas find their
    /// definition by it).
    pub fn new(name: impl Into<String>) -> Self {
        SagaDefinition {
            name: name.into(),
            steps: Vec::new(),
        }
    }

    /// Adds a step with its compensation (run, in reverse order, if a later step fails).
    pub fn step<A, AF, C, CF>(mut self, name: impl Into<String>, action: A, compensation: C) -> Self
    where
        A: Fn(StepContext) -> AF + Send + Sync + 'static,
        AF: Future<Output = Result<Value, String>> + Send + 'static,
        C: Fn(StepContext) -> CF + Send + Sync + 'static,
        CF: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.steps.push(Step {
            name: name.into(),
            action: boxed(action),
            compensation: Some(boxed(compensation)),
        });
        self
    }

    /// Adds a step with nothing to undo (a read, or the last step).
    pub fn step_without_compensation<A, AF>(mut self, name: impl Into<String>, action: A) -> Self
    where
        A: Fn(StepContext) -> AF + Send + Sync + 'static,
        AF: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.steps.push(Step {
            name: name.into(),
            action: boxed(action),
            compensation: None,
        });
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its steps.
    Running,
    /// A step failed: undoing the completed ones.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed step was undone.
    Compensated,
    /// A compensation kept failing: an operator must look ([`Orchestrator::retry_parked`]).
    Parked,
}

impl SagaStatus {
    fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::Parked => "parked",
        }
    }

    /// Completed, compensated or parked: nothing more runs by itself.
    pub fn is_final(self) -> bool {
        !matches!(self, SagaStatus::Running | SagaStatus::Compensating)
    }
}

/// A saga's persisted state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    /// Where it is.
    pub status: SagaStatus,
    /// Its input.
    pub input: Value,
    /// Completed steps and their outputs, in order.
    pub completed: Vec<(String, Value)>,
    /// Steps compensated so far, in the order they were.
    pub compensated: Vec<String>,
    /// Why the saga is compensating (the failed step and its error).
    pub failure: Option<String>,
    /// The last compensation error (when parked).
    pub compensation_error: Option<String>,
}

/// What a saga did, for telemetry.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SagaEvent {
    /// A step succeeded (its state is persisted).
    StepCompleted {
        /// The saga.
        saga: String,
        /// The step.
        step: String,
    },
    /// A step failed after its pipeline gave up: compensation starts.
    StepFailed {
        /// The saga.
        saga: String,
        /// The step.
        step: String,
        /// Why.
        error: String,
    },
    /// A step was undone.
    Compensated {
        /// The saga.
        saga: String,
        /// The step.
        step: String,
    },
    /// A compensation attempt failed (it is retried).
    CompensationFailed {
        /// The saga.
        saga: String,
        /// The step.
        step: String,
        /// The attempt (1 for the first).
        attempt: u32,
        /// Why.
        error: String,
    },
    /// The saga reached a final status.
    Finished {
        /// The saga.
        saga: String,
        /// Completed, compensated or parked.
        status: SagaStatus,
    },
}

/// Options of an [`Orchestrator`].
#[derive(Debug, Clone)]
pub struct OrchestratorOptions {
    /// This process's name as the holder of the sagas it runs: a restarted process with
    /// the same name takes its sagas back at once; another one waits for the lease.
    /// Default: `pid-<process id>`.
    pub owner: String,
    /// How long a saga stays with its owner without progress. Default 30 s.
    pub lease: Duration,
    /// Attempts of a compensation before the saga is parked. Default 5.
    pub compensation_attempts: u32,
    /// Wait between compensation attempts (doubling). Default 100 ms.
    pub compensation_backoff: Duration,
}

impl Default for OrchestratorOptions {
    fn default() -> Self {
        OrchestratorOptions {
            owner: format!("pid-{}", std::process::id()),
            lease: Duration::from_secs(30),
            compensation_attempts: 5,
            compensation_backoff: Duration::from_millis(100),
        }
    }
}

type Listener = Arc<dyn Fn(&SagaEvent) + Send + Sync>;

/// Runs sagas: starts them, persists them step by step, compensates, resumes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// use stormwall::Pipeline;
/// use stormwall_saga::{Orchestrator, OrchestratorOptions, SagaDefinition, SagaStatus, SqliteStore};
///
/// let order = SagaDefinition::new("order")
///     .step("reserve", |_| async { Ok(json!("r-1")) }, |_| async { Ok(json!(null)) })
///     .step("charge", |_| async { Err("card declined".to_string()) }, |_| async { Ok(json!(null)) });
/// let dir = std::env::temp_dir().join(format!("stormwall-doc-saga-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let store = SqliteStore::open(dir.join("sagas.db"))?;
/// let sagas = Orchestrator::new(store, Pipeline::builder().build()?, OrchestratorOptions::default())
///     .register(order)?;
/// let state = sagas.start("order", "order-1", json!({"sku": "A"})).await?;
/// assert_eq!(state.status, SagaStatus::Compensated);
/// assert_eq!(state.compensated, ["reserve"]);
/// # std::fs::remove_dir_all(&dir).ok(); Ok(()) }
/// ```
pub struct Orchestrator<S, P> {
    store: S,
    pipeline: Pipeline<P>,
    definitions: HashMap<String, Arc<SagaDefinition>>,
    options: OrchestratorOptions,
    listener: Option<Listener>,
}

impl<S, P> std::fmt::Debug for Orchestrator<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("definitions", &self.definitions.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl<S: Store, P: Strategy<Value, String>> Orchestrator<S, P> {
    /// An orchestrator keeping sagas in `store`, running each step (and compensation
    /// attempt) through `pipeline`.
    pub fn new(store: S, pipeline: Pipeline<P>, options: OrchestratorOptions) -> Self {
        Orchestrator {
            store,
            pipeline,
            definitions: HashMap::new(),
            options,
            listener: None,
        }
    }

    /// Adds a saga definition; an error for a duplicate name, no steps or duplicate step
    /// names.
    pub fn register(mut self, definition: SagaDefinition) -> Result<Self, SagaError> {
        if definition.steps.is_empty() {
            return Err(SagaError::Config(format!(
                "saga {:?} has no steps",
                definition.name
            )));
        }
        let mut names = std::collections::HashSet::new();
        if let Some(dup) = definition.steps.iter().find(|s| !names.insert(&s.name)) {
            return Err(SagaError::Config(format!(
                "saga {:?} has two steps named {:?}",
                definition.name, dup.name
            )));
        }
        if self.definitions.contains_key(&definition.name) {
            return Err(SagaError::Config(format!(
                "saga {:?} is registered twice",
                definition.name
            )));
        }
        self.definitions
            .insert(definition.name.clone(), Arc::new(definition));
        Ok(self)
    }

    /// Calls `listener` with every [`SagaEvent`].
    pub fn on_event(mut self, listener: impl Fn(&SagaEvent) + Send + Sync + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    fn emit(&self, event: SagaEvent) {
        tracing::debug!(?event, "stormwall saga");
        if let Some(listener) = &self.listener {
            listener(&event);
        }
    }

    /// Starts saga `id` of kind `name` with `input` and runs it to a final status. With
    /// an `id` that exists, runs (resumes) that saga instead — starting twice is safe.
    pub async fn start(&self, name: &str, id: &str, input: Value) -> Result<SagaState, SagaError> {
        if !self.definitions.contains_key(name) {
            return Err(SagaError::UnknownDefinition {
                id: id.to_owned(),
                name: name.to_owned(),
            });
        }
        let state = SagaState {
            status: SagaStatus::Running,
            input,
            completed: Vec::new(),
            compensated: Vec::new(),
            failure: None,
            compensation_error: None,
        };
        let row = SagaRow {
            id: id.to_owned(),
            name: name.to_owned(),
            status: state.status.as_str().to_owned(),
            state: serde_json::to_string(&state).map_err(|e| SagaError::Config(e.to_string()))?,
            version: 1,
        };
        self.store
            .saga_create(row, &self.options.owner, now_ms() + self.lease_ms())
            .await?;
        self.run(id).await
    }

    fn lease_ms(&self) -> i64 {
        self.options.lease.as_millis() as i64
    }

    /// A saga's state.
    pub async fn status(&self, id: &str) -> Result<SagaState, SagaError> {
        Ok(self.load(id).await?.1)
    }

    async fn load(&self, id: &str) -> Result<(SagaRow, SagaState), SagaError> {
        let row = self
            .store
            .saga_load(id)
            .await?
            .ok_or_else(|| SagaError::UnknownSaga(id.to_owned()))?;
        let state = parse(&row)?;
        Ok((row, state))
    }

    /// Runs every unfinished saga (after a restart) that no other live process holds;
    /// the ids and final states of those it ran.
    pub async fn resume_all(&self) -> Result<Vec<(String, SagaState)>, SagaError> {
        let mut done = Vec::new();
        for id in self.store.saga_unfinished().await? {
            match self.run(&id).await {
                Ok(state) => done.push((id, state)),
                Err(SagaError::Busy(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Puts a parked saga back to compensating and runs it.
    pub async fn retry_parked(&self, id: &str) -> Result<SagaState, SagaError> {
        let (row, mut state) = self.load(id).await?;
        if state.status != SagaStatus::Parked {
            return Ok(state);
        }
        self.claim(id).await?;
        state.status = SagaStatus::Compensating;
        state.compensation_error = None;
        self.save(&row, row.version + 1, &state, false).await?;
        self.run(id).await
    }

    async fn claim(&self, id: &str) -> Result<(), SagaError> {
        if self
            .store
            .saga_claim(id, &self.options.owner, now_ms(), self.lease_ms())
            .await?
        {
            Ok(())
        } else {
            Err(SagaError::Busy(id.to_owned()))
        }
    }

    async fn save(
        &self,
        row: &SagaRow,
        version: i64,
        state: &SagaState,
        release: bool,
    ) -> Result<(), SagaError> {
        let saved = self
            .store
            .saga_save(
                SagaRow {
                    id: row.id.clone(),
                    name: row.name.clone(),
                    status: state.status.as_str().to_owned(),
                    state: serde_json::to_string(state)
                        .map_err(|e| SagaError::Config(e.to_string()))?,
                    version,
                },
                &self.options.owner,
                release,
            )
            .await?;
        if saved {
            Ok(())
        } else {
            // Another process took the saga over (our lease ran out): stop here.
            Err(SagaError::Busy(row.id.clone()))
        }
    }

    /// Runs saga `id` from its persisted state to a final status.
    pub async fn run(&self, id: &str) -> Result<SagaState, SagaError> {
        let (row, mut state) = self.load(id).await?;
        if state.status.is_final() {
            return Ok(state);
        }
        let definition = self.definitions.get(&row.name).cloned().ok_or_else(|| {
            SagaError::UnknownDefinition {
                id: id.to_owned(),
                name: row.name.clone(),
            }
        })?;
        let mut version = row.version;
        loop {
            self.claim(id).await?;
            match state.status {
                SagaStatus::Running => {
                    let Some(step) = definition.steps.get(state.completed.len()) else {
                        return self
                            .finish(&row, version + 1, state, SagaStatus::Completed)
                            .await;
                    };
                    let ctx = context(id, &step.name, "", &state);
                    match self.call(&step.action, ctx).await {
                        Ok(output) => {
                            state.completed.push((step.name.clone(), output));
                            self.emit(SagaEvent::StepCompleted {
                                saga: id.to_owned(),
                                step: step.name.clone(),
                            });
                        }
                        Err(error) => {
                            state.status = SagaStatus::Compensating;
                            state.failure = Some(format!("step {:?} failed: {error}", step.name));
                            self.emit(SagaEvent::StepFailed {
                                saga: id.to_owned(),
                                step: step.name.clone(),
                                error,
                            });
                        }
                    }
                    version += 1;
                    self.save(&row, version, &state, false).await?;
                }
                SagaStatus::Compensating => {
                    // The completed steps not yet undone, latest first.
                    let next = state
                        .completed
                        .iter()
                        .rev()
                        .map(|(name, _)| name)
                        .find(|name| !state.compensated.contains(name))
                        .cloned();
                    let Some(name) = next else {
                        return self
                            .finish(&row, version + 1, state, SagaStatus::Compensated)
                            .await;
                    };
                    let step = definition
                        .steps
                        .iter()
                        .find(|s| s.name == name)
                        .ok_or_else(|| SagaError::Corrupt {
                            what: "saga state",
                            id: id.to_owned(),
                            reason: format!(
                                "completed step {name:?} is not in saga {:?}",
                                row.name
                            ),
                        })?;
                    match &step.compensation {
                        None => state.compensated.push(name.clone()),
                        Some(compensation) => {
                            match self.compensate(id, step, compensation, &state).await {
                                Ok(()) => {
                                    state.compensated.push(name.clone());
                                    self.emit(SagaEvent::Compensated {
                                        saga: id.to_owned(),
                                        step: name.clone(),
                                    });
                                }
                                Err(error) => {
                                    state.compensation_error =
                                        Some(format!("compensation of {name:?} failed: {error}"));
                                    return self
                                        .finish(&row, version + 1, state, SagaStatus::Parked)
                                        .await;
                                }
                            }
                        }
                    }
                    version += 1;
                    self.save(&row, version, &state, false).await?;
                }
                _ => return Ok(state),
            }
        }
    }

    /// Persists the final `status` (giving the saga's lease up) and says so.
    async fn finish(
        &self,
        row: &SagaRow,
        version: i64,
        mut state: SagaState,
        status: SagaStatus,
    ) -> Result<SagaState, SagaError> {
        state.status = status;
        self.save(row, version, &state, true).await?;
        self.emit(SagaEvent::Finished {
            saga: row.id.clone(),
            status,
        });
        Ok(state)
    }

    async fn call(&self, f: &StepFn, ctx: StepContext) -> Result<Value, String> {
        self.pipeline
            .execute(|_| f(ctx.clone()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Retries a compensation until it succeeds or its attempts are spent.
    async fn compensate(
        &self,
        id: &str,
        step: &Step,
        compensation: &StepFn,
        state: &SagaState,
    ) -> Result<(), String> {
        let attempts = self.options.compensation_attempts.max(1);
        let mut backoff = self.options.compensation_backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            let ctx = context(id, &step.name, ":compensate", state);
            match self.call(compensation, ctx).await {
                Ok(_) => return Ok(()),
                Err(error) => {
                    self.emit(SagaEvent::CompensationFailed {
                        saga: id.to_owned(),
                        step: step.name.clone(),
                        attempt,
                        error: error.clone(),
                    });
                    last = error;
                }
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(last)
    }
}

fn context(id: &str, step: &str, suffix: &str, state: &SagaState) -> StepContext {
    StepContext {
        saga_id: id.to_owned(),
        step: step.to_owned(),
        idempotency_key: format!("{id}:{step}{suffix}"),
        input: state.input.clone(),
        outputs: state.completed.iter().cloned().collect(),
    }
}

fn parse(row: &SagaRow) -> Result<SagaState, SagaError> {
    serde_json::from_str(&row.state).map_err(|e| SagaError::Corrupt {
        what: "saga state",
        id: row.id.clone(),
        reason: e.to_string(),
    })
}
