//! Per-type comparison of search values with the nodes an expression selected (R4 search
//! 3.1.1.4.6–3.1.1.4.12).

use std::cmp::Ordering;

use serde_json::Value;

use super::query::{Clause, StringMode, Test, UriMode};
use super::value::{
    DAY_MICROS, Decimal, Prefix, QuantityValue, RefValue, SystemMatch, TimeRange, TokenValue, fold,
    parse_date, split_reference, strip_history,
};
use crate::Instant;

/// One value a parameter's expression selected, with the FHIR type the R4 model gives it there.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    pub(crate) value: &'a Value,
    pub(crate) fhir_type: &'static str,
}

/// Whether the nodes selected for `clause`'s parameter satisfy it (`:not` applied).
pub(crate) fn clause_matches(clause: &Clause, nodes: &[Node<'_>], now: Instant) -> bool {
    let any = |test: &dyn Fn(&Node<'_>) -> bool| nodes.iter().any(test);
    let found = match &clause.test {
        Test::Missing(values) => return values.contains(&nodes.is_empty()),
        Test::Token(values) => any(&|n| values.iter().any(|v| token_matches(n, v))),
        Test::TokenText(values) => any(&|n| token_text_matches(n, values)),
        Test::TokenOfType(values) => any(&|n| values.iter().any(|v| of_type_matches(n, v))),
        Test::Reference { values, only } => {
            let targets = clause.def.targets;
            any(&|n| values.iter().any(|v| reference_matches(n, v, *only, targets)))
        }
        Test::ReferenceIdentifier(values) => any(&|n| {
            n.fhir_type == "Reference"
                && n.value
                    .get("identifier")
                    .is_some_and(|id| values.iter().any(|v| system_value_matches(id, v, "value")))
        }),
        Test::Date(values) => any(&|n| {
            target_range(n)
                .is_some_and(|t| values.iter().any(|(p, s)| date_matches(*p, *s, t, now)))
        }),
        Test::Number(values) => any(&|n| {
            number_bounds(n).is_some_and(|(low, high)| {
                values.iter().any(|(p, v)| numeric_matches(*p, *v, low, high))
            })
        }),
        Test::Quantity(values) => any(&|n| values.iter().any(|v| quantity_matches(n, v))),
        Test::String { mode, values } => any(&|n| string_matches(n, *mode, values)),
        Test::Uri { mode, values } => any(&|n| {
            n.value.as_str().is_some_and(|s| values.iter().any(|v| uri_matches(s, v, *mode)))
        }),
    };
    found != clause.negate
}

fn str_of<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(|v| v.as_str())
}

fn array_of<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value.get(key).and_then(|v| v.as_array()).into_iter().flat_map(|a| a.iter())
}

/// Token search on one node (R4 search 3.1.1.4.10 data type table).
fn token_matches(node: &Node<'_>, token: &TokenValue) -> bool {
    let value = node.value;
    let no_system = !matches!(token.system, SystemMatch::Is(_));
    let Some(code) = &token.code else {
        // `system|`: only elements that carry a system.
        return match node.fhir_type {
            "Coding" => system_value_matches(value, token, "code"),
            "Identifier" => system_value_matches(value, token, "value"),
            "CodeableConcept" => codings_match(value, token),
            _ => false,
        };
    };
    match node.fhir_type {
        "Coding" => system_value_matches(value, token, "code"),
        "Identifier" => system_value_matches(value, token, "value"),
        "CodeableConcept" => codings_match(value, token),
        "ContactPoint" => no_system && str_of(value, "value") == Some(code),
        // The system of a `code` is implicit (its value set); a given system is not checked.
        "code" => value.as_str() == Some(code),
        "boolean" => {
            no_system && value.as_bool().is_some_and(|b| code == if b { "true" } else { "false" })
        }
        // R4: a token search on a `string` is not case-sensitive.
        "string" => {
            no_system && value.as_str().is_some_and(|s| s.to_lowercase() == code.to_lowercase())
        }
        "id" | "uri" | "url" | "canonical" | "oid" | "uuid" => {
            no_system && value.as_str() == Some(code)
        }
        _ => false,
    }
}

fn codings_match(concept: &Value, token: &TokenValue) -> bool {
    array_of(concept, "coding").any(|coding| system_value_matches(coding, token, "code"))
}

