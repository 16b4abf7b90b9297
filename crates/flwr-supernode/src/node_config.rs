//! `--node-config` parsing, with the reference's typing rules (BEHAVIOR.md §11.1).
//!
//! The reference does not parse `key=value` pairs itself: it finds every match of the pattern
//! `(\S+?)=('[^']*'|"[^"]*"|\S+)`, writes each as a TOML line `key = value`, and parses the result
//! as TOML. Values therefore have TOML's types (`0` is an integer, `0.1` a float, `"a"` a string,
//! `true` a boolean; a bare word is an error), and dotted keys make nested tables that are then
//! flattened back to `a.b`. An argument ending in `.toml` is instead read as a TOML file.
//!
//! [`pairs`] reproduces the pattern's left-to-right, lazy-key, first-alternative-wins matching
//! without a regex engine, so the corner cases (`k = 1` matches nothing, `x="a=b"` is one pair,
//! `'` quotes may span spaces) behave as in the reference.

use std::collections::HashMap;
use std::path::PathBuf;

use flwr_proto::{scalar, Scalar};

/// Why a `--node-config` value was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeConfigError {
    /// The argument named a `.toml` file that could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file named by the argument.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// The `key = value` lines (or the file) are not valid TOML; holds the parser's one-line
    /// message.
    #[error("not valid TOML: {0}")]
    Toml(String),
    /// A value is of a type user configs cannot hold (arrays, dates, ...).
    #[error("the value for key {key} needs to be of type int, float, bool, str, or a table of those (got {kind})")]
    Unsupported {
        /// The flattened key.
        key: String,
        /// TOML's name of the value's type.
        kind: &'static str,
    },
}

/// Parses a `--node-config` argument into a flat user config.
///
/// # Errors
///
/// When the argument ends in `.toml` and the file cannot be read, when the pairs do not form
/// valid TOML (bare words, `True`, duplicate keys, ...), or when a value is not an integer,
/// float, boolean or string.
pub fn parse(argument: &str) -> Result<HashMap<String, Scalar>, NodeConfigError> {
    let table = if argument.ends_with(".toml") {
        let path = PathBuf::from(argument);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| NodeConfigError::Read { path, source })?;
        parse_toml(&text)?
    } else {
        let lines: Vec<String> = pairs(argument)
            .into_iter()
            .map(|(key, value)| format!("{key} = {value}"))
            .collect();
        parse_toml(&lines.join("\n"))?
    };
    flatten_table(&table)
}

fn parse_toml(text: &str) -> Result<toml::Table, NodeConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| NodeConfigError::Toml(one_line(e.message())))
}

/// The TOML parser's messages can span lines ("invalid string\nexpected ..."); errors here are
/// printed as one line.
pub(crate) fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

/// Flattens a TOML table into a user config: nested tables become `parent.child` keys; only
/// integers, floats, booleans and strings are accepted (the reference's `flatten_dict`).
///
/// # Errors
///
/// [`NodeConfigError::Unsupported`] for arrays and dates.
pub fn flatten_table(table: &toml::Table) -> Result<HashMap<String, Scalar>, NodeConfigError> {
    let mut flat = HashMap::new();
    flatten(table, "", &mut flat)?;
    Ok(flat)
}

/// The `(key, value)` texts the reference's pattern finds in `argument`, in order.
///
/// Quotes are kept: `name="a b"` yields `("name", "\"a b\"")`, which TOML then reads as a string.
pub fn pairs(argument: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = argument.chars().collect();
    let mut found = Vec::new();
    let mut position = 0;
    while position < chars.len() {
        match match_at(&chars, position) {
            Some((key, value, end)) => {
                found.push((key, value));
                position = end;
            }
            None => position += 1,
        }
    }
    found
}

/// Python's `\s` for `str` patterns: Unicode whitespace plus the four ASCII separators
/// U+001C..U+001F, which `str.isspace()` counts and Rust's `char::is_whitespace` does not.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Tries the pattern at `start`; returns key, value and the index just past the match.
fn match_at(chars: &[char], start: usize) -> Option<(String, String, usize)> {
    if is_space(chars[start]) {
        return None;
    }
    // The key is lazy (`\S+?`): try the shortest key first and grow it one non-space character
    // at a time, including over `=` signs whose value could not match.
    let mut key_end = start + 1;
    while key_end < chars.len() {
        if chars[key_end] == '=' {
            if let Some(value_end) = match_value(chars, key_end + 1) {
                let key = chars[start..key_end].iter().collect();
                let value = chars[key_end + 1..value_end].iter().collect();
                return Some((key, value, value_end));
            }
        }
        if is_space(chars[key_end]) {
            return None;
        }
        key_end += 1;
    }
    None
}

