//! The runtime's one error type.
//!
//! Every failure a caller can see is a [`RuntimeError`]: a human message that already names the
//! file, tensor, input or symbol at fault, plus an [`ErrorKind`] coarse enough to be a C status
//! code. Callers print the message; programs (and the C API) branch on the kind.

use std::fmt;

/// What went wrong, coarsely: each kind is one C status code (see [`ErrorKind::status_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The caller passed something malformed (a null pointer, a bad dtype code, a tensor whose
    /// data does not match its shape).
    InvalidArgument,
    /// The weights are unreadable or do not fit the module (missing tensor, wrong dtype/shape).
    Weights,
    /// The module was generated for another ABI version.
    AbiMismatch,
    /// The module could not be loaded or does not export what the ABI requires.
    Library,
    /// The inputs to a run do not fit the manifest (names, dtypes, shapes, index ranges).
    Input,
    /// A bug in the runtime or the module (including a caught panic).
    Internal,
}

impl ErrorKind {
    /// The C status code for this kind; `0` is reserved for success.
    pub fn status_code(self) -> i32 {
        match self {
            ErrorKind::InvalidArgument => 1,
            ErrorKind::Weights => 2,
            ErrorKind::AbiMismatch => 3,
            ErrorKind::Library => 4,
            ErrorKind::Input => 5,
            ErrorKind::Internal => 6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::Weights => "weights",
            ErrorKind::AbiMismatch => "ABI mismatch",
            ErrorKind::Library => "library",
            ErrorKind::Input => "input",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure to load, bind or run a module. `Display` prints only the message, which is written
/// to be shown to a user as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeError {
    kind: ErrorKind,
    message: String,
}

impl RuntimeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> RuntimeError {
        RuntimeError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> RuntimeError {
        RuntimeError::new(ErrorKind::InvalidArgument, message)
    }

    pub fn weights(message: impl Into<String>) -> RuntimeError {
        RuntimeError::new(ErrorKind::Weights, message)
    }

    pub fn library(message: impl Into<String>) -> RuntimeError {
        RuntimeError::new(ErrorKind::Library, message)
    }

    pub fn input(message: impl Into<String>) -> RuntimeError {
        RuntimeError::new(ErrorKind::Input, message)
    }

    pub fn internal(message: impl Into<String>) -> RuntimeError {
        RuntimeError::new(ErrorKind::Internal, message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RuntimeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_distinct_and_nonzero() {
        let kinds = [
            ErrorKind::InvalidArgument,
            ErrorKind::Weights,
            ErrorKind::AbiMismatch,
            ErrorKind::Library,
            ErrorKind::Input,
            ErrorKind::Internal,
        ];
        let mut codes: Vec<i32> = kinds.iter().map(|k| k.status_code()).collect();
        assert!(codes.iter().all(|&c| c != 0));
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
    }

    #[test]
    fn display_is_the_message() {
        let e = RuntimeError::input("missing input \"input_ids\"");
        assert_eq!(e.to_string(), "missing input \"input_ids\"");
        assert_eq!(e.kind(), ErrorKind::Input);
    }
}
