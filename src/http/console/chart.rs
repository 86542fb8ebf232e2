//! The overview's chart of pulls per day by outcome, drawn on the server as SVG: no
//! JavaScript, and it reads the same in every browser and in a screenshot.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use maud::{Markup, html};

/// The outcomes a pull ends with, in the order they are stacked and named.
pub const OUTCOMES: [&str; 3] = ["completed", "failed", "expired"];

/// One day's pulls ended, by [`OUTCOMES`].
pub type Day = (NaiveDate, [u64; 3]);

/// Folds hourly counts (`pull_outcomes_hourly`: [`crate::domain::ist_hour`], outcome, count)
/// into the `days` Indian calendar days that end with `today`, oldest first. Days without pulls
/// are present with zeros, so the chart's axis is always the same length.
pub fn by_day(hours: &[(i64, String, i64)], today: NaiveDate, days: u32) -> Vec<Day> {
    let first = today - Duration::days(i64::from(days.saturating_sub(1)));
    let mut out: Vec<Day> = (0..days)
        .map(|i| (first + Duration::days(i64::from(i)), [0; 3]))
        .collect();
    for (hour, outcome, n) in hours {
        // An IST hour counts Indian local time from the epoch.
        let Some(day) = DateTime::<Utc>::from_timestamp(hour * 3600, 0).map(|t| t.date_naive())
        else {
            continue;
        };
        let (Some(slot), Some(o)) = (
            usize::try_from((day - first).num_days())
                .ok()
                .and_then(|i| out.get_mut(i)),
            OUTCOMES.iter().position(|x| x == outcome),
        ) else {
            continue;
        };
        slot.1[o] += u64::try_from(*n).unwrap_or(0);
    }
    out
}

