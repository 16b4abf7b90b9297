//! Federated averaging, driven round by round over a [`Grid`] the way Flower's legacy
//! `Server.fit` drives `FedAvg` (`flwr.server.strategy.FedAvg`, `flwr.server.server`), with the
//! messages in the legacy record layout so that Python `NumPyClient`s can answer them.
//!
//! ```text
//! [INIT]      initial parameters, or `get_parameters` from one random node (group "")
//!             centralized evaluation of round 0 (if an evaluate_fn is set)
//! [ROUND r]   wait for min_available_nodes; sample max(floor(n * fraction_fit), min_fit_nodes)
//!             nodes; "train" with FitIns (group "r"); aggregate FitRes weighted by num_examples
//!             centralized evaluation (if set)
//!             sample for evaluation likewise; "evaluate" with EvaluateIns; weighted loss
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom as _;

use crate::compat::{
    Code, EvaluateIns, EvaluateRes, FitIns, FitRes, GetParametersIns, GetParametersRes,
};
use crate::error::AppError;
use crate::message::{message_type, Message};
use crate::npy::Dtype;
use crate::record::{Array, Config, Scalar};
use crate::server::grid::Grid;

/// How to combine the metrics that clients report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsAggregation {
    /// Drop them (the reference's default when no aggregation function is given).
    Ignore,
    /// For each numeric metric, the average weighted by `num_examples` over the clients that
    /// report it.
    #[default]
    WeightedAverage,
}

/// Server-side evaluation of the global model: `(round, parameters) -> (loss, metrics)`.
pub type EvaluateFn = Box<dyn FnMut(u64, &[Array]) -> Option<(f64, Config)> + Send>;

/// Per-round configuration sent with `FitIns`/`EvaluateIns`.
pub type ConfigFn = Box<dyn Fn(u64) -> Config + Send>;

/// The federated averaging strategy. Defaults are the reference's.
pub struct FedAvg {
    /// Fraction of available nodes sampled for training (1.0).
    pub fraction_fit: f64,
    /// Fraction of available nodes sampled for evaluation (1.0; 0 disables it).
    pub fraction_evaluate: f64,
    /// Minimum number of nodes sampled for training (2).
    pub min_fit_nodes: usize,
    /// Minimum number of nodes sampled for evaluation (2).
    pub min_evaluate_nodes: usize,
    /// Nodes that must be online before a round starts (2).
    pub min_available_nodes: usize,
    /// Aggregate even when some nodes failed (true).
    pub accept_failures: bool,
    /// The starting model; `None` asks one node with `get_parameters`.
    pub initial_parameters: Option<Vec<Array>>,
    /// Config of each round's `FitIns` (empty by default).
    pub on_fit_config: Option<ConfigFn>,
    /// Config of each round's `EvaluateIns` (empty by default).
    pub on_evaluate_config: Option<ConfigFn>,
    /// Combination of the clients' fit metrics.
    pub fit_metrics_aggregation: MetricsAggregation,
    /// Combination of the clients' evaluation metrics.
    pub evaluate_metrics_aggregation: MetricsAggregation,
    /// Optional server-side evaluation.
    pub evaluate_fn: Option<EvaluateFn>,
    /// Longest wait for replies in a round (`None`: no limit, the reference's default).
    pub round_timeout: Option<Duration>,
    /// Longest wait for `min_available_nodes` (the reference waits a day).
    pub node_wait_timeout: Duration,
}

impl Default for FedAvg {
    fn default() -> Self {
        Self {
            fraction_fit: 1.0,
            fraction_evaluate: 1.0,
            min_fit_nodes: 2,
            min_evaluate_nodes: 2,
            min_available_nodes: 2,
            accept_failures: true,
            initial_parameters: None,
            on_fit_config: None,
            on_evaluate_config: None,
            fit_metrics_aggregation: MetricsAggregation::default(),
            evaluate_metrics_aggregation: MetricsAggregation::default(),
            evaluate_fn: None,
            round_timeout: None,
            node_wait_timeout: Duration::from_secs(86_400),
        }
    }
}

