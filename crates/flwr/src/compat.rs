//! The legacy `FitIns`/`FitRes`/`EvaluateIns`/... layout inside a [`RecordSet`], as Flower's
//! Python `recordset_compat` module writes and reads it. A Python ServerApp running a strategy
//! such as `FedAvg` sends and expects exactly these records, and so does a Python
//! `NumPyClient`:
//!
//! | Type | Records (name → record kind: keys) |
//! |---|---|
//! | `FitIns` | `fitins.parameters` → parameters; `fitins.config` → configs |
//! | `FitRes` | `fitres.parameters` → parameters; `fitres.num_examples` → metrics: `num_examples`; `fitres.metrics` → configs; `fitres.status` → configs: `code`, `message` |
//! | `EvaluateIns` | `evaluateins.parameters`, `evaluateins.config` |
//! | `EvaluateRes` | `evaluateres.loss` → metrics: `loss`; `evaluateres.num_examples` → metrics: `num_examples`; `evaluateres.metrics` → configs; `evaluateres.status` |
//! | `GetParametersIns` | `getparametersins.config` |
//! | `GetParametersRes` | `getparametersres.parameters`, `getparametersres.status` |
//! | `GetPropertiesIns` | `getpropertiesins.config` |
//! | `GetPropertiesRes` | `getpropertiesres.properties` → configs; `getpropertiesres.status` |
//!
//! Arrays travel under keys `"0"`, `"1"`, ... with empty `dtype` and `shape` (the `.npy` bytes
//! carry both); no arrays at all is a single entry `"_empty"` with empty data. Integers are
//! written as `sint64` (Python `int`), floats as `double`.

use bytes::Bytes;

use crate::error::CompatError;
use crate::record::{
    Array, Config, ConfigsRecord, ConfigsRecordValue, MetricsRecord, MetricsRecordValue,
    ParametersRecord, RecordSet, Scalar,
};

/// Key of the placeholder entry of a parameters record without arrays.
pub const EMPTY_TENSOR_KEY: &str = "_empty";

/// Legacy client status codes (`flwr.common.Code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The client has no `get_properties`.
    GetPropertiesNotImplemented = 1,
    /// The client has no `get_parameters`.
    GetParametersNotImplemented = 2,
    /// The client has no `fit`.
    FitNotImplemented = 3,
    /// The client has no `evaluate`.
    EvaluateNotImplemented = 4,
}

impl TryFrom<i64> for Code {
    type Error = i64;

    fn try_from(code: i64) -> Result<Self, i64> {
        Ok(match code {
            0 => Self::Ok,
            1 => Self::GetPropertiesNotImplemented,
            2 => Self::GetParametersNotImplemented,
            3 => Self::FitNotImplemented,
            4 => Self::EvaluateNotImplemented,
            other => return Err(other),
        })
    }
}

/// Legacy result status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The code.
    pub code: Code,
    /// Human-readable message; `"Success"` for [`Code::Ok`].
    pub message: String,
}

impl Status {
    /// `Code::Ok`, `"Success"`, as Python's `NumPyClient` wrapper reports.
    pub fn success() -> Self {
        Self {
            code: Code::Ok,
            message: "Success".to_owned(),
        }
    }

    /// The status of a client without the method (`"Client does not implement `fit`"`).
    pub fn not_implemented(code: Code, method: &str) -> Self {
        Self {
            code,
            message: format!("Client does not implement `{method}`"),
        }
    }
}

/// Instructions to train.
#[derive(Clone, Debug, PartialEq)]
pub struct FitIns {
    /// The global model.
    pub parameters: Vec<Array>,
    /// Strategy-defined settings for this round.
    pub config: Config,
}

/// Training result.
#[derive(Clone, Debug, PartialEq)]
pub struct FitRes {
    /// Outcome.
    pub status: Status,
    /// The locally trained model.
    pub parameters: Vec<Array>,
    /// Number of training examples (the aggregation weight).
    pub num_examples: u64,
    /// Client metrics, e.g. `train_loss`.
    pub metrics: Config,
}

/// Instructions to evaluate.
#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateIns {
    /// The global model.
    pub parameters: Vec<Array>,
    /// Strategy-defined settings for this round.
    pub config: Config,
}

/// Evaluation result.
#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateRes {
    /// Outcome.
    pub status: Status,
    /// Loss on the local evaluation data.
    pub loss: f64,
    /// Number of evaluation examples (the aggregation weight).
    pub num_examples: u64,
    /// Client metrics, e.g. `accuracy`.
    pub metrics: Config,
}

