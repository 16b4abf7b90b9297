//! NumPy `.npy` bytes, the payload of every [`Array`](crate::Array) whose `stype` is
//! `"numpy.ndarray"`.
//!
//! Flower's Python apps serialise each `numpy.ndarray` with `numpy.save(..., allow_pickle=False)`
//! and read it back with `numpy.load`. The encoder here writes exactly what `numpy.save`
//! writes for a C-ordered little-endian `float32`/`float64` array (format version 1.0):
//!
//! ```text
//! b"\x93NUMPY" 0x01 0x00 <u16 LE header length> <header> <spaces> b"\n" <data>
//! header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }"
//!          + (21 - len(str(shape[0]))) spaces when the array has a dimension
//! ```
//!
//! and pads so that the data starts at a multiple of 64 bytes (with a full extra 64 bytes of
//! padding when the header already ends on a boundary, as NumPy does). The decoder accepts
//! versions 1.0, 2.0 and 3.0, any key order, both byte orders and Fortran order.

use std::fmt;

/// A `.npy` payload could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NpyError {
    /// The header is not the Python dict literal NumPy writes.
    #[error("malformed .npy header: {0}")]
    BadHeader(String),
    /// The bytes do not start with `\x93NUMPY`.
    #[error("not .npy data: bad magic string")]
    BadMagic,
    /// The data section is not `product(shape) * itemsize` bytes long.
    #[error(".npy data is {found} bytes, the header announces {expected}")]
    DataLength {
        /// Bytes the header announces.
        expected: usize,
        /// Bytes present.
        found: usize,
    },
    /// The array's `stype` says its data is not NumPy `.npy` bytes.
    #[error("array stype is {0:?}, not \"numpy.ndarray\"")]
    NotNumpy(String),
    /// The number of values does not match the shape.
    #[error("{len} values do not fill shape {shape:?}")]
    ShapeMismatch {
        /// The shape asked for.
        shape: Vec<usize>,
        /// The number of values given.
        len: usize,
    },
    /// The array is too large to address.
    #[error("array too large")]
    TooLarge,
    /// The file ends early.
    #[error(".npy data is truncated")]
    Truncated,
    /// The element type is not a 4- or 8-byte float.
    #[error("unsupported .npy dtype {0:?}")]
    UnsupportedDtype(String),
    /// The format version is not 1.0, 2.0 or 3.0.
    #[error("unsupported .npy format version {0}.{1}")]
    UnsupportedVersion(u8, u8),
    /// The element type is readable but not the one asked for.
    #[error("expected {expected} .npy data, found {found:?}")]
    WrongDtype {
        /// The requested type.
        expected: Dtype,
        /// The `descr` in the header.
        found: String,
    },
}

/// `\x93NUMPY`, the first six bytes of every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// Data starts at a multiple of this many bytes.
const ALIGN: usize = 64;
/// NumPy reserves room for the first dimension to grow to this many digits.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;

/// Element types this crate can convert to and from Rust numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dtype {
    /// IEEE 754 single precision, NumPy `float32` (`f4`).
    Float32,
    /// IEEE 754 double precision, NumPy `float64` (`f8`).
    Float64,
}

impl Dtype {
    /// The NumPy dtype name Flower stores in `Array.dtype` (`str(ndarray.dtype)`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Float64 => "float64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Float32 => 4,
            Self::Float64 => 8,
        }
    }

    /// The little-endian `descr` numpy.save writes (`'<f4'`, `'<f8'`).
    fn descr(self) -> &'static str {
        match self {
            Self::Float32 => "<f4",
            Self::Float64 => "<f8",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Byte order of the stored elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteOrder {
    /// `<` (and `|`/`=`, which NumPy only writes for one-byte types or native order).
    Little,
    /// `>`.
    Big,
}

/// The parsed header of a `.npy` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The `descr` string as written, e.g. `<f8`.
    pub descr: String,
    /// Whether the data is stored column-major.
    pub fortran_order: bool,
    /// Dimensions; empty for a 0-d array.
    pub shape: Vec<usize>,
}

