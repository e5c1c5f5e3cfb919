use std::time::Duration;

/// How the delay before a retry grows with the attempt number (0 for the first retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backoff {
    /// `delay` every time.
    Constant,
    /// `delay × (attempt + 1)`.
    Linear,
    /// `delay × 2^attempt`.
    #[default]
    Exponential,
}

/// How the delay is randomised, so that clients that failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// The backoff as computed.
    None,
    /// Uniform in `[0, backoff]` (AWS "full jitter").
    Full,
    /// `backoff / 2` plus uniform in `[0, backoff / 2]` (AWS "equal jitter").
    Equal,
    /// `min(max_delay, uniform in [delay, previous × 3])` (AWS "decorrelated jitter");
    /// ignores the backoff kind, grows from the previous delay.
    Decorrelated,
    /// Polly's `DecorrelatedJitterBackoffV2` (Polly's jittered exponential): a smooth
    /// exponential curve with a median of about `delay × 2^attempt` and no clustering.
    #[default]
    DecorrelatedV2,
}

/// The per-execution state of a delay sequence: the previous delay (decorrelated jitter) or
/// the previous curve value (decorrelated v2).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DelayState {
    previous: f64,
}

/// Polly's scaling so that the V2 curve's median first delay is about `delay`.
const V2_SCALING: f64 = 1.0 / 1.4;

/// Computes the delay before retry number `attempt` (0-based). `random` yields uniform
/// values in `[0, 1)`.
pub(crate) fn compute_delay(
    backoff: Backoff,
    jitter: Jitter,
    base: Duration,
    max_delay: Option<Duration>,
    attempt: u32,
    state: &mut DelayState,
    random: &mut impl FnMut() -> f64,
) -> Duration {
    let cap = max_delay
        .unwrap_or(Duration::MAX)
        .as_secs_f64()
        .min(MAX_SECS);
    let base_secs = base.as_secs_f64();
    let backoff_secs = match backoff {
        Backoff::Constant => base_secs,
        Backoff::Linear => base_secs * (f64::from(attempt) + 1.0),
        Backoff::Exponential => base_secs * 2f64.powi(attempt.min(1023) as i32),
    };
    let secs = match jitter {
        Jitter::None => backoff_secs,
        Jitter::Full => backoff_secs * random(),
        Jitter::Equal => backoff_secs / 2.0 + backoff_secs / 2.0 * random(),
        Jitter::Decorrelated => {
            let previous = if state.previous > 0.0 {
                state.previous
            } else {
                base_secs
            };
            let upper = (previous * 3.0).min(cap);
            let next = base_secs + (upper - base_secs).max(0.0) * random();
            state.previous = next;
            next
        }
        Jitter::DecorrelatedV2 => {
            let t = f64::from(attempt) + random();
            let next = 2f64.powf(t) * (4.0 * t).sqrt().tanh();
            let delta = next - state.previous;
            state.previous = next;
            delta * V2_SCALING * base_secs
        }
    };
    secs_to_duration(secs.clamp(0.0, cap))
}

/// Delays are capped at a century: far beyond any timeout, far below overflow.
const MAX_SECS: f64 = 100.0 * 365.0 * 86_400.0;

fn secs_to_duration(secs: f64) -> Duration {
    if secs.is_finite() {
        Duration::from_secs_f64(secs.min(MAX_SECS))
    } else {
        Duration::from_secs_f64(MAX_SECS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(backoff: Backoff, jitter: Jitter, max: Option<Duration>, r: f64) -> Vec<Duration> {
        let mut state = DelayState::default();
        let mut random = || r;
        (0..5)
            .map(|a| {
                compute_delay(
                    backoff,
                    jitter,
                    Duration::from_millis(100),
                    max,
                    a,
                    &mut state,
                    &mut random,
                )
            })
            .collect()
    }

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn constant_linear_exponential_without_jitter() {
        assert_eq!(
            delays(Backoff::Constant, Jitter::None, None, 0.5),
            ms(&[100; 5])
        );
        assert_eq!(
            delays(Backoff::Linear, Jitter::None, None, 0.5),
            ms(&[100, 200, 300, 400, 500])
        );
        assert_eq!(
            delays(Backoff::Exponential, Jitter::None, None, 0.5),
            ms(&[100, 200, 400, 800, 1600])
        );
    }

    #[test]
    fn max_delay_caps_every_delay() {
        let capped = delays(
            Backoff::Exponential,
            Jitter::None,
            Some(Duration::from_millis(300)),
            0.5,
        );
        assert_eq!(capped, ms(&[100, 200, 300, 300, 300]));
    }

    #[test]
    fn full_and_equal_jitter_stay_in_their_ranges() {
        assert_eq!(
            delays(Backoff::Exponential, Jitter::Full, None, 0.5),
            ms(&[50, 100, 200, 400, 800])
        );
        assert_eq!(
            delays(Backoff::Exponential, Jitter::Full, None, 0.0),
            ms(&[0; 5])
        );
        assert_eq!(
            delays(Backoff::Exponential, Jitter::Equal, None, 0.0),
            ms(&[50, 100, 200, 400, 800])
        );
    }

    #[test]
    fn decorrelated_jitter_grows_from_the_previous_delay() {
        // random = 1.0 → always the upper bound: previous × 3.
        let d = delays(Backoff::Constant, Jitter::Decorrelated, None, 1.0);
        assert_eq!(d, ms(&[300, 900, 2700, 8100, 24300]));
        // random = 0 → always the base.
        let d = delays(Backoff::Constant, Jitter::Decorrelated, None, 0.0);
        assert_eq!(d, ms(&[100; 5]));
    }

    #[test]
    fn decorrelated_v2_grows_roughly_exponentially() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut totals = [0f64; 6];
        for _ in 0..2000 {
            let mut state = DelayState::default();
            let mut random = || rng.f64();
            for (a, total) in totals.iter_mut().enumerate() {
                *total += compute_delay(
                    Backoff::Exponential,
                    Jitter::DecorrelatedV2,
                    Duration::from_secs(1),
                    None,
                    a as u32,
                    &mut state,
                    &mut random,
                )
                .as_secs_f64();
            }
        }
        let means: Vec<f64> = totals.iter().map(|t| t / 2000.0).collect();
        // The mean delay roughly doubles per attempt once past the first.
        for w in means[1..].windows(2) {
            let ratio = w[1] / w[0];
            assert!((1.6..2.4).contains(&ratio), "ratio {ratio} in {means:?}");
        }
        assert!(means[0] > 0.3 && means[0] < 2.0, "{means:?}");
    }
}