/// Request for the client's current model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GetParametersIns {
    /// Strategy-defined settings.
    pub config: Config,
}

/// The client's current model.
#[derive(Clone, Debug, PartialEq)]
pub struct GetParametersRes {
    /// Outcome.
    pub status: Status,
    /// The model.
    pub parameters: Vec<Array>,
}

/// Request for client properties.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GetPropertiesIns {
    /// Strategy-defined settings.
    pub config: Config,
}

/// Client properties.
#[derive(Clone, Debug, PartialEq)]
pub struct GetPropertiesRes {
    /// Outcome.
    pub status: Status,
    /// The properties.
    pub properties: Config,
}

impl FitIns {
    /// The records a ServerApp sends for `train`.
    pub fn into_record_set(self) -> RecordSet {
        ins_record_set("fitins", self.parameters, self.config)
    }

    /// Reads `fitins.*`.
    ///
    /// # Errors
    ///
    /// [`CompatError`] if a record is missing or malformed.
    pub fn from_record_set(set: &RecordSet) -> Result<Self, CompatError> {
        let (parameters, config) = ins_from_record_set("fitins", set)?;
        Ok(Self { parameters, config })
    }
}

impl EvaluateIns {
    /// The records a ServerApp sends for `evaluate`.
    pub fn into_record_set(self) -> RecordSet {
        ins_record_set("evaluateins", self.parameters, self.config)
    }

    /// Reads `evaluateins.*`.
    ///
    /// # Errors
    ///
    /// [`CompatError`] if a record is missing or malformed.
    pub fn from_record_set(set: &RecordSet) -> Result<Self, CompatError> {
        let (parameters, config) = ins_from_record_set("evaluateins", set)?;
        Ok(Self { parameters, config })
    }
}

impl FitRes {
    /// The records a ClientApp replies to `train` with.
    pub fn into_record_set(self) -> RecordSet {
        let mut set = RecordSet::new();
        set.configs_records
            .insert("fitres.metrics".into(), configs_record(self.metrics));
        set.metrics_records.insert(
            "fitres.num_examples".into(),
            MetricsRecord::from([("num_examples".into(), python_int(self.num_examples))]),
        );
        set.parameters_records.insert(
            "fitres.parameters".into(),
            parameters_record(self.parameters, Array::NUMPY),
        );
        insert_status(&mut set, "fitres", self.status);
        set
    }

    /// Reads `fitres.*`.
    ///
    /// # Errors
    ///
    /// [`CompatError`] if a record is missing or malformed.
    pub fn from_record_set(set: &RecordSet) -> Result<Self, CompatError> {
        Ok(Self {
            parameters: parameters(set, "fitres.parameters")?,
            num_examples: num_examples(set, "fitres.num_examples")?,
            metrics: scalars(set, "fitres.metrics")?,
            status: status(set, "fitres.status")?,
        })
    }
}

impl EvaluateRes {
    /// The records a ClientApp replies to `evaluate` with.
    pub fn into_record_set(self) -> RecordSet {
        let mut set = RecordSet::new();
        set.metrics_records.insert(
            "evaluateres.loss".into(),
            MetricsRecord::from([("loss".into(), MetricsRecordValue::Double(self.loss))]),
        );
        set.metrics_records.insert(
            "evaluateres.num_examples".into(),
            MetricsRecord::from([("num_examples".into(), python_int(self.num_examples))]),
        );
        set.configs_records
            .insert("evaluateres.metrics".into(), configs_record(self.metrics));
        insert_status(&mut set, "evaluateres", self.status);
        set
    }

    /// Reads `evaluateres.*`.
    ///
    /// # Errors
    ///
    /// [`CompatError`] if a record is missing or malformed.
    pub fn from_record_set(set: &RecordSet) -> Result<Self, CompatError> {
        let loss = metric(set, "evaluateres.loss", "loss")?;
        let loss = loss.as_f64().ok_or_else(|| CompatError::WrongType {
            record: "evaluateres.loss".into(),
            key: "loss".into(),
            reason: "not a number".into(),
        })?;
        Ok(Self {
            loss,
            num_examples: num_examples(set, "evaluateres.num_examples")?,
            metrics: scalars(set, "evaluateres.metrics")?,
            status: status(set, "evaluateres.status")?,
        })
    }
}

