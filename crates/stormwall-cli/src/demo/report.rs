//! What the demo shows: a comparison table for the terminal, and an HTML report with one
//! chart per scenario (latency over time, both runs; the payment breaker's state).

use super::flow::RunRecord;
use super::scenarios::Scenario;
use super::{DemoResult, RunStats, ScenarioResult};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::ops::Range;
use stormwall::circuit_breaker::CircuitState;

/// Colour when stdout is a terminal and `NO_COLOR` is not set.
pub fn use_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(text: String, code: &str, colour: bool) -> String {
    if colour {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text
    }
}

fn rate_colour(rate: f64) -> &'static str {
    if rate >= 0.99 {
        "32"
    } else if rate >= 0.8 {
        "33"
    } else {
        "31"
    }
}

/// The comparison table.
pub fn table(result: &DemoResult, colour: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nOrder flow, {} orders per run, seeds' timings × {}\n",
        result.orders_per_run, result.scale
    );
    let head = format!(
        "{:<26} {:<23} {:>8} {:>9} {:>9} {:>15} {:>10} {:>16} {:>7} {:>21}",
        "scenario",
        "client",
        "success",
        "p50",
        "p99",
        "calls to failing",
        "fallbacks",
        "stale (max age)",
        "default",
        "queued=paid+pend+dead"
    );
    let _ = writeln!(out, "{}", paint(head, "1", colour));
    for s in &result.scenarios {
        for (label, run) in clients(s) {
            let title = if label == "plain" { s.title } else { "" };
            let rate = format!("{:.1} %", run.success_rate * 100.0);
            let calls = match s.failing_dependency {
                Some(dep) => format!("{} ({dep})", run.calls_to_failing_dependency),
                None => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<26} {:<23} {} {:>7.1}ms {:>7.1}ms {:>16} {:>10} {:>16} {:>7} {:>21}",
                title,
                label,
                paint(format!("{rate:>8}"), rate_colour(run.success_rate), colour),
                run.p50_ms,
                run.p99_ms,
                calls,
                run.fallbacks,
                stale(run),
                defaults(run),
                paid_later(run)
            );
        }
    }
    out.push('\n');
    for (s, label, run) in result
        .scenarios
        .iter()
        .flat_map(|s| clients(s).map(|(label, run)| (s, label, run)))
    {
        if let Some(why) = &run.payments_left {
            let _ = writeln!(
                out,
                "{}",
                paint(
                    format!("{} ({label}): payments left: {why}", s.title),
                    "33",
                    colour
                )
            );
        }
    }
    out
}

/// A scenario's runs, named as in the table.
fn clients(s: &ScenarioResult) -> [(&'static str, &RunStats); 3] {
    [
        (super::client_name(None), &s.without_resilience),
        (
            super::client_name(Some(super::Setup::Seeds)),
            &s.with_resilience,
        ),
        (
            super::client_name(Some(super::Setup::Recommended)),
            &s.recommended,
        ),
    ]
}

/// `text()`, or `-` when `count` is 0.
fn or_dash(count: u64, text: impl FnOnce() -> String) -> String {
    if count == 0 {
        "-".into()
    } else {
        text()
    }
}

/// Inventory answers served stale, with the oldest one's age.
fn stale(run: &RunStats) -> String {
    or_dash(run.served_stale, || {
        format!(
            "{} ({:.2} s)",
            run.served_stale,
            run.stale_age_max_ms / 1000.0
        )
    })
}

/// Inventory answers that were the default (never cached).
fn defaults(run: &RunStats) -> String {
    or_dash(run.inventory_defaults, || {
        run.inventory_defaults.to_string()
    })
}

/// "queued=charged+pending+dead" payments of a run.
fn paid_later(run: &RunStats) -> String {
    or_dash(run.payments_queued, || {
        format!(
            "{}={}+{}+{}",
            run.payments_queued,
            run.payments_charged_later,
            run.payments_pending,
            run.payments_dead
        )
    })
}

fn row(label: &str, run: &RunStats) -> String {
    format!(
        "<td>{label}</td><td>{:.1} %</td><td>{:.1} ms</td><td>{:.1} ms</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
        run.success_rate * 100.0,
        run.p50_ms,
        run.p99_ms,
        run.calls_to_failing_dependency,
        run.served_by_failing_dependency,
        run.fallbacks,
        stale(run),
        defaults(run),
        paid_later(run)
    )
}

/// The HTML report: the table and, per scenario, two SVG charts.
pub fn html(result: &DemoResult, records: &[(Scenario, [RunRecord; 3])]) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>stormwall demo</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:1100px}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
         td:first-child,th:first-child{text-align:left}.charts{display:flex;gap:1em;flex-wrap:wrap}</style>\
         </head><body><h1>stormwall demo: the order flow with and without resilience</h1>",
    );
    let _ = write!(
        out,
        "<p>{} orders per run; the seeds' timings × {}{}.</p><table><tr><th>scenario</th><th>client</th>\
         <th>success</th><th>p50</th><th>p99</th><th>calls to failing dependency</th>\
         <th>served by it</th><th>fallbacks</th><th>inventory served stale (oldest)</th><th>inventory default (never cached)</th><th>payments queued = charged later + pending + dead</th></tr>",
        result.orders_per_run,
        result.scale,
        if result.interrupted { " (interrupted: partial)" } else { "" }
    );
    for s in &result.scenarios {
        let [plain, seeds, recommended] = clients(s).map(|(label, run)| row(label, run));
        let _ = write!(
            out,
            "<tr><td rowspan=3>{}</td>{plain}</tr><tr>{seeds}</tr><tr>{recommended}</tr>",
            s.title,
        );
    }
    out.push_str("</table>");
    for s in &result.scenarios {
        for (label, run) in clients(s) {
            if let Some(why) = &run.payments_left {
                let _ = write!(out, "<p>{} ({label}): payments left: {why}</p>", s.title);
            }
        }
    }
    for (scenario, runs) in records {
        let _ = write!(out, "<h2>{}</h2><div class=\"charts\">", scenario.title());
        out.push_str(&latency_chart(runs));
        out.push_str(&breaker_chart(&runs[1], &runs[2]));
        out.push_str("</div>");
    }
    out.push_str("</body></html>\n");
    out
}

