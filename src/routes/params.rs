//! Request details every HTTP route and stream reads the same way: query parameters (each at
//! most once, only the allowed names), symbol and type lists, client input quoted back in
//! errors, and bearer credentials.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::error::{ApiError, ErrorCode};
use crate::hub::SymbolFilter;
use crate::market::{EventKind, SymbolUniverse};

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
/// in `allowed`. An empty value (`start=&end=`, as forms and URL builders send for unset
/// fields) is the same as leaving the parameter out.
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
        // Dropped only now, so `start=&start=x` is still a repeat.
        map.retain(|_, value| !value.is_empty());
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

/// Parses `symbols=AAPL,MSFT` (or `*`). `required` makes an absent list an error.
pub fn parse_symbols(
    raw: Option<&str>,
    universe: &SymbolUniverse,
    max_symbols: usize,
    required: bool,
) -> Result<SymbolFilter, ApiError> {
    let Some(raw) = raw else {
        return if required {
            Err(ApiError::new(
                ErrorCode::InvalidParameter,
                "symbols is required (a comma-separated list, or * for all)",
            ))
        } else {
            Ok(SymbolFilter::All)
        };
    };
    // Names already in upper case (the usual request) are borrowed, not copied.
    let mut names: Vec<Cow<'_, str>> = Vec::new();
    for name in raw
        .split(',')
        .map(|s| {
            let s = s.trim();
            if s.bytes().any(|b| b.is_ascii_lowercase()) {
                Cow::Owned(s.to_ascii_uppercase())
            } else {
                Cow::Borrowed(s)
            }
        })
        .filter(|s| !s.is_empty())
    {
        // `AAPL,aapl` is one symbol, counted once against the limit.
        if !names.contains(&name) {
            names.push(name);
        }
        if names.len() > max_symbols {
            break;
        }
    }
    if names.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "symbols must name at least one symbol, or * for all",
        ));
    }
    if names.iter().any(|s| s == "*") {
        return Ok(SymbolFilter::All);
    }
    if names.len() > max_symbols {
        return Err(ApiError::new(
            ErrorCode::TooManySymbols,
            format!("too many symbols: at most {max_symbols} per subscription"),
        ));
    }
    let mut ids = Vec::with_capacity(names.len());
    let mut unknown = Vec::new();
    for name in &names {
        match universe.id(name) {
            Some(id) => ids.push(id),
            None => unknown.push(name.as_ref()),
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::new(
            ErrorCode::UnknownSymbol,
            format!(
                "unknown symbol(s): {}{}",
                unknown
                    .iter()
                    .take(10)
                    .map(|s| echo(s))
                    .collect::<Vec<_>>()
                    .join(", "),
                if unknown.len() > 10 {
                    format!(" and {} more", unknown.len() - 10)
                } else {
                    String::new()
                }
            ),
        ));
    }
    Ok(SymbolFilter::from_ids(ids))
}

/// Parses `types=trades,quotes,bars` into a kind mask (all market kinds when absent).
pub fn parse_types(raw: Option<&str>) -> Result<u8, ApiError> {
    let market_kinds = [EventKind::Trade, EventKind::Quote, EventKind::Bar];
    let Some(raw) = raw else {
        return Ok(market_kinds.iter().fold(0, |m, k| m | k.bit()));
    };
    let mut mask = 0u8;
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name == "*" {
            return Ok(market_kinds.iter().fold(0, |m, k| m | k.bit()));
        }
        match EventKind::from_plural(name) {
            Some(
                kind @ (EventKind::Trade | EventKind::Quote | EventKind::Bar | EventKind::Status),
            ) => mask |= kind.bit(),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::UnknownType,
                    format!("unknown type {name:?}; use trades, quotes, bars, statuses or *"),
                ));
            }
        }
    }
    if mask == 0 {
        return Err(ApiError::new(
            ErrorCode::UnknownType,
            "types must name at least one of trades, quotes, bars, statuses",
        ));
    }
    Ok(mask)
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

    #[test]
    fn symbol_names_are_matched_in_any_case_and_counted_once() {
        let universe = SymbolUniverse::new(["AAPL", "MSFT"]);
        let filter =
            parse_symbols(Some(" aapl,AAPL ,Msft"), &universe, 2, true).expect("two known symbols");
        assert_eq!(filter, SymbolFilter::from_ids([0, 1]));
        let unknown = parse_symbols(Some("AAPL,nope"), &universe, 2, true).unwrap_err();
        assert!(unknown.message.contains("NOPE"), "{}", unknown.message);
    }
}
