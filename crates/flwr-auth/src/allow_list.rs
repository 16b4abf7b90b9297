//! The `--auth-list-public-keys` CSV file: which SuperNode keys may connect (AUTH.md §3).
//!
//! The reference reads the file with Python's `csv.reader` in its default "excel" dialect
//! (delimiter `,`, quote `"`, doubled quotes inside quotes, no trimming, rows ended by LF, CR or
//! CRLF) and loads every field of every row as one OpenSSH public key line. Blank rows yield
//! no fields and are skipped; there is no header row and no comment syntax. This module
//! re-implements that reader, including its non-strict leniency, so the same files load the
//! same way. Where the reference crashes with a traceback (an unparseable field), this module
//! returns an error naming the line and column.

use std::collections::{btree_set, BTreeSet};

use crate::curve::Curve;
use crate::error::AuthError;
use crate::keys::PublicKey;

/// Python's default `csv.field_size_limit()`: longer fields are an error in the reference.
const FIELD_LIMIT: usize = 131_072;

/// Why an allow-list file was rejected. Lines and columns are 1-based; the column counts CSV
/// fields within the row, and the line is where the field starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsvError {
    /// A field is longer than Python's default field size limit (131072 characters).
    #[error("line {line}, column {column}: field larger than field limit ({FIELD_LIMIT})")]
    FieldTooLarge {
        /// Line on which the field starts.
        line: usize,
        /// Field number within the row.
        column: usize,
    },
    /// A field is not a valid EC public key line; the reference crashes here (AUTH.md §3).
    #[error("line {line}, column {column}: invalid public key: {reason}")]
    InvalidPublicKey {
        /// Line on which the field starts.
        line: usize,
        /// Field number within the row.
        column: usize,
        /// What is wrong with the key.
        reason: String,
    },
    /// A field is a valid SSH key of a non-EC type (`ssh-ed25519`, `ssh-rsa`, `ssh-dss`); the
    /// reference exits with "Unable to parse the public keys in the CSV file".
    #[error("line {line}, column {column}: not an elliptic-curve key: {algorithm}")]
    NotEllipticCurve {
        /// Line on which the field starts.
        line: usize,
        /// Field number within the row.
        column: usize,
        /// The OpenSSH key type, e.g. `ssh-ed25519`.
        algorithm: String,
    },
    /// A field is an EC key on another curve than the SuperLink's own key
    /// ([`AllowList::parse_for_curve`]): no shared secret can be derived with it, so the node
    /// would register and then fail every later call.
    #[error("line {line}, column {column}: key is on {found}, the SuperLink key on {expected}")]
    WrongCurve {
        /// Line on which the field starts.
        line: usize,
        /// Field number within the row.
        column: usize,
        /// The curve of the listed key.
        found: Curve,
        /// The curve every listed key must be on.
        expected: Curve,
    },
}

/// The set of SuperNode public keys allowed to authenticate, held as canonical PEM SPKI bytes
/// ([`PublicKey::to_spki_pem`]) because that is what the `public-key` header carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    keys: BTreeSet<Vec<u8>>,
}

impl AllowList {
    /// An empty allow-list, which rejects every node.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the contents of an allow-list CSV file (already decoded as UTF-8).
    ///
    /// Duplicates collapse; an empty file yields an empty list.
    ///
    /// # Errors
    ///
    /// The first bad field in file order, as [`CsvError::InvalidPublicKey`],
    /// [`CsvError::NotEllipticCurve`] or [`CsvError::FieldTooLarge`].
    pub fn parse(text: &str) -> Result<Self, CsvError> {
        Self::parse_with(text, None)
    }

    /// Parses like [`parse`](Self::parse), and also refuses keys that are not on `curve` (the
    /// curve of the SuperLink's key pair): the reference accepts them and then fails every
    /// call of that node after `CreateNode` (AUTH.md §5.4).
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse), plus [`CsvError::WrongCurve`] for the first key on another
    /// curve.
    pub fn parse_for_curve(text: &str, curve: Curve) -> Result<Self, CsvError> {
        Self::parse_with(text, Some(curve))
    }

    fn parse_with(text: &str, curve: Option<Curve>) -> Result<Self, CsvError> {
        let mut list = Self::new();
        read_records(text, |fields| {
            for field in fields {
                let key = PublicKey::from_openssh(field.text.as_bytes())
                    .map_err(|error| field.error(error))?;
                if let Some(expected) = curve.filter(|&expected| expected != key.curve()) {
                    return Err(CsvError::WrongCurve {
                        line: field.line,
                        column: field.column,
                        found: key.curve(),
                        expected,
                    });
                }
                list.insert(&key);
            }
            Ok(())
        })?;
        Ok(list)
    }

    /// Adds `key`; returns whether it was new.
    pub fn insert(&mut self, key: &PublicKey) -> bool {
        self.keys.insert(key.to_spki_pem())
    }

    /// Whether the canonical PEM SPKI bytes `spki_pem` (a decoded `public-key` header) are
    /// allowed. Comparison is byte-for-byte, like the reference.
    pub fn contains(&self, spki_pem: &[u8]) -> bool {
        self.keys.contains(spki_pem)
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the list has no keys (the reference then starts but rejects every node).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys' PEM SPKI bytes in sorted order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.keys.iter())
    }
}

