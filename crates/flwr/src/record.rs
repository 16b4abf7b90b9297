//! The content of a message: a [`RecordSet`] of named [`ParametersRecord`]s (arrays),
//! [`MetricsRecord`]s (numbers) and [`ConfigsRecord`]s (numbers, strings, bytes, flags), plus
//! the [`Scalar`] values of user configuration.
//!
//! The value enums mirror the protobuf oneofs member for member, so nothing is lost in either
//! direction. Conversions from `flwr_proto` are `TryFrom` and fail with [`ConversionError`] on
//! malformed input; conversions into `flwr_proto` are infallible `From`s.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use flwr_proto as proto;

use crate::error::ConversionError;
use crate::npy::{self, Header, NpyError};

/// A user-configuration value (`node_config`, `run_config`) and a value of the legacy
/// `fit`/`evaluate` config and metrics dictionaries: Python's `bool | bytes | float | int | str`.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// `bool`.
    Bool(bool),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `float`.
    Double(f64),
    /// `int` that fits in an `i64` (how Python writes every `int` here).
    Sint64(i64),
    /// `str`.
    String(String),
    /// `int` above `i64::MAX`.
    Uint64(u64),
}

impl Scalar {
    /// The value as a float: doubles as they are, integers converted.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Double(v) => Some(v),
            // Deliberately lossy above 2^53, as in Python's float(int).
            #[allow(clippy::cast_precision_loss)] // see comment above
            Self::Sint64(v) => Some(v as f64),
            #[allow(clippy::cast_precision_loss)] // see comment above
            Self::Uint64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::Sint64(v) => Some(v),
            Self::Uint64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Sint64(v) => u64::try_from(v).ok(),
            Self::Uint64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(v) => Some(v),
            _ => None,
        }
    }

    /// The flag, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }
}

macro_rules! impl_from {
    ($target:ident { $($source:ty => $variant:ident),* $(,)? }) => {
        $(impl From<$source> for $target {
            fn from(value: $source) -> Self {
                Self::$variant(value.into())
            }
        })*
    };
}

impl_from!(Scalar {
    bool => Bool,
    Vec<u8> => Bytes,
    f64 => Double,
    i64 => Sint64,
    u64 => Uint64,
    String => String,
    &str => String,
});

/// Legacy config and metrics dictionaries (`FitIns.config`, `FitRes.metrics`, ...) and user
/// configuration (`node_config`, `run_config`): string keys to [`Scalar`]s.
pub type Config = BTreeMap<String, Scalar>;

/// An n-dimensional array as Flower transports it: a type tag, a shape and opaque bytes.
///
/// Arrays that Flower's Python side makes from NumPy have `stype` [`Array::NUMPY`] and `data`
/// holding the complete `.npy` file (see [`crate::npy`]). The `dtype`/`shape` fields are
/// descriptive only: the legacy layout of `recordset_compat` leaves them empty (`""`, `[]`),
/// so readers here always take dtype and shape from the `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Array {
    /// NumPy dtype name, e.g. `"float32"`; may be empty.
    pub dtype: String,
    /// Dimensions; may be empty even for non-scalar data.
    pub shape: Vec<i32>,
    /// Serialisation type of `data`, e.g. [`Array::NUMPY`].
    pub stype: String,
    /// The serialised array (shared, not copied, when the record is cloned or sent).
    pub data: Bytes,
}

impl Array {
    /// The `stype` of `.npy` payloads.
    pub const NUMPY: &'static str = "numpy.ndarray";

    /// A C-ordered `float32` array of `shape`, serialised like `numpy.save`.
    ///
    /// # Errors
    ///
    /// [`NpyError::ShapeMismatch`] if `values` does not fill `shape`; [`NpyError::TooLarge`] if
    /// a dimension does not fit the protocol's `int32`.
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Result<Self, NpyError> {
        Ok(Self {
            dtype: npy::Dtype::Float32.name().to_owned(),
            shape: proto_shape(shape)?,
            stype: Self::NUMPY.to_owned(),
            data: npy::encode_f32(shape, values)?.into(),
        })
    }

    /// A C-ordered `float64` array of `shape`, serialised like `numpy.save`.
    ///
    /// # Errors
    ///
    /// As [`Array::from_f32`].
    pub fn from_f64(shape: &[usize], values: &[f64]) -> Result<Self, NpyError> {
        Ok(Self {
            dtype: npy::Dtype::Float64.name().to_owned(),
            shape: proto_shape(shape)?,
            stype: Self::NUMPY.to_owned(),
            data: npy::encode_f64(shape, values)?.into(),
        })
    }

