use std::time::Duration;

/// How the delay before a retry grows with the attempt number (0 for the first retry).
/// In a config file: `"constant"`, `"linear"` or `"exponential"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
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
///
/// `backoff` below is the delay the [`Backoff`] kind computes for the attempt, and `cap` is
/// `max_delay` (a century when unset). The first four follow AWS's "Exponential Backoff
/// And Jitter"; every delay is drawn *within* the cap, so clients past the cap still spread
/// out instead of all waiting exactly `max_delay`.
///
/// In a config file: `"none"`, `"full"`, `"equal"`, `"decorrelated"` or `"decorrelated_v2"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Jitter {
    /// `min(cap, backoff)`: no randomness.
    None,
    /// Uniform in `[0, min(cap, backoff)]` (AWS "full jitter"): mean half of it.
    Full,
    /// Half of `min(cap, backoff)` plus uniform over the other half (AWS "equal jitter"):
    /// never shorter than half, mean three quarters.
    Equal,
    /// `min(cap, uniform in [delay, 3 × previous])`, the previous delay starting at `delay`
    /// (AWS "decorrelated jitter"). Ignores the backoff kind: the delay grows from the
    /// previous one, by up to three times per retry.
    Decorrelated,
    /// Polly's `DecorrelatedJitterBackoffV2`, what Polly does with `UseJitter`:
    /// with [`Backoff::Exponential`], a smooth exponential curve with a median first delay
    /// of about `delay` that doubles per retry, without clustering; with
    /// [`Backoff::Constant`] and [`Backoff::Linear`], Polly's ±25 %: the backoff plus
    /// uniform in `[−backoff/4, +backoff/4]`. Then capped at `cap`, as Polly caps with
    /// `MaxDelay` (so, unlike the others, delays past the cap land on it).
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
/// Polly's `pFactor` in the V2 curve `2^t × tanh(√(pFactor × t))`.
const V2_P_FACTOR: f64 = 4.0;

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
    let cap = max_delay.map_or(MAX_SECS, |max| max.as_secs_f64().min(MAX_SECS));
    let base_secs = base.as_secs_f64();
    let backoff_secs = match backoff {
        Backoff::Constant => base_secs,
        Backoff::Linear => base_secs * (f64::from(attempt) + 1.0),
        Backoff::Exponential => base_secs * 2f64.powi(attempt.min(1023) as i32),
    };
    let capped = backoff_secs.min(cap);
    let secs = match jitter {
        Jitter::None => capped,
        Jitter::Full => capped * random(),
        Jitter::Equal => capped / 2.0 + capped / 2.0 * random(),
        Jitter::Decorrelated => {
            let previous = if state.previous > 0.0 {
                state.previous
            } else {
                base_secs
            };
            let upper = previous * 3.0;
            let next = (base_secs + (upper - base_secs).max(0.0) * random()).min(cap);
            state.previous = next;
            next
        }
        Jitter::DecorrelatedV2 => match backoff {
            Backoff::Exponential => {
                let t = f64::from(attempt) + random();
                let next = 2f64.powf(t) * (V2_P_FACTOR * t).sqrt().tanh();
                if next.is_infinite() {
                    // Polly: past the curve's range, the cap (or the largest delay).
                    state.previous = next;
                    cap
                } else {
                    let delta = next - state.previous;
                    state.previous = next;
                    delta * V2_SCALING * base_secs
                }
            }
            // Polly's `ApplyJitter`: ±25 % around the constant or linear backoff.
            Backoff::Constant | Backoff::Linear => {
                backoff_secs + backoff_secs * 0.25 * (2.0 * random() - 1.0)
            }
        },
    };
    // NaN only from a curve past its range (∞ − ∞): the cap, like ∞.
    secs_to_duration(if secs.is_nan() {
        cap
    } else {
        secs.clamp(0.0, cap)
    })
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
    /// 10,000 draws of the delay before retry `attempt` (state fresh per draw unless
    /// `previous` is given), in seconds, with a real random source.
    fn draws(
        backoff: Backoff,
        jitter: Jitter,
        base: f64,
        cap: Option<f64>,
        attempt: u32,
        previous: Option<f64>,
    ) -> Vec<f64> {
        let mut rng = fastrand::Rng::with_seed(20);
        (0..10_000)
            .map(|_| {
                let mut state = DelayState {
                    previous: previous.unwrap_or(0.0),
                };
                compute_delay(
                    backoff,
                    jitter,
                    Duration::from_secs_f64(base),
                    cap.map(Duration::from_secs_f64),
                    attempt,
                    &mut state,
                    &mut || rng.f64(),
                )
                .as_secs_f64()
            })
            .collect()
    }

    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len() as f64
    }

    /// The share of draws within 1 µs of `value`.
    fn share_at(v: &[f64], value: f64) -> f64 {
        v.iter().filter(|&&d| (d - value).abs() < 1e-6).count() as f64 / v.len() as f64
    }

    /// `mean` is within `tolerance` (relative) of `expected`.
    fn assert_mean(v: &[f64], expected: f64, tolerance: f64, what: &str) {
        let m = mean(v);
        assert!(
            (m - expected).abs() <= tolerance * expected,
            "{what}: mean {m} expected {expected} ± {tolerance}"
        );
    }

    #[test]
    fn full_jitter_is_uniform_below_the_cap_once_backoff_passes_it() {
        // 100 ms × 2^6 = 6.4 s of backoff, 0.8 s cap: 8 × the cap.
        let d = draws(Backoff::Exponential, Jitter::Full, 0.1, Some(0.8), 6, None);
        assert!(
            d.iter().all(|&x| (0.0..=0.8).contains(&x)),
            "out of [0, cap]"
        );
        // Uniform over [0, cap]: mean cap / 2 (σ of the mean ≈ 0.3 %), nothing piled on the cap.
        assert_mean(&d, 0.4, 0.02, "full");
        assert!(
            share_at(&d, 0.8) < 0.001,
            "{} at the cap",
            share_at(&d, 0.8)
        );
        // And a quarter of the draws in each quarter of [0, cap].
        for q in 0..4 {
            let lo = 0.2 * f64::from(q);
            let share = d.iter().filter(|&&x| x >= lo && x < lo + 0.2).count() as f64 / 1e4;
            assert!((share - 0.25).abs() < 0.02, "quarter {q}: {share}");
        }
    }

    #[test]
    fn full_jitter_below_the_cap_spans_the_backoff() {
        let d = draws(Backoff::Exponential, Jitter::Full, 0.1, Some(10.0), 2, None);
        assert!(d.iter().all(|&x| (0.0..=0.4).contains(&x)));
        assert_mean(&d, 0.2, 0.02, "full, under the cap");
    }

    #[test]
    fn equal_jitter_is_half_plus_uniform_half_of_the_capped_backoff() {
        let d = draws(Backoff::Exponential, Jitter::Equal, 0.1, Some(0.8), 6, None);
        assert!(
            d.iter().all(|&x| (0.4..=0.8).contains(&x)),
            "out of [cap/2, cap]"
        );
        assert_mean(&d, 0.6, 0.02, "equal");
        assert!(share_at(&d, 0.8) < 0.001);
    }

    #[test]
    fn decorrelated_jitter_is_the_capped_uniform_from_base_to_three_times_previous() {
        // previous 1 s, base 0.1 s: uniform(0.1, 3.0), capped at 2 s.
        let (a, b, c) = (0.1, 3.0, 2.0);
        let d = draws(
            Backoff::Exponential,
            Jitter::Decorrelated,
            a,
            Some(c),
            4,
            Some(1.0),
        );
        assert!(
            d.iter().all(|&x| (a..=c).contains(&x)),
            "out of [base, cap]"
        );
        // E[min(c, U(a, b))] = ((c² − a²) / 2 + c (b − c)) / (b − a).
        let expected = ((c * c - a * a) / 2.0 + c * (b - c)) / (b - a);
        assert_mean(&d, expected, 0.02, "decorrelated");
        // The share on the cap is P(U > c) = (b − c) / (b − a) — min(cap, ·), AWS's formula.
        let on_cap = share_at(&d, c);
        let p = (b - c) / (b - a);
        assert!(
            (on_cap - p).abs() < 0.02,
            "{on_cap} on the cap, expected {p}"
        );
        // Under the cap it is uniform: mean of those (a + c) / 2.
        let under: Vec<f64> = d.iter().copied().filter(|&x| x < c - 1e-6).collect();
        assert_mean(&under, (a + c) / 2.0, 0.02, "decorrelated under the cap");
    }

    #[test]
    fn decorrelated_jitter_sequences_stay_within_base_and_cap() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..10_000 {
            let mut state = DelayState::default();
            let mut previous = 0.1;
            for attempt in 0..8 {
                let d = compute_delay(
                    Backoff::Constant,
                    Jitter::Decorrelated,
                    Duration::from_millis(100),
                    Some(Duration::from_secs(1)),
                    attempt,
                    &mut state,
                    &mut || rng.f64(),
                )
                .as_secs_f64();
                assert!((0.1 - 1e-9..=1.0).contains(&d), "{d}");
                assert!(d <= previous * 3.0 + 1e-9, "{d} > 3 × {previous}");
                previous = d;
            }
        }
    }

    /// Polly's V2 curve, integrated independently: E[f(U)] for f(t) = 2^t tanh(√(4t)).
    fn v2_first_mean(base: f64) -> f64 {
        // Simpson's rule over [0, 1].
        let f = |t: f64| 2f64.powf(t) * (4.0 * t).sqrt().tanh();
        let n = 1000;
        let h = 1.0 / f64::from(n);
        let mut sum = f(0.0) + f(1.0);
        for i in 1..n {
            sum += f(f64::from(i) * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        sum * h / 3.0 * base / 1.4
    }

    #[test]
    fn decorrelated_v2_follows_pollys_curve_and_its_cap() {
        let d = draws(
            Backoff::Exponential,
            Jitter::DecorrelatedV2,
            1.0,
            None,
            0,
            None,
        );
        assert!(d.iter().all(|&x| x >= 0.0));
        assert_mean(&d, v2_first_mean(1.0), 0.02, "v2 first delay");
        // With a cap, as Polly's MaxDelay: nothing above it.
        let capped = draws(
            Backoff::Exponential,
            Jitter::DecorrelatedV2,
            1.0,
            Some(0.5),
            0,
            None,
        );
        assert!(capped.iter().all(|&x| (0.0..=0.5).contains(&x)));
        let below = d.iter().filter(|&&x| x < 0.5).count() as f64 / 1e4;
        assert!((share_at(&capped, 0.5) - (1.0 - below)).abs() < 0.001);
    }

    #[test]
    fn decorrelated_v2_with_constant_or_linear_backoff_is_pollys_25_percent() {
        for (backoff, attempt, centre) in [(Backoff::Constant, 3, 1.0), (Backoff::Linear, 3, 4.0)] {
            let d = draws(backoff, Jitter::DecorrelatedV2, 1.0, None, attempt, None);
            let (lo, hi) = (centre * 0.75, centre * 1.25);
            assert!(d.iter().all(|&x| (lo..=hi).contains(&x)), "{backoff:?}");
            assert_mean(&d, centre, 0.02, "v2 ±25 %");
        }
    }

    #[test]
    fn extreme_attempts_and_bases_give_the_cap_not_a_panic() {
        for jitter in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
            Jitter::DecorrelatedV2,
        ] {
            for backoff in [Backoff::Constant, Backoff::Linear, Backoff::Exponential] {
                let mut state = DelayState::default();
                for attempt in [0, 1, 1023, 1024, u32::MAX - 1] {
                    for cap in [None, Some(Duration::MAX), Some(Duration::from_secs(60))] {
                        let d = compute_delay(
                            backoff,
                            jitter,
                            Duration::from_secs(86_400),
                            cap,
                            attempt,
                            &mut state,
                            &mut || 0.999_999,
                        );
                        assert!(d <= cap.unwrap_or(Duration::MAX), "{jitter:?} {backoff:?}");
                    }
                }
            }
        }
    }
}