impl<'a> IntoIterator for &'a AllowList {
    type Item = &'a [u8];
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over the PEM SPKI bytes of an [`AllowList`], in sorted order.
#[derive(Clone, Debug)]
pub struct Iter<'a>(btree_set::Iter<'a, Vec<u8>>);

impl<'a> Iterator for Iter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.0.next().map(Vec::as_slice)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

/// One CSV field and where it starts.
#[derive(Debug)]
struct Field {
    text: String,
    line: usize,
    column: usize,
}

impl Field {
    /// Attaches this field's position to a key parsing error.
    fn error(&self, error: AuthError) -> CsvError {
        let (line, column) = (self.line, self.column);
        match error {
            AuthError::NotEllipticCurve { algorithm } => CsvError::NotEllipticCurve {
                line,
                column,
                algorithm,
            },
            AuthError::InvalidPublicKey(reason) => CsvError::InvalidPublicKey {
                line,
                column,
                reason,
            },
            other => CsvError::InvalidPublicKey {
                line,
                column,
                reason: other.to_string(),
            },
        }
    }
}

/// States of CPython's `_csv` reader (`Modules/_csv.c`), minus the escape states that the
/// excel dialect never enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    StartRecord,
    StartField,
    InField,
    InQuotedField,
    QuoteInQuotedField,
    EatCrnl,
}

/// Incremental excel-dialect parser; fed one character at a time plus `None` at each line end.
#[derive(Debug)]
struct Parser {
    state: State,
    fields: Vec<Field>,
    field: String,
    field_chars: usize,
    field_line: usize,
    line: usize,
}

impl Parser {
    /// Reference algorithm: `parse_process_char` with delimiter `,`, quotechar `"`,
    /// doublequote on, skipinitialspace off, strict off. `None` stands for the end of a physical
    /// line (after its terminator characters were fed).
    fn process(&mut self, c: Option<char>) -> Result<(), CsvError> {
        if self.state == State::StartRecord {
            match c {
                // Empty line: the record stays empty.
                None => return Ok(()),
                Some('\n' | '\r') => {
                    self.state = State::EatCrnl;
                    return Ok(());
                }
                // Anything else starts the first field.
                Some(_) => self.state = State::StartField,
            }
        }
        match self.state {
            State::StartRecord => {}
            State::StartField => {
                self.field_line = self.line;
                match c {
                    None | Some('\n' | '\r') => self.end_line(c),
                    Some('"') => self.state = State::InQuotedField,
                    Some(',') => self.save_field(),
                    Some(ch) => {
                        self.push(ch)?;
                        self.state = State::InField;
                    }
                }
            }
            State::InField => match c {
                None | Some('\n' | '\r') => self.end_line(c),
                Some(',') => {
                    self.save_field();
                    self.state = State::StartField;
                }
                Some(ch) => self.push(ch)?,
            },
            State::InQuotedField => match c {
                // Line breaks inside quotes were already added as characters.
                None => {}
                Some('"') => self.state = State::QuoteInQuotedField,
                Some(ch) => self.push(ch)?,
            },
            State::QuoteInQuotedField => match c {
                Some('"') => {
                    self.push('"')?;
                    self.state = State::InQuotedField;
                }
                Some(',') => {
                    self.save_field();
                    self.state = State::StartField;
                }
                None | Some('\n' | '\r') => self.end_line(c),
                // Non-strict: `"ab"cd` reads as `abcd`.
                Some(ch) => {
                    self.push(ch)?;
                    self.state = State::InField;
                }
            },
            State::EatCrnl => {
                // Other characters cannot follow a terminator: `read_records` ends every line
                // right after its terminator, as Python's line iteration does.
                if c.is_none() {
                    self.state = State::StartRecord;
                }
            }
        }
        Ok(())
    }

    /// Ends the current field at a line terminator (`Some`) or line end (`None`).
    fn end_line(&mut self, c: Option<char>) {
        self.save_field();
        self.state = if c.is_none() {
            State::StartRecord
        } else {
            State::EatCrnl
        };
    }

    /// Appends a character to the current field, enforcing the field size limit.
    fn push(&mut self, ch: char) -> Result<(), CsvError> {
        if self.field_chars >= FIELD_LIMIT {
            return Err(CsvError::FieldTooLarge {
                line: self.field_line,
                column: self.fields.len() + 1,
            });
        }
        self.field.push(ch);
        self.field_chars += 1;
        Ok(())
    }

    /// Moves the current field into the record.
    fn save_field(&mut self) {
        let column = self.fields.len() + 1;
        self.fields.push(Field {
            text: std::mem::take(&mut self.field),
            line: self.field_line,
            column,
        });
        self.field_chars = 0;
    }
}