/// The first hour of the Indian calendar day `day`, as [`crate::domain::ist_hour`] counts.
pub fn first_hour(day: NaiveDate) -> i64 {
    day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp() / 3600
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 220;
const LEFT: u32 = 44;
/// Room for the last day's label.
const RIGHT: u32 = 24;
const BOTTOM: u32 = 24;
const TOP: u32 = 10;

/// A stacked bar per day. Each bar has a `<title>` (a tooltip, and what a screen reader
/// reads), and the whole chart a summary label.
pub fn pulls_per_day(days: &[Day]) -> Markup {
    let max = days
        .iter()
        .map(|(_, c)| c.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    let scale_max = nice_ceiling(max);
    let plot_h = f64::from(HEIGHT - BOTTOM - TOP);
    let slot = f64::from(WIDTH - LEFT - RIGHT) / days.len().max(1) as f64;
    let bar_w = (slot * 0.7).max(1.0);
    let total: u64 = days.iter().flat_map(|(_, c)| c.iter()).sum();
    let label = format!(
        "Pulls per day by outcome over the last {} days: {total} in all",
        days.len()
    );
    let y = |v: u64| f64::from(TOP) + plot_h - plot_h * v as f64 / scale_max as f64;
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(label)
            xmlns="http://www.w3.org/2000/svg" {
            title { (label) }
            // Gridlines at 0, half and the top of the scale.
            @for v in [0, scale_max / 2, scale_max] {
                line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(fmt(y(v))) y2=(fmt(y(v))) {}
                text.axis x=(LEFT - 6) y=(fmt(y(v) + 4.0)) text-anchor="end" { (v) }
            }
            @for (i, (day, counts)) in days.iter().enumerate() {
                @let x = f64::from(LEFT) + slot * i as f64 + (slot - bar_w) / 2.0;
                g {
                    title { (day.format("%d %b")) ": " (describe(counts)) }
                    @for (o, base, n) in segments(counts) {
                        rect class=(format!("bar-{}", OUTCOMES[o])) x=(fmt(x)) y=(fmt(y(base + n)))
                            width=(fmt(bar_w)) height=(fmt(y(base) - y(base + n))) {}
                    }
                    @if i % 7 == days.len().saturating_sub(1) % 7 {
                        text.axis x=(fmt(x + bar_w / 2.0)) y=(HEIGHT - 6) text-anchor="middle" {
                            (day.format("%d %b"))
                        }
                    }
                }
            }
        }
        ul.legend {
            @for o in OUTCOMES {
                li { span class=(format!("swatch bar-{o}")) aria-hidden="true" {} (o) }
            }
        }
    }
}

/// The non-empty parts of a stacked bar: outcome, the count below it, its own count.
fn segments(counts: &[u64; 3]) -> Vec<(usize, u64, u64)> {
    let mut base = 0;
    let mut out = Vec::new();
    for (o, n) in counts.iter().enumerate() {
        if *n > 0 {
            out.push((o, base, *n));
        }
        base += n;
    }
    out
}

/// "3 completed, 1 failed, 0 expired".
fn describe(counts: &[u64; 3]) -> String {
    OUTCOMES
        .iter()
        .zip(counts)
        .map(|(o, n)| format!("{n} {o}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The top of the scale: the smallest of 1, 2 or 5 times a power of ten that is at least
/// `max` (and at least 2, so the half-way gridline is a whole number).
fn nice_ceiling(max: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            let v = step.saturating_mul(m);
            if v >= max.max(2) {
                return v;
            }
        }
        step = step.saturating_mul(10);
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    /// The hour that holds an instant given in UTC.
    fn hour(rfc3339: &str) -> i64 {
        crate::domain::ist_hour(DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc())
    }

    #[test]
    fn hours_fold_into_indian_calendar_days_with_every_day_present() {
        let today = date("2026-11-29");
        let hours = vec![
            // 18:30 UTC is midnight in India: the next day there.
            (hour("2026-11-27T18:30:00Z"), "completed".to_string(), 2),
            (hour("2026-11-27T17:30:00Z"), "completed".to_string(), 1),
            (hour("2026-11-27T17:30:00Z"), "failed".to_string(), 4),
            (hour("2026-11-29T10:00:00Z"), "expired".to_string(), 3),
            // Before the window, and an outcome that is not an end: both left out.
            (hour("2026-10-01T10:00:00Z"), "completed".to_string(), 9),
            (hour("2026-11-29T10:00:00Z"), "queued".to_string(), 9),
        ];
        let days = by_day(&hours, today, 30);
        assert_eq!(days.len(), 30);
        assert_eq!(days[0].0, date("2026-10-31"));
        assert_eq!(days[29].0, today);
        let on = |d: &str| days.iter().find(|(x, _)| *x == date(d)).unwrap().1;
        assert_eq!(on("2026-11-27"), [1, 4, 0]);
        assert_eq!(on("2026-11-28"), [2, 0, 0]);
        assert_eq!(on("2026-11-29"), [0, 0, 3]);
        let total: u64 = days.iter().flat_map(|(_, c)| c.iter()).sum();
        assert_eq!(total, 10);
        assert_eq!(hour("2026-11-27T18:30:00Z"), first_hour(date("2026-11-28")));
        assert_eq!(
            hour("2026-11-27T18:29:59Z"),
            first_hour(date("2026-11-28")) - 1
        );
    }

    #[test]
    fn scales_are_round_and_never_zero() {
        assert_eq!(nice_ceiling(0), 2);
        assert_eq!(nice_ceiling(1), 2);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(500), 500);
        assert_eq!(nice_ceiling(501), 1000);
        assert_eq!(nice_ceiling(u64::MAX), u64::MAX);
    }

    #[test]
    fn bars_stack_to_the_day_total_and_are_labelled() {
        let days = vec![
            (date("2026-11-28"), [0, 0, 0]),
            (date("2026-11-29"), [6, 3, 1]),
        ];
        let svg = pulls_per_day(&days).into_string();
        assert!(
            svg.contains(
                r#"aria-label="Pulls per day by outcome over the last 2 days: 10 in all""#
            )
        );
        assert!(svg.contains("29 Nov: 6 completed, 3 failed, 1 expired"));
        // Scale top is 10: the three segments together span the whole plot height.
        let plot = f64::from(HEIGHT - BOTTOM - TOP);
        let heights: Vec<f64> = svg
            .split("height=\"")
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
            .collect();
        assert_eq!(heights.len(), 3, "no rectangle for an empty day or outcome");
        assert!((heights.iter().sum::<f64>() - plot).abs() < 0.5);
        // An empty chart draws its axis without dividing by zero.
        let empty = pulls_per_day(&[]).into_string();
        assert!(empty.contains("0 in all"));
        assert!(!empty.contains("NaN"));
    }
}
