//! Federated logistic regression on the wine-quality task ([`crate::data`]).
//!
//! The model is a weight vector (11 values) and a bias, sent as two `float64` arrays. Each
//! ClientApp trains with full-batch gradient descent on its partition and reports `train_loss`
//! (after training); evaluation reports the loss and `accuracy` on the partition's held-out
//! split. The ServerApp runs [`FedAvg`] for `num-server-rounds` rounds and logs one
//! `[HISTORY]` line per round. [`train_centrally`] trains the same model on the pooled data
//! for the comparison.
//!
//! Run config keys (`[tool.flwr.app.config]`): `num-server-rounds` (5), `local-epochs` (10),
//! `learning-rate` (0.5), `min-nodes` (2). Node config keys: `partition-id`, `num-partitions`.

use flwr::client::NumPyClient;
use std::time::Instant;

use flwr::server::{BoxFuture, FedAvg, Grid, History, ServerApp, COMPUTE_SECONDS_METRIC};
use flwr::{AppError, Array, Config, Context, MetricsRecord, MetricsRecordValue, Scalar};

use crate::data::{self, Example, Split, FEATURES};

/// The component references the example bundle (`app/logreg`) names.
pub const CLIENT_COMPONENT: &str = "logreg.client_app:app";
/// See [`CLIENT_COMPONENT`].
pub const SERVER_COMPONENT: &str = "logreg.server_app:app";

/// Default rounds.
pub const DEFAULT_ROUNDS: i64 = 5;
/// Default local epochs per round.
pub const DEFAULT_LOCAL_EPOCHS: i64 = 10;
/// Default step size.
pub const DEFAULT_LEARNING_RATE: f64 = 0.5;

/// A logistic regression model.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// One weight per feature.
    pub weights: Vec<f64>,
    /// The intercept.
    pub bias: f64,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            weights: vec![0.0; FEATURES],
            bias: 0.0,
        }
    }
}

impl Model {
    /// The model as the arrays it travels as: weights `[11]`, bias `[1]`.
    ///
    /// # Errors
    ///
    /// Only if encoding fails (it does not for these shapes).
    pub fn to_arrays(&self) -> Result<Vec<Array>, AppError> {
        Ok(vec![
            Array::from_f64(&[self.weights.len()], &self.weights)?,
            Array::from_f64(&[1], &[self.bias])?,
        ])
    }

    /// The model from received arrays.
    ///
    /// # Errors
    ///
    /// An [`AppError`] if there are not two arrays of 11 and 1 values.
    pub fn from_arrays(arrays: &[Array]) -> Result<Self, AppError> {
        let [weights, bias] = arrays else {
            return Err(AppError::with_type(
                "ValueError",
                format!("expected 2 arrays (weights, bias), got {}", arrays.len()),
            ));
        };
        let weights = weights.to_f64()?;
        let bias = bias.to_f64()?;
        if weights.len() != FEATURES || bias.len() != 1 {
            return Err(AppError::with_type(
                "ValueError",
                format!(
                    "expected {FEATURES} weights and 1 bias, got {} and {}",
                    weights.len(),
                    bias.len()
                ),
            ));
        }
        Ok(Self {
            weights,
            bias: bias[0],
        })
    }

    /// P(good | features).
    pub fn predict(&self, features: &[f64]) -> f64 {
        let z: f64 = self
            .weights
            .iter()
            .zip(features)
            .map(|(w, x)| w * x)
            .sum::<f64>()
            + self.bias;
        1.0 / (1.0 + (-z).exp())
    }

    /// Mean binary cross-entropy.
    pub fn loss(&self, data: &[Example]) -> f64 {
        if data.is_empty() {
            return 0.0;
        }
        let eps = 1e-12;
        let total: f64 = data
            .iter()
            .map(|e| {
                let p = self.predict(&e.features).clamp(eps, 1.0 - eps);
                -(e.label * p.ln() + (1.0 - e.label) * (1.0 - p).ln())
            })
            .sum();
        total / len_f64(data)
    }

    /// Share of examples classified correctly at threshold 0.5.
    pub fn accuracy(&self, data: &[Example]) -> f64 {
        if data.is_empty() {
            return 0.0;
        }
        let correct = data
            .iter()
            .filter(|e| (self.predict(&e.features) >= 0.5) == (e.label == 1.0))
            .count();
        #[allow(clippy::cast_precision_loss)] // at most 1,599 examples
        let correct = correct as f64;
        correct / len_f64(data)
    }

