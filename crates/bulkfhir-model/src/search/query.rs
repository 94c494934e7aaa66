//! Parsing `name[:modifier]=value,value&…` into clauses: parameter lookup in the generated table,
//! modifier checks, R4 value escaping (`\,` `\|` `\$` `\\`), one more percent-decoding, and the
//! typed values of each parameter type.

use super::SearchError;
use super::value::{
    Decimal, Prefix, QuantityValue, RefValue, TimeRange, TokenValue, fold, parse_date,
};
use crate::ResourceType;
use crate::fhirpath::{self, Expr};
use crate::generated::search_params::{
    NON_DOMAIN_RESOURCES, ParamType, SEARCH_PARAMS, SearchParamDef,
};
use crate::resource_type::truncate_for_message;

/// Search result parameters: they shape a result set and have no meaning in a filter.
const RESULT_PARAMS: &[&str] = &[
    "_sort",
    "_count",
    "_include",
    "_revinclude",
    "_summary",
    "_total",
    "_elements",
    "_contained",
    "_containedType",
    "_score",
];

/// Parameters defined for every interaction (R4 http.html), not filters: ignored.
const INTERACTION_PARAMS: &[&str] = &["_format", "_pretty"];

/// One AND-ed condition: a parameter with its OR-ed values.
#[derive(Debug, Clone)]
pub(crate) struct Clause {
    pub(crate) def: &'static SearchParamDef,
    /// The parameter's expression for its base type, parsed.
    pub(crate) expr: Expr,
    /// The comparable FHIR types the expression can give, by the R4 model; `None`: not known.
    pub(crate) leaf_types: Option<Vec<&'static str>>,
    /// `:not`: the resource matches when no value matches.
    pub(crate) negate: bool,
    pub(crate) test: Test,
}

/// What a clause compares, by parameter type and modifier; each `Vec` is OR-ed.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    /// `:missing=true|false`.
    Missing(Vec<bool>),
    Token(Vec<TokenValue>),
    /// `:text`: folded text that CodeableConcept.text / Coding.display / Identifier.type.text
    /// must start with.
    TokenText(Vec<String>),
    /// `:of-type`: Identifier.type coding (system, code) and Identifier.value.
    TokenOfType(Vec<[String; 3]>),
    /// `only` is the `:Type` modifier.
    Reference {
        values: Vec<RefValue>,
        only: Option<&'static str>,
    },
    /// `:identifier`: a token on Reference.identifier.
    ReferenceIdentifier(Vec<TokenValue>),
    Date(Vec<(Prefix, TimeRange)>),
    Number(Vec<(Prefix, Decimal)>),
    Quantity(Vec<QuantityValue>),
    /// Values are folded for `StartsWith` and `Contains`, verbatim for `Exact`.
    String {
        mode: StringMode,
        values: Vec<String>,
    },
    Uri {
        mode: UriMode,
        values: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StringMode {
    StartsWith,
    Contains,
    Exact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UriMode {
    Exact,
    Below,
    Above,
}

/// Splits `Type?query` into its type and `name=value` pairs. The query is itself a URL query
/// string (clients percent-encode it inside the `_typeFilter` value), so after splitting on `&`
/// and `=` each name and value is percent-decoded once: `%2C` becomes a `,` that separates
/// values, `%26` an `&` inside a value. FHIR escapes (`\,`) are still in the values.
pub(crate) fn split_type_filter(
    text: &str,
) -> Result<(ResourceType, Vec<(String, String)>), SearchError> {
    let Some((type_name, query)) = text.split_once('?') else {
        return Err(SearchError::new(format!(
            "'{}' is not a search query of the form Type?name=value",
            truncate_for_message(text)
        )));
    };
    let resource_type = ResourceType::parse(type_name).map_err(|_| {
        SearchError::new(format!("unknown resource type '{}'", truncate_for_message(type_name)))
    })?;
    let decode = |text: &str, parameter: Option<&str>| {
        String::from_utf8(percent_decode(text)).map_err(|_| {
            let message =
                format!("'{}' is not UTF-8 after percent-decoding", truncate_for_message(text));
            match parameter {
                Some(name) => SearchError::for_parameter(message, name),
                None => SearchError::new(message),
            }
        })
    };
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|part| !part.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(SearchError::new(format!(
                "'{}' is not a name=value search parameter",
                truncate_for_message(part)
            )));
        };
        let name = decode(name, None)?;
        let value = decode(value, Some(&name))?;
        pairs.push((name, value));
    }
    Ok((resource_type, pairs))
}

