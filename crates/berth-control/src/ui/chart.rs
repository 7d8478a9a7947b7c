//! SVG bar charts drawn by the template: one series over time, each bar with its exact value
//! on hover (`<title>`), colours from the stylesheet (classes, no inline style).

use berth_core::time::Timestamp;
use maud::{html, Markup};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 140.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 20.0;
const TOP: f64 = 8.0;

/// One bar: when, how much, and its label on hover.
#[derive(Clone, Debug)]
pub struct Bar {
    /// Where on the time axis.
    pub at: Timestamp,
    /// Height.
    pub value: f64,
    /// The exact value as text.
    pub label: String,
}

/// A bar chart of `bars` (oldest first) titled `title`; `fmt` prints axis values. An empty
/// series draws a note instead.
pub fn bars(title: &str, class: &str, bars: &[Bar], fmt: fn(f64) -> String) -> Markup {
    if bars.is_empty() {
        return html! { figure.chart { figcaption { (title) } p.muted { "nothing recorded yet" } } };
    }
    let max = bars.iter().map(|b| b.value).fold(0.0_f64, f64::max).max(1e-9);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let slot = plot_w / bars.len() as f64;
    let bar_w = (slot * 0.8).max(1.0);
    let (first, last) = (tick(bars[0].at), tick(bars[bars.len() - 1].at));
    html! {
        figure.chart {
            figcaption { (title) }
            svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
                line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
                line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - 4.0) y2=(HEIGHT - BOTTOM) {}
                text.tick x=(LEFT - 4.0) y=(TOP + 8.0) text-anchor="end" { (fmt(max)) }
                text.tick x=(LEFT - 4.0) y=(HEIGHT - BOTTOM) text-anchor="end" { "0" }
                text.tick x=(LEFT) y=(HEIGHT - 4.0) { (first) }
                text.tick x=(WIDTH - 4.0) y=(HEIGHT - 4.0) text-anchor="end" { (last) }
                @for (i, b) in bars.iter().enumerate() {
                    @let h = (b.value / max * plot_h).max(if b.value > 0.0 { 1.0 } else { 0.0 });
                    rect class=(class) x=(format!("{:.1}", LEFT + 1.0 + i as f64 * slot)) y=(format!("{:.1}", HEIGHT - BOTTOM - h))
                        width=(format!("{bar_w:.1}")) height=(format!("{h:.1}")) {
                        title { (b.at.to_string()) ": " (b.label) }
                    }
                }
            }
        }
    }
}

/// A time on the axis: the date alone for a day's bucket (midnight UTC), else the full time.
fn tick(t: Timestamp) -> String {
    let text = t.to_string();
    if t.0.rem_euclid(86_400 * 1_000_000_000) == 0 {
        text[..10].to_string()
    } else {
        text
    }
}

/// Prints bytes for an axis.
pub fn fmt_bytes(v: f64) -> String {
    super::view::bytes(v as u64)
}

/// Prints seconds for an axis.
pub fn fmt_secs(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1} s")
    } else {
        format!("{v:.0} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_label_each_value() {
        let t = Timestamp(1_700_000_000 * 1_000_000_000);
        let svg = bars(
            "changed bytes",
            "b1",
            &[
                Bar { at: t, value: 10.0, label: "10 B".into() },
                Bar { at: t.plus_secs(60), value: 20.0, label: "20 B".into() },
            ],
            fmt_bytes,
        )
        .into_string();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("height=\"112.0\""), "the largest bar fills the plot: {svg}");
        assert!(svg.contains("height=\"56.0\""), "half the largest, half the height: {svg}");
        assert!(svg.contains("<title>2023-11-14T22:13:20Z: 10 B</title>"), "{svg}");
        assert!(bars("x", "b1", &[], fmt_bytes).into_string().contains("nothing recorded yet"));
    }
}