impl Header {
    /// The element type, if it is one this crate converts.
    ///
    /// # Errors
    ///
    /// [`NpyError::UnsupportedDtype`] for anything but 4- or 8-byte floats.
    pub fn dtype(&self) -> Result<(Dtype, ByteOrder), NpyError> {
        let (order, kind) = match self.descr.as_bytes().first() {
            Some(b'<' | b'|' | b'=') => (ByteOrder::Little, &self.descr[1..]),
            Some(b'>') => (ByteOrder::Big, &self.descr[1..]),
            _ => (ByteOrder::Little, self.descr.as_str()),
        };
        let dtype = match kind {
            "f4" => Dtype::Float32,
            "f8" => Dtype::Float64,
            _ => return Err(NpyError::UnsupportedDtype(self.descr.clone())),
        };
        Ok((dtype, order))
    }

    /// Number of elements (the product of the shape; 1 for a 0-d array).
    ///
    /// # Errors
    ///
    /// [`NpyError::TooLarge`] if the product overflows.
    pub fn element_count(&self) -> Result<usize, NpyError> {
        element_count(&self.shape)
    }
}

/// `.npy` bytes of a C-ordered `float32` array, as `numpy.save` writes them.
///
/// # Errors
///
/// [`NpyError::ShapeMismatch`] if `values.len()` is not the product of `shape`.
pub fn encode_f32(shape: &[usize], values: &[f32]) -> Result<Vec<u8>, NpyError> {
    let mut out = header_bytes(Dtype::Float32, shape, values.len())?;
    out.reserve(values.len() * 4);
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
    Ok(out)
}

/// `.npy` bytes of a C-ordered `float64` array, as `numpy.save` writes them.
///
/// # Errors
///
/// [`NpyError::ShapeMismatch`] if `values.len()` is not the product of `shape`.
pub fn encode_f64(shape: &[usize], values: &[f64]) -> Result<Vec<u8>, NpyError> {
    let mut out = header_bytes(Dtype::Float64, shape, values.len())?;
    out.reserve(values.len() * 8);
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
    Ok(out)
}

/// Splits `.npy` bytes into the parsed header and the data bytes.
///
/// # Errors
///
/// [`NpyError`] for a wrong magic string or version, a truncated file, or a header that is
/// not the Python dict literal NumPy writes.
pub fn parse(bytes: &[u8]) -> Result<(Header, &[u8]), NpyError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(NpyError::BadMagic)?;
    let (&[major, minor], rest) = split(rest, 2)? else {
        return Err(NpyError::Truncated);
    };
    let (header_len, rest) = match (major, minor) {
        (1, 0) => {
            let (len, rest) = split(rest, 2)?;
            (usize::from(u16::from_le_bytes([len[0], len[1]])), rest)
        }
        (2 | 3, 0) => {
            let (len, rest) = split(rest, 4)?;
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
            (usize::try_from(len).map_err(|_| NpyError::Truncated)?, rest)
        }
        _ => return Err(NpyError::UnsupportedVersion(major, minor)),
    };
    let (text, data) = split(rest, header_len)?;
    // Versions 1 and 2 are latin-1; every byte NumPy writes there is ASCII, and version 3 is
    // UTF-8, so decoding as UTF-8 accepts all real headers.
    let text = std::str::from_utf8(text).map_err(|_| NpyError::BadHeader("not text".into()))?;
    Ok((parse_header(text)?, data))
}

/// Decodes `.npy` bytes into `(shape, values)` in C order, widening `float32` to `f64`.
///
/// # Errors
///
/// As [`parse`], plus [`NpyError::UnsupportedDtype`] and [`NpyError::DataLength`].
pub fn decode_f64(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f64>), NpyError> {
    let (header, data) = parse(bytes)?;
    let (dtype, order) = header.dtype()?;
    let values: Vec<f64> = match dtype {
        Dtype::Float32 => elements::<4>(&header, dtype, data)?
            .map(|b| f64::from(read_f32(b, order)))
            .collect(),
        Dtype::Float64 => elements::<8>(&header, dtype, data)?
            .map(|b| read_f64(b, order))
            .collect(),
    };
    Ok(to_c_order(&header, values))
}