impl GetParametersIns {
    /// The records a ServerApp sends for `get_parameters`.
    pub fn into_record_set(self) -> RecordSet {
        let mut set = RecordSet::new();
        set.configs_records.insert(
            "getparametersins.config".into(),
            configs_record(self.config),
        );
        set
    }

    /// Reads `getparametersins.config`.
    ///
    /// # Errors
    ///
    /// [`CompatError`] if the record is missing or malformed.
    pub fn from_record_set(set: &RecordSet) -> Result<Self, CompatError> {
        Ok(Self {
            config: scalars(set, "getparametersins.config")?,
        })
    }
}

impl GetParametersRes {
    /// The records a ClientApp replies to `get_parameters` with.
    pub fn into_record_set(self) -> RecordSet {
        let mut set = RecordSet::new();
        // A client without get_parameters answers with `Parameters(tensor_type="")`.
        let tensor_type = if self.status.code == Code::Ok {
            Array::NUMPY
        } else {
            ""
        };
        set.parameters_records.insert(
            "getparametersres.parameters".into(),
            parameters_record(self.parameters, tensor_type),
        );
        insert_status(&mut set, "getparametersres", self.status);
        set
    }

    /// Reads `getparametersres.*`.
    ///
    /// # Errors
    ///
    /// [`CompatError`] if a record is missing or malformed.
    pub fn from_record_set(set: &RecordSet) -> Result<Self, CompatError> {
        Ok(Self {
            parameters: parameters(set, "getparametersres.parameters")?,
            status: status(set, "getparametersres.status")?,
        })
    }
}

impl GetPropertiesIns {
    /// The records a ServerApp sends for `get_properties`.
    pub fn into_record_set(self) -> RecordSet {
        let mut set = RecordSet::new();
        set.configs_records.insert(
            "getpropertiesins.config".into(),
            configs_record(self.config),
        );
        set
    }

    /// Reads `getpropertiesins.config`.
    ///
    /// # Errors
    ///
    /// [`CompatError`] if the record is missing or malformed.
    pub fn from_record_set(set: &RecordSet) -> Result<Self, CompatError> {
        Ok(Self {
            config: scalars(set, "getpropertiesins.config")?,
        })
    }
}

impl GetPropertiesRes {
    /// The records a ClientApp replies to `get_properties` with.
    pub fn into_record_set(self) -> RecordSet {
        let mut set = RecordSet::new();
        set.configs_records.insert(
            "getpropertiesres.properties".into(),
            configs_record(self.properties),
        );
        insert_status(&mut set, "getpropertiesres", self.status);
        set
    }

    /// Reads `getpropertiesres.*`.
    ///
    /// # Errors
    ///
    /// [`CompatError`] if a record is missing or malformed.
    pub fn from_record_set(set: &RecordSet) -> Result<Self, CompatError> {
        Ok(Self {
            properties: scalars(set, "getpropertiesres.properties")?,
            status: status(set, "getpropertiesres.status")?,
        })
    }
}

/// Arrays as the legacy `Parameters` conversion stores them: keys `"0"`, `"1"`, ..., empty
/// dtype and shape, and a single `"_empty"` entry (stype `tensor_type`) when there are none.
pub fn parameters_record(arrays: Vec<Array>, tensor_type: &str) -> ParametersRecord {
    if arrays.is_empty() {
        let placeholder = Array {
            dtype: String::new(),
            shape: Vec::new(),
            stype: tensor_type.to_owned(),
            data: Bytes::new(),
        };
        return ParametersRecord::from_iter([(EMPTY_TENSOR_KEY, placeholder)]);
    }
    arrays
        .into_iter()
        .enumerate()
        .map(|(index, array)| (index.to_string(), array.into_legacy()))
        .collect()
}

/// The arrays of a legacy parameters record in order, without the `"_empty"` placeholder.
pub fn arrays(record: &ParametersRecord) -> Vec<Array> {
    record
        .iter()
        .filter(|(key, _)| *key != EMPTY_TENSOR_KEY)
        .map(|(_, array)| array.clone())
        .collect()
}

fn ins_record_set(prefix: &str, parameters: Vec<Array>, config: Config) -> RecordSet {
    let mut set = RecordSet::new();
    set.parameters_records.insert(
        format!("{prefix}.parameters"),
        parameters_record(parameters, Array::NUMPY),
    );
    set.configs_records
        .insert(format!("{prefix}.config"), configs_record(config));
    set
}