    /// The header of the `.npy` payload (dtype, order and shape as stored).
    ///
    /// # Errors
    ///
    /// [`NpyError::NotNumpy`] if `stype` is not [`Array::NUMPY`], else as [`npy::parse`].
    pub fn npy_header(&self) -> Result<Header, NpyError> {
        self.check_numpy()?;
        Ok(npy::parse(&self.data)?.0)
    }

    /// The values in C order, widening `float32` data.
    ///
    /// # Errors
    ///
    /// [`NpyError::NotNumpy`], or any decoding error of [`npy::decode_f64`].
    pub fn to_f64(&self) -> Result<Vec<f64>, NpyError> {
        self.check_numpy()?;
        Ok(npy::decode_f64(&self.data)?.1)
    }

    /// The values in C order of a `float32` array.
    ///
    /// # Errors
    ///
    /// [`NpyError::NotNumpy`], or any decoding error of [`npy::decode_f32`] (including
    /// [`NpyError::WrongDtype`] for `float64` data).
    pub fn to_f32(&self) -> Result<Vec<f32>, NpyError> {
        self.check_numpy()?;
        Ok(npy::decode_f32(&self.data)?.1)
    }

    /// This array with `dtype` and `shape` cleared, as the legacy `Parameters` conversion of
    /// Flower's Python side produces them.
    #[must_use]
    pub fn into_legacy(self) -> Self {
        Self {
            dtype: String::new(),
            shape: Vec::new(),
            ..self
        }
    }

    fn check_numpy(&self) -> Result<(), NpyError> {
        if self.stype == Self::NUMPY {
            return Ok(());
        }
        Err(NpyError::NotNumpy(self.stype.clone()))
    }
}

fn proto_shape(shape: &[usize]) -> Result<Vec<i32>, NpyError> {
    shape
        .iter()
        .map(|&dim| i32::try_from(dim).map_err(|_| NpyError::TooLarge))
        .collect()
}

/// Named arrays in insertion order (a model's layers); keys are unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParametersRecord {
    entries: Vec<(String, Array)>,
}

impl ParametersRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts or replaces `key`. A replaced key keeps its position, like a Python dict.
    pub fn insert(&mut self, key: impl Into<String>, array: Array) -> Option<Array> {
        let key = key.into();
        if let Some((_, slot)) = self.entries.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(slot, array));
        }
        self.entries.push((key, array));
        None
    }

    /// The array stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Array> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, a)| a)
    }

    /// Keys and arrays in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Array)> {
        self.entries.iter().map(|(k, a)| (k.as_str(), a))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Arrays in order.
    pub fn values(&self) -> impl Iterator<Item = &Array> {
        self.entries.iter().map(|(_, a)| a)
    }

    /// Number of arrays.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no arrays.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl IntoIterator for ParametersRecord {
    type Item = (String, Array);
    type IntoIter = std::vec::IntoIter<(String, Array)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<K: Into<String>> FromIterator<(K, Array)> for ParametersRecord {
    fn from_iter<I: IntoIterator<Item = (K, Array)>>(iter: I) -> Self {
        let mut record = Self::new();
        for (key, array) in iter {
            record.insert(key, array);
        }
        record
    }
}

/// A value of a [`MetricsRecord`]: numbers and lists of numbers.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricsRecordValue {
    /// `float`.
    Double(f64),
    /// `list[float]`.
    DoubleList(Vec<f64>),
    /// `int`.
    Sint64(i64),
    /// `list[int]`.
    SintList(Vec<i64>),
    /// `int` above `i64::MAX`.
    Uint64(u64),
    /// `list[int]` with an element above `i64::MAX`.
    UintList(Vec<u64>),
}

impl MetricsRecordValue {
    /// The value as a float, if it is a single number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::Double(v) => Some(v),
            #[allow(clippy::cast_precision_loss)] // as Python's float(int)
            Self::Sint64(v) => Some(v as f64),
            #[allow(clippy::cast_precision_loss)] // as Python's float(int)
            Self::Uint64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::Sint64(v) => u64::try_from(v).ok(),
            Self::Uint64(v) => Some(v),
            _ => None,
        }
    }
}

impl_from!(MetricsRecordValue {
    f64 => Double,
    Vec<f64> => DoubleList,
    i64 => Sint64,
    Vec<i64> => SintList,
    u64 => Uint64,
    Vec<u64> => UintList,
});

