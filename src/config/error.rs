//! Configuration errors for the operator editing `gateway.yaml`.
//!
//! Every problem names the file, line, column and key path, and says what was expected.
//! Problems are gathered, not thrown one at a time, so one `portcullis check` lists them all.
//! Messages never quote secret values.

use std::fmt;

/// A position in the configuration file (1-based; 0 when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    /// Line number, from 1.
    pub line: u32,
    /// Column number, from 1.
    pub column: u32,
}

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the operator named it.
    pub file: String,
    /// Where the offending key or value starts.
    pub pos: Pos,
    /// The key path, e.g. `routes[0].upstream`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pos.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.pos.line, self.pos.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in one configuration file; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file as the operator named it.
    pub file: String,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} has {} problems", self.file, many.len())?;
                for e in many {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects problems while a configuration is resolved.
#[derive(Debug)]
pub(crate) struct Problems {
    file: String,
    errors: Vec<ConfigError>,
}

impl Problems {
    pub(crate) fn new(file: impl Into<String>) -> Self {
        Problems {
            file: file.into(),
            errors: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, pos: Pos, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            pos,
            key: key.into(),
            message: message.into(),
        });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub(crate) fn into_result<T>(mut self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            self.errors.sort_by_key(|e| (e.pos.line, e.pos.column));
            Err(ConfigErrors {
                file: self.file,
                errors: self.errors,
            })
        }
    }
}
