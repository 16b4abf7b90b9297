//! `.npy` bytes against the reference virtualenv's NumPy: what we write must be byte-identical
//! to `numpy.save`, and what NumPy writes (any order, byte order, precision) must decode.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::process::Command;

use flwr::npy;
use flwr::Array;
use flwr_testkit::Venv;

/// Runs `script` with the venv's Python and returns its stdout.
fn python(script: &str) -> String {
    let venv = Venv::locate().expect("reference virtualenv");
    let output = Command::new(venv.python())
        .arg("-c")
        .arg(script)
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Hex of `numpy.save(expr)` for each expression, one per line.
fn numpy_saves(expressions: &[&str]) -> Vec<Vec<u8>> {
    let list = expressions.join(", ");
    let script = format!(
        "import io, numpy as np\n\
         for a in [{list}]:\n\
         \x20   b = io.BytesIO(); np.save(b, a, allow_pickle=False); print(b.getvalue().hex())\n"
    );
    python(&script)
        .lines()
        .map(|line| hex_decode(line.trim()))
        .collect()
}

fn hex_decode(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn encoding_is_byte_identical_to_numpy_save() {
    let cases: Vec<(&str, Vec<usize>, Vec<f64>)> = vec![
        ("np.ones((1, 1))", vec![1, 1], vec![1.0]),
        ("np.array(2.5)", vec![], vec![2.5]),
        ("np.zeros((0,))", vec![0], vec![]),
        (
            "np.arange(6, dtype=np.float64).reshape(2, 3) / 7",
            vec![2, 3],
            (0..6).map(|i| f64::from(i) / 7.0).collect(),
        ),
        // A long first dimension shrinks NumPy's growth padding.
        ("np.zeros((123456789, 0))", vec![123_456_789, 0], vec![]),
        (
            "np.zeros((1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12))[..., :0]",
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0],
            vec![],
        ),
    ];
    let expressions: Vec<&str> = cases.iter().map(|(e, _, _)| *e).collect();
    let expected = numpy_saves(&expressions);
    for ((expression, shape, values), numpy) in cases.iter().zip(&expected) {
        let ours = npy::encode_f64(shape, values).expect("encodes");
        assert_eq!(hex_encode(&ours), hex_encode(numpy), "{expression}");
    }

    let f32_cases: Vec<(&str, Vec<usize>, Vec<f32>)> = vec![
        (
            "np.arange(3, dtype=np.float32)",
            vec![3],
            vec![0.0, 1.0, 2.0],
        ),
        (
            "np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)",
            vec![2, 3, 4],
            Vec::new(),
        ),
    ];
    let expressions: Vec<&str> = f32_cases.iter().map(|(e, _, _)| *e).collect();
    let expected = numpy_saves(&expressions);
    for ((expression, shape, values), numpy) in f32_cases.iter().zip(&expected) {
        // Take NumPy's values when the case does not list them (linspace rounding).
        let values = if values.is_empty() {
            npy::decode_f32(numpy).expect("decodes").1
        } else {
            values.clone()
        };
        let ours = npy::encode_f32(shape, &values).expect("encodes");
        assert_eq!(hex_encode(&ours), hex_encode(numpy), "{expression}");
    }
}

#[test]
fn numpy_output_of_every_layout_decodes() {
    let expected: Vec<f64> = (0..6).map(f64::from).collect();
    let saved = numpy_saves(&[
        "np.arange(6, dtype='<f8').reshape(2, 3)",
        "np.arange(6, dtype='>f8').reshape(2, 3)",
        "np.asfortranarray(np.arange(6, dtype='<f8').reshape(2, 3))",
        "np.asfortranarray(np.arange(6, dtype='>f4').reshape(2, 3))",
        "np.arange(6, dtype=np.float32).reshape(2, 3)",
    ]);
    for bytes in &saved {
        let (shape, values) = npy::decode_f64(bytes).expect("decodes");
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(values, expected);
    }
    let ints = numpy_saves(&["np.arange(3)"]);
    assert!(
        npy::decode_f64(&ints[0]).is_err(),
        "int64 is not a float array"
    );
}

#[test]
fn numpy_loads_what_we_write() {
    let a = Array::from_f32(&[2, 2], &[1.5, -2.0, 3.25, 0.0]).expect("array");
    let b = Array::from_f64(&[3], &[0.1, 0.2, 0.3]).expect("array");
    let script = format!(
        "import io, numpy as np\n\
         for h in ['{}', '{}']:\n\
         \x20   a = np.load(io.BytesIO(bytes.fromhex(h)), allow_pickle=False)\n\
         \x20   print(a.dtype, a.shape, a.flags['C_CONTIGUOUS'], a.ravel().tolist())\n",
        hex_encode(&a.data),
        hex_encode(&b.data)
    );
    let out = python(&script);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "float32 (2, 2) True [1.5, -2.0, 3.25, 0.0]");
    assert_eq!(lines[1], "float64 (3,) True [0.1, 0.2, 0.3]");
    // `str(ndarray.dtype)` is what Python's Array(ndarray) stores in `dtype`.
    assert_eq!((a.dtype.as_str(), b.dtype.as_str()), ("float32", "float64"));
}