    /// `epochs` steps of full-batch gradient descent with step `learning_rate`.
    pub fn train(&mut self, data: &[Example], epochs: usize, learning_rate: f64) {
        if data.is_empty() {
            return;
        }
        let n = len_f64(data);
        for _ in 0..epochs {
            let mut grad_w = vec![0.0; self.weights.len()];
            let mut grad_b = 0.0;
            for example in data {
                let error = self.predict(&example.features) - example.label;
                for (g, x) in grad_w.iter_mut().zip(&example.features) {
                    *g += error * x;
                }
                grad_b += error;
            }
            for (w, g) in self.weights.iter_mut().zip(grad_w) {
                *w -= learning_rate * g / n;
            }
            self.bias -= learning_rate * grad_b / n;
        }
    }
}

fn len_f64(data: &[Example]) -> f64 {
    #[allow(clippy::cast_precision_loss)] // at most 1,599 examples
    let n = data.len() as f64;
    n
}

fn count(data: &[Example]) -> u64 {
    u64::try_from(data.len()).unwrap_or(u64::MAX)
}

/// The ClientApp's model code: trains and evaluates on one partition.
#[derive(Clone, Debug)]
pub struct LogRegClient {
    split: Split,
}

impl LogRegClient {
    /// The client for the partition named in the node config (`partition-id`,
    /// `num-partitions`).
    ///
    /// # Errors
    ///
    /// An [`AppError`] if the keys are missing or out of range.
    pub fn from_context(context: &Context) -> Result<Self, AppError> {
        let int = |key: &str| -> Result<usize, AppError> {
            context
                .node_config
                .get(key)
                .and_then(Scalar::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    AppError::with_type("KeyError", format!("node config has no integer `{key}`"))
                })
        };
        let split = data::partition(int("partition-id")?, int("num-partitions")?)
            .map_err(|e| AppError::with_type("ValueError", e.to_string()))?;
        Ok(Self { split })
    }
}

impl NumPyClient for LogRegClient {
    fn fit(
        &mut self,
        parameters: Vec<Array>,
        config: &Config,
    ) -> Result<(Vec<Array>, u64, Config), AppError> {
        let mut model = Model::from_arrays(&parameters)?;
        let epochs = config
            .get("local-epochs")
            .and_then(Scalar::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(1);
        let learning_rate = config
            .get("learning-rate")
            .and_then(Scalar::as_f64)
            .unwrap_or(DEFAULT_LEARNING_RATE);
        let started = Instant::now();
        model.train(&self.split.train, epochs, learning_rate);
        let metrics = Config::from([
            (
                "train_loss".to_owned(),
                Scalar::Double(model.loss(&self.split.train)),
            ),
            compute_seconds(started),
        ]);
        Ok((model.to_arrays()?, count(&self.split.train), metrics))
    }

    fn evaluate(
        &mut self,
        parameters: Vec<Array>,
        _config: &Config,
    ) -> Result<(f64, u64, Config), AppError> {
        let started = Instant::now();
        let model = Model::from_arrays(&parameters)?;
        let metrics = Config::from([
            (
                "accuracy".to_owned(),
                Scalar::Double(model.accuracy(&self.split.test)),
            ),
            compute_seconds(started),
        ]);
        Ok((
            model.loss(&self.split.test),
            count(&self.split.test),
            metrics,
        ))
    }
}

/// The time since `started` as the metric that lets [`FedAvg`] separate the clients' work from
/// a round's coordination ([`COMPUTE_SECONDS_METRIC`]).
fn compute_seconds(started: Instant) -> (String, Scalar) {
    (
        COMPUTE_SECONDS_METRIC.to_owned(),
        Scalar::Double(started.elapsed().as_secs_f64()),
    )
}

/// Settings read from the run config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Rounds of FedAvg.
    pub rounds: u64,
    /// Local epochs per round.
    pub local_epochs: u64,
    /// Step size.
    pub learning_rate: f64,
    /// Nodes needed before a round starts.
    pub min_nodes: usize,
}

impl Settings {
    /// Reads the run config, with the defaults above for missing keys.
    pub fn from_run_config(config: &Config) -> Self {
        let int = |key: &str, default: i64| {
            config
                .get(key)
                .and_then(Scalar::as_i64)
                .unwrap_or(default)
                .max(0)
                .unsigned_abs()
        };
        Self {
            rounds: int("num-server-rounds", DEFAULT_ROUNDS),
            local_epochs: int("local-epochs", DEFAULT_LOCAL_EPOCHS),
            learning_rate: config
                .get("learning-rate")
                .and_then(Scalar::as_f64)
                .unwrap_or(DEFAULT_LEARNING_RATE),
            min_nodes: usize::try_from(int("min-nodes", 2)).unwrap_or(2),
        }
    }
}