/// Parses the `name=value` pairs of a query on `resource_type` into clauses.
pub(crate) fn parse_pairs(
    resource_type: ResourceType,
    pairs: &[(String, String)],
) -> Result<Vec<Clause>, SearchError> {
    let mut clauses = Vec::new();
    for (name, raw_value) in pairs {
        if let Some(clause) = parse_pair(resource_type, name, raw_value)
            .map_err(|message| SearchError::for_parameter(message, name))?
        {
            clauses.push(clause);
        }
    }
    Ok(clauses)
}

/// One pair; `None` when it is ignored (an empty value or `_format`).
fn parse_pair(
    resource_type: ResourceType,
    name: &str,
    raw_value: &str,
) -> Result<Option<Clause>, String> {
    let shown = truncate_for_message(name);
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    if code.is_empty() {
        return Err("a search parameter has an empty name".to_owned());
    }
    if code == "_has" {
        return Err(format!("reverse chaining ('{shown}') is not supported"));
    }
    if RESULT_PARAMS.contains(&code) {
        return Err(format!("'{code}' is a search result parameter; it is not supported here"));
    }
    if INTERACTION_PARAMS.contains(&code) {
        return Ok(None);
    }
    if code.contains('.') || modifier.is_some_and(|m| m.contains('.')) {
        return Err(format!("chained parameters ('{shown}') are not supported"));
    }
    let def = find_param(resource_type, code)
        .ok_or_else(|| format!("unknown search parameter '{shown}' for {resource_type}"))?;
    if let Some(reason) = def.unsupported {
        return Err(format!(
            "search parameter '{code}' of {resource_type} is not supported: {reason}"
        ));
    }
    let pieces: Vec<&str> =
        split_unescaped(raw_value, b',').into_iter().filter(|piece| !piece.is_empty()).collect();
    let (test, negate) = build_test(def, modifier, &pieces)?;
    // The generator checked every supported expression against the R4 definitions, and a unit
    // test parses them all; this is not expected to fail.
    let expr = fhirpath::parse(def.expression, &[]).map_err(|e| {
        format!(
            "search parameter '{code}' of {resource_type}: its expression `{}` cannot be parsed: {}",
            def.expression, e.message
        )
    })?;
    let comparable = def.param_type.comparable_types();
    let leaf_types = fhirpath::model::result_types(&expr, resource_type.as_str())
        .map(|types| types.into_iter().filter(|t| comparable.contains(t)).collect());
    // Empty parameters are ignored (R4 search 3.1.1.3); so is one whose values are all empty.
    Ok((!pieces.is_empty()).then_some(Clause { def, expr, leaf_types, negate, test }))
}

/// The row for `code` on `resource_type`, or the common one (`_id`, `_lastUpdated`, …).
pub(crate) fn find_param(
    resource_type: ResourceType,
    code: &str,
) -> Option<&'static SearchParamDef> {
    let lookup = |base: &str| {
        [SEARCH_PARAMS, super::ig::IG_SEARCH_PARAMS].into_iter().find_map(|table| {
            table
                .binary_search_by(|row| (row.base, row.code).cmp(&(base, code)))
                .ok()
                .map(|idx| &table[idx])
        })
    };
    lookup(resource_type.as_str()).or_else(|| lookup("Resource")).or_else(|| {
        if NON_DOMAIN_RESOURCES.contains(&resource_type.as_str()) {
            None
        } else {
            lookup("DomainResource")
        }
    })
}