impl std::fmt::Debug for FedAvg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FedAvg")
            .field("fraction_fit", &self.fraction_fit)
            .field("fraction_evaluate", &self.fraction_evaluate)
            .field("min_fit_nodes", &self.min_fit_nodes)
            .field("min_evaluate_nodes", &self.min_evaluate_nodes)
            .field("min_available_nodes", &self.min_available_nodes)
            .field("accept_failures", &self.accept_failures)
            .finish_non_exhaustive()
    }
}

/// What happened over a training session, by round (1-based; round 0 is the initial model).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Weighted average of the clients' evaluation losses.
    pub losses_distributed: Vec<(u64, f64)>,
    /// Server-side evaluation losses.
    pub losses_centralized: Vec<(u64, f64)>,
    /// Aggregated fit metrics (e.g. `train_loss`).
    pub metrics_distributed_fit: BTreeMap<String, Vec<(u64, Scalar)>>,
    /// Aggregated evaluation metrics (e.g. `accuracy`).
    pub metrics_distributed: BTreeMap<String, Vec<(u64, Scalar)>>,
    /// Server-side evaluation metrics.
    pub metrics_centralized: BTreeMap<String, Vec<(u64, Scalar)>>,
    /// Where each round's time went, in round order.
    pub timings: Vec<RoundTiming>,
}

/// The metric a ClientApp may report (in seconds, with its fit and evaluate results) so that
/// [`RoundTiming`] can tell the clients' own work from the coordination around it.
pub const COMPUTE_SECONDS_METRIC: &str = "compute-seconds";

/// Where one round's time went, as the ServerApp saw it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RoundTiming {
    /// The round (1-based).
    pub round: u64,
    /// Wall time of the round's fit and evaluate exchanges: from pushing the messages to
    /// holding every reply, summed over both.
    pub exchange_seconds: f64,
    /// The slowest client's [`COMPUTE_SECONDS_METRIC`] in each exchange, summed; `None` when a
    /// client did not report it.
    pub client_seconds: Option<f64>,
}

impl RoundTiming {
    /// Exchange time not spent computing on the slowest client: transport, queueing, polling
    /// and process start-up.
    pub fn coordination_seconds(&self) -> Option<f64> {
        self.client_seconds
            .map(|client| (self.exchange_seconds - client).max(0.0))
    }

    /// A round before any exchange.
    fn start(round: u64) -> Self {
        Self {
            round,
            exchange_seconds: 0.0,
            client_seconds: Some(0.0),
        }
    }

    /// Adds one exchange: its wall time and the compute times its clients reported.
    fn add_exchange<'a>(
        &mut self,
        seconds: f64,
        reported: impl Iterator<Item = Option<&'a Scalar>>,
    ) {
        self.exchange_seconds += seconds;
        let slowest = reported
            .map(|value| value.and_then(Scalar::as_f64))
            .try_fold(0.0_f64, |slowest, value| value.map(|v| slowest.max(v)));
        self.client_seconds = self.client_seconds.zip(slowest).map(|(sum, s)| sum + s);
    }
}

impl History {
    /// The value of fit metric `name` in `round`, as a float.
    pub fn fit_metric(&self, name: &str, round: u64) -> Option<f64> {
        lookup(&self.metrics_distributed_fit, name, round)
    }

    /// The value of evaluation metric `name` in `round`, as a float.
    pub fn evaluate_metric(&self, name: &str, round: u64) -> Option<f64> {
        lookup(&self.metrics_distributed, name, round)
    }

    /// The distributed evaluation loss of `round`.
    pub fn evaluate_loss(&self, round: u64) -> Option<f64> {
        self.losses_distributed
            .iter()
            .find(|(r, _)| *r == round)
            .map(|(_, loss)| *loss)
    }

    fn add_metrics(map: &mut BTreeMap<String, Vec<(u64, Scalar)>>, round: u64, metrics: Config) {
        for (name, value) in metrics {
            map.entry(name).or_default().push((round, value));
        }
    }
}