fn ins_from_record_set(prefix: &str, set: &RecordSet) -> Result<(Vec<Array>, Config), CompatError> {
    let parameters = parameters(set, &format!("{prefix}.parameters"))?;
    let config = scalars(set, &format!("{prefix}.config"))?;
    Ok((parameters, config))
}

fn configs_record(config: Config) -> ConfigsRecord {
    config.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// A Python `int`: `sint64` unless it does not fit.
fn python_int(value: u64) -> MetricsRecordValue {
    i64::try_from(value).map_or(
        MetricsRecordValue::Uint64(value),
        MetricsRecordValue::Sint64,
    )
}

fn insert_status(set: &mut RecordSet, prefix: &str, status: Status) {
    set.configs_records.insert(
        format!("{prefix}.status"),
        ConfigsRecord::from([
            (
                "code".into(),
                ConfigsRecordValue::Sint64(status.code as i64),
            ),
            ("message".into(), ConfigsRecordValue::String(status.message)),
        ]),
    );
}

fn parameters(set: &RecordSet, name: &str) -> Result<Vec<Array>, CompatError> {
    let record = set
        .parameters_records
        .get(name)
        .ok_or_else(|| CompatError::MissingRecord(name.to_owned()))?;
    Ok(arrays(record))
}

fn scalars(set: &RecordSet, name: &str) -> Result<Config, CompatError> {
    let record = set
        .configs_records
        .get(name)
        .ok_or_else(|| CompatError::MissingRecord(name.to_owned()))?;
    record
        .iter()
        .map(|(key, value)| {
            let scalar = value.to_scalar().ok_or_else(|| CompatError::WrongType {
                record: name.to_owned(),
                key: key.clone(),
                reason: "lists are not allowed in the legacy layout".into(),
            })?;
            Ok((key.clone(), scalar))
        })
        .collect()
}

fn metric<'a>(
    set: &'a RecordSet,
    name: &str,
    key: &str,
) -> Result<&'a MetricsRecordValue, CompatError> {
    set.metrics_records
        .get(name)
        .ok_or_else(|| CompatError::MissingRecord(name.to_owned()))?
        .get(key)
        .ok_or_else(|| CompatError::MissingKey {
            record: name.to_owned(),
            key: key.to_owned(),
        })
}

fn num_examples(set: &RecordSet, name: &str) -> Result<u64, CompatError> {
    metric(set, name, "num_examples")?
        .as_u64()
        .ok_or_else(|| CompatError::WrongType {
            record: name.to_owned(),
            key: "num_examples".into(),
            reason: "not a non-negative integer".into(),
        })
}