/// Matches `'[^']*'|"[^"]*"|\S+` at `start`; the first alternative that matches wins.
fn match_value(chars: &[char], start: usize) -> Option<usize> {
    let first = *chars.get(start)?;
    if first == '\'' || first == '"' {
        if let Some(offset) = chars[start + 1..].iter().position(|&c| c == first) {
            return Some(start + 1 + offset + 1);
        }
    }
    if is_space(first) {
        return None;
    }
    let run = chars[start..].iter().take_while(|&&c| !is_space(c)).count();
    Some(start + run)
}

/// Flattens nested tables into `parent.child` keys, refusing non-scalar values.
fn flatten(
    table: &toml::Table,
    prefix: &str,
    out: &mut HashMap<String, Scalar>,
) -> Result<(), NodeConfigError> {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let scalar = match value {
            toml::Value::Table(inner) => {
                flatten(inner, &key, out)?;
                continue;
            }
            toml::Value::Integer(v) => scalar::Scalar::Sint64(*v),
            toml::Value::Float(v) => scalar::Scalar::Double(*v),
            toml::Value::Boolean(v) => scalar::Scalar::Bool(*v),
            toml::Value::String(v) => scalar::Scalar::String(v.clone()),
            other @ (toml::Value::Array(_) | toml::Value::Datetime(_)) => {
                return Err(NodeConfigError::Unsupported {
                    key,
                    kind: other.type_str(),
                })
            }
        };
        out.insert(
            key,
            Scalar {
                scalar: Some(scalar),
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn int(v: i64) -> Scalar {
        Scalar {
            scalar: Some(scalar::Scalar::Sint64(v)),
        }
    }
    fn float(v: f64) -> Scalar {
        Scalar {
            scalar: Some(scalar::Scalar::Double(v)),
        }
    }
    fn string(v: &str) -> Scalar {
        Scalar {
            scalar: Some(scalar::Scalar::String(v.to_owned())),
        }
    }
    fn boolean(v: bool) -> Scalar {
        Scalar {
            scalar: Some(scalar::Scalar::Bool(v)),
        }
    }
    fn map(entries: &[(&str, Scalar)]) -> HashMap<String, Scalar> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    // Every row of the table in BEHAVIOR.md §11.1.
    #[test]
    fn reference_table() {
        let ok: Vec<(&str, HashMap<String, Scalar>)> = vec![
            (
                "partition-id=0 num-partitions=2",
                map(&[("partition-id", int(0)), ("num-partitions", int(2))]),
            ),
            (
                r#"lr=0.1 name="abc" flag=true"#,
                map(&[
                    ("lr", float(0.1)),
                    ("name", string("abc")),
                    ("flag", boolean(true)),
                ]),
            ),
            (
                "name='single quoted'",
                map(&[("name", string("single quoted"))]),
            ),
            (
                r#"name="with space" x=1"#,
                map(&[("name", string("with space")), ("x", int(1))]),
            ),
            ("a.b=1 a.c=2", map(&[("a.b", int(1)), ("a.c", int(2))])),
            (
                "neg=-3 sci=1e3 hex=0x1F under=1_000",
                map(&[
                    ("neg", int(-3)),
                    ("sci", float(1000.0)),
                    ("hex", int(31)),
                    ("under", int(1000)),
                ]),
            ),
            ("inf=inf", map(&[("inf", float(f64::INFINITY))])),
            (
                r#"x="a=b" emptystr="""#,
                map(&[("x", string("a=b")), ("emptystr", string(""))]),
            ),
            ("k = 1", HashMap::new()),
            ("", HashMap::new()),
        ];
        for (input, expected) in ok {
            assert_eq!(parse(input).unwrap(), expected, "input {input:?}");
        }
        for bad in [
            "name=abc",
            "bool=True",
            "k=1,j=2",
            "k=1 k=2",
            "list=[1,2]",
            "d=1979-05-27",
            // Does not fit the sint64 that user configs are encoded as.
            "big=18446744073709551615",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn pattern_corner_cases() {
        let p = |s: &str| -> Vec<(String, String)> { pairs(s) };
        let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        // `\S+?` lets the key run over an `=` whose value cannot match (end of input).
        assert_eq!(p("k="), owned(&[]));
        assert_eq!(p("a==b"), owned(&[("a", "=b")]));
        // An unterminated quote falls back to `\S+`.
        assert_eq!(p("k='a b"), owned(&[("k", "'a")]));
        // A quoted value may span spaces and stops at its closing quote.
        assert_eq!(p("k='a b'c=1"), owned(&[("k", "'a b'"), ("c", "1")]));
        assert_eq!(p("  x=1\ty=2 "), owned(&[("x", "1"), ("y", "2")]));
        // A failed start moves on by one character, possibly into a word.
        assert_eq!(p("ab =1 c=2"), owned(&[("c", "2")]));
        // Python's `\s` counts U+001F (unit separator) as space.
        assert_eq!(p("a=1\u{1f}b=2"), owned(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn toml_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "partition-id = 1\n[data]\npath = \"/x\"\n").unwrap();
        let parsed = parse(path.to_str().unwrap()).unwrap();
        assert_eq!(
            parsed,
            map(&[("partition-id", int(1)), ("data.path", string("/x"))])
        );
        assert!(matches!(
            parse(dir.path().join("missing.toml").to_str().unwrap()),
            Err(NodeConfigError::Read { .. })
        ));
    }

    #[derive(Clone, Debug)]
    enum Value {
        Int(i64),
        Float(f64),
        Bool(bool),
        DoubleQuoted(String),
        SingleQuoted(String),
    }

    impl Value {
        fn render(&self) -> String {
            match self {
                Self::Int(v) => v.to_string(),
                Self::Float(v) if v.is_infinite() => {
                    if *v > 0.0 { "inf" } else { "-inf" }.to_owned()
                }
                // Debug always shows a `.` or an exponent, so TOML reads a float back.
                Self::Float(v) => format!("{v:?}"),
                Self::Bool(v) => v.to_string(),
                Self::DoubleQuoted(v) => format!("\"{v}\""),
                Self::SingleQuoted(v) => format!("'{v}'"),
            }
        }

        fn expected(&self) -> Scalar {
            match self {
                Self::Int(v) => int(*v),
                Self::Float(v) => float(*v),
                Self::Bool(v) => boolean(*v),
                Self::DoubleQuoted(v) | Self::SingleQuoted(v) => string(v),
            }
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN never equals itself", |v| !v.is_nan())
                .prop_map(Value::Float),
            any::<bool>().prop_map(Value::Bool),
            // Printable text with spaces and `=`, without the quote or TOML escapes.
            "[a-zA-Z0-9 =._/-]{0,12}".prop_map(Value::DoubleQuoted),
            "[a-zA-Z0-9 =.\"_/-]{0,12}".prop_map(Value::SingleQuoted),
        ]
    }

    proptest! {
        // Whatever typed values a user writes as `key=value` come back with TOML's types.
        #[test]
        fn typed_values_roundtrip(
            entries in proptest::collection::btree_map("[a-z][a-z0-9_-]{0,8}", value(), 0..8),
            separators in proptest::collection::vec("[ \t]{1,3}", 8),
        ) {
            let rendered: Vec<String> =
                entries.iter().map(|(k, v)| format!("{k}={}", v.render())).collect();
            let mut argument = String::new();
            for (i, pair) in rendered.iter().enumerate() {
                argument.push_str(&separators[i % separators.len()]);
                argument.push_str(pair);
            }
            let expected: HashMap<String, Scalar> =
                entries.iter().map(|(k, v)| (k.clone(), v.expected())).collect();
            prop_assert_eq!(parse(&argument).unwrap(), expected);
        }

        // Dotted keys come back flattened, with the same values.
        #[test]
        fn dotted_keys_flatten(
            parent in "[a-z]{1,4}",
            children in proptest::collection::btree_map("[a-z]{1,4}", any::<i64>(), 1..5),
        ) {
            let argument: Vec<String> =
                children.iter().map(|(k, v)| format!("{parent}.{k}={v}")).collect();
            let expected: HashMap<String, Scalar> =
                children.iter().map(|(k, v)| (format!("{parent}.{k}"), int(*v))).collect();
            prop_assert_eq!(parse(&argument.join(" ")).unwrap(), expected);
        }

        // Arbitrary input never panics; it parses or is refused.
        #[test]
        fn never_panics(argument in "\\PC{0,40}") {
            let _ = parse(&argument);
        }

        // Every found pair is made of non-space key text and a value that starts right after
        // the `=`; pairs never overlap and appear in input order.
        #[test]
        fn pairs_are_substrings_in_order(argument in "[a-c =\"' \t]{0,30}") {
            let mut rest = argument.as_str();
            for (key, value) in pairs(&argument) {
                prop_assert!(!key.is_empty() && !key.chars().any(is_space));
                prop_assert!(!value.is_empty());
                let joined = format!("{key}={value}");
                let at = rest.find(&joined);
                prop_assert!(at.is_some(), "{:?} not in {:?}", joined, rest);
                rest = &rest[at.unwrap_or(0) + joined.len()..];
            }
        }
    }
}