/// One round of a finished run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundSummary {
    /// The round (1-based).
    pub round: u64,
    /// Weighted training loss after local training.
    pub train_loss: Option<f64>,
    /// Weighted evaluation loss.
    pub eval_loss: Option<f64>,
    /// Weighted evaluation accuracy.
    pub eval_accuracy: Option<f64>,
    /// Wall time of the round's fit and evaluate exchanges, in seconds.
    pub exchange_seconds: Option<f64>,
    /// The slowest client's compute time in each exchange, summed, in seconds.
    pub client_seconds: Option<f64>,
}

impl RoundSummary {
    /// The summaries of `rounds` rounds of `history`.
    pub fn from_history(history: &History, rounds: u64) -> Vec<Self> {
        (1..=rounds)
            .map(|round| {
                let timing = history.timings.iter().find(|t| t.round == round);
                Self {
                    round,
                    train_loss: history.fit_metric("train_loss", round),
                    eval_loss: history.evaluate_loss(round),
                    eval_accuracy: history.evaluate_metric("accuracy", round),
                    exchange_seconds: timing.map(|t| t.exchange_seconds),
                    client_seconds: timing.and_then(|t| t.client_seconds),
                }
            })
            .collect()
    }

    /// `[HISTORY] round=1 train_loss=0.61 eval_loss=0.60 eval_accuracy=0.70 exchange_s=0.012
    /// client_s=0.004` (`nan` where missing): the line the ServerApp logs per round, parsed back by [`RoundSummary::parse`].
    pub fn line(&self) -> String {
        let show = |v: Option<f64>| v.map_or_else(|| "nan".to_owned(), |v| format!("{v:.6}"));
        format!(
            "[HISTORY] round={} train_loss={} eval_loss={} eval_accuracy={} exchange_s={} \
             client_s={}",
            self.round,
            show(self.train_loss),
            show(self.eval_loss),
            show(self.eval_accuracy),
            show(self.exchange_seconds),
            show(self.client_seconds)
        )
    }

    /// Reads a [`RoundSummary::line`] out of a log line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = &line[line.find("[HISTORY] ")? + "[HISTORY] ".len()..];
        let mut summary = Self {
            round: 0,
            train_loss: None,
            eval_loss: None,
            eval_accuracy: None,
            exchange_seconds: None,
            client_seconds: None,
        };
        for field in rest.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            let number = value.parse::<f64>().ok().filter(|v| !v.is_nan());
            match key {
                "round" => summary.round = value.parse().ok()?,
                "train_loss" => summary.train_loss = number,
                "eval_loss" => summary.eval_loss = number,
                "eval_accuracy" => summary.eval_accuracy = number,
                "exchange_s" => summary.exchange_seconds = number,
                "client_s" => summary.client_seconds = number,
                _ => {}
            }
        }
        Some(summary)
    }
}

/// The ServerApp: FedAvg from a zero model, then the per-round history in the log and in
/// `context.state` (metrics record `history`, parameters record `model`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogRegServerApp;

impl ServerApp for LogRegServerApp {
    fn run<'a>(
        &'a mut self,
        grid: &'a mut Grid,
        context: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), AppError>> {
        Box::pin(async move {
            let settings = Settings::from_run_config(&context.run_config);
            tracing::info!("logistic regression: {settings:?}");
            let mut strategy = FedAvg {
                initial_parameters: Some(Model::default().to_arrays()?),
                min_fit_nodes: settings.min_nodes,
                min_evaluate_nodes: settings.min_nodes,
                min_available_nodes: settings.min_nodes,
                on_fit_config: Some(Box::new(move |_round| {
                    Config::from([
                        (
                            "local-epochs".to_owned(),
                            Scalar::Sint64(i64::try_from(settings.local_epochs).unwrap_or(1)),
                        ),
                        (
                            "learning-rate".to_owned(),
                            Scalar::Double(settings.learning_rate),
                        ),
                    ])
                })),
                ..FedAvg::default()
            };
            let outcome = strategy.run(grid, settings.rounds).await?;
            let rounds = RoundSummary::from_history(&outcome.history, settings.rounds);
            for round in &rounds {
                tracing::info!("{}", round.line());
            }
            let column = |f: fn(&RoundSummary) -> Option<f64>| {
                MetricsRecordValue::DoubleList(
                    rounds.iter().map(|r| f(r).unwrap_or(f64::NAN)).collect(),
                )
            };
            context.state.metrics_records.insert(
                "history".to_owned(),
                MetricsRecord::from([
                    ("train_loss".to_owned(), column(|r| r.train_loss)),
                    ("eval_loss".to_owned(), column(|r| r.eval_loss)),
                    ("eval_accuracy".to_owned(), column(|r| r.eval_accuracy)),
                ]),
            );
            context.state.parameters_records.insert(
                "model".to_owned(),
                outcome
                    .parameters
                    .into_iter()
                    .zip(["weights", "bias"])
                    .map(|(array, name)| (name, array))
                    .collect(),
            );
            Ok(())
        })
    }
}