/// Decodes `.npy` bytes holding `float32` values into `(shape, values)` in C order.
///
/// # Errors
///
/// As [`parse`]; [`NpyError::WrongDtype`] for any other element type (narrowing `float64`
/// would lose precision silently, so it is refused).
pub fn decode_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>), NpyError> {
    let (header, data) = parse(bytes)?;
    let (dtype, order) = header.dtype()?;
    if dtype != Dtype::Float32 {
        return Err(NpyError::WrongDtype {
            expected: Dtype::Float32,
            found: header.descr,
        });
    }
    let values = elements::<4>(&header, dtype, data)?
        .map(|b| read_f32(b, order))
        .collect();
    Ok(to_c_order(&header, values))
}

fn header_bytes(dtype: Dtype, shape: &[usize], len: usize) -> Result<Vec<u8>, NpyError> {
    let expected = element_count(shape)?;
    if expected != len {
        return Err(NpyError::ShapeMismatch {
            shape: shape.to_vec(),
            len,
        });
    }
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        dtype.descr(),
        shape_repr(shape)
    );
    if let Some(first) = shape.first() {
        let digits = first.to_string().len();
        dict.extend(std::iter::repeat_n(
            ' ',
            GROWTH_AXIS_MAX_DIGITS.saturating_sub(digits),
        ));
    }
    // Length of the header text including its final newline, then the padding that puts the
    // data on an ALIGN boundary; NumPy pads a full ALIGN bytes when already aligned.
    let text_len = dict.len() + 1;
    let mut prefix_len = MAGIC.len() + 2 + 2;
    let mut pad = ALIGN - (prefix_len + text_len) % ALIGN;
    let mut version = 1u8;
    if text_len + pad > usize::from(u16::MAX) {
        version = 2;
        prefix_len = MAGIC.len() + 2 + 4;
        pad = ALIGN - (prefix_len + text_len) % ALIGN;
    }
    let header_len = text_len + pad;
    let mut out = Vec::with_capacity(prefix_len + header_len);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[version, 0]);
    if version == 1 {
        // Checked above: header_len fits in a u16 for version 1.
        out.extend_from_slice(&u16::try_from(header_len).unwrap_or(u16::MAX).to_le_bytes());
    } else {
        let len = u32::try_from(header_len).map_err(|_| NpyError::TooLarge)?;
        out.extend_from_slice(&len.to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    Ok(out)
}

/// Python's `repr` of a tuple of ints: `()`, `(3,)`, `(2, 3)`.
fn shape_repr(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_owned(),
        [only] => format!("({only},)"),
        _ => {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("({})", dims.join(", "))
        }
    }
}

fn element_count(shape: &[usize]) -> Result<usize, NpyError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &dim| acc.checked_mul(dim))
        .ok_or(NpyError::TooLarge)
}

fn split(bytes: &[u8], at: usize) -> Result<(&[u8], &[u8]), NpyError> {
    if bytes.len() < at {
        return Err(NpyError::Truncated);
    }
    Ok(bytes.split_at(at))
}

/// The data as `N`-byte chunks, after checking that there are exactly as many as the shape
/// says.
fn elements<'a, const N: usize>(
    header: &Header,
    dtype: Dtype,
    data: &'a [u8],
) -> Result<impl Iterator<Item = [u8; N]> + 'a, NpyError> {
    let count = header.element_count()?;
    let expected = count.checked_mul(dtype.size()).ok_or(NpyError::TooLarge)?;
    if data.len() != expected {
        return Err(NpyError::DataLength {
            expected,
            found: data.len(),
        });
    }
    Ok(data.chunks_exact(N).map(|chunk| {
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(chunk);
        bytes
    }))
}

fn read_f32(bytes: [u8; 4], order: ByteOrder) -> f32 {
    match order {
        ByteOrder::Little => f32::from_le_bytes(bytes),
        ByteOrder::Big => f32::from_be_bytes(bytes),
    }
}

fn read_f64(bytes: [u8; 8], order: ByteOrder) -> f64 {
    match order {
        ByteOrder::Little => f64::from_le_bytes(bytes),
        ByteOrder::Big => f64::from_be_bytes(bytes),
    }
}