/// A value of a [`ConfigsRecord`]: scalars of every kind and homogeneous lists of them.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigsRecordValue {
    /// `bool`.
    Bool(bool),
    /// `list[bool]`; also what Python writes for an empty list.
    BoolList(Vec<bool>),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// `list[bytes]`.
    BytesList(Vec<Vec<u8>>),
    /// `float`.
    Double(f64),
    /// `list[float]`.
    DoubleList(Vec<f64>),
    /// `int`.
    Sint64(i64),
    /// `list[int]`.
    SintList(Vec<i64>),
    /// `str`.
    String(String),
    /// `list[str]`.
    StringList(Vec<String>),
    /// `int` above `i64::MAX`.
    Uint64(u64),
    /// `list[int]` with an element above `i64::MAX`.
    UintList(Vec<u64>),
}

impl ConfigsRecordValue {
    /// The value as a [`Scalar`], if it is not a list.
    pub fn to_scalar(&self) -> Option<Scalar> {
        Some(match self {
            Self::Bool(v) => Scalar::Bool(*v),
            Self::Bytes(v) => Scalar::Bytes(v.clone()),
            Self::Double(v) => Scalar::Double(*v),
            Self::Sint64(v) => Scalar::Sint64(*v),
            Self::String(v) => Scalar::String(v.clone()),
            Self::Uint64(v) => Scalar::Uint64(*v),
            _ => return None,
        })
    }
}

impl From<Scalar> for ConfigsRecordValue {
    fn from(value: Scalar) -> Self {
        match value {
            Scalar::Bool(v) => Self::Bool(v),
            Scalar::Bytes(v) => Self::Bytes(v),
            Scalar::Double(v) => Self::Double(v),
            Scalar::Sint64(v) => Self::Sint64(v),
            Scalar::String(v) => Self::String(v),
            Scalar::Uint64(v) => Self::Uint64(v),
        }
    }
}

impl_from!(ConfigsRecordValue {
    bool => Bool,
    Vec<bool> => BoolList,
    Vec<u8> => Bytes,
    Vec<Vec<u8>> => BytesList,
    f64 => Double,
    Vec<f64> => DoubleList,
    i64 => Sint64,
    Vec<i64> => SintList,
    String => String,
    &str => String,
    Vec<String> => StringList,
    u64 => Uint64,
    Vec<u64> => UintList,
});

/// Named numbers (losses, accuracies, example counts).
pub type MetricsRecord = BTreeMap<String, MetricsRecordValue>;

/// Named configuration values.
pub type ConfigsRecord = BTreeMap<String, ConfigsRecordValue>;

/// The content of a [`Message`](crate::Message) and the persistent state of a
/// [`Context`](crate::Context).
///
/// Map order carries no meaning on the wire (Python's upb backend writes hash order), so the
/// maps here are sorted for determinism.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordSet {
    /// Array records by name.
    pub parameters_records: BTreeMap<String, ParametersRecord>,
    /// Metrics records by name.
    pub metrics_records: BTreeMap<String, MetricsRecord>,
    /// Configs records by name.
    pub configs_records: BTreeMap<String, ConfigsRecord>,
}

impl RecordSet {
    /// An empty record set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether all three maps are empty.
    pub fn is_empty(&self) -> bool {
        self.parameters_records.is_empty()
            && self.metrics_records.is_empty()
            && self.configs_records.is_empty()
    }
}

// ---- proto conversions ---------------------------------------------------------------------

impl From<Scalar> for proto::Scalar {
    fn from(value: Scalar) -> Self {
        use proto::scalar::Scalar as P;
        let scalar = match value {
            Scalar::Bool(v) => P::Bool(v),
            Scalar::Bytes(v) => P::Bytes(v),
            Scalar::Double(v) => P::Double(v),
            Scalar::Sint64(v) => P::Sint64(v),
            Scalar::String(v) => P::String(v),
            Scalar::Uint64(v) => P::Uint64(v),
        };
        Self {
            scalar: Some(scalar),
        }
    }
}

impl TryFrom<proto::Scalar> for Scalar {
    type Error = ConversionError;

