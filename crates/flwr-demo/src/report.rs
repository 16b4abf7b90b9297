//! The demo's results: [`Summary`] (written as `summary.json`) and the learning curve
//! (`learning_curve.svg`, drawn by hand: two panels, loss and accuracy per round).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use flwr_examples::logreg::RoundSummary;

use crate::error::{io_error, DemoError};

/// File name of the summary.
pub const SUMMARY_FILE: &str = "summary.json";
/// File name of the learning curve.
pub const CURVE_FILE: &str = "learning_curve.svg";

/// One round's metrics, as the ServerApp's `[HISTORY]` line reports them (`null` in JSON when
/// missing).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RoundMetrics {
    /// The round (1-based).
    pub round: u64,
    /// Training loss after local training, weighted over the SuperNodes.
    pub train_loss: Option<f64>,
    /// Evaluation loss, weighted over the SuperNodes.
    pub eval_loss: Option<f64>,
    /// Evaluation accuracy, weighted over the SuperNodes.
    pub eval_accuracy: Option<f64>,
    /// Wall time of the round's fit and evaluate exchanges, in milliseconds.
    pub round_ms: Option<f64>,
    /// What of [`RoundMetrics::round_ms`] the ClientApps did not spend computing (the slowest
    /// one counted per exchange): transport, queueing and waiting, in milliseconds.
    pub coordination_ms: Option<f64>,
}

impl From<RoundSummary> for RoundMetrics {
    fn from(summary: RoundSummary) -> Self {
        let round_ms = summary.exchange_seconds.map(|s| s * 1e3);
        Self {
            round: summary.round,
            train_loss: summary.train_loss,
            eval_loss: summary.eval_loss,
            eval_accuracy: summary.eval_accuracy,
            round_ms,
            coordination_ms: round_ms
                .zip(summary.client_seconds)
                .map(|(round, client)| (round - client * 1e3).max(0.0)),
        }
    }
}

/// What a demo run did and measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Summary {
    /// SuperNodes on the allow-list that took part.
    pub nodes: usize,
    /// Rounds asked for (`num-server-rounds`).
    pub rounds_requested: u64,
    /// Rounds the ServerApp reported metrics for.
    pub rounds_completed: u64,
    /// Per-round metrics, in round order.
    pub rounds: Vec<RoundMetrics>,
    /// Evaluation accuracy after the last round.
    pub final_accuracy: Option<f64>,
    /// Accuracy of the same model trained centrally on all partitions.
    pub central_accuracy: f64,
    /// Epochs of central training (rounds × local epochs).
    pub central_epochs: u64,
    /// Local epochs per round on each SuperNode.
    pub local_epochs: u64,
    /// Gradient descent step size.
    pub learning_rate: f64,
    /// Whether the SuperLink refused the SuperNode with the unlisted key.
    pub rogue_refused: bool,
    /// The rogue SuperNode's exit code.
    pub rogue_exit_code: Option<i32>,
    /// The run.
    pub run_id: u64,
    /// Its final `status:sub_status`.
    pub run_status: String,
    /// sha256 hex of the FAB that was submitted.
    pub fab_hash: String,
    /// Seconds from the start of the demo until every process had stopped.
    pub wall_time_seconds: f64,
    /// Where `summary.json` was written.
    #[serde(skip)]
    pub summary_path: PathBuf,
    /// Where `learning_curve.svg` was written.
    #[serde(skip)]
    pub curve_path: PathBuf,
}

/// Writes `summary.json` and `learning_curve.svg` into `out_dir` (created if missing) and
/// records their paths in `summary`.
///
/// # Errors
///
/// [`DemoError::Io`] when a file cannot be written.
pub fn write(summary: &mut Summary, out_dir: &Path) -> Result<(), DemoError> {
    fs::create_dir_all(out_dir).map_err(io_error(format!("creating {}", out_dir.display())))?;
    summary.summary_path = out_dir.join(SUMMARY_FILE);
    summary.curve_path = out_dir.join(CURVE_FILE);
    // Serialising plain numbers, strings and options cannot fail.
    let mut json = serde_json::to_string_pretty(summary).unwrap_or_default();
    json.push('\n');
    fs::write(&summary.summary_path, json).map_err(io_error(format!(
        "writing {}",
        summary.summary_path.display()
    )))?;
    let svg = learning_curve(&summary.rounds, Some(summary.central_accuracy));
    fs::write(&summary.curve_path, svg).map_err(io_error(format!(
        "writing {}",
        summary.curve_path.display()
    )))
}

/// Panel geometry, in SVG user units.
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 360.0;
const PANEL_WIDTH: f64 = 290.0;
const PANEL_HEIGHT: f64 = 220.0;
const TOP: f64 = 70.0;
const LEFT: [f64; 2] = [70.0, 440.0];
const TICKS: usize = 5;

