//! The status page's chart of decisions per minute: stacked bars (issued,
//! refused, failed), laid out here as numbers and drawn by the template as
//! inline SVG.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::backend::MinuteBucket;

/// The SVG's size and the plot's margins.
const WIDTH: u32 = 720;
const HEIGHT: u32 = 200;
const LEFT: u32 = 48;
const BOTTOM: u32 = 24;
const TOP: u32 = 12;
const RIGHT: u32 = 8;
/// Most minutes drawn (the newest).
const MAX_BARS: usize = 60;

/// One coloured part of a bar.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Segment {
    pub(crate) y: f64,
    pub(crate) height: f64,
    pub(crate) fill: &'static str,
    pub(crate) title: String,
}

/// One minute.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Bar {
    pub(crate) x: f64,
    pub(crate) width: f64,
    pub(crate) segments: Vec<Segment>,
}

/// What the template draws.
#[derive(Debug, Serialize)]
pub(crate) struct Chart {
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) left: u32,
    pub(crate) top: u32,
    pub(crate) plot_bottom: u32,
    pub(crate) plot_right: u32,
    /// The largest total in a minute (the top of the axis).
    pub(crate) max: u64,
    pub(crate) bars: Vec<Bar>,
    pub(crate) first_label: String,
    pub(crate) last_label: String,
    pub(crate) total_issued: u64,
    pub(crate) total_refused: u64,
    pub(crate) total_failed: u64,
}

/// Colours: issued, refused, failed.
pub(crate) const ISSUED: &str = "#2e7d32";
pub(crate) const REFUSED: &str = "#ef6c00";
pub(crate) const FAILED: &str = "#c62828";

fn hhmm(minute_start_unix: u64) -> String {
    let t = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(minute_start_unix))
        .to_string();
    // 2024-01-02T03:04:05Z -> 03:04
    t.get(11..16).map_or(t.clone(), str::to_owned)
}

impl Chart {
    pub(crate) fn new(buckets: &[MinuteBucket]) -> Self {
        let buckets = &buckets[buckets.len().saturating_sub(MAX_BARS)..];
        let plot_right = WIDTH - RIGHT;
        let plot_bottom = HEIGHT - BOTTOM;
        let plot_width = f64::from(plot_right - LEFT);
        let plot_height = f64::from(plot_bottom - TOP);
        let max = buckets
            .iter()
            .map(|b| b.issued + b.refused + b.failed)
            .max()
            .unwrap_or(0)
            .max(1);
        let slot = plot_width / buckets.len().max(1) as f64;
        let bar_width = (slot - 2.0).max(1.0);
        let bars = buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut base = f64::from(plot_bottom);
                let label = hhmm(b.minute_start_unix);
                let segments = [
                    (b.issued, ISSUED, "issued"),
                    (b.refused, REFUSED, "refused"),
                    (b.failed, FAILED, "failed"),
                ]
                .into_iter()
                .filter(|(n, _, _)| *n > 0)
                .map(|(n, fill, what)| {
                    let height = n as f64 / max as f64 * plot_height;
                    base -= height;
                    Segment {
                        y: round(base),
                        height: round(height),
                        fill,
                        title: format!("{label} UTC: {n} {what}"),
                    }
                })
                .collect();
                Bar {
                    x: round(f64::from(LEFT) + i as f64 * slot + 1.0),
                    width: round(bar_width),
                    segments,
                }
            })
            .collect();
        Chart {
            width: WIDTH,
            height: HEIGHT,
            left: LEFT,
            top: TOP,
            plot_bottom,
            plot_right,
            max,
            bars,
            first_label: buckets
                .first()
                .map(|b| hhmm(b.minute_start_unix))
                .unwrap_or_default(),
            last_label: buckets
                .last()
                .map(|b| hhmm(b.minute_start_unix))
                .unwrap_or_default(),
            total_issued: buckets.iter().map(|b| b.issued).sum(),
            total_refused: buckets.iter().map(|b| b.refused).sum(),
            total_failed: buckets.iter().map(|b| b.failed).sum(),
        }
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_stack_and_scale_to_the_busiest_minute() {
        let chart = Chart::new(&[
            MinuteBucket {
                minute_start_unix: 1_700_000_040,
                issued: 2,
                refused: 2,
                failed: 0,
            },
            MinuteBucket {
                minute_start_unix: 1_700_000_100,
                issued: 0,
                refused: 0,
                failed: 0,
            },
            MinuteBucket {
                minute_start_unix: 1_700_000_160,
                issued: 8,
                refused: 0,
                failed: 0,
            },
        ]);
        assert_eq!(chart.max, 8);
        assert_eq!(chart.bars.len(), 3);
        let plot_height = f64::from(chart.plot_bottom - chart.top);
        // The busiest minute fills the plot.
        assert_eq!(chart.bars[2].segments.len(), 1);
        assert_eq!(chart.bars[2].segments[0].height, round(plot_height));
        assert_eq!(chart.bars[2].segments[0].y, f64::from(chart.top));
        // Issued below refused, each a quarter of the plot.
        let first = &chart.bars[0].segments;
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].fill, ISSUED);
        assert_eq!(first[1].fill, REFUSED);
        assert!(first[1].y < first[0].y);
        assert_eq!(first[0].height, round(plot_height / 4.0));
        assert!(chart.bars[1].segments.is_empty());
        assert_eq!(chart.first_label, "22:14");
        assert_eq!(chart.last_label, "22:16");
        assert_eq!(
            (chart.total_issued, chart.total_refused, chart.total_failed),
            (10, 2, 0)
        );
    }

    #[test]
    fn empty_history_draws_nothing() {
        let chart = Chart::new(&[]);
        assert!(chart.bars.is_empty());
        assert_eq!(chart.max, 1);
    }
}
