//! A Rust port of the app `flwr new --framework NumPy` renders: the model is `np.ones((1, 1))`,
//! the client returns it unchanged with one example, and evaluation reports loss 0.0 and
//! accuracy 1.0; the server runs FedAvg for `num-server-rounds` rounds starting from the same
//! model. It lets a Rust ClientApp serve the Python ServerApp of that template and a Rust
//! ServerApp drive its Python ClientApps.

use flwr::client::NumPyClient;
use flwr::server::{BoxFuture, FedAvg, Grid, ServerApp};
use flwr::{AppError, Array, Config, Context, Scalar};

/// Component references of the rendered template (`numpyapp/pyproject.toml`).
pub const CLIENT_COMPONENT: &str = "numpyapp.client_app:app";
/// See [`CLIENT_COMPONENT`].
pub const SERVER_COMPONENT: &str = "numpyapp.server_app:app";

/// `np.ones((1, 1))`.
///
/// # Errors
///
/// Never in practice (a fixed, valid shape).
pub fn dummy_model() -> Result<Array, AppError> {
    Ok(Array::from_f64(&[1, 1], &[1.0])?)
}

/// The template's `FlowerClient`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NumpyClient;

impl NumPyClient for NumpyClient {
    fn fit(
        &mut self,
        _parameters: Vec<Array>,
        _config: &Config,
    ) -> Result<(Vec<Array>, u64, Config), AppError> {
        Ok((vec![dummy_model()?], 1, Config::new()))
    }

    fn evaluate(
        &mut self,
        _parameters: Vec<Array>,
        _config: &Config,
    ) -> Result<(f64, u64, Config), AppError> {
        Ok((
            0.0,
            1,
            Config::from([("accuracy".to_owned(), Scalar::Double(1.0))]),
        ))
    }
}

/// The template's `server_fn`: FedAvg from the dummy model.
#[derive(Clone, Copy, Debug, Default)]
pub struct NumpyServerApp;

impl ServerApp for NumpyServerApp {
    fn run<'a>(
        &'a mut self,
        grid: &'a mut Grid,
        context: &'a mut Context,
    ) -> BoxFuture<'a, Result<(), AppError>> {
        Box::pin(async move {
            let rounds = context
                .run_config
                .get("num-server-rounds")
                .and_then(Scalar::as_u64)
                .ok_or_else(|| AppError::with_type("KeyError", "num-server-rounds"))?;
            let mut strategy = FedAvg {
                initial_parameters: Some(vec![dummy_model()?]),
                ..FedAvg::default()
            };
            let outcome = strategy.run(grid, rounds).await?;
            for (round, loss) in &outcome.history.losses_distributed {
                tracing::info!("[HISTORY] round={round} eval_loss={loss}");
            }
            Ok(())
        })
    }
}