    fn try_from(value: proto::Scalar) -> Result<Self, Self::Error> {
        use proto::scalar::Scalar as P;
        Ok(match value.scalar {
            Some(P::Bool(v)) => Self::Bool(v),
            Some(P::Bytes(v)) => Self::Bytes(v),
            Some(P::Double(v)) => Self::Double(v),
            Some(P::Sint64(v)) => Self::Sint64(v),
            Some(P::String(v)) => Self::String(v),
            Some(P::Uint64(v)) => Self::Uint64(v),
            None => return Err(ConversionError::EmptyValue("Scalar".into())),
        })
    }
}

/// User configuration from its wire form.
///
/// # Errors
///
/// [`ConversionError::EmptyValue`] naming the key of a value without a oneof member.
pub fn config_from_proto(map: HashMap<String, proto::Scalar>) -> Result<Config, ConversionError> {
    map.into_iter()
        .map(|(key, value)| {
            let value =
                Scalar::try_from(value).map_err(|_| ConversionError::EmptyValue(key.clone()))?;
            Ok((key, value))
        })
        .collect()
}

/// User configuration in its wire form.
pub fn config_to_proto(config: Config) -> HashMap<String, proto::Scalar> {
    config.into_iter().map(|(k, v)| (k, v.into())).collect()
}

impl From<Array> for proto::Array {
    fn from(array: Array) -> Self {
        Self {
            dtype: array.dtype,
            shape: array.shape,
            stype: array.stype,
            data: array.data,
        }
    }
}

impl TryFrom<proto::Array> for Array {
    type Error = ConversionError;

    fn try_from(array: proto::Array) -> Result<Self, Self::Error> {
        if array.shape.iter().any(|&dim| dim < 0) {
            return Err(ConversionError::NegativeDimension(array.shape));
        }
        Ok(Self {
            dtype: array.dtype,
            shape: array.shape,
            stype: array.stype,
            data: array.data,
        })
    }
}

impl From<ParametersRecord> for proto::ParametersRecord {
    fn from(record: ParametersRecord) -> Self {
        let (data_keys, data_values) = record
            .entries
            .into_iter()
            .map(|(key, array)| (key, proto::Array::from(array)))
            .unzip();
        Self {
            data_keys,
            data_values,
        }
    }
}

impl TryFrom<proto::ParametersRecord> for ParametersRecord {
    type Error = ConversionError;

    /// Pairs `data_keys` with `data_values`. A repeated key keeps its first position and its
    /// last array, as Python's `OrderedDict(zip(keys, values))` does.
    fn try_from(record: proto::ParametersRecord) -> Result<Self, Self::Error> {
        if record.data_keys.len() != record.data_values.len() {
            return Err(ConversionError::ParametersLength {
                keys: record.data_keys.len(),
                values: record.data_values.len(),
            });
        }
        let mut out = Self::new();
        for (key, array) in record.data_keys.into_iter().zip(record.data_values) {
            out.insert(key, Array::try_from(array)?);
        }
        Ok(out)
    }
}

impl From<MetricsRecordValue> for proto::MetricsRecordValue {
    fn from(value: MetricsRecordValue) -> Self {
        use proto::metrics_record_value::Value as P;
        use MetricsRecordValue as V;
        let value = match value {
            V::Double(v) => P::Double(v),
            V::DoubleList(vals) => P::DoubleList(proto::DoubleList { vals }),
            V::Sint64(v) => P::Sint64(v),
            V::SintList(vals) => P::SintList(proto::SintList { vals }),
            V::Uint64(v) => P::Uint64(v),
            V::UintList(vals) => P::UintList(proto::UintList { vals }),
        };
        Self { value: Some(value) }
    }
}

impl TryFrom<proto::MetricsRecordValue> for MetricsRecordValue {
    type Error = ConversionError;

    fn try_from(value: proto::MetricsRecordValue) -> Result<Self, Self::Error> {
        use proto::metrics_record_value::Value as P;
        Ok(match value.value {
            Some(P::Double(v)) => Self::Double(v),
            Some(P::DoubleList(l)) => Self::DoubleList(l.vals),
            Some(P::Sint64(v)) => Self::Sint64(v),
            Some(P::SintList(l)) => Self::SintList(l.vals),
            Some(P::Uint64(v)) => Self::Uint64(v),
            Some(P::UintList(l)) => Self::UintList(l.vals),
            None => return Err(ConversionError::EmptyValue("MetricsRecordValue".into())),
        })
    }
}