fn build_test(
    def: &'static SearchParamDef,
    modifier: Option<&str>,
    pieces: &[&str],
) -> Result<(Test, bool), String> {
    let param_type = def.param_type;
    let test = match (param_type, modifier) {
        (_, Some("missing")) => Test::Missing(each(pieces, parse_bool)?),
        (ParamType::Token, None | Some("not")) => {
            let values = each(pieces, |p| TokenValue::from_parts(&unescape_parts(p)?))?;
            return Ok((Test::Token(values), modifier.is_some()));
        }
        (ParamType::Token, Some("text")) => {
            Test::TokenText(each(pieces, |p| Ok(fold(&unescape(p)?)))?)
        }
        (ParamType::Token, Some("of-type")) => Test::TokenOfType(each(pieces, |p| {
            <[String; 3]>::try_from(unescape_parts(p)?)
                .ok()
                .filter(|parts| parts.iter().all(|part| !part.is_empty()))
                .ok_or_else(|| format!("'{}' is not system|code|value", truncate_for_message(p)))
        })?),
        (ParamType::Token, Some(m @ ("in" | "not-in" | "below" | "above"))) => {
            return Err(format!("modifier ':{m}' needs terminology services and is not supported"));
        }
        (ParamType::Reference, None) => {
            Test::Reference { values: each(pieces, parse_reference)?, only: None }
        }
        (ParamType::Reference, Some("identifier")) => {
            Test::ReferenceIdentifier(each(pieces, |p| {
                TokenValue::from_parts(&unescape_parts(p)?)
            })?)
        }
        (ParamType::Reference, Some(m @ ("above" | "below"))) => {
            return Err(format!("modifier ':{m}' (hierarchy search) is not supported"));
        }
        (ParamType::Reference, Some(type_name)) if ResourceType::parse(type_name).is_ok() => {
            let only = ResourceType::parse(type_name).map_err(|e| e.to_string())?.as_str();
            if !def.targets.is_empty() && !def.targets.contains(&only) {
                return Err(format!("{only} is not a target type of this reference parameter"));
            }
            let values = each(pieces, |p| match parse_reference(p)? {
                RefValue::Id(id) => Ok(RefValue::Id(id)),
                RefValue::Typed { resource_type, id } if resource_type == only => {
                    Ok(RefValue::Id(id))
                }
                _ => Err(format!(
                    "with ':{only}' the value must be an id, not '{}'",
                    truncate_for_message(p)
                )),
            })?;
            Test::Reference { values, only: Some(only) }
        }
        (ParamType::Date, None) => Test::Date(each(pieces, |p| {
            let text = unescape(p)?;
            let (prefix, date) = Prefix::split(&text)?;
            let range = parse_date(date, true).ok_or_else(|| {
                format!("'{}' is not a valid date or dateTime", truncate_for_message(date))
            })?;
            Ok((prefix, range))
        })?),
        (ParamType::Number, None) => Test::Number(each(pieces, |p| {
            let text = unescape(p)?;
            let (prefix, number) = Prefix::split(&text)?;
            Ok((prefix, parse_number(number)?))
        })?),
        (ParamType::Quantity, None) => Test::Quantity(each(pieces, parse_quantity)?),
        (ParamType::String, None | Some("contains")) => Test::String {
            mode: if modifier.is_some() { StringMode::Contains } else { StringMode::StartsWith },
            values: each(pieces, |p| Ok(fold(&unescape(p)?)))?,
        },
        (ParamType::String, Some("exact")) => {
            Test::String { mode: StringMode::Exact, values: each(pieces, unescape)? }
        }
        (ParamType::Uri, None | Some("below" | "above")) => {
            let mode = match modifier {
                Some("below") => UriMode::Below,
                Some(_) => UriMode::Above,
                None => UriMode::Exact,
            };
            Test::Uri {
                mode,
                values: each(pieces, |p| {
                    let value = unescape(p)?;
                    if mode != UriMode::Exact && value.starts_with("urn:") {
                        return Err(":above and :below apply to URLs, not URNs".to_owned());
                    }
                    Ok(value)
                })?,
            }
        }
        (_, Some(m)) => {
            return Err(format!(
                "unknown or unsupported modifier ':{}' for a {} parameter",
                truncate_for_message(m),
                type_name(param_type)
            ));
        }
        (ParamType::Composite | ParamType::Special, None) => {
            return Err("composite and special parameters are not supported".to_owned());
        }
    };
    Ok((test, false))
}

/// `token`, `date`, …: the R4 name of a parameter type.
pub(crate) fn type_name(param_type: ParamType) -> &'static str {
    match param_type {
        ParamType::Number => "number",
        ParamType::Date => "date",
        ParamType::String => "string",
        ParamType::Token => "token",
        ParamType::Reference => "reference",
        ParamType::Composite => "composite",
        ParamType::Quantity => "quantity",
        ParamType::Uri => "uri",
        ParamType::Special => "special",
    }
}

fn each<T>(pieces: &[&str], parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    pieces.iter().map(|piece| parse(piece)).collect()
}

fn parse_bool(piece: &str) -> Result<bool, String> {
    match unescape(piece)?.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => {
            Err(format!(":missing takes true or false, not '{}'", truncate_for_message(other)))
        }
    }
}

fn parse_reference(piece: &str) -> Result<RefValue, String> {
    RefValue::parse(&unescape(piece)?)
}

fn parse_number(text: &str) -> Result<Decimal, String> {
    Decimal::parse(text, false).ok_or_else(|| {
        format!("'{}' is not a number (or has more than 36 digits)", truncate_for_message(text))
    })
}

fn parse_quantity(piece: &str) -> Result<QuantityValue, String> {
    let parts = unescape_parts(piece)?;
    let (number, system, code) = match parts.as_slice() {
        [number] => (number, "", ""),
        [number, system, code] => (number, system.as_str(), code.as_str()),
        _ => {
            return Err(format!(
                "'{}' is not number or number|system|code",
                truncate_for_message(piece)
            ));
        }
    };
    let (prefix, number) = Prefix::split(number)?;
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok(QuantityValue {
        prefix,
        number: parse_number(number)?,
        system: non_empty(system),
        code: non_empty(code),
    })
}