/// A Coding (`code`) or Identifier (`value`) against `system|code`.
fn system_value_matches(element: &Value, token: &TokenValue, code_key: &str) -> bool {
    let system_ok = match &token.system {
        SystemMatch::Any => true,
        SystemMatch::NoSystem => element.get("system").is_none_or(|s| s.is_null()),
        SystemMatch::Is(system) => str_of(element, "system") == Some(system),
    };
    system_ok && token.code.as_ref().is_none_or(|code| str_of(element, code_key) == Some(code))
}

/// `:text`: CodeableConcept.text, Coding.display or Identifier.type.text starts with the value,
/// as a string search (case- and accent-insensitive).
fn token_text_matches(node: &Node<'_>, values: &[String]) -> bool {
    let starts = |text: Option<&str>| {
        text.is_some_and(|t| {
            let folded = fold(t);
            values.iter().any(|v| folded.starts_with(v.as_str()))
        })
    };
    let value = node.value;
    match node.fhir_type {
        "CodeableConcept" => {
            starts(str_of(value, "text"))
                || array_of(value, "coding").any(|c| starts(str_of(c, "display")))
        }
        "Coding" => starts(str_of(value, "display")),
        "Identifier" => value.get("type").is_some_and(|t| starts(str_of(t, "text"))),
        _ => false,
    }
}

/// `:of-type`: an Identifier whose type has the coding system|code and whose value is value.
fn of_type_matches(node: &Node<'_>, [system, code, value]: &[String; 3]) -> bool {
    node.fhir_type == "Identifier"
        && str_of(node.value, "value") == Some(value)
        && node.value.get("type").is_some_and(|t| {
            array_of(t, "coding")
                .any(|c| str_of(c, "system") == Some(system) && str_of(c, "code") == Some(code))
        })
}

/// Reference search (R4 search 3.1.1.4.12). A relative literal reference `Type/id` matches `id`
/// (when `Type` is allowed), `Type/id`, and an absolute URL ending in `Type/id`; an absolute
/// literal reference matches only the same URL, because the server's own base is not known
/// here. `/_history/…` is ignored on both sides. Contained (`#id`) references never match.
fn reference_matches(
    node: &Node<'_>,
    wanted: &RefValue,
    only: Option<&str>,
    targets: &[&str],
) -> bool {
    match node.fhir_type {
        "Reference" => {
            let Some(literal) = str_of(node.value, "reference") else { return false };
            if literal.starts_with('#') {
                return false;
            }
            let absolute = literal.contains(':');
            let local = if absolute { None } else { split_reference(literal) };
            match wanted {
                RefValue::Id(id) => local.is_some_and(|(resource_type, local_id)| {
                    local_id == id
                        && only
                            .map_or(targets.is_empty() || targets.contains(&resource_type), |t| {
                                t == resource_type
                            })
                }),
                RefValue::Typed { resource_type, id } => {
                    local == Some((resource_type.as_str(), id.as_str()))
                }
                RefValue::Url { url, local: wanted_local } => {
                    strip_history(literal) == url
                        || wanted_local.as_ref().is_some_and(|(resource_type, id)| {
                            local == Some((resource_type.as_str(), id.as_str()))
                        })
                }
            }
        }
        // canonical / uri: the text itself, ignoring a `|version` the search does not name.
        "canonical" | "uri" | "url" => {
            node.value.as_str().is_some_and(|s| canonical_matches(s, &ref_text(wanted)))
        }
        _ => false,
    }
}

fn ref_text(value: &RefValue) -> String {
    match value {
        RefValue::Id(id) => id.clone(),
        RefValue::Typed { resource_type, id } => format!("{resource_type}/{id}"),
        RefValue::Url { url, .. } => url.clone(),
    }
}

/// `http://x|1.0` matches `http://x|1.0` and `http://x`.
fn canonical_matches(stored: &str, wanted: &str) -> bool {
    stored == wanted
        || (!wanted.contains('|') && stored.split_once('|').is_some_and(|(url, _)| url == wanted))
}

fn uri_matches(stored: &str, wanted: &str, mode: UriMode) -> bool {
    match mode {
        UriMode::Exact => canonical_matches(stored, wanted),
        UriMode::Below => stored.starts_with(wanted),
        UriMode::Above => !stored.is_empty() && wanted.starts_with(stored),
    }
}

