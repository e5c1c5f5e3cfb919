//! Property test: the in-memory breaker store against a reference model written plainly.
//!
//! Random options, random sequences of calls (immediate or held open), time steps and
//! manual commands; after every step the store and the model must agree on the decision
//! (admit or reject, and the retry-after), the state and every transition raised.

use proptest::prelude::*;
use std::time::Duration;
use stormwall::circuit_breaker::store::{CallOutcome, Command, Rejection, Ticket};
use stormwall::circuit_breaker::{
    CircuitBreakerOptions, CircuitState, InMemoryStore, StateStore, TransitionReason,
};

const BUCKETS: u64 = 10;

#[derive(Debug, Clone)]
struct Config {
    failure_ratio: Option<f64>,
    minimum_throughput: u32,
    sampling_ms: u64,
    count_window: Option<u32>,
    consecutive: Option<u32>,
    slow_ratio: Option<f64>,
    break_ms: u64,
    growing_break: bool,
    permitted: u32,
    success_threshold: u32,
}

impl Config {
    fn options(&self) -> CircuitBreakerOptions {
        let mut o = CircuitBreakerOptions::new()
            .minimum_throughput(self.minimum_throughput)
            .sampling_duration(Duration::from_millis(self.sampling_ms))
            .break_duration(Duration::from_millis(self.break_ms))
            .permitted_calls_in_half_open(self.permitted)
            .success_threshold(self.success_threshold);
        o.failure_ratio = self.failure_ratio;
        o.consecutive_failures = self.consecutive;
        if let Some(n) = self.count_window {
            o = o.count_window(n);
        }
        if let Some(r) = self.slow_ratio {
            o = o.slow_call(Duration::from_millis(100), r);
        }
        if self.growing_break {
            let base = self.break_ms;
            o = o.break_duration_generator(move |args| {
                Duration::from_millis(base * u64::from(args.consecutive_opens))
            });
        }
        o
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Acquire and, if admitted, record at once.
    Call {
        failure: bool,
        slow: bool,
    },
    /// Acquire and, if admitted, keep the permit.
    Hold,
    /// Record (or, with `cancel`, drop) the held permit at `index % held.len()`.
    Finish {
        index: usize,
        failure: bool,
        slow: bool,
        cancel: bool,
    },
    Advance(u64),
    Manual(u8),
}

/// The model: the breaker's semantics, as plainly as they can be written.
#[derive(Debug)]
struct Model {
    c: Config,
    state: CircuitState,
    open_until_ms: u64,
    consecutive_failures: u32,
    /// (time of record in ms, failure, slow), since the last close.
    calls: Vec<(u64, bool, bool)>,
    generation: u64,
    sequence: u64,
    consecutive_opens: u32,
    probes_in_flight: u32,
    probe_successes: u32,
}

type Transition = (CircuitState, CircuitState, TransitionReason, u64);

impl Model {
    fn new(c: Config) -> Self {
        Model {
            c,
            state: CircuitState::Closed,
            open_until_ms: 0,
            consecutive_failures: 0,
            calls: vec![],
            generation: 0,
            sequence: 0,
            consecutive_opens: 0,
            probes_in_flight: 0,
            probe_successes: 0,
        }
    }

    fn go(&mut self, to: CircuitState, reason: TransitionReason, now: u64) -> Option<Transition> {
        let from = self.state;
        if from == to {
            return None;
        }
        self.generation += 1;
        self.sequence += 1;
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        if to == CircuitState::Open {
            self.consecutive_opens += 1;
            let mult = if self.c.growing_break {
                u64::from(self.consecutive_opens)
            } else {
                1
            };
            self.open_until_ms = now + self.c.break_ms * mult;
        }
        if to == CircuitState::Closed {
            self.consecutive_opens = 0;
            self.calls.clear();
            self.consecutive_failures = 0;
        }
        self.state = to;
        Some((from, to, reason, self.sequence))
    }