/// Returns `(shape, values)` with `values` rearranged from Fortran to C order when needed.
fn to_c_order<T: Copy>(header: &Header, values: Vec<T>) -> (Vec<usize>, Vec<T>) {
    let shape = header.shape.clone();
    if !header.fortran_order || shape.len() < 2 {
        return (shape, values);
    }
    // Element at C index (i0, .., ik) lives at Fortran offset sum(i_j * prod(shape[..j])).
    let mut strides = Vec::with_capacity(shape.len());
    let mut stride = 1usize;
    for dim in &shape {
        strides.push(stride);
        stride *= dim;
    }
    let mut index = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(values.len());
    for _ in 0..values.len() {
        let offset: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.push(values[offset]);
        // Advance the C-order multi-index (last axis fastest).
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    (shape, out)
}

/// Parses the restricted Python dict literal of a `.npy` header.
fn parse_header(text: &str) -> Result<Header, NpyError> {
    let mut parser = Literal {
        text: text.trim_end(),
        pos: 0,
    };
    let mut descr = None;
    let mut fortran_order = None;
    let mut shape = None;
    parser.expect('{')?;
    loop {
        parser.skip_space();
        if parser.eat('}') {
            break;
        }
        let key = parser.string()?;
        parser.skip_space();
        parser.expect(':')?;
        parser.skip_space();
        match key.as_str() {
            "descr" => descr = Some(parser.string()?),
            "fortran_order" => fortran_order = Some(parser.boolean()?),
            "shape" => shape = Some(parser.tuple()?),
            other => return Err(NpyError::BadHeader(format!("unexpected key {other:?}"))),
        }
        parser.skip_space();
        if !parser.eat(',') {
            parser.skip_space();
            parser.expect('}')?;
            break;
        }
    }
    let missing = |key: &str| NpyError::BadHeader(format!("missing key {key:?}"));
    Ok(Header {
        descr: descr.ok_or_else(|| missing("descr"))?,
        fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
        shape: shape.ok_or_else(|| missing("shape"))?,
    })
}

/// Cursor over a Python literal.
struct Literal<'a> {
    text: &'a str,
    pos: usize,
}