/// The time range of a date-like node: its precision for date/dateTime, one microsecond for an
/// instant, `[start, end)` for a Period (a missing bound is open), the outer limits of
/// `Timing.event`. `None` when it has no usable date.
fn target_range(node: &Node<'_>) -> Option<TimeRange> {
    let value = node.value;
    let parse = |text: &str| parse_date(text, false);
    match node.fhir_type {
        "date" | "dateTime" => value.as_str().and_then(parse),
        "instant" => value.as_str().and_then(parse).map(|r| TimeRange { lo: r.lo, hi: r.lo + 1 }),
        "Period" => {
            let bound = |key| match str_of(value, key) {
                Some(text) => parse(text).map(Some).ok_or(()),
                None => Ok(None),
            };
            let (start, end) = (bound("start").ok()?, bound("end").ok()?);
            if start.is_none() && end.is_none() {
                return None;
            }
            Some(TimeRange {
                lo: start.map_or(i64::MIN, |r| r.lo),
                hi: end.map_or(i64::MAX, |r| r.hi),
            })
        }
        "Timing" => array_of(value, "event")
            .filter_map(|event| event.as_str().and_then(parse))
            .reduce(|a, b| TimeRange { lo: a.lo.min(b.lo), hi: a.hi.max(b.hi) }),
        _ => None,
    }
}

/// R4 prefix semantics on ranges (search 3.1.1.4.5): `s` is the search value's range, `t` the
/// target's; both half-open.
fn date_matches(prefix: Prefix, s: TimeRange, t: TimeRange, now: Instant) -> bool {
    let eq = s.lo <= t.lo && t.hi <= s.hi;
    match prefix {
        Prefix::Eq => eq,
        Prefix::Ne => !eq,
        Prefix::Gt => t.hi > s.hi,
        Prefix::Lt => t.lo < s.lo,
        Prefix::Ge => t.hi > s.hi || eq,
        Prefix::Le => t.lo < s.lo || eq,
        Prefix::Sa => t.lo >= s.hi,
        Prefix::Eb => t.hi <= s.lo,
        Prefix::Ap => {
            // 10 % of the distance between now and the value, and at least a day.
            let distance = (i128::from(now.as_micros()) - i128::from(s.lo)).unsigned_abs() / 10;
            let margin = i64::try_from(distance).unwrap_or(i64::MAX).max(DAY_MICROS);
            t.lo < s.hi.saturating_add(margin) && t.hi > s.lo.saturating_sub(margin)
        }
    }
}

/// A JSON number node as a decimal. `serde_json` reads a number as an `i64`, a `u64` or the
/// nearest `f64`, and writes the `f64` back as the shortest text that reads as the same `f64`:
/// the stored value exactly for integers and for decimals of up to 15 significant digits (`1.50`
/// compares as `1.5`, the same value).
fn number(value: &Value) -> Option<Decimal> {
    match value {
        Value::Number(n) => Decimal::parse(&n.to_string(), true),
        _ => None,
    }
}

/// The closed range of a number node: a point, or a Range's `[low, high]` (units ignored; an
/// open bound is `None`). `None` when there is no number at all.
fn number_bounds(node: &Node<'_>) -> Option<(Option<Decimal>, Option<Decimal>)> {
    if node.fhir_type == "Range" {
        let bound = |key| node.value.get(key).and_then(|q| q.get("value")).and_then(number);
        let (low, high) = (bound("low"), bound("high"));
        return (low.is_some() || high.is_some()).then_some((low, high));
    }
    number(node.value).map(|x| (Some(x), Some(x)))
}