const TRAIN_COLOUR: &str = "#1f77b4";
const EVAL_COLOUR: &str = "#ff7f0e";
const ACCURACY_COLOUR: &str = "#2ca02c";
const CENTRAL_COLOUR: &str = "#7f7f7f";

/// One line of a panel.
struct Series<'a> {
    label: &'a str,
    colour: &'a str,
    points: Vec<(u64, f64)>,
    dashed: bool,
}

/// The learning curve: training and evaluation loss per round on the left, evaluation
/// accuracy per round (and the central baseline as a dashed line) on the right.
pub fn learning_curve(rounds: &[RoundMetrics], central_accuracy: Option<f64>) -> String {
    let points = |f: fn(&RoundMetrics) -> Option<f64>| -> Vec<(u64, f64)> {
        rounds
            .iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.round, v)))
            .collect()
    };
    let last_round = rounds.iter().map(|r| r.round).max().unwrap_or(1).max(1);
    let loss = [
        Series {
            label: "training loss",
            colour: TRAIN_COLOUR,
            points: points(|r| r.train_loss),
            dashed: false,
        },
        Series {
            label: "evaluation loss",
            colour: EVAL_COLOUR,
            points: points(|r| r.eval_loss),
            dashed: false,
        },
    ];
    let mut accuracy = vec![Series {
        label: "federated accuracy",
        colour: ACCURACY_COLOUR,
        points: points(|r| r.eval_accuracy),
        dashed: false,
    }];
    if let Some(central) = central_accuracy.filter(|v| v.is_finite()) {
        accuracy.push(Series {
            label: "central accuracy",
            colour: CENTRAL_COLOUR,
            points: vec![(1, central), (last_round, central)],
            dashed: true,
        });
    }

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">Federated logistic regression on wine quality</text>"#,
        WIDTH / 2.0
    );
    panel(&mut svg, LEFT[0], "loss", &loss, last_round, (0.0, None));
    panel(
        &mut svg,
        LEFT[1],
        "accuracy",
        &accuracy,
        last_round,
        (0.0, Some(1.0)),
    );
    svg.push_str("</svg>\n");
    svg
}

/// Draws one panel at `left`: frame, axes with ticks and labels, the series and a legend.
/// `bounds` fixes the y range's lower end and, if given, its upper end.
fn panel(
    svg: &mut String,
    left: f64,
    y_label: &str,
    series: &[Series<'_>],
    last_round: u64,
    bounds: (f64, Option<f64>),
) {
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (y_min, y_max) = y_range(values, bounds);
    let x = |round: u64| {
        if last_round <= 1 {
            left + PANEL_WIDTH / 2.0
        } else {
            #[allow(clippy::cast_precision_loss)] // rounds are few
            let share = (round - 1) as f64 / (last_round - 1) as f64;
            left + share * PANEL_WIDTH
        }
    };
    let y = |value: f64| TOP + PANEL_HEIGHT - (value - y_min) / (y_max - y_min) * PANEL_HEIGHT;
    let bottom = TOP + PANEL_HEIGHT;

    // Frame and axes.
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{TOP}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="#cccccc"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<path d="M{left},{TOP} V{bottom} H{}" fill="none" stroke="black"/>"#,
        left + PANEL_WIDTH
    );
    // y ticks and grid.
    for tick in 0..=TICKS {
        #[allow(clippy::cast_precision_loss)] // a handful of ticks
        let value = y_min + (y_max - y_min) * tick as f64 / TICKS as f64;
        let at = y(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{at:.1}" x2="{}" y2="{at:.1}" stroke="#eeeeee"/><line x1="{}" y1="{at:.1}" x2="{left}" y2="{at:.1}" stroke="black"/><text x="{}" y="{:.1}" text-anchor="end">{value:.2}</text>"##,
            left,
            left + PANEL_WIDTH,
            left - 5.0,
            left - 8.0,
            at + 4.0
        );
    }
    // x ticks: every round, or about ten of them.
    let step = usize::try_from(last_round.div_ceil(10)).unwrap_or(1).max(1);
    for round in (1..=last_round).step_by(step) {
        let at = x(round);
        let _ = writeln!(
            svg,
            r#"<line x1="{at:.1}" y1="{bottom}" x2="{at:.1}" y2="{}" stroke="black"/><text x="{at:.1}" y="{}" text-anchor="middle">{round}</text>"#,
            bottom + 5.0,
            bottom + 18.0
        );
    }
    // Axis labels.
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">round</text>"#,
        left + PANEL_WIDTH / 2.0,
        bottom + 36.0
    );
    let middle = TOP + PANEL_HEIGHT / 2.0;
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{middle}" text-anchor="middle" transform="rotate(-90 {} {middle})">{y_label}</text>"#,
        left - 48.0,
        left - 48.0
    );
    // Series and legend.
    for (index, line) in series.iter().enumerate() {
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let path: Vec<String> = line
            .points
            .iter()
            .map(|&(round, value)| format!("{:.1},{:.1}", x(round), y(value)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                path.join(" "),
                line.colour
            );
        }
        if !line.dashed {
            for &(round, value) in &line.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>round {round}: {value:.4}</title></circle>"#,
                    x(round),
                    y(value),
                    line.colour
                );
            }
        }
        #[allow(clippy::cast_precision_loss)] // a few series
        let legend_y = TOP - 28.0 + 14.0 * index as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{left}" y1="{legend_y}" x2="{}" y2="{legend_y}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            left + 20.0,
            line.colour,
            left + 26.0,
            legend_y + 4.0,
            line.label
        );
    }
}