fn lookup(map: &BTreeMap<String, Vec<(u64, Scalar)>>, name: &str, round: u64) -> Option<f64> {
    map.get(name)?
        .iter()
        .find(|(r, _)| *r == round)
        .and_then(|(_, v)| v.as_f64())
}

/// Result of [`FedAvg::run`].
#[derive(Clone, Debug)]
pub struct FedAvgOutcome {
    /// Per-round history.
    pub history: History,
    /// The final global model.
    pub parameters: Vec<Array>,
}

impl FedAvg {
    /// Runs `num_rounds` rounds of training and evaluation on `grid` (whose run must be set).
    ///
    /// # Errors
    ///
    /// An [`AppError`] when the grid fails (a stopped run gives
    /// [`AppError::is_run_stopped`]), when no initial model can be had, or when aggregation
    /// fails (shapes that differ between clients, zero examples in total).
    pub async fn run(&mut self, grid: &Grid, num_rounds: u64) -> Result<FedAvgOutcome, AppError> {
        let mut history = History::default();
        tracing::info!("[INIT]");
        let mut parameters = self.initial_parameters(grid).await?;
        self.evaluate_centralized(0, &parameters, &mut history);
        let started = Instant::now();
        for round in 1..=num_rounds {
            tracing::info!("");
            tracing::info!("[ROUND {round}]");
            let mut timing = RoundTiming::start(round);
            if let Some((new, metrics)) = self
                .fit_round(grid, round, &parameters, &mut timing)
                .await?
            {
                parameters = new;
                History::add_metrics(&mut history.metrics_distributed_fit, round, metrics);
            }
            self.evaluate_centralized(round, &parameters, &mut history);
            if let Some((loss, metrics)) = self
                .evaluate_round(grid, round, &parameters, &mut timing)
                .await?
            {
                history.losses_distributed.push((round, loss));
                History::add_metrics(&mut history.metrics_distributed, round, metrics);
            }
            history.timings.push(timing);
        }
        tracing::info!("");
        tracing::info!(
            "[SUMMARY] Run finished {num_rounds} round(s) in {:.2}s",
            started.elapsed().as_secs_f64()
        );
        for (round, loss) in &history.losses_distributed {
            tracing::info!("\tround {round}: loss (distributed) {loss}");
        }
        Ok(FedAvgOutcome {
            history,
            parameters,
        })
    }

    async fn initial_parameters(&mut self, grid: &Grid) -> Result<Vec<Array>, AppError> {
        if let Some(parameters) = self.initial_parameters.take() {
            tracing::info!("Using initial global parameters provided by strategy");
            return Ok(parameters);
        }
        tracing::info!("Requesting initial parameters from one random client");
        let nodes = self.sample(grid, 1, 1).await?;
        let Some(&node) = nodes.first() else {
            return Err(AppError::new("no node available for initial parameters"));
        };
        let content = GetParametersIns::default().into_record_set();
        let message = grid.create_message(content, message_type::GET_PARAMETERS, node, "", None)?;
        let replies = grid
            .send_and_receive(vec![message], self.round_timeout)
            .await?;
        let reply = replies
            .into_iter()
            .next()
            .ok_or_else(|| AppError::new("no reply to get_parameters"))?;
        let content = reply_content(&reply)?;
        let res = GetParametersRes::from_record_set(content)?;
        if res.status.code != Code::Ok {
            return Err(AppError::new(format!(
                "get_parameters failed: {}",
                res.status.message
            )));
        }
        tracing::info!("Received initial parameters from one random client");
        Ok(res.parameters)
    }

    fn evaluate_centralized(&mut self, round: u64, parameters: &[Array], history: &mut History) {
        let Some(evaluate) = self.evaluate_fn.as_mut() else {
            return;
        };
        if let Some((loss, metrics)) = evaluate(round, parameters) {
            tracing::info!(
                "centralized evaluation, round {round}: loss {loss}, metrics {metrics:?}"
            );
            history.losses_centralized.push((round, loss));
            History::add_metrics(&mut history.metrics_centralized, round, metrics);
        }
    }