    fn window(&self, now: u64) -> (u32, u32, u32) {
        let in_window: Vec<_> = match self.c.count_window {
            Some(n) => self.calls.iter().rev().take(n as usize).collect(),
            None => {
                let width = self.c.sampling_ms / BUCKETS;
                let epoch = now / width;
                self.calls
                    .iter()
                    .filter(|(t, _, _)| epoch - t / width < BUCKETS)
                    .collect()
            }
        };
        let total = in_window.len() as u32;
        let failures = in_window.iter().filter(|c| c.1).count() as u32;
        let slow = in_window.iter().filter(|c| c.2).count() as u32;
        (total, failures, slow)
    }

    fn acquire(&mut self, now: u64) -> (Result<Ticket, Rejection>, Option<Transition>) {
        let reject = |state, retry_after| Err(Rejection { state, retry_after });
        match self.state {
            CircuitState::Closed | CircuitState::Disabled => (Ok(Ticket::Normal), None),
            CircuitState::Isolated => (reject(CircuitState::Isolated, None), None),
            CircuitState::Open if now < self.open_until_ms => {
                let left = Duration::from_millis(self.open_until_ms - now);
                (reject(CircuitState::Open, Some(left)), None)
            }
            CircuitState::Open | CircuitState::HalfOpen => {
                let t = if self.state == CircuitState::Open {
                    self.go(CircuitState::HalfOpen, TransitionReason::BreakElapsed, now)
                } else {
                    None
                };
                if self.probes_in_flight < self.c.permitted {
                    self.probes_in_flight += 1;
                    let ticket = Ticket::Probe {
                        generation: self.generation,
                        lease: None,
                    };
                    (Ok(ticket), t)
                } else {
                    (reject(CircuitState::HalfOpen, None), t)
                }
            }
        }
    }

    fn record(
        &mut self,
        ticket: Ticket,
        failure: bool,
        slow: bool,
        now: u64,
    ) -> Option<Transition> {
        match ticket {
            Ticket::Normal => {
                if self.state != CircuitState::Closed {
                    return None;
                }
                self.calls.push((now, failure, slow));
                if failure {
                    self.consecutive_failures += 1;
                } else {
                    self.consecutive_failures = 0;
                }
                if !failure && !slow {
                    return None;
                }
                if let Some(n) = self.c.consecutive {
                    if self.consecutive_failures >= n {
                        return self.go(
                            CircuitState::Open,
                            TransitionReason::ConsecutiveFailures,
                            now,
                        );
                    }
                }
                let (total, failures, slows) = self.window(now);
                if total >= self.c.minimum_throughput {
                    if let Some(r) = self.c.failure_ratio {
                        if f64::from(failures) / f64::from(total) >= r {
                            return self.go(
                                CircuitState::Open,
                                TransitionReason::FailureRatio,
                                now,
                            );
                        }
                    }
                    if let Some(r) = self.c.slow_ratio {
                        if f64::from(slows) / f64::from(total) >= r {
                            return self.go(
                                CircuitState::Open,
                                TransitionReason::SlowCallRatio,
                                now,
                            );
                        }
                    }
                }
                None
            }
            Ticket::Probe { generation, .. } => {
                if self.state != CircuitState::HalfOpen || generation != self.generation {
                    return None;
                }
                self.probes_in_flight -= 1;
                if failure || (slow && self.c.slow_ratio.is_some()) {
                    return self.go(CircuitState::Open, TransitionReason::ProbeFailed, now);
                }
                self.probe_successes += 1;
                if self.probe_successes >= self.c.success_threshold {
                    return self.go(CircuitState::Closed, TransitionReason::ProbesSucceeded, now);
                }
                None
            }
        }
    }

    fn release(&mut self, ticket: Ticket) {
        if let Ticket::Probe { generation, .. } = ticket {
            if self.state == CircuitState::HalfOpen && generation == self.generation {
                self.probes_in_flight -= 1;
            }
        }
    }

