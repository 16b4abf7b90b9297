//! User configs (BEHAVIOR.md §11): the reference's `key=value` tokenizer, TOML typing, and the
//! flat `a.b`-keyed maps that runs and nodes carry.
//!
//! The reference does not parse `key=value` pairs itself (`flwr.common.config.parse_config_args`):
//! it finds every match of the pattern `(\S+?)=('[^']*'|"[^"]*"|\S+)`, writes each as a TOML line
//! `key = value`, and parses the result as TOML. Values therefore have TOML's types (`0` is an
//! integer, `0.1` a float, `"a"` a string, `true` a boolean; a bare word is an error), and dotted
//! keys make nested tables that [`flatten`] turns back into `a.b` keys (`flatten_dict`). An
//! argument ending in `.toml` is instead a TOML file, which the caller reads and hands to
//! [`parse_toml`].
//!
//! [`pairs`] reproduces the pattern's left-to-right, lazy-key, first-alternative-wins matching
//! without a regex engine, so the corner cases (`k = 1` matches nothing, `x="a=b"` is one pair,
//! `'` quotes may span spaces) behave as in the reference.

use std::collections::HashMap;

use flwr_proto::{scalar, Scalar};

/// Why a user config was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The `key = value` lines (or the file) are not valid TOML; holds the parser's one-line
    /// message.
    #[error("not valid TOML: {0}")]
    Toml(String),
    /// A value is of a type user configs cannot hold (arrays, dates, ...).
    #[error(transparent)]
    Unsupported(#[from] UnsupportedValue),
}

/// A value that is not an int, float, bool, str or table of those. The message is the
/// reference's (`flatten_dict`, `_validate_run_config`), which names the innermost key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "The value for key {key} needs to be of type `int`, `float`, `bool, `str`, or  a `dict` of \
     those."
)]
pub struct UnsupportedValue {
    /// The key in its own table, as the reference reports it.
    pub key: String,
    /// The flattened `a.b` key.
    pub path: String,
    /// TOML's name of the value's type.
    pub kind: &'static str,
}

/// Parses a `key=value ...` argument the way `parse_config_args` does, into a flat user config.
///
/// # Errors
///
/// When the pairs do not form valid TOML (bare words, `True`, duplicate keys, ...), or when a
/// value is not an integer, float, boolean or string.
pub fn parse_pairs(argument: &str) -> Result<HashMap<String, Scalar>, ConfigError> {
    Ok(flatten(&pairs_to_toml(argument)?)?)
}

/// The TOML table the reference builds from a `key=value ...` argument, before flattening.
///
/// # Errors
///
/// [`ConfigError::Toml`] when the pairs do not form valid TOML.
pub fn pairs_to_toml(argument: &str) -> Result<toml::Table, ConfigError> {
    let lines: Vec<String> = pairs(argument)
        .into_iter()
        .map(|(key, value)| format!("{key} = {value}"))
        .collect();
    parse_toml(&lines.join("\n"))
}

/// Parses TOML text (a `.toml` config file) into a table.
///
/// # Errors
///
/// [`ConfigError::Toml`] with the parser's message on one line.
pub fn parse_toml(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Toml(one_line(e.message())))
}

/// Flattens a TOML table into a user config: nested tables become `parent.child` keys; only
/// integers, floats, booleans and strings are accepted (the reference's `flatten_dict`).
///
/// # Errors
///
/// [`UnsupportedValue`] for arrays and dates.
pub fn flatten(table: &toml::Table) -> Result<HashMap<String, Scalar>, UnsupportedValue> {
    let mut flat = HashMap::new();
    flatten_into(table, "", &mut flat)?;
    Ok(flat)
}

/// The run config apps see (BEHAVIOR.md §11.2, the reference's `fuse_dicts`): the defaults, with
/// every override whose key already exists replacing the default; unknown override keys are
/// dropped and types are not checked.
pub fn fuse<V: Clone>(
    defaults: &HashMap<String, V>,
    overrides: &HashMap<String, V>,
) -> HashMap<String, V> {
    let mut fused = defaults.clone();
    for (key, value) in overrides {
        if let Some(slot) = fused.get_mut(key) {
            *slot = value.clone();
        }
    }
    fused
}

/// The TOML parser's messages can span lines ("invalid string\nexpected ..."); errors here are
/// printed as one line.
pub fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
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
fn flatten_into(
    table: &toml::Table,
    prefix: &str,
    out: &mut HashMap<String, Scalar>,
) -> Result<(), UnsupportedValue> {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let scalar = match value {
            toml::Value::Table(inner) => {
                flatten_into(inner, &path, out)?;
                continue;
            }
            toml::Value::Integer(v) => scalar::Scalar::Sint64(*v),
            toml::Value::Float(v) => scalar::Scalar::Double(*v),
            toml::Value::Boolean(v) => scalar::Scalar::Bool(*v),
            toml::Value::String(v) => scalar::Scalar::String(v.clone()),
            other @ (toml::Value::Array(_) | toml::Value::Datetime(_)) => {
                return Err(UnsupportedValue {
                    key: key.clone(),
                    path,
                    kind: other.type_str(),
                })
            }
        };
        out.insert(
            path,
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
            assert_eq!(parse_pairs(input).unwrap(), expected, "input {input:?}");
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
            assert!(parse_pairs(bad).is_err(), "{bad:?} should be refused");
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
    fn toml_text_flattens_and_names_the_bad_key() {
        let table = parse_toml("partition-id = 1\n[data]\npath = \"/x\"\n").unwrap();
        assert_eq!(
            flatten(&table).unwrap(),
            map(&[("partition-id", int(1)), ("data.path", string("/x"))])
        );
        let table = parse_toml("[outer]\nlist = [1]\n").unwrap();
        let error = flatten(&table).expect_err("arrays are refused");
        assert_eq!(
            (error.key.as_str(), error.path.as_str()),
            ("list", "outer.list")
        );
        assert_eq!(
            error.to_string(),
            "The value for key list needs to be of type `int`, `float`, `bool, `str`, or  a \
             `dict` of those."
        );
        assert!(matches!(parse_toml("[x"), Err(ConfigError::Toml(_))));
    }

    #[test]
    fn tokenizer_matches_the_reference_regex() {
        let owned = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect()
        };
        assert_eq!(
            pairs("partition-id=0 num-partitions=2"),
            owned(&[("partition-id", "0"), ("num-partitions", "2")])
        );
        assert_eq!(
            pairs(r#"name="with space" x=1"#),
            owned(&[("name", "\"with space\""), ("x", "1")])
        );
        assert_eq!(pairs("x=\"a=b\""), owned(&[("x", "\"a=b\"")]));
        assert_eq!(pairs("k = 1"), owned(&[]));
        assert_eq!(pairs("k=1,j=2"), owned(&[("k", "1,j=2")]));
    }

    #[test]
    fn fuse_replaces_known_keys_only() {
        let defaults = map(&[("num-server-rounds", int(3)), ("local-epochs", int(1))]);
        let overrides = map(&[("num-server-rounds", int(5)), ("unknown-key", int(5))]);
        let fused = fuse(&defaults, &overrides);
        assert_eq!(
            fused,
            map(&[("num-server-rounds", int(5)), ("local-epochs", int(1))])
        );
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
            prop_assert_eq!(parse_pairs(&argument).unwrap(), expected);
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
            prop_assert_eq!(parse_pairs(&argument.join(" ")).unwrap(), expected);
        }

        // Arbitrary input never panics; it parses or is refused.
        #[test]
        fn never_panics(argument in "\\PC{0,40}") {
            let _ = parse_pairs(&argument);
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