    async fn fit_round(
        &mut self,
        grid: &Grid,
        round: u64,
        parameters: &[Array],
        timing: &mut RoundTiming,
    ) -> Result<Option<(Vec<Array>, Config)>, AppError> {
        let available = self.wait_for_nodes(grid, self.min_available_nodes).await?;
        let size = sample_size(available.len(), self.fraction_fit, self.min_fit_nodes);
        let nodes = choose(&available, size);
        if nodes.is_empty() {
            tracing::info!("configure_fit: no clients selected, cancel");
            return Ok(None);
        }
        tracing::info!(
            "configure_fit: strategy sampled {} clients (out of {})",
            nodes.len(),
            available.len()
        );
        let config = self
            .on_fit_config
            .as_ref()
            .map_or_else(Config::new, |f| f(round));
        let messages = nodes
            .iter()
            .map(|&node| {
                let content = FitIns {
                    parameters: parameters.to_vec(),
                    config: config.clone(),
                }
                .into_record_set();
                grid.create_message(content, message_type::TRAIN, node, &round.to_string(), None)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let exchange = Instant::now();
        let replies = grid.send_and_receive(messages, self.round_timeout).await?;
        let exchange = exchange.elapsed().as_secs_f64();
        let mut failures = nodes.len().saturating_sub(replies.len());
        // Each model is added to the running sum as it is converted and dropped right after, so
        // the round holds the replies plus one sum, not every client's model twice more.
        let mut sum = WeightedSum::default();
        let mut sum_error = None;
        let mut results: Vec<(u64, Config)> = Vec::new();
        for reply in replies {
            match reply_content(&reply).and_then(|c| Ok(FitRes::from_record_set(c)?)) {
                Ok(res) if res.status.code == Code::Ok => {
                    if sum_error.is_none() {
                        sum_error = sum.add(&res.parameters, res.num_examples).err();
                    }
                    results.push((res.num_examples, res.metrics));
                }
                Ok(res) => {
                    tracing::warn!("fit failed on a client: {}", res.status.message);
                    failures += 1;
                }
                Err(error) => {
                    tracing::warn!("fit failed on a client: {error}");
                    failures += 1;
                }
            }
        }
        timing.add_exchange(
            exchange,
            results
                .iter()
                .map(|(_, metrics)| metrics.get(COMPUTE_SECONDS_METRIC)),
        );
        tracing::info!(
            "aggregate_fit: received {} results and {failures} failures",
            results.len()
        );
        if results.is_empty() || (!self.accept_failures && failures > 0) {
            return Ok(None);
        }
        if let Some(error) = sum_error {
            return Err(error);
        }
        let aggregated = sum.finish()?;
        let metrics = match self.fit_metrics_aggregation {
            MetricsAggregation::Ignore => Config::new(),
            MetricsAggregation::WeightedAverage => {
                weighted_average(results.iter().map(|(n, metrics)| (*n, metrics)))
            }
        };
        Ok(Some((aggregated, metrics)))
    }

    async fn evaluate_round(
        &mut self,
        grid: &Grid,
        round: u64,
        parameters: &[Array],
        timing: &mut RoundTiming,
    ) -> Result<Option<(f64, Config)>, AppError> {
        if self.fraction_evaluate == 0.0 {
            return Ok(None);
        }
        let available = self.wait_for_nodes(grid, self.min_available_nodes).await?;
        let size = sample_size(
            available.len(),
            self.fraction_evaluate,
            self.min_evaluate_nodes,
        );
        let nodes = choose(&available, size);
        if nodes.is_empty() {
            tracing::info!("configure_evaluate: no clients selected, skipping evaluation");
            return Ok(None);
        }
        tracing::info!(
            "configure_evaluate: strategy sampled {} clients (out of {})",
            nodes.len(),
            available.len()
        );
        let config = self
            .on_evaluate_config
            .as_ref()
            .map_or_else(Config::new, |f| f(round));
        let messages = nodes
            .iter()
            .map(|&node| {
                let content = EvaluateIns {
                    parameters: parameters.to_vec(),
                    config: config.clone(),
                }
                .into_record_set();
                grid.create_message(
                    content,
                    message_type::EVALUATE,
                    node,
                    &round.to_string(),
                    None,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let exchange = Instant::now();
        let replies = grid.send_and_receive(messages, self.round_timeout).await?;
        let exchange = exchange.elapsed().as_secs_f64();
        let mut failures = nodes.len().saturating_sub(replies.len());
        let mut results = Vec::new();
        for reply in &replies {
            match reply_content(reply).and_then(|c| Ok(EvaluateRes::from_record_set(c)?)) {
                Ok(res) if res.status.code == Code::Ok => results.push(res),
                Ok(res) => {
                    tracing::warn!("evaluate failed on a client: {}", res.status.message);
                    failures += 1;
                }
                Err(error) => {
                    tracing::warn!("evaluate failed on a client: {error}");
                    failures += 1;
                }
            }
        }
        timing.add_exchange(
            exchange,
            results
                .iter()
                .map(|r| r.metrics.get(COMPUTE_SECONDS_METRIC)),
        );
        tracing::info!(
            "aggregate_evaluate: received {} results and {failures} failures",
            results.len()
        );
        if results.is_empty() || (!self.accept_failures && failures > 0) {
            return Ok(None);
        }
        let loss = weighted_loss_average(results.iter().map(|r| (r.num_examples, r.loss)))
            .ok_or_else(|| AppError::new("no evaluation examples in total"))?;
        let metrics = match self.evaluate_metrics_aggregation {
            MetricsAggregation::Ignore => Config::new(),
            MetricsAggregation::WeightedAverage => {
                weighted_average(results.iter().map(|r| (r.num_examples, &r.metrics)))
            }
        };
        tracing::info!("round {round}: evaluation loss {loss}, metrics {metrics:?}");
        Ok(Some((loss, metrics)))
    }

    /// Polls `GetNodes` until at least `min` nodes are online or the wait times out; returns
    /// the nodes online then (possibly fewer).
    async fn wait_for_nodes(&self, grid: &Grid, min: usize) -> Result<Vec<u64>, AppError> {
        let started = Instant::now();
        loop {
            let nodes = grid.node_ids().await?;
            if nodes.len() >= min || started.elapsed() >= self.node_wait_timeout {
                return Ok(nodes);
            }
            // GetNodes is cheap, and nodes registering now should not cost a round a second.
            tokio::time::sleep(grid.poll_interval().min(Duration::from_millis(200))).await;
        }
    }

    async fn sample(&self, grid: &Grid, size: usize, min: usize) -> Result<Vec<u64>, AppError> {
        let available = self.wait_for_nodes(grid, min).await?;
        Ok(choose(&available, size))
    }
}

/// `max(floor(available * fraction), minimum)`, as the reference's `num_fit_clients`.
fn sample_size(available: usize, fraction: f64, minimum: usize) -> usize {
    // Truncation is the reference's int(); node counts are far below 2^52.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )] // see comment above
    let scaled = (available as f64 * fraction) as usize;
    scaled.max(minimum)
}

/// `size` distinct random nodes, or none if fewer are available (the reference's "Sampling
/// failed").
fn choose(available: &[u64], size: usize) -> Vec<u64> {
    if size > available.len() {
        tracing::info!(
            "Sampling failed: number of available clients ({}) is less than number of \
             requested clients ({size}).",
            available.len()
        );
        return Vec::new();
    }
    available
        .choose_multiple(&mut rand::thread_rng(), size)
        .copied()
        .collect()
}

fn reply_content(reply: &Message) -> Result<&crate::record::RecordSet, AppError> {
    match (reply.content(), reply.error()) {
        (Some(content), _) => Ok(content),
        (None, Some(error)) => Err(AppError::with_type(
            "ValueError",
            format!(
                "Message contains an Error (reason: {}). It originated during client-side \
                 execution of a message.",
                error.reason
            ),
        )),
        (None, None) => Err(AppError::new("reply without content")),
    }
}

/// The average of each layer over `results`, weighted by their example counts.
///
/// Every client must send the same number of layers with the same shapes. The result of a
/// layer is `float32` if every client sent `float32`, else `float64` (NumPy's promotion).
///
/// # Errors
///
/// An [`AppError`] for mismatched layers, undecodable arrays or zero examples in total.
pub fn aggregate(results: &[(Vec<Array>, u64)]) -> Result<Vec<Array>, AppError> {
    let mut sum = WeightedSum::default();
    for (arrays, examples) in results {
        sum.add(arrays, *examples)?;
    }
    sum.finish()
}

/// A weighted average of models built one client at a time: adding a model folds it into one
/// `f64` sum per layer, so the caller can drop each model as soon as it is added.
#[derive(Debug, Default)]
pub struct WeightedSum {
    layers: Vec<LayerSum>,
    total: u64,
    clients: usize,
}

#[derive(Debug)]
struct LayerSum {
    shape: Vec<usize>,
    dtype: Dtype,
    sum: Vec<f64>,
}

impl WeightedSum {
    /// Adds one client's model, weighted by its number of examples.
    ///
    /// # Errors
    ///
    /// The model has another number of layers or another shape than the first one added, or a
    /// layer is not a float array.
    pub fn add(&mut self, arrays: &[Array], examples: u64) -> Result<(), AppError> {
        let client = self.clients;
        if client > 0 && arrays.len() != self.layers.len() {
            return Err(AppError::new(format!(
                "client {client} sent {} layers, the first sent {}",
                arrays.len(),
                self.layers.len()
            )));
        }
        #[allow(clippy::cast_precision_loss)] // example counts are far below 2^52
        let weight = examples as f64;
        for (layer, array) in arrays.iter().enumerate() {
            let header = array.npy_header()?;
            let float64 = header.dtype()?.0 == Dtype::Float64;
            let values = array.to_f64()?;
            if client == 0 {
                self.layers.push(LayerSum {
                    shape: header.shape.clone(),
                    dtype: Dtype::Float32,
                    sum: vec![0.0; values.len()],
                });
            }
            let Some(acc) = self.layers.get_mut(layer) else {
                return Err(AppError::new(format!("client {client}: no layer {layer}")));
            };
            if acc.shape != header.shape {
                return Err(AppError::new(format!(
                    "layer {layer}: shape {:?} differs from {:?}",
                    header.shape, acc.shape
                )));
            }
            if float64 {
                acc.dtype = Dtype::Float64;
            }
            for (sum, value) in acc.sum.iter_mut().zip(values) {
                *sum += value * weight;
            }
        }
        self.total += examples;
        self.clients += 1;
        Ok(())
    }

    /// The weighted average of every model added (float32 layers stay float32 unless a client
    /// sent float64).
    ///
    /// # Errors
    ///
    /// Zero examples in total (also when nothing was added).
    pub fn finish(self) -> Result<Vec<Array>, AppError> {
        if self.total == 0 {
            return Err(AppError::new("cannot aggregate: zero examples in total"));
        }
        #[allow(clippy::cast_precision_loss)] // example counts are far below 2^52
        let total = self.total as f64;
        self.layers
            .into_iter()
            .map(|layer| {
                let averaged = layer.sum.into_iter().map(|v| v / total);
                match layer.dtype {
                    #[allow(clippy::cast_possible_truncation)] // float32 in, float32 out
                    Dtype::Float32 => {
                        let narrowed: Vec<f32> = averaged.map(|v| v as f32).collect();
                        Ok(Array::from_f32(&layer.shape, &narrowed)?)
                    }
                    _ => Ok(Array::from_f64(
                        &layer.shape,
                        &averaged.collect::<Vec<_>>(),
                    )?),
                }
            })
            .collect()
    }
}

/// `sum(n_i * loss_i) / sum(n_i)`; `None` when there are no examples.
pub fn weighted_loss_average(results: impl IntoIterator<Item = (u64, f64)>) -> Option<f64> {
    let (mut weighted, mut total) = (0.0, 0.0);
    for (examples, loss) in results {
        #[allow(clippy::cast_precision_loss)] // example counts are far below 2^52
        let examples = examples as f64;
        weighted += examples * loss;
        total += examples;
    }
    (total > 0.0).then(|| weighted / total)
}

/// For each numeric metric, `sum(n_i * m_i) / sum(n_i)` over the clients that report it (as
/// the `weighted_average` helper of Flower's examples). Non-numeric metrics are dropped.
pub fn weighted_average<'a>(results: impl IntoIterator<Item = (u64, &'a Config)>) -> Config {
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for (examples, metrics) in results {
        #[allow(clippy::cast_precision_loss)] // example counts are far below 2^52
        let examples = examples as f64;
        for (name, value) in metrics {
            if matches!(value, Scalar::Bool(_)) {
                continue;
            }
            let Some(value) = value.as_f64() else {
                continue;
            };
            let entry = sums.entry(name.clone()).or_insert((0.0, 0.0));
            entry.0 += examples * value;
            entry.1 += examples;
        }
    }
    sums.into_iter()
        .filter(|(_, (_, total))| *total > 0.0)
        .map(|(name, (weighted, total))| (name, Scalar::Double(weighted / total)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_weights_by_examples() {
        let a = vec![
            Array::from_f32(&[2], &[1.0, 2.0]).expect("array"),
            Array::from_f64(&[1, 1], &[10.0]).expect("array"),
        ];
        let b = vec![
            Array::from_f32(&[2], &[3.0, 6.0]).expect("array"),
            Array::from_f64(&[1, 1], &[20.0]).expect("array"),
        ];
        let out = aggregate(&[(a, 1), (b, 3)]).expect("aggregates");
        assert_eq!(out[0].to_f32().expect("f32"), vec![2.5, 5.0]);
        assert_eq!(out[0].dtype, "float32");
        assert_eq!(out[1].to_f64().expect("f64"), vec![17.5]);
        assert_eq!(out[1].npy_header().expect("header").shape, vec![1, 1]);
    }

    #[test]
    fn aggregate_promotes_mixed_precision_and_rejects_mismatches() {
        let a = vec![Array::from_f32(&[1], &[1.0]).expect("array")];
        let b = vec![Array::from_f64(&[1], &[2.0]).expect("array")];
        let out = aggregate(&[(a.clone(), 1), (b, 1)]).expect("aggregates");
        assert_eq!(out[0].dtype, "float64");
        assert_eq!(out[0].to_f64().expect("f64"), vec![1.5]);

        let wide = vec![Array::from_f32(&[2], &[1.0, 1.0]).expect("array")];
        assert!(aggregate(&[(a.clone(), 1), (wide, 1)]).is_err());
        assert!(aggregate(&[(a.clone(), 1), (Vec::new(), 1)]).is_err());
        assert!(aggregate(&[(a, 0)]).is_err());
    }

    #[test]
    fn losses_and_metrics_are_weighted() {
        assert_eq!(weighted_loss_average([(1, 1.0), (3, 2.0)]), Some(1.75));
        assert_eq!(weighted_loss_average([(0, 1.0)]), None);
        let a = Config::from([
            ("accuracy".into(), Scalar::Double(0.5)),
            ("name".into(), Scalar::from("x")),
        ]);
        let b = Config::from([
            ("accuracy".into(), Scalar::Double(1.0)),
            ("count".into(), Scalar::Sint64(4)),
        ]);
        let avg = weighted_average([(1, &a), (3, &b)]);
        assert_eq!(avg["accuracy"], Scalar::Double(0.875));
        assert_eq!(avg["count"], Scalar::Double(4.0));
        assert!(!avg.contains_key("name"));
    }

    #[test]
    fn sampling_matches_the_reference_sizes() {
        assert_eq!(sample_size(10, 0.5, 2), 5);
        assert_eq!(sample_size(3, 0.1, 2), 2);
        assert_eq!(sample_size(2, 1.0, 2), 2);
        assert!(choose(&[1], 2).is_empty());
        let picked = choose(&[1, 2, 3], 2);
        assert_eq!(picked.len(), 2);
        assert_ne!(picked[0], picked[1]);
    }
}
