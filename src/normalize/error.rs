//! Why a request body could not be normalized.
//!
//! Every variant maps to HTTP 400 `invalid_payload`; the Display text is the response message
//! and the dead-letter reason, so it says what is wrong and where, and quotes input only
//! truncated and escaped.

/// A request body that is not a valid PubNub presence webhook.
///
/// Display is a one-line human message naming the field (and the batch item, `data[i]: …`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NormalizeError {
    /// An Events & Actions batch of more items than allowed (not an invalid body: too much).
    #[error("batch of {count} items exceeds the limit of {max}")]
    TooManyItems {
        /// Items in the batch.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A body (or batch item) that would take more memory to parse than any presence event
    /// needs: more JSON values in the fields hookbus reads than the parse budget, or more
    /// delta user ids than a body may carry.
    #[error("{what} is too large to parse: more than {max} JSON values")]
    TooLarge {
        /// What ran over, e.g. `body`, `item` or `delta`.
        what: String,
        /// The limit.
        max: usize,
    },
    /// The body is empty or whitespace only.
    #[error("body is empty")]
    EmptyBody,
    /// The body is not UTF-8; `offset` is the first invalid byte.
    #[error("body is not valid UTF-8 (first invalid byte at offset {offset})")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },
    /// The body is not JSON (syntax, lone surrogate escape, number beyond f64, nesting > 128).
    #[error("invalid JSON at line {line} column {column}: {reason}")]
    InvalidJson {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser found wrong.
        reason: String,
    },
    /// The body (or a batch item) is JSON but not an object.
    #[error("{what} is not a JSON object (found {found})")]
    NotAnObject {
        /// `body` or `item`.
        what: &'static str,
        /// The JSON type found instead, e.g. `an array`.
        found: &'static str,
    },
    /// An object that matches none of the generations.
    #[error(
        "unrecognized payload: expected \"action\" or \"status\" (G1), \"schema\" and \"id\" \
         (G2), or \"schema\"/\"dataSchema\" with a \"data\" array (Events & Actions)"
    )]
    UnknownFormat,
    /// A G1 `action` that is not a known action.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// A G1 `status` other than `active` / `inactive`.
    #[error("unknown status {0:?}")]
    UnknownStatus(String),
    /// A G2 / Events & Actions schema naming no known presence event.
    #[error("unknown event kind {0:?}")]
    UnknownEvent(String),
    /// A required field is absent or null.
    #[error("{field} is missing")]
    Missing {
        /// Field name, e.g. `channel`.
        field: String,
    },
    /// A required string field is empty.
    #[error("{field} is empty")]
    Empty {
        /// Field name, e.g. `channel`.
        field: String,
    },
    /// A field (the channel) contains U+0000–U+001F or U+007F.
    #[error("{field} contains control character U+{code:04X} at byte {offset}")]
    ControlChar {
        /// Field name, e.g. `channel`.
        field: String,
        /// The offending code point.
        code: u32,
        /// Its byte offset in the field value.
        offset: usize,
    },
    /// An integer field outside its range (negative occupancy, beyond u64/i64, a timestamp
    /// outside 1970–9999).
    #[error("{field}: number out of range")]
    OutOfRange {
        /// Field name, e.g. `occupancy`.
        field: String,
    },
    /// A field of the wrong type or shape.
    #[error("{field}: {reason}")]
    Invalid {
        /// Field name, e.g. `timestamp` or `usersJoined[2]`.
        field: String,
        /// What is wrong, e.g. `expected an integer, got 1.5`.
        reason: String,
    },
    /// Item `index` of an Events & Actions batch is invalid; the whole batch is rejected.
    #[error("data[{index}]: {error}")]
    Item {
        /// 0-based index in the `data` array.
        index: usize,
        /// What is wrong with the item.
        error: Box<NormalizeError>,
    },
}

impl NormalizeError {
    /// Splits serde_json's "<reason> at line L column C" into its parts. At end of input the
    /// reason names the innermost construct left open in `text` (object, array or string),
    /// which says more than serde_json's "EOF while parsing a value" after a trailing comma.
    pub(super) fn from_json(e: &serde_json::Error, text: &str) -> Self {
        let (line, column) = (e.line(), e.column());
        let reason = match (e.classify(), open_construct(text)) {
            (serde_json::error::Category::Eof, Some(open)) => format!("EOF while parsing {open}"),
            _ => {
                let full = e.to_string();
                let suffix = format!(" at line {line} column {column}");
                full.strip_suffix(&suffix).unwrap_or(&full).to_owned()
            }
        };
        NormalizeError::InvalidJson {
            line,
            column,
            reason,
        }
    }

    /// Wraps an item error with its batch index.
    pub(super) fn in_item(self, index: usize) -> Self {
        NormalizeError::Item {
            index,
            error: Box::new(self),
        }
    }
}

/// The innermost object, array or string still open at the end of `text`.
fn open_construct(text: &str) -> Option<&'static str> {
    let mut stack = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => stack.push(b),
            b'}' | b']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    if in_string {
        return Some("a string");
    }
    stack
        .last()
        .map(|&b| if b == b'{' { "an object" } else { "an array" })
}