    fn command(&mut self, command: Command, now: u64) -> Option<Transition> {
        let to = match command {
            Command::Isolate => CircuitState::Isolated,
            Command::Close => CircuitState::Closed,
            Command::Disable => CircuitState::Disabled,
        };
        if to == CircuitState::Closed && self.state == CircuitState::Closed {
            self.calls.clear();
            self.consecutive_failures = 0;
            return None;
        }
        self.go(to, TransitionReason::Manual, now)
    }
}

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            Just(None),
            Just(Some(0.3)),
            Just(Some(0.5)),
            Just(Some(1.0))
        ],
        2u32..6,
        prop_oneof![Just(1000u64), Just(500)],
        prop_oneof![Just(None), (0u32..4).prop_map(Some)],
        prop_oneof![Just(None), (1u32..4).prop_map(Some)],
        prop_oneof![Just(None), Just(Some(0.5))],
        prop_oneof![Just(300u64), Just(1000)],
        any::<bool>(),
        1u32..4,
        1u32..4,
    )
        .prop_map(
            |(
                ratio,
                min,
                sampling,
                count_extra,
                consecutive,
                slow,
                brk,
                growing,
                permitted,
                success,
            )| {
                let mut c = Config {
                    failure_ratio: ratio,
                    minimum_throughput: min,
                    sampling_ms: sampling,
                    count_window: count_extra.map(|extra| min + extra),
                    consecutive,
                    slow_ratio: slow,
                    break_ms: brk,
                    growing_break: growing,
                    permitted,
                    success_threshold: success,
                };
                if c.failure_ratio.is_none() && c.consecutive.is_none() && c.slow_ratio.is_none() {
                    c.failure_ratio = Some(0.5);
                }
                c
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(failure, slow)| Op::Call { failure, slow }),
        2 => Just(Op::Hold),
        2 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.2), prop::bool::weighted(0.2))
            .prop_map(|(index, failure, slow, cancel)| Op::Finish { index, failure, slow, cancel }),
        3 => prop_oneof![1u64..120, 100u64..1200].prop_map(Op::Advance),
        1 => (0u8..10).prop_map(Op::Manual),
    ]
}

fn check(c: Config, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = InMemoryStore::new(&c.options());
        let mut model = Model::new(c);
        let mut now = 0u64;
        let mut held: Vec<Ticket> = vec![];
        let as_tuple =
            |t: stormwall::circuit_breaker::CircuitTransition| (t.from, t.to, t.reason, t.sequence);
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Call { failure, slow }
                | Op::Finish {
                    failure,
                    slow,
                    cancel: false,
                    ..
                } if matches!(op, Op::Call { .. }) || !held.is_empty() => {
                    let ticket = if let Op::Finish { index, .. } = op {
                        held.remove(index % held.len())
                    } else {
                        let got = store.try_acquire();
                        let (want, want_t) = model.acquire(now);
                        prop_assert_eq!(got.result, want, "acquire at step {}", step);
                        prop_assert_eq!(got.transition.map(as_tuple), want_t, "step {}", step);
                        match want {
                            Ok(t) => t,
                            Err(_) => continue,
                        }
                    };
                    let got = store.record(ticket, CallOutcome { failure, slow });
                    let want = model.record(ticket, failure, slow, now);
                    prop_assert_eq!(got.map(as_tuple), want, "record at step {}", step);
                }
                Op::Finish {
                    index,
                    cancel: true,
                    ..
                } if !held.is_empty() => {
                    let ticket = held.remove(index % held.len());
                    store.release(ticket);
                    model.release(ticket);
                }
                Op::Finish { .. } => {}
                Op::Hold => {
                    let got = store.try_acquire();
                    let (want, want_t) = model.acquire(now);
                    prop_assert_eq!(got.result, want, "hold at step {}", step);
                    prop_assert_eq!(got.transition.map(as_tuple), want_t, "step {}", step);
                    if let Ok(t) = want {
                        held.push(t);
                    }
                }
                Op::Advance(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    now += ms;
                }
                Op::Manual(k) => {
                    // Rare on purpose: a command every step would hide the automatic paths.
                    let command = match k {
                        0 => Command::Isolate,
                        1 => Command::Disable,
                        2 => Command::Close,
                        _ => continue,
                    };
                    let got = store.command(command);
                    let want = model.command(command, now);
                    prop_assert_eq!(got.map(as_tuple), want, "command at step {}", step);
                }
                Op::Call { .. } => unreachable!(),
            }
            prop_assert_eq!(store.state(), model.state, "state after step {}", step);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn breaker_store_matches_the_reference_model(c in config(), ops in prop::collection::vec(op(), 1..80)) {
        check(c, ops)?;
    }
}
