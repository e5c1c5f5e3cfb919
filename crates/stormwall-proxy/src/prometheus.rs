//! The process's Prometheus recorder: installed once, before any route takes its metric
//! handles (a handle taken before the recorder exists counts into nothing), rendered at
//! the admin listener's `/metrics`.
//!
//! Counters and gauges are the exporter's. Histograms are counted here, into fixed buckets
//! where they are recorded: the exporter keeps every histogram sample in a queue until an
//! upkeep (or a scrape) drains it into the buckets, which cost ≈ 0.6k instructions per
//! proxied request (three samples: the request's, its attempt's and its pipeline's; a
//! clock read and an epoch pin each, then the drain) and needed a thread draining every
//! second so that memory would not grow with traffic. Here a sample is a few atomic
//! additions and memory is fixed per histogram.

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, SharedString, Unit};
use metrics_exporter_prometheus::formatting::{key_to_parts, write_help_line, write_metric_line};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Bucket bounds of every duration histogram, in seconds: 1 ms to 30 s, so the Grafana
/// dashboard's `histogram_quantile(… _bucket …)` panels have data.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One histogram (one name and label set): a count per bucket, the sum and the count.
#[derive(Debug, Default)]
struct Buckets {
    /// Samples in each bucket alone (≤ its bound, > the previous one): not cumulative.
    per_bucket: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        // The first bound ≥ the value (Prometheus' `le` is inclusive); NaN and values over
        // the last bound count only in `+Inf`.
        let bucket = DURATION_BUCKETS.partition_point(|bound| *bound < value);
        if let Some(slot) = self.per_bucket.get(bucket).filter(|_| !value.is_nan()) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut sum = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(sum) + value).to_bits();
            match self
                .sum
                .compare_exchange_weak(sum, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => sum = now,
            }
        }
    }
}

/// The histograms, by key, with their descriptions.
#[derive(Debug, Default)]
struct Histograms {
    by_key: Mutex<BTreeMap<Key, Arc<Buckets>>>,
    descriptions: Mutex<HashMap<String, SharedString>>,
}

impl Histograms {
    /// Every histogram in Prometheus' text format (as the exporter writes them: `_bucket`
    /// lines with cumulative counts, `+Inf`, `_sum`, `_count`).
    fn render(&self, output: &mut String) {
        let by_key = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let descriptions = self.descriptions.lock().unwrap_or_else(|e| e.into_inner());
        let mut current: Option<String> = None;
        for (key, buckets) in by_key.iter() {
            let (name, labels) = key_to_parts(key, None);
            if current.as_deref() != Some(name.as_str()) {
                if current.is_some() {
                    output.push('\n');
                }
                if let Some(description) = descriptions.get(key.name()) {
                    write_help_line(output, &name, description);
                }
                output.push_str(&format!("# TYPE {name} histogram\n"));
                current = Some(name.clone());
            }
            let mut cumulative = 0u64;
            for (bound, in_bucket) in DURATION_BUCKETS.iter().zip(&buckets.per_bucket) {
                cumulative += in_bucket.load(Ordering::Relaxed);
                write_metric_line(
                    output,
                    &name,
                    Some("bucket"),
                    &labels,
                    Some(("le", bound)),
                    cumulative,
                    None,
                );
            }
            // Read after the buckets: a sample recorded meanwhile may be in the count only.
            let count = buckets.count.load(Ordering::Relaxed).max(cumulative);
            write_metric_line(
                output,
                &name,
                Some("bucket"),
                &labels,
                Some(("le", "+Inf")),
                count,
                None,
            );
            let sum = f64::from_bits(buckets.sum.load(Ordering::Relaxed));
            write_metric_line::<&str, f64>(output, &name, Some("sum"), &labels, None, sum, None);
            write_metric_line::<&str, u64>(
                output,
                &name,
                Some("count"),
                &labels,
                None,
                count,
                None,
            );
        }
        if current.is_some() {
            output.push('\n');
        }
    }
}