/// Splits `raw` at each `separator` not escaped by a backslash. Pieces keep their escapes.
pub(crate) fn split_unescaped(raw: &str, separator: u8) -> Vec<&str> {
    let bytes = raw.as_bytes();
    let (mut pieces, mut start, mut idx) = (Vec::new(), 0, 0);
    while idx < bytes.len() {
        match bytes[idx] {
            b'\\' => idx += 2,
            byte if byte == separator => {
                // ASCII separator: both `idx` and `idx + 1` are character boundaries.
                pieces.push(&raw[start..idx]);
                start = idx + 1;
                idx += 1;
            }
            _ => idx += 1,
        }
    }
    pieces.push(&raw[start..]);
    pieces
}

/// `a|b` → the unescaped, decoded parts `a`, `b`.
fn unescape_parts(piece: &str) -> Result<Vec<String>, String> {
    split_unescaped(piece, b'|').into_iter().map(unescape).collect()
}

/// Resolves the R4 escapes `\,` `\|` `\$` `\\` (any other backslash is an error). Values
/// arrive percent-decoded (by the URL layer, or by [`split_type_filter`]), so a `%` is literal.
pub(crate) fn unescape(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(escaped @ (',' | '|' | '$' | '\\')) => out.push(escaped),
            Some(other) => {
                return Err(format!(
                    "invalid escape '\\{other}' (only \\, \\| \\$ and \\\\ are allowed)"
                ));
            }
            None => return Err("a value ends with a lone '\\'".to_owned()),
        }
    }
    Ok(out)
}

/// RFC 3986 percent-decoding; a `%` not followed by two hex digits stays as it is, and `+` is
/// not a space.
pub(crate) fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%'
            && let (Some(high), Some(low)) =
                (bytes.get(idx + 1).and_then(hex), bytes.get(idx + 2).and_then(hex))
        {
            out.push(high * 16 + low);
            idx += 3;
            continue;
        }
        out.push(bytes[idx]);
        idx += 1;
    }
    out
}

fn hex(byte: &u8) -> Option<u8> {
    char::from(*byte).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_on_unescaped_separators_and_decode_once() {
        assert_eq!(split_unescaped(r"a,b\,c,,d", b','), ["a", r"b\,c", "", "d"]);
        assert_eq!(split_unescaped(r"a\\,b", b','), [r"a\\", "b"]);
        assert_eq!(split_unescaped("é,ü", b','), ["é", "ü"]);
        assert_eq!(unescape(r"b\,c\|d\$e\\f").unwrap(), r"b,c|d$e\f");
        // Values arrive decoded: a `%` left in them is text.
        assert_eq!(unescape("a%2Cb%7Cc%25").unwrap(), "a%2Cb%7Cc%25");
        assert_eq!(unescape("a+b").unwrap(), "a+b");
        assert!(unescape(r"a\b").is_err());
        assert!(unescape("a\\").is_err());
    }

    #[test]
    fn type_filters_split_into_pairs() {
        let (resource_type, pairs) =
            split_type_filter("Observation?code=a&date=ge2020&&status=final").unwrap();
        assert_eq!(resource_type.as_str(), "Observation");
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[1], ("date".to_owned(), "ge2020".to_owned()));
        assert!(split_type_filter("Observation").is_err());
        assert!(split_type_filter("Nope?a=b").is_err());
        assert!(split_type_filter("Observation?code").is_err());
        // The inner query is decoded as a query string: `%2C` separates values (Cumulus's
        // smart-fetch sends `category=social-history%2Cvital-signs`), `%5C%2C` is an escaped
        // comma, `%26` an `&` inside a value, `+` stays a plus, a lone `%` stays.
        let (_, pairs) = split_type_filter(
            "Observation?category=social-history%2Cvital-signs&code%3Atext=a%26b%5C%2Cc+d%&x=%C3%A9",
        )
        .unwrap();
        assert_eq!(pairs[0], ("category".to_owned(), "social-history,vital-signs".to_owned()));
        assert_eq!(pairs[1], ("code:text".to_owned(), r"a&b\,c+d%".to_owned()));
        assert_eq!(pairs[2].1, "é");
        assert!(split_type_filter("Observation?code=%FF").is_err());
    }

    #[test]
    fn common_parameters_are_found_for_every_type() {
        let patient = ResourceType::PATIENT;
        assert_eq!(find_param(patient, "_id").map(|d| d.base), Some("Resource"));
        assert_eq!(find_param(patient, "_text").map(|d| d.base), Some("DomainResource"));
        assert!(find_param(ResourceType::BUNDLE, "_text").is_none());
        assert_eq!(find_param(patient, "birthdate").map(|d| d.base), Some("Patient"));
        assert!(find_param(patient, "nope").is_none());
    }
}
