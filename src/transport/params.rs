//! Request details every HTTP route reads the same way: query parameters (each at most once,
//! only the allowed names), client input quoted back in errors, and bearer credentials.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::error::{ApiError, ErrorCode};

/// The raw query extractor: pairs in order, so repeated names can be detected.
pub type RawQuery = actix_web::web::Query<Vec<(String, String)>>;

/// Longest piece of client input quoted back in an error message.
const ECHO_LIMIT: usize = 32;

/// Quotes client input in an error message, cut to a readable length.
pub fn echo(input: &str) -> String {
    if input.chars().count() <= ECHO_LIMIT {
        input.to_owned()
    } else {
        let cut: String = input.chars().take(ECHO_LIMIT).collect();
        format!("{cut}…")
    }
}

/// Turns query pairs into a map. A parameter given twice is refused (silently keeping one of
/// `symbols=AAPL&symbols=MSFT` would drop data the client asked for), and so is any name not
/// in `allowed`.
pub fn query_params(
    pairs: Vec<(String, String)>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let mut map = HashMap::with_capacity(pairs.len());
    for (key, value) in pairs {
        // One hash per parameter: this runs for every new subscriber.
        match map.entry(key) {
            Entry::Occupied(repeated) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "query parameter {} is given more than once; use one comma-separated list",
                        echo(repeated.key())
                    ),
                ));
            }
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
        }
    }
    let mut unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(map);
    }
    unknown.sort_unstable();
    Err(ApiError::new(
        ErrorCode::InvalidParameter,
        format!(
            "unknown query parameter(s): {}; allowed: {}",
            unknown
                .iter()
                .take(10)
                .map(|k| echo(k))
                .collect::<Vec<_>>()
                .join(", "),
            allowed.join(", ")
        ),
    ))
}

/// What the `Authorization` header of a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer<'a> {
    Absent,
    /// Present but not `Bearer <token>`.
    Malformed,
    Token(&'a str),
}

/// Reads `Authorization: Bearer <token>`; the scheme name is case-insensitive
/// (RFC 9110 section 11.1).
pub fn bearer(request: &HttpRequest) -> Bearer<'_> {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return Bearer::Absent;
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map_or(Bearer::Malformed, |(_, token)| Bearer::Token(token.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn repeated_and_unknown_parameters_are_refused_and_long_names_are_cut() {
        assert!(query_params(pairs(&[("symbols", "AAPL")]), &["symbols"]).is_ok());
        let repeated = query_params(pairs(&[("a", "1"), ("a", "2")]), &["a"]).unwrap_err();
        assert!(repeated.message.contains("more than once"));
        let long = "x".repeat(500);
        let unknown = query_params(pairs(&[(&long, "1")]), &["a"]).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::InvalidParameter);
        assert!(unknown.message.len() < 120, "{}", unknown.message);
    }

    #[test]
    fn bearer_accepts_any_case_of_the_scheme_and_nothing_else() {
        let request = |value: Option<&str>| {
            let mut test = actix_web::test::TestRequest::default();
            if let Some(value) = value {
                test = test.insert_header((header::AUTHORIZATION, value));
            }
            test.to_http_request()
        };
        assert_eq!(bearer(&request(None)), Bearer::Absent);
        assert_eq!(bearer(&request(Some("Bearer abc"))), Bearer::Token("abc"));
        assert_eq!(bearer(&request(Some("bearer abc"))), Bearer::Token("abc"));
        assert_eq!(bearer(&request(Some("Basic abc"))), Bearer::Malformed);
        assert_eq!(bearer(&request(Some("Bearer "))), Bearer::Malformed);
    }
}