/// A y range with some margin, on multiples of 0.1, that contains every value.
fn y_range(values: impl Iterator<Item = f64>, (floor, ceiling): (f64, Option<f64>)) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !low.is_finite() {
        return (floor, ceiling.unwrap_or(1.0));
    }
    let mut low = ((low - 0.05) * 10.0).floor() / 10.0;
    let mut high = ((high + 0.05) * 10.0).ceil() / 10.0;
    low = low.max(floor);
    if let Some(ceiling) = ceiling {
        high = high.min(ceiling);
    }
    if high - low < 0.1 {
        high = low + 0.1;
    }
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rounds() -> Vec<RoundMetrics> {
        (1..=3)
            .map(|round| RoundMetrics {
                round,
                train_loss: Some(0.7 - 0.05 * round as f64),
                eval_loss: Some(0.72 - 0.05 * round as f64),
                eval_accuracy: if round == 2 {
                    None
                } else {
                    Some(0.6 + 0.05 * round as f64)
                },
                round_ms: Some(12.0),
                coordination_ms: Some(3.0),
            })
            .collect()
    }

    #[test]
    fn the_curve_is_well_formed_svg_with_every_point() {
        let svg = learning_curve(&rounds(), Some(0.74));
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        // 3 + 3 loss points and 2 accuracy points (round 2 has none).
        assert_eq!(svg.matches("<circle").count(), 8);
        assert_eq!(svg.matches("<polyline").count(), 4);
        for label in [
            "training loss",
            "evaluation loss",
            "federated accuracy",
            "central accuracy",
            ">round<",
            ">loss<",
            ">accuracy<",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        // Balanced tags: every element opened is closed or self-closing.
        let opened = svg.matches('<').count();
        let closed = svg.matches("/>").count() + svg.matches("</").count() * 2;
        assert_eq!(opened, closed, "{svg}");
    }

    #[test]
    fn one_round_and_no_metrics_still_draw() {
        let svg = learning_curve(
            &[RoundMetrics {
                round: 1,
                train_loss: None,
                eval_loss: None,
                eval_accuracy: None,
                round_ms: None,
                coordination_ms: None,
            }],
            None,
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(learning_curve(&[], Some(0.5)).contains("</svg>"));
    }

    #[test]
    fn y_ranges_contain_the_values() {
        assert_eq!(
            y_range([0.62, 0.74].into_iter(), (0.0, Some(1.0))),
            (0.5, 0.8)
        );
        assert_eq!(y_range([0.99].into_iter(), (0.0, Some(1.0))), (0.9, 1.0));
        assert_eq!(y_range(std::iter::empty(), (0.0, None)), (0.0, 1.0));
        let (low, high) = y_range([0.3, 0.69].into_iter(), (0.0, None));
        assert!(low <= 0.3 && high >= 0.69);
    }

    #[test]
    fn summaries_serialise_missing_metrics_as_null() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut summary = Summary {
            nodes: 2,
            rounds_requested: 3,
            rounds_completed: 3,
            rounds: rounds(),
            final_accuracy: Some(0.75),
            central_accuracy: 0.74,
            central_epochs: 30,
            local_epochs: 10,
            learning_rate: 0.1,
            rogue_refused: true,
            rogue_exit_code: Some(1),
            run_id: 7,
            run_status: "finished:completed".into(),
            fab_hash: "ab".repeat(32),
            wall_time_seconds: 12.5,
            summary_path: PathBuf::new(),
            curve_path: PathBuf::new(),
        };
        write(&mut summary, &dir.path().join("out")).expect("writes");
        let json: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&summary.summary_path).expect("json"))
                .expect("parses");
        assert_eq!(json["rounds"][1]["eval_accuracy"], serde_json::Value::Null);
        assert_eq!(json["run_status"], "finished:completed");
        assert_eq!(json["rogue_refused"], true);
        assert!(json.get("summary_path").is_none());
        assert!(summary.curve_path.is_file());
    }
}