impl From<ConfigsRecordValue> for proto::ConfigsRecordValue {
    fn from(value: ConfigsRecordValue) -> Self {
        use proto::configs_record_value::Value as P;
        use ConfigsRecordValue as V;
        let value = match value {
            V::Bool(v) => P::Bool(v),
            V::BoolList(vals) => P::BoolList(proto::BoolList { vals }),
            V::Bytes(v) => P::Bytes(v),
            V::BytesList(vals) => P::BytesList(proto::BytesList { vals }),
            V::Double(v) => P::Double(v),
            V::DoubleList(vals) => P::DoubleList(proto::DoubleList { vals }),
            V::Sint64(v) => P::Sint64(v),
            V::SintList(vals) => P::SintList(proto::SintList { vals }),
            V::String(v) => P::String(v),
            V::StringList(vals) => P::StringList(proto::StringList { vals }),
            V::Uint64(v) => P::Uint64(v),
            V::UintList(vals) => P::UintList(proto::UintList { vals }),
        };
        Self { value: Some(value) }
    }
}

impl TryFrom<proto::ConfigsRecordValue> for ConfigsRecordValue {
    type Error = ConversionError;

    fn try_from(value: proto::ConfigsRecordValue) -> Result<Self, Self::Error> {
        use proto::configs_record_value::Value as P;
        Ok(match value.value {
            Some(P::Bool(v)) => Self::Bool(v),
            Some(P::BoolList(l)) => Self::BoolList(l.vals),
            Some(P::Bytes(v)) => Self::Bytes(v),
            Some(P::BytesList(l)) => Self::BytesList(l.vals),
            Some(P::Double(v)) => Self::Double(v),
            Some(P::DoubleList(l)) => Self::DoubleList(l.vals),
            Some(P::Sint64(v)) => Self::Sint64(v),
            Some(P::SintList(l)) => Self::SintList(l.vals),
            Some(P::String(v)) => Self::String(v),
            Some(P::StringList(l)) => Self::StringList(l.vals),
            Some(P::Uint64(v)) => Self::Uint64(v),
            Some(P::UintList(l)) => Self::UintList(l.vals),
            None => return Err(ConversionError::EmptyValue("ConfigsRecordValue".into())),
        })
    }
}

/// Converts every value of a map, naming the offending key in an error.
fn map_values<V, W>(
    map: HashMap<String, V>,
    what: &str,
) -> Result<BTreeMap<String, W>, ConversionError>
where
    W: TryFrom<V, Error = ConversionError>,
{
    map.into_iter()
        .map(|(key, value)| match W::try_from(value) {
            Ok(value) => Ok((key, value)),
            Err(ConversionError::EmptyValue(_)) => {
                Err(ConversionError::EmptyValue(format!("{what}[{key:?}]")))
            }
            Err(other) => Err(other),
        })
        .collect()
}

impl From<RecordSet> for proto::RecordSet {
    fn from(set: RecordSet) -> Self {
        Self {
            parameters: set
                .parameters_records
                .into_iter()
                .map(|(k, r)| (k, r.into()))
                .collect(),
            metrics: set
                .metrics_records
                .into_iter()
                .map(|(k, r)| {
                    let data = r.into_iter().map(|(k, v)| (k, v.into())).collect();
                    (k, proto::MetricsRecord { data })
                })
                .collect(),
            configs: set
                .configs_records
                .into_iter()
                .map(|(k, r)| {
                    let data = r.into_iter().map(|(k, v)| (k, v.into())).collect();
                    (k, proto::ConfigsRecord { data })
                })
                .collect(),
        }
    }
}

impl TryFrom<proto::RecordSet> for RecordSet {
    type Error = ConversionError;