impl Literal<'_> {
    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, c: char) -> bool {
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            return true;
        }
        false
    }

    fn expect(&mut self, c: char) -> Result<(), NpyError> {
        if self.eat(c) {
            return Ok(());
        }
        Err(self.error(&format!("expected {c:?}")))
    }

    fn error(&self, what: &str) -> NpyError {
        let near: String = self.rest().chars().take(20).collect();
        NpyError::BadHeader(format!("{what} at byte {} near {near:?}", self.pos))
    }

    /// A quoted string without escapes (NumPy never writes any).
    fn string(&mut self) -> Result<String, NpyError> {
        let Some(quote @ ('\'' | '"')) = self.rest().chars().next() else {
            return Err(self.error("expected a string"));
        };
        self.pos += 1;
        let Some(end) = self.rest().find(quote) else {
            return Err(self.error("unterminated string"));
        };
        let value = self.rest()[..end].to_owned();
        self.pos += end + 1;
        Ok(value)
    }

    fn boolean(&mut self) -> Result<bool, NpyError> {
        for (word, value) in [("True", true), ("False", false)] {
            if self.rest().starts_with(word) {
                self.pos += word.len();
                return Ok(value);
            }
        }
        Err(self.error("expected True or False"))
    }

    /// `()`, `(3,)`, `(2, 3)`; Python 2's `3L` suffix is accepted.
    fn tuple(&mut self) -> Result<Vec<usize>, NpyError> {
        self.expect('(')?;
        let mut dims = Vec::new();
        loop {
            self.skip_space();
            if self.eat(')') {
                return Ok(dims);
            }
            let digits = self.rest().len()
                - self
                    .rest()
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .len();
            if digits == 0 {
                return Err(self.error("expected a dimension"));
            }
            let dim = self.rest()[..digits]
                .parse()
                .map_err(|_| self.error("dimension too large"))?;
            self.pos += digits;
            self.eat('L');
            dims.push(dim);
            self.skip_space();
            if !self.eat(',') {
                self.skip_space();
                self.expect(')')?;
                return Ok(dims);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `numpy.save(np.ones((1, 1)))` from numpy 2.4 (also checked against the venv in
    /// `tests/npy_numpy.rs`).
    const ONES_1X1: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }                                                          \n\x00\x00\x00\x00\x00\x00\xf0?";

    #[test]
    fn encodes_like_numpy_save() {
        assert_eq!(encode_f64(&[1, 1], &[1.0]).expect("encodes"), ONES_1X1);
    }

    #[test]
    fn header_is_aligned_for_every_rank() {
        for shape in [
            vec![],
            vec![0],
            vec![7],
            vec![2, 3],
            vec![1, 2, 3, 4, 5, 6, 7, 8],
        ] {
            let len: usize = shape.iter().product();
            let bytes = encode_f32(&shape, &vec![0.5; len]).expect("encodes");
            let (header, data) = parse(&bytes).expect("parses");
            assert_eq!((bytes.len() - data.len()) % ALIGN, 0, "{shape:?}");
            assert_eq!(header.shape, shape);
            assert_eq!(header.descr, "<f4");
        }
    }

    #[test]
    fn round_trips_f32_and_widens_to_f64() {
        let values = [1.5f32, -2.25, f32::MAX, 0.0, f32::MIN_POSITIVE, 3.0];
        let bytes = encode_f32(&[2, 3], &values).expect("encodes");
        let (shape, back) = decode_f32(&bytes).expect("decodes");
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(back, values);
        let (_, wide) = decode_f64(&bytes).expect("widens");
        assert_eq!(wide[1], -2.25);
    }

    #[test]
    fn float64_is_not_narrowed_silently() {
        let bytes = encode_f64(&[1], &[0.1]).expect("encodes");
        assert!(matches!(
            decode_f32(&bytes),
            Err(NpyError::WrongDtype { .. })
        ));
    }

    #[test]
    fn fortran_order_and_big_endian_are_read_in_c_order() {
        // numpy.save(np.asfortranarray(np.arange(6, dtype='>f8').reshape(2, 3)))
        let header = "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 3), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let text = format!("{header}\n");
        bytes.extend_from_slice(&u16::try_from(text.len()).expect("short").to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        // Column-major: (0,0) (1,0) (0,1) (1,1) (0,2) (1,2) = 0 3 1 4 2 5
        for v in [0.0f64, 3.0, 1.0, 4.0, 2.0, 5.0] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        let (shape, values) = decode_f64(&bytes).expect("decodes");
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let good = encode_f64(&[2], &[1.0, 2.0]).expect("encodes");
        for cut in 0..good.len() {
            assert!(decode_f64(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(
            decode_f64(&longer),
            Err(NpyError::DataLength { .. })
        ));
        for header in [
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
            "{'descr': '<f8', 'shape': (1,), }",
            "{'descr': '<f8', 'fortran_order': Maybe, 'shape': (1,), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999999,), }",
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }",
            "{'descr': '<f8, 'fortran_order': False",
            "[]",
        ] {
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&u16::try_from(header.len()).expect("short").to_le_bytes());
            bytes.extend_from_slice(header.as_bytes());
            assert!(decode_f64(&bytes).is_err(), "{header}");
        }
        assert!(matches!(
            parse(b"\x93NUMPY\x09\x00\x00\x00"),
            Err(NpyError::UnsupportedVersion(9, 0))
        ));
    }

    #[test]
    fn shape_mismatch_is_rejected_when_encoding() {
        assert!(matches!(
            encode_f32(&[2, 2], &[1.0]),
            Err(NpyError::ShapeMismatch { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = decode_f64(&bytes);
            let _ = decode_f32(&bytes);
            let mut with_magic = b"\x93NUMPY\x01\x00".to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode_f64(&with_magic);
        }

        #[test]
        fn encode_then_decode_is_identity(
            shape in proptest::collection::vec(0usize..5, 0..4),
            seed in proptest::num::f64::NORMAL,
        ) {
            let len: usize = shape.iter().product();
            let values: Vec<f64> = (0..len).map(|i| seed * i as f64).collect();
            let bytes = encode_f64(&shape, &values).expect("encodes");
            let (header, data) = parse(&bytes).expect("parses");
            proptest::prop_assert_eq!((bytes.len() - data.len()) % ALIGN, 0);
            proptest::prop_assert_eq!(&header.shape, &shape);
            proptest::prop_assert_eq!(decode_f64(&bytes).expect("decodes"), (shape, values));
        }
    }
}
