//! Why a filter was rejected: [`FilterError`]. Its `Display` is the text the client sees and
//! its `code` the stable machine-readable one.
//!
//! One type for both steps, parsing and binding, because a join reports them the same way;
//! `clip` is here because every variant that echoes client text bounds it the same way.

/// Client text echoed in error messages is clipped so an 8 KiB filter can't bloat replies.
const ERROR_ECHO_CHARS: usize = 100;

/// Why a filter was rejected. `Display` is the text shown to the client. `parse` returns only
/// `Syntax`, `TooLong` and `TooManyConditions` (Supabase's "Error parsing" family); everything
/// else comes from `bind` and is the inner text of Supabase's P0001 exception message.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FilterError {
    /// Unknown operator, missing `=`/`.`, `in` without parentheses, empty segment, bad quoting.
    #[error("Error parsing `filter` params: {0}")]
    Syntax(String),
    #[error("filter is too long. Maximum 8192 bytes")]
    TooLong,
    #[error("filter has too many conditions. Maximum 100")]
    TooManyConditions,
    #[error("invalid column for filter {0}")]
    UnknownColumn(String),
    #[error("invalid input for type {typname}: \"{value}\"")]
    InvalidValue { typname: String, value: String },
    #[error("invalid value for is filter: {0}")]
    InvalidIsValue(String),
    #[error("is.{value} requires a boolean column, got {typname}")]
    IsRequiresBool { value: String, typname: String },
    #[error("too many values for `in` filter. Maximum 100")]
    TooManyInValues,
    #[error("operator {op} requires a text-compatible column type, got {typname}")]
    NotTextCompatible { op: &'static str, typname: String },
    #[error("operator {op} is not supported for column type {typname}")]
    UnsupportedOperator { op: &'static str, typname: String },
    #[error("invalid regular expression for {op} filter: {message}")]
    InvalidRegex { op: &'static str, message: String },
    #[error("LIKE pattern must not end with escape character")]
    LikeTrailingEscape,
}

impl FilterError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            FilterError::Syntax(_) => "InvalidFilter",
            FilterError::TooLong => "FilterTooLong",
            FilterError::TooManyConditions => "TooManyConditions",
            FilterError::UnknownColumn(_) => "UnknownColumn",
            FilterError::InvalidValue { .. }
            | FilterError::InvalidIsValue(_)
            | FilterError::LikeTrailingEscape => "InvalidFilterValue",
            FilterError::TooManyInValues => "TooManyInValues",
            FilterError::IsRequiresBool { .. }
            | FilterError::NotTextCompatible { .. }
            | FilterError::UnsupportedOperator { .. } => "UnsupportedOperator",
            FilterError::InvalidRegex { .. } => "InvalidRegex",
        }
    }
}

pub(super) fn clip(s: &str) -> String {
    match s.char_indices().nth(ERROR_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", s.get(..end).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let exact = "é".repeat(ERROR_ECHO_CHARS);
        assert_eq!(clip(&exact), exact);
        let long = "é".repeat(ERROR_ECHO_CHARS + 1);
        assert_eq!(clip(&long), format!("{exact}…"));
    }
}