/// Result of [`train_centrally`].
#[derive(Clone, Debug, PartialEq)]
pub struct CentralResult {
    /// The trained model.
    pub model: Model,
    /// Loss on the pooled training data.
    pub train_loss: f64,
    /// Accuracy on the pooled evaluation data.
    pub accuracy: f64,
}

/// Trains the same model on all partitions' training data pooled, for `epochs` epochs, and
/// evaluates it on all partitions' evaluation data pooled: the centralised baseline of a
/// federation with `num_partitions` nodes.
///
/// # Errors
///
/// An [`AppError`] if `num_partitions` is 0.
pub fn train_centrally(
    num_partitions: usize,
    epochs: usize,
    learning_rate: f64,
) -> Result<CentralResult, AppError> {
    let split = data::pooled(num_partitions)
        .map_err(|e| AppError::with_type("ValueError", e.to_string()))?;
    let mut model = Model::default();
    model.train(&split.train, epochs, learning_rate);
    Ok(CentralResult {
        train_loss: model.loss(&split.train),
        accuracy: model.accuracy(&split.test),
        model,
    })
}

#[cfg(test)]
mod tests {
    use flwr::server::fedavg::aggregate;

    use super::*;

    #[test]
    fn model_round_trips_through_arrays() {
        let model = Model {
            weights: (0..FEATURES).map(|i| i as f64 / 10.0).collect(),
            bias: -0.5,
        };
        let arrays = model.to_arrays().expect("arrays");
        assert_eq!(arrays[0].dtype, "float64");
        assert_eq!(Model::from_arrays(&arrays).expect("model"), model);
        assert!(Model::from_arrays(&arrays[..1]).is_err());
        let ones = vec![Array::from_f64(&[1, 1], &[1.0]).expect("array")];
        assert!(Model::from_arrays(&ones).is_err());
    }

    #[test]
    fn central_training_learns_the_task() {
        let result = train_centrally(2, 50, DEFAULT_LEARNING_RATE).expect("trains");
        assert!(result.accuracy > 0.70, "{result:?}");
        assert!(result.train_loss < 0.6, "{result:?}");
    }

    /// FedAvg over the partitions, without a network, lands close to central training.
    #[test]
    fn federated_averaging_matches_central_training() {
        let partitions = 2;
        let rounds = 5;
        let epochs = usize::try_from(DEFAULT_LOCAL_EPOCHS).expect("small");
        let mut clients: Vec<LogRegClient> = (0..partitions)
            .map(|id| LogRegClient {
                split: data::partition(id, partitions).expect("partition"),
            })
            .collect();
        let config = Config::from([
            ("local-epochs".into(), Scalar::Sint64(DEFAULT_LOCAL_EPOCHS)),
            (
                "learning-rate".into(),
                Scalar::Double(DEFAULT_LEARNING_RATE),
            ),
        ]);
        let mut global = Model::default().to_arrays().expect("arrays");
        for _ in 0..rounds {
            let results: Vec<(Vec<Array>, u64)> = clients
                .iter_mut()
                .map(|c| {
                    let (p, n, _) = c.fit(global.clone(), &config).expect("fit");
                    (p, n)
                })
                .collect();
            global = aggregate(&results).expect("aggregates");
        }
        let (mut correct, mut total) = (0.0, 0u64);
        for client in &mut clients {
            let (_, n, metrics) = client.evaluate(global.clone(), &config).expect("eval");
            correct += metrics["accuracy"].as_f64().expect("accuracy") * n as f64;
            total += n;
        }
        let federated = correct / total as f64;
        let central = train_centrally(partitions, rounds * epochs, DEFAULT_LEARNING_RATE)
            .expect("trains")
            .accuracy;
        assert!(federated > 0.70, "federated accuracy {federated}");
        assert!(
            (federated - central).abs() < 0.05,
            "{federated} vs {central}"
        );
    }

    #[test]
    fn history_lines_parse_back() {
        let summary = RoundSummary {
            round: 3,
            train_loss: Some(0.5),
            eval_loss: None,
            eval_accuracy: Some(0.75),
            exchange_seconds: Some(0.012_5),
            client_seconds: None,
        };
        let line = format!("INFO flwr: {}", summary.line());
        assert_eq!(RoundSummary::parse(&line), Some(summary));
        assert_eq!(RoundSummary::parse("nothing here"), None);
    }
}
