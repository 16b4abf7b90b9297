//! [`NumPyClient`]: train/evaluate on a list of arrays, the way Flower's Python `NumPyClient`
//! does, and [`NumPyClientApp`], which turns it into a [`ClientApp`] speaking the legacy record
//! layout a Python strategy such as `FedAvg` sends and expects.

use crate::client::ClientApp;
use crate::compat::{
    Code, EvaluateIns, EvaluateRes, FitIns, FitRes, GetParametersIns, GetParametersRes,
    GetPropertiesIns, GetPropertiesRes, Status,
};
use crate::context::Context;
use crate::error::AppError;
use crate::message::{message_type, Message};
use crate::record::{Array, Config, RecordSet};

/// A client that trains and evaluates a model given as a list of arrays.
///
/// `get_properties` and `get_parameters` are optional: the defaults return `Ok(None)`, which
/// the adapter reports with the reference's "not implemented" status codes.
pub trait NumPyClient {
    /// The client's properties.
    ///
    /// # Errors
    ///
    /// Any [`AppError`]; it becomes an error reply.
    fn get_properties(&mut self, config: &Config) -> Result<Option<Config>, AppError> {
        let _ = config;
        Ok(None)
    }

    /// The client's current model (asked when the strategy has no initial parameters).
    ///
    /// # Errors
    ///
    /// Any [`AppError`]; it becomes an error reply.
    fn get_parameters(&mut self, config: &Config) -> Result<Option<Vec<Array>>, AppError> {
        let _ = config;
        Ok(None)
    }

    /// Trains `parameters` on local data; returns the new parameters, the number of training
    /// examples (the aggregation weight) and metrics.
    ///
    /// # Errors
    ///
    /// Any [`AppError`]; it becomes an error reply.
    fn fit(
        &mut self,
        parameters: Vec<Array>,
        config: &Config,
    ) -> Result<(Vec<Array>, u64, Config), AppError>;

    /// Evaluates `parameters` on local data; returns the loss, the number of evaluation
    /// examples and metrics.
    ///
    /// # Errors
    ///
    /// Any [`AppError`]; it becomes an error reply.
    fn evaluate(
        &mut self,
        parameters: Vec<Array>,
        config: &Config,
    ) -> Result<(f64, u64, Config), AppError>;
}

/// A [`ClientApp`] that builds a [`NumPyClient`] per message from the [`Context`] (like
/// Python's `client_fn(context)`) and dispatches on the message type.
pub struct NumPyClientApp<F> {
    client_fn: F,
}

impl<F> std::fmt::Debug for NumPyClientApp<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NumPyClientApp").finish_non_exhaustive()
    }
}

impl<C, F> NumPyClientApp<F>
where
    C: NumPyClient,
    F: FnMut(&Context) -> Result<C, AppError>,
{
    /// An app calling `client_fn` for each message.
    pub fn new(client_fn: F) -> Self {
        Self { client_fn }
    }
}