/// Runs the excel-dialect reader over `text`, calling `on_record` for every record that has
/// fields (blank lines produce none and are skipped).
///
/// Lines are split like Python's `open(..., newline="")` iteration: after `\n`, after `\r`, or
/// after `\r\n`. A quoted field may span lines; if the file ends inside quotes, the non-strict
/// reader keeps what it has as the last field.
fn read_records(
    text: &str,
    mut on_record: impl FnMut(&[Field]) -> Result<(), CsvError>,
) -> Result<(), CsvError> {
    let mut parser = Parser {
        state: State::StartRecord,
        fields: Vec::new(),
        field: String::new(),
        field_chars: 0,
        field_line: 1,
        line: 0,
    };
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        parser.line += 1;
        while let Some(c) = chars.next() {
            parser.process(Some(c))?;
            if c == '\n' {
                break;
            }
            if c == '\r' {
                if let Some(lf) = chars.next_if_eq(&'\n') {
                    parser.process(Some(lf))?;
                }
                break;
            }
        }
        parser.process(None)?;
        if parser.state == State::StartRecord && !parser.fields.is_empty() {
            on_record(&std::mem::take(&mut parser.fields))?;
        }
    }
    if parser.state == State::InQuotedField {
        parser.save_field();
        on_record(&parser.fields)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects the records as plain strings.
    fn records(text: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        read_records(text, |fields| {
            out.push(fields.iter().map(|f| f.text.clone()).collect());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn reads_like_python_csv_reader() {
        // Expected values follow CPython's `csv.reader` (excel dialect, strict=False).
        assert_eq!(records(""), Vec::<Vec<String>>::new());
        assert_eq!(records("\n\r\n\r"), Vec::<Vec<String>>::new());
        assert_eq!(records("a,b\nc"), [vec!["a", "b"], vec!["c"]]);
        assert_eq!(records("a,\n"), [vec!["a", ""]]);
        assert_eq!(records(",\r"), [vec!["", ""]]);
        assert_eq!(records("a\rb\r\nc"), [vec!["a"], vec!["b"], vec!["c"]]);
        assert_eq!(records(" a , b "), [vec![" a ", " b "]]);
        assert_eq!(records("\"a,b\",\"c\"\"d\""), [vec!["a,b", "c\"d"]]);
        assert_eq!(records("\"a\nb\"\nc"), [vec!["a\nb"], vec!["c"]]);
        assert_eq!(records("\"ab\"cd,e"), [vec!["abcd", "e"]]);
        assert_eq!(records("a\"b\""), [vec!["a\"b\""]]);
        assert_eq!(records("\"abc\ndef"), [vec!["abc\ndef"]]);
        assert_eq!(records("\"\""), [vec![""]]);
    }

    #[test]
    fn positions_are_one_based_and_point_at_the_field_start() {
        let mut seen = Vec::new();
        read_records("a\n\n\"x\ny\",b,c\n", |fields| {
            seen.extend(fields.iter().map(|f| (f.text.clone(), f.line, f.column)));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a".to_owned(), 1, 1),
                ("x\ny".to_owned(), 3, 1),
                ("b".to_owned(), 4, 2),
                ("c".to_owned(), 4, 3),
            ]
        );
    }

    fn vector(path: &str) -> String {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/vectors/");
        std::fs::read_to_string(format!("{root}{path}")).expect("test vector")
    }

    #[test]
    fn keys_on_another_curve_than_the_superlink_key_are_refused_with_their_position() {
        let p384 = vector("keys/supernode_p384_derived.pub");
        let p256 = vector("keys/supernode_p256_derived.pub");
        let text = format!(
            "{}\n{},{}",
            p384.trim_end(),
            p384.trim_end(),
            p256.trim_end()
        );
        // The plain parser keeps the reference's behaviour for other callers.
        assert_eq!(AllowList::parse(&text).expect("parses").len(), 2);
        let error = AllowList::parse_for_curve(&text, Curve::P384).expect_err("refused");
        assert!(
            matches!(
                error,
                CsvError::WrongCurve {
                    line: 2,
                    column: 2,
                    found: Curve::P256,
                    expected: Curve::P384
                }
            ),
            "{error:?}"
        );
        assert!(
            error.to_string().starts_with("line 2, column 2: "),
            "{error}"
        );
        let same = AllowList::parse_for_curve(&text, Curve::P256).expect_err("P-384 refused");
        assert!(matches!(
            same,
            CsvError::WrongCurve {
                line: 1,
                column: 1,
                ..
            }
        ));
        let only_p384 = AllowList::parse_for_curve(&p384, Curve::P384).expect("same curve");
        assert_eq!(only_p384.len(), 1);
    }

    #[test]
    fn field_limit_is_enforced() {
        let text = "x".repeat(FIELD_LIMIT + 1);
        let result = read_records(&text, |_| Ok(()));
        assert!(matches!(
            result,
            Err(CsvError::FieldTooLarge { line: 1, column: 1 })
        ));
        assert!(read_records(&text[1..], |_| Ok(())).is_ok());
    }
}