fn status(set: &RecordSet, name: &str) -> Result<Status, CompatError> {
    let record = set
        .configs_records
        .get(name)
        .ok_or_else(|| CompatError::MissingRecord(name.to_owned()))?;
    let wrong = |key: &str, reason: &str| CompatError::WrongType {
        record: name.to_owned(),
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    let missing = |key: &str| CompatError::MissingKey {
        record: name.to_owned(),
        key: key.to_owned(),
    };
    let code = match record.get("code").ok_or_else(|| missing("code"))? {
        ConfigsRecordValue::Sint64(code) => *code,
        ConfigsRecordValue::Uint64(code) => i64::try_from(*code).unwrap_or(i64::MAX),
        _ => return Err(wrong("code", "not an integer")),
    };
    let code = Code::try_from(code).map_err(|c| wrong("code", &format!("unknown code {c}")))?;
    let message = match record.get("message").ok_or_else(|| missing("message"))? {
        ConfigsRecordValue::String(message) => message.clone(),
        other => other
            .to_scalar()
            .map(|s| format!("{s:?}"))
            .ok_or_else(|| wrong("message", "not a string"))?,
    };
    Ok(Status { code, message })
}

/// The metric value as a [`Scalar`] when it is a single number.
pub fn metric_scalar(value: &MetricsRecordValue) -> Option<Scalar> {
    match *value {
        MetricsRecordValue::Double(v) => Some(Scalar::Double(v)),
        MetricsRecordValue::Sint64(v) => Some(Scalar::Sint64(v)),
        MetricsRecordValue::Uint64(v) => Some(Scalar::Uint64(v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Vec<Array> {
        vec![
            Array::from_f64(&[1, 1], &[1.0]).expect("array"),
            Array::from_f32(&[2], &[0.5, 0.25]).expect("array"),
        ]
    }

    #[test]
    fn fit_ins_layout() {
        let config = Config::from([("lr".into(), Scalar::Double(0.1))]);
        let set = FitIns {
            parameters: model(),
            config: config.clone(),
        }
        .into_record_set();
        let record = &set.parameters_records["fitins.parameters"];
        assert_eq!(record.keys().collect::<Vec<_>>(), ["0", "1"]);
        let first = record.get("0").expect("0");
        assert_eq!((first.dtype.as_str(), first.shape.len()), ("", 0));
        assert_eq!(first.stype, Array::NUMPY);
        assert_eq!(first.to_f64().expect("decodes"), vec![1.0]);
        assert_eq!(
            set.configs_records["fitins.config"]["lr"],
            ConfigsRecordValue::Double(0.1)
        );
        let back = FitIns::from_record_set(&set).expect("reads");
        assert_eq!(back.config, config);
        assert_eq!(back.parameters.len(), 2);
    }

    #[test]
    fn fit_res_layout() {
        let set = FitRes {
            status: Status::success(),
            parameters: model(),
            num_examples: 10,
            metrics: Config::from([("train_loss".into(), Scalar::Double(0.3))]),
        }
        .into_record_set();
        assert_eq!(
            set.metrics_records["fitres.num_examples"]["num_examples"],
            MetricsRecordValue::Sint64(10)
        );
        assert_eq!(
            set.configs_records["fitres.status"]["code"],
            ConfigsRecordValue::Sint64(0)
        );
        assert_eq!(
            set.configs_records["fitres.status"]["message"],
            ConfigsRecordValue::String("Success".into())
        );
        let back = FitRes::from_record_set(&set).expect("reads");
        assert_eq!(back.num_examples, 10);
        assert_eq!(back.metrics["train_loss"], Scalar::Double(0.3));
        assert_eq!(back.status.code, Code::Ok);
    }

    #[test]
    fn evaluate_res_layout() {
        let set = EvaluateRes {
            status: Status::success(),
            loss: 0.0,
            num_examples: 1,
            metrics: Config::from([("accuracy".into(), Scalar::Double(1.0))]),
        }
        .into_record_set();
        assert_eq!(
            set.metrics_records["evaluateres.loss"]["loss"],
            MetricsRecordValue::Double(0.0)
        );
        assert!(set.parameters_records.is_empty());
        let back = EvaluateRes::from_record_set(&set).expect("reads");
        assert_eq!(back.loss, 0.0);
        assert_eq!(back.metrics["accuracy"], Scalar::Double(1.0));
    }

    #[test]
    fn no_arrays_is_the_empty_placeholder() {
        let set = GetParametersRes {
            status: Status::not_implemented(Code::GetParametersNotImplemented, "get_parameters"),
            parameters: Vec::new(),
        }
        .into_record_set();
        let record = &set.parameters_records["getparametersres.parameters"];
        assert_eq!(record.keys().collect::<Vec<_>>(), [EMPTY_TENSOR_KEY]);
        assert_eq!(
            record.get(EMPTY_TENSOR_KEY).map(|a| a.stype.as_str()),
            Some("")
        );
        let back = GetParametersRes::from_record_set(&set).expect("reads");
        assert!(back.parameters.is_empty());
        assert_eq!(
            back.status.message,
            "Client does not implement `get_parameters`"
        );
    }

    #[test]
    fn malformed_layouts_are_errors() {
        assert!(matches!(
            FitIns::from_record_set(&RecordSet::new()),
            Err(CompatError::MissingRecord(name)) if name == "fitins.parameters"
        ));
        let mut set = FitRes {
            status: Status::success(),
            parameters: model(),
            num_examples: 1,
            metrics: Config::new(),
        }
        .into_record_set();
        set.metrics_records
            .get_mut("fitres.num_examples")
            .expect("record")
            .insert("num_examples".into(), MetricsRecordValue::Sint64(-1));
        assert!(matches!(
            FitRes::from_record_set(&set),
            Err(CompatError::WrongType { .. })
        ));
        let mut listy = FitIns {
            parameters: Vec::new(),
            config: Config::new(),
        }
        .into_record_set();
        listy
            .configs_records
            .get_mut("fitins.config")
            .expect("record")
            .insert("l".into(), vec![1i64].into());
        assert!(FitIns::from_record_set(&listy).is_err());
    }
}