/// Each order's latency by when it started: red plain, green stormwall (the seeds' setup),
/// blue the recommended setup (failed orders as hollow circles).
fn latency_chart(runs: &[RunRecord; 3]) -> String {
    let [plain, resilient, recommended] = runs;
    let all = plain
        .orders
        .iter()
        .chain(&resilient.orders)
        .chain(&recommended.orders);
    let max_x = all
        .clone()
        .map(|o| o.started.as_secs_f64())
        .fold(0.01, f64::max);
    let max_y = all
        .map(|o| o.latency.as_secs_f64() * 1000.0)
        .fold(1.0, f64::max);
    let (x, y) = (0.0..max_x * 1.02, 0.0..max_y * 1.1);
    svg_chart("latency by start time", x, y, |chart| {
        let _ = chart
            .configure_mesh()
            .x_desc("start (s)")
            .y_desc("latency (ms)")
            .draw();
        for (run, colour, label) in [
            (plain, RED, "plain"),
            (resilient, GREEN, "stormwall"),
            (recommended, BLUE, "recommended"),
        ] {
            let points = run.orders.iter().map(|o| {
                let at = (o.started.as_secs_f64(), o.latency.as_secs_f64() * 1000.0);
                let style = if o.accepted {
                    colour.filled()
                } else {
                    colour.stroke_width(1)
                };
                Circle::new(at, 2, style)
            });
            if let Ok(series) = chart.draw_series(points) {
                series
                    .label(label)
                    .legend(move |(x, y)| Circle::new((x, y), 3, colour.filled()));
            }
        }
    })
}

/// Every breaker's state over the stormwall runs: the seeds' payment breaker, and the
/// recommended setup's three (0 closed, 1 half-open, 2 open; each line raised a little so
/// they do not hide each other).
fn breaker_chart(seeds: &RunRecord, recommended: &RunRecord) -> String {
    let level = |s: CircuitState| match s {
        CircuitState::Closed | CircuitState::Disabled => 0.0,
        CircuitState::HalfOpen => 1.0,
        _ => 2.0,
    };
    let max_x = [seeds, recommended]
        .iter()
        .filter_map(|r| r.breaker.last())
        .map(|(at, _)| at.as_secs_f64())
        .fold(0.01, f64::max);
    let caption = "breakers (0 closed, 1 half-open, 2 open)";
    svg_chart(caption, 0.0..max_x * 1.02, -0.2..2.5, |chart| {
        let _ = chart.configure_mesh().x_desc("time (s)").draw();
        let series = [
            (seeds, 0, GREEN, "payment (stormwall)"),
            (recommended, 0, BLUE, "payment (recommended)"),
            (recommended, 1, MAGENTA, "inventory (recommended)"),
            (recommended, 2, CYAN, "notification (recommended)"),
        ];
        for (n, (run, which, colour, label)) in series.into_iter().enumerate() {
            let raise = n as f64 * 0.06;
            let points: Vec<_> = run
                .breaker
                .iter()
                .filter_map(|(at, states)| {
                    states[which].map(|s| (at.as_secs_f64(), level(s) + raise))
                })
                .collect();
            if points.is_empty() {
                continue;
            }
            if let Ok(drawn) = chart.draw_series(LineSeries::new(points, colour.stroke_width(2))) {
                drawn
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 12, y)], colour));
            }
        }
    })
}

/// A 540×300 SVG chart over `x` × `y` in the report's frame (caption, margins, legend box):
/// `draw` adds the mesh and the series. Empty when plotters cannot lay the chart out.
fn svg_chart(
    caption: &str,
    x: Range<f64>,
    y: Range<f64>,
    draw: impl FnOnce(
        &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    ),
) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (540, 300)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(x, y);
        let Ok(mut chart) = chart else {
            return String::new();
        };
        draw(&mut chart);
        let _ = chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw();
        let _ = root.present();
    }
    svg
}