impl<C, F> ClientApp for NumPyClientApp<F>
where
    C: NumPyClient,
    F: FnMut(&Context) -> Result<C, AppError>,
{
    fn handle(&mut self, message: &Message, context: &mut Context) -> Result<RecordSet, AppError> {
        let mut client = (self.client_fn)(context)?;
        let content = message
            .content()
            .ok_or_else(|| AppError::with_type("ValueError", "the message carries no content"))?;
        match message.metadata.message_type.as_str() {
            message_type::TRAIN => {
                let ins = FitIns::from_record_set(content)?;
                let (parameters, num_examples, metrics) =
                    client.fit(ins.parameters, &ins.config)?;
                Ok(FitRes {
                    status: Status::success(),
                    parameters,
                    num_examples,
                    metrics,
                }
                .into_record_set())
            }
            message_type::EVALUATE => {
                let ins = EvaluateIns::from_record_set(content)?;
                let (loss, num_examples, metrics) = client.evaluate(ins.parameters, &ins.config)?;
                Ok(EvaluateRes {
                    status: Status::success(),
                    loss,
                    num_examples,
                    metrics,
                }
                .into_record_set())
            }
            message_type::GET_PARAMETERS => {
                let ins = GetParametersIns::from_record_set(content)?;
                let res = match client.get_parameters(&ins.config)? {
                    Some(parameters) => GetParametersRes {
                        status: Status::success(),
                        parameters,
                    },
                    None => GetParametersRes {
                        status: Status::not_implemented(
                            Code::GetParametersNotImplemented,
                            "get_parameters",
                        ),
                        parameters: Vec::new(),
                    },
                };
                Ok(res.into_record_set())
            }
            message_type::GET_PROPERTIES => {
                let ins = GetPropertiesIns::from_record_set(content)?;
                let res = match client.get_properties(&ins.config)? {
                    Some(properties) => GetPropertiesRes {
                        status: Status::success(),
                        properties,
                    },
                    None => GetPropertiesRes {
                        status: Status::not_implemented(
                            Code::GetPropertiesNotImplemented,
                            "get_properties",
                        ),
                        properties: Config::new(),
                    },
                };
                Ok(res.into_record_set())
            }
            other => Err(AppError::with_type(
                "ValueError",
                format!("Invalid message type: {other}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Metadata, Payload};
    use crate::record::Scalar;

    struct Doubler;

    impl NumPyClient for Doubler {
        fn fit(
            &mut self,
            parameters: Vec<Array>,
            _config: &Config,
        ) -> Result<(Vec<Array>, u64, Config), AppError> {
            let doubled = parameters
                .iter()
                .map(|p| {
                    let shape = p.npy_header()?.shape;
                    let values: Vec<f64> = p.to_f64()?.iter().map(|v| v * 2.0).collect();
                    Ok(Array::from_f64(&shape, &values)?)
                })
                .collect::<Result<Vec<_>, AppError>>()?;
            Ok((doubled, 3, Config::from([("k".into(), Scalar::Sint64(1))])))
        }

        fn evaluate(
            &mut self,
            _parameters: Vec<Array>,
            config: &Config,
        ) -> Result<(f64, u64, Config), AppError> {
            if config.contains_key("fail") {
                return Err("asked to fail".into());
            }
            Ok((0.5, 2, Config::new()))
        }
    }

    fn message(kind: &str, content: RecordSet) -> Message {
        Message {
            metadata: Metadata {
                message_type: kind.into(),
                ..Metadata::default()
            },
            payload: Payload::Content(content),
        }
    }

    #[test]
    fn fit_and_evaluate_use_the_legacy_layout() {
        let mut app = NumPyClientApp::new(|_: &Context| Ok(Doubler));
        let mut context = Context::default();
        let ins = FitIns {
            parameters: vec![Array::from_f64(&[1, 1], &[1.0]).expect("array")],
            config: Config::new(),
        };
        let reply = app
            .handle(&message("train", ins.into_record_set()), &mut context)
            .expect("fits");
        let res = FitRes::from_record_set(&reply).expect("fitres");
        assert_eq!(res.num_examples, 3);
        assert_eq!(res.parameters[0].to_f64().expect("f64"), vec![2.0]);

        let ins = EvaluateIns {
            parameters: Vec::new(),
            config: Config::new(),
        };
        let reply = app
            .handle(&message("evaluate", ins.into_record_set()), &mut context)
            .expect("evaluates");
        assert_eq!(EvaluateRes::from_record_set(&reply).expect("res").loss, 0.5);
    }

    #[test]
    fn optional_methods_report_not_implemented() {
        let mut app = NumPyClientApp::new(|_: &Context| Ok(Doubler));
        let reply = app
            .handle(
                &message(
                    "get_parameters",
                    GetParametersIns::default().into_record_set(),
                ),
                &mut Context::default(),
            )
            .expect("replies");
        let res = GetParametersRes::from_record_set(&reply).expect("res");
        assert_eq!(res.status.code, Code::GetParametersNotImplemented);
    }

    #[test]
    fn errors_carry_python_like_reasons() {
        let mut app = NumPyClientApp::new(|_: &Context| Ok(Doubler));
        let error = app
            .handle(&message("dance", RecordSet::new()), &mut Context::default())
            .expect_err("unknown type");
        assert_eq!(
            error.reason(),
            "<class 'ValueError'>:<'Invalid message type: dance'>"
        );
        let ins = EvaluateIns {
            parameters: Vec::new(),
            config: Config::from([("fail".into(), Scalar::Bool(true))]),
        };
        let error = app
            .handle(
                &message("evaluate", ins.into_record_set()),
                &mut Context::default(),
            )
            .expect_err("fails");
        assert_eq!(error.reason(), "<class 'AppError'>:<'asked to fail'>");
    }
}