/// The exporter's recorder for counters and gauges, [`Histograms`] for histograms.
#[derive(Debug)]
struct Recorder {
    exporter: PrometheusRecorder,
    histograms: Arc<Histograms>,
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.exporter.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.exporter.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.histograms
            .descriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.as_str().to_owned(), description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.exporter.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.exporter.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let mut by_key = self
            .histograms
            .by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let buckets = by_key.entry(key.clone()).or_default();
        Histogram::from_arc(Arc::clone(buckets))
    }
}

/// What `/metrics` renders: the exporter's counters and gauges, then the histograms.
struct Installed {
    exporter: PrometheusHandle,
    histograms: Arc<Histograms>,
}

/// The recorder (the `metrics` facade has one per process); `None` when another recorder
/// was installed first.
fn installed() -> Option<&'static Installed> {
    static INSTALLED: OnceLock<Option<Installed>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let exporter = PrometheusBuilder::new().build_recorder();
            let installed = Installed {
                exporter: exporter.handle(),
                histograms: Arc::default(),
            };
            let recorder = Recorder {
                exporter,
                histograms: Arc::clone(&installed.histograms),
            };
            metrics::set_global_recorder(recorder).ok()?;
            Some(installed)
        })
        .as_ref()
}

/// Installs the Prometheus recorder (once per process).
pub fn install() {
    let _ = installed();
}

/// Every metric, in Prometheus' text format.
pub(crate) fn render() -> String {
    let Some(installed) = installed() else {
        return String::new();
    };
    let mut text = installed.exporter.render();
    installed.histograms.render(&mut text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Recorder as _;

    fn recorder() -> Recorder {
        Recorder {
            exporter: PrometheusBuilder::new().build_recorder(),
            histograms: Arc::default(),
        }
    }

    static METADATA: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, None);

    #[test]
    fn histograms_render_cumulative_buckets_with_sum_and_count() {
        let recorder = recorder();
        let key = Key::from_parts("request_seconds", vec![metrics::Label::new("route", "a")]);
        recorder.describe_histogram(
            KeyName::from("request_seconds"),
            None,
            SharedString::from("How long."),
        );
        let histogram = recorder.register_histogram(&key, &METADATA);
        // A bound is inside its own bucket; over the last bound counts in +Inf only.
        for value in [0.0005, 0.001, 0.002, 0.3, 60.0] {
            histogram.record(value);
        }
        // The same key gives the same histogram.
        recorder.register_histogram(&key, &METADATA).record(0.001);
        let other = Key::from_parts("request_seconds", vec![metrics::Label::new("route", "b")]);
        recorder.register_histogram(&other, &METADATA).record(1.0);
        let mut text = String::new();
        recorder.histograms.render(&mut text);
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# HELP request_seconds How long.",
            "# TYPE request_seconds histogram",
            "request_seconds_bucket{route=\"a\",le=\"0.001\"} 3",
            "request_seconds_bucket{route=\"a\",le=\"0.0025\"} 4",
            "request_seconds_bucket{route=\"a\",le=\"0.25\"} 4",
            "request_seconds_bucket{route=\"a\",le=\"0.5\"} 5",
            "request_seconds_bucket{route=\"a\",le=\"30\"} 5",
            "request_seconds_bucket{route=\"a\",le=\"+Inf\"} 6",
            "request_seconds_count{route=\"a\"} 6",
            "request_seconds_bucket{route=\"b\",le=\"0.5\"} 0",
            "request_seconds_bucket{route=\"b\",le=\"1\"} 1",
            "request_seconds_count{route=\"b\"} 1",
        ] {
            assert!(lines.contains(&expected), "no {expected:?} in\n{text}");
        }
        let sum: f64 = lines
            .iter()
            .find_map(|l| l.strip_prefix("request_seconds_sum{route=\"a\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 60.3045).abs() < 1e-9, "{sum}");
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("# TYPE")).count(),
            1,
            "{text}"
        );
    }
}