    fn try_from(set: proto::RecordSet) -> Result<Self, Self::Error> {
        let parameters_records = set
            .parameters
            .into_iter()
            .map(|(k, r)| Ok((k, ParametersRecord::try_from(r)?)))
            .collect::<Result<_, ConversionError>>()?;
        let metrics_records = set
            .metrics
            .into_iter()
            .map(|(k, r)| {
                let record = map_values(r.data, &k)?;
                Ok((k, record))
            })
            .collect::<Result<_, ConversionError>>()?;
        let configs_records = set
            .configs
            .into_iter()
            .map(|(k, r)| {
                let record = map_values(r.data, &k)?;
                Ok((k, record))
            })
            .collect::<Result<_, ConversionError>>()?;
        Ok(Self {
            parameters_records,
            metrics_records,
            configs_records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordSet {
        let mut set = RecordSet::new();
        let mut params = ParametersRecord::new();
        params.insert("b", Array::from_f32(&[2], &[1.0, 2.0]).expect("array"));
        params.insert("a", Array::from_f64(&[], &[3.0]).expect("array"));
        set.parameters_records.insert("model".into(), params);
        set.metrics_records.insert(
            "m".into(),
            MetricsRecord::from([
                ("loss".into(), 0.5.into()),
                ("n".into(), 7i64.into()),
                ("big".into(), u64::MAX.into()),
                ("l".into(), vec![1.0, 2.0].into()),
                ("il".into(), vec![-1i64].into()),
                ("ul".into(), vec![u64::MAX].into()),
            ]),
        );
        set.configs_records.insert(
            "c".into(),
            ConfigsRecord::from([
                ("s".into(), "x".into()),
                ("f".into(), false.into()),
                ("b".into(), vec![0u8, 1].into()),
                ("e".into(), Vec::<bool>::new().into()),
                ("sl".into(), vec!["a".to_owned()].into()),
                ("bl".into(), vec![vec![9u8]].into()),
                ("z".into(), 0i64.into()),
            ]),
        );
        set
    }

    #[test]
    fn record_set_round_trips_through_proto() {
        let set = sample();
        let wire = proto::RecordSet::from(set.clone());
        assert_eq!(
            wire.parameters["model"].data_keys,
            vec!["b".to_owned(), "a".to_owned()],
            "array order is kept"
        );
        let back = RecordSet::try_from(wire).expect("converts");
        assert_eq!(back, set);
    }

    #[test]
    fn prost_bytes_round_trip() {
        use prost::Message as _;
        let bytes = proto::RecordSet::from(sample()).encode_to_vec();
        let decoded = proto::RecordSet::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(RecordSet::try_from(decoded).expect("converts"), sample());
    }

    #[test]
    fn malformed_records_are_errors() {
        let mut wire = proto::RecordSet::from(sample());
        wire.parameters
            .get_mut("model")
            .expect("model")
            .data_keys
            .pop();
        assert!(matches!(
            RecordSet::try_from(wire),
            Err(ConversionError::ParametersLength { keys: 1, values: 2 })
        ));

        let mut wire = proto::RecordSet::from(sample());
        wire.configs
            .get_mut("c")
            .expect("c")
            .data
            .insert("empty".into(), proto::ConfigsRecordValue { value: None });
        let error = RecordSet::try_from(wire).expect_err("empty value");
        assert!(error.to_string().contains("\"empty\""), "{error}");

        let mut wire = proto::RecordSet::from(sample());
        wire.parameters.get_mut("model").expect("model").data_values[0].shape = vec![-1];
        assert!(matches!(
            RecordSet::try_from(wire),
            Err(ConversionError::NegativeDimension(_))
        ));
    }

    #[test]
    fn repeated_parameter_keys_behave_like_a_python_dict() {
        let one = Array::from_f64(&[1], &[1.0]).expect("array");
        let two = Array::from_f64(&[1], &[2.0]).expect("array");
        let wire = proto::ParametersRecord {
            data_keys: vec!["x".into(), "y".into(), "x".into()],
            data_values: vec![one.clone().into(), one.clone().into(), two.clone().into()],
        };
        let record = ParametersRecord::try_from(wire).expect("converts");
        assert_eq!(record.keys().collect::<Vec<_>>(), ["x", "y"]);
        assert_eq!(record.get("x"), Some(&two));
    }

    #[test]
    fn array_accessors_check_the_stype() {
        let mut array = Array::from_f32(&[1], &[1.0]).expect("array");
        assert_eq!(array.dtype, "float32");
        assert_eq!(array.shape, vec![1]);
        assert_eq!(array.to_f32().expect("f32"), vec![1.0]);
        array.stype = "torch.Tensor".into();
        assert!(matches!(array.to_f64(), Err(NpyError::NotNumpy(_))));
    }

    #[test]
    fn user_config_converts_both_ways() {
        let config = Config::from([
            ("num-server-rounds".into(), Scalar::Sint64(3)),
            ("lr".into(), Scalar::Double(0.1)),
            ("name".into(), Scalar::from("x")),
            ("big".into(), Scalar::Uint64(u64::MAX)),
        ]);
        let back = config_from_proto(config_to_proto(config.clone())).expect("converts");
        assert_eq!(back, config);
        let bad = HashMap::from([("k".to_owned(), proto::Scalar { scalar: None })]);
        assert_eq!(
            config_from_proto(bad),
            Err(ConversionError::EmptyValue("k".into()))
        );
    }
}