/// Number/quantity prefixes: the target is the closed range `[low, high]` (a point for a plain
/// value; `None` is an open bound of a Range). `eq`, `ne` and `ap` use the search value's implicit
/// precision; the other prefixes compare with the exact value (R4 search 3.1.1.4.6).
fn numeric_matches(
    prefix: Prefix,
    v: Decimal,
    low: Option<Decimal>,
    high: Option<Decimal>,
) -> bool {
    let below = |bound: Option<Decimal>, x: Decimal, or_equal: bool| {
        bound.is_none_or(|b| {
            matches!(b.compare(x), Ordering::Less) || (or_equal && b.compare(x).is_eq())
        })
    };
    let above = |bound: Option<Decimal>, x: Decimal, or_equal: bool| {
        bound.is_none_or(|b| b.compare(x).is_gt() || (or_equal && b.compare(x).is_eq()))
    };
    let eq = || {
        let (s0, s1) = v.implicit_range();
        low.is_some_and(|l| l.compare(s0).is_ge()) && high.is_some_and(|h| h.compare(s1).is_lt())
    };
    match prefix {
        Prefix::Eq => eq(),
        Prefix::Ne => !eq(),
        Prefix::Gt => above(high, v, false),
        Prefix::Lt => below(low, v, false),
        Prefix::Ge => above(high, v, true),
        Prefix::Le => below(low, v, true),
        Prefix::Sa => low.is_some() && above(low, v, false),
        Prefix::Eb => high.is_some() && below(high, v, false),
        Prefix::Ap => {
            let ((s0, s1), (a0, a1)) = (v.implicit_range(), v.approximate_range());
            let lo = if s0.compare(a0).is_lt() { s0 } else { a0 };
            let hi = if s1.compare(a1).is_gt() { s1 } else { a1 };
            below(low, hi, true) && above(high, lo, true)
        }
    }
}

/// Quantity search: the value by [`numeric_matches`], the unit by system and code (no unit
/// conversion). Without a system, the code may match `Quantity.code` or `Quantity.unit`.
fn quantity_matches(node: &Node<'_>, wanted: &QuantityValue) -> bool {
    let value = node.value;
    let unit_ok = |system: Option<&str>, code: Option<&str>, unit: Option<&str>| {
        wanted.system.as_deref().is_none_or(|s| system == Some(s))
            && wanted
                .code
                .as_deref()
                .is_none_or(|c| code == Some(c) || (wanted.system.is_none() && unit == Some(c)))
    };
    let quantity_ok =
        |q: &Value| unit_ok(str_of(q, "system"), str_of(q, "code"), str_of(q, "unit"));
    match node.fhir_type {
        "Quantity" | "Age" | "Count" | "Distance" | "Duration" => {
            let x = value.get("value").and_then(number);
            x.is_some() && quantity_ok(value) && numeric_matches(wanted.prefix, wanted.number, x, x)
        }
        "Money" => {
            let x = value.get("value").and_then(number);
            x.is_some()
                && unit_ok(Some("urn:iso:std:iso:4217"), str_of(value, "currency"), None)
                && numeric_matches(wanted.prefix, wanted.number, x, x)
        }
        "Range" => {
            let bounds = [value.get("low"), value.get("high")];
            let values = bounds.map(|b| b.and_then(|q| q.get("value")).and_then(number));
            values.iter().any(Option::is_some)
                && bounds.iter().flatten().all(|q| quantity_ok(q))
                && numeric_matches(wanted.prefix, wanted.number, values[0], values[1])
        }
        // SampledData has no single value to compare.
        _ => false,
    }
}

/// String search: the string parts of the node (HumanName and Address parts, or the string).
fn string_matches(node: &Node<'_>, mode: StringMode, values: &[String]) -> bool {
    let value = node.value;
    let mut parts: Vec<&str> = Vec::new();
    match node.fhir_type {
        "string" | "markdown" => parts.extend(value.as_str()),
        "HumanName" => {
            parts.extend(["family", "text"].iter().filter_map(|k| str_of(value, k)));
            for key in ["given", "prefix", "suffix"] {
                parts.extend(array_of(value, key).filter_map(|v| v.as_str()));
            }
        }
        "Address" => {
            parts.extend(array_of(value, "line").filter_map(|v| v.as_str()));
            let keys = ["city", "district", "state", "postalCode", "country", "text"];
            parts.extend(keys.iter().filter_map(|k| str_of(value, k)));
        }
        _ => {}
    }
    parts.into_iter().any(|part| match mode {
        StringMode::Exact => values.iter().any(|v| v == part),
        StringMode::StartsWith => {
            let folded = fold(part);
            values.iter().any(|v| folded.starts_with(v.as_str()))
        }
        StringMode::Contains => {
            let folded = fold(part);
            values.iter().any(|v| folded.contains(v.as_str()))
        }
    })
}
