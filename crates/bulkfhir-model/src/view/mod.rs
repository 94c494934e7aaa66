//! SQL on FHIR v2 ViewDefinitions: check a ViewDefinition once ([`ViewDefinition::parse`]), then
//! turn resources into rows ([`ViewDefinition::rows`]).
//!
//! The engine follows the processing algorithm of the ViewDefinition page of the SQL on FHIR v2
//! specification (`select`, `column`, `forEach`, `forEachOrNull`, `repeat`, `unionAll`, `where`,
//! `constant`, `%rowIndex`) and the FHIRPath subset it needs, plus `getResourceKey()` and
//! `getReferenceKey([Type])`. It passes every test of the official conformance suite (see
//! `testdata/sql-on-fhir/`). There is no I/O here: the caller feeds resources and receives rows.
//!
//! ```
//! use bulkfhir_model::view::ViewDefinition;
//! use serde_json::json;
//!
//! let view = ViewDefinition::parse(&json!({
//!     "resourceType": "ViewDefinition",
//!     "resource": "Patient",
//!     "select": [
//!         {"column": [{"name": "id", "path": "getResourceKey()"}]},
//!         {"forEach": "name", "column": [{"name": "family", "path": "family"}]}
//!     ]
//! }))?;
//! let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe"}, {"family": "Roe"}]});
//! assert_eq!(view.columns().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "family"]);
//! assert_eq!(view.rows(&patient)?, vec![vec![json!("p1"), json!("Doe")], vec![json!("p1"), json!("Roe")]]);
//! # Ok::<(), bulkfhir_model::view::ViewError>(())
//! ```
//!
//! # Readings
//!
//! * **What [`parse`](ViewDefinition::parse) refuses:** a missing or unknown (R4) `resource`; a
//!   missing or empty `select`; a column or view `name` that is not `^[A-Za-z][A-Za-z0-9_]*$`; a
//!   column name used twice in the view; `unionAll` branches whose columns differ in name, order,
//!   `collection` or (when both give one) `type`; more than one of `forEach`, `forEachOrNull` and
//!   `repeat` in a select; a constant without exactly one `value[x]` of an allowed type, with a
//!   value of the wrong JSON kind, or named `rowIndex`; FHIRPath that does not parse, calls an
//!   unknown function or names an undefined `%constant`; an element of a select, column, `where`
//!   or constant that the specification does not define (such as `modifierExtension`, or a
//!   misspelt `forEachOrNul`), because running a view while ignoring part of it would give wrong
//!   rows silently. Top-level elements other than those used here (`url`, `status`, `meta`, ...)
//!   are not checked.
//! * **What [`rows`](ViewDefinition::rows) refuses:** a column without `collection: true` that
//!   finds several values; a `where` that gives anything but empty or one boolean; a FHIRPath
//!   evaluation error. A resource of another type, or one that a `where` rejects, gives no rows.
//! * **Column values:** empty is `null` (`[]` for a `collection` column), one value is that JSON
//!   value (objects included: a column's `type` is recorded, not enforced), several values are an
//!   array in a `collection` column. A `forEachOrNull` that finds nothing gives one row of `null`s,
//!   except `0` in the columns whose path is exactly `%rowIndex`.
//! * **Keys:** `getResourceKey()` is the resource `id`; `getReferenceKey([Type])` is the id of a
//!   relative reference `Type/id` (or `Type/id/_history/v`), and empty for absolute, `urn:` and
//!   `#contained` references or another type than asked for. The two match for joins.

mod reach;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

use serde_json::{Map, Value};

pub use crate::fhirpath::reach::Reads;

use crate::ResourceType;
use crate::fhirpath::{self, Constant, Env, Expr, Item, project};
use crate::resource_type::truncate_for_message;

/// Deepest nesting of `select` / `unionAll` that [`ViewDefinition::parse`] accepts.
const MAX_SELECT_DEPTH: usize = 64;

/// A parsed and validated ViewDefinition, ready to turn resources into rows.
///
/// Every FHIRPath expression is parsed once, here; [`rows`](ViewDefinition::rows) only evaluates.
#[derive(Debug)]
pub struct ViewDefinition {
    resource: ResourceType,
    name: Option<String>,
    constants: Vec<Constant>,
    wheres: Vec<Path>,
    selects: Vec<Select>,
    columns: Vec<Column>,
    /// The top-level elements the view can read, or `None` when it can read the resource
    /// whole (see [`parse_resource`](ViewDefinition::parse_resource)).
    reads: Option<Reads>,
}

/// A column of a view's output, in output order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name, unique in the view.
    pub name: String,
    /// The declared FHIR type (`type`), if any; recorded, not enforced.
    pub type_name: Option<String>,
    /// Whether the column holds an array of all the values found (`collection: true`).
    pub collection: bool,
}

/// Why a ViewDefinition was refused, or why running it on a resource failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The ViewDefinition breaks its structure or one of its rules (found by `parse`).
    #[error("invalid ViewDefinition at {location}: {message}")]
    Invalid {
        /// Where, e.g. `select[0].column[1].name`.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A FHIRPath expression does not parse or uses something not supported (found by `parse`).
    #[error("invalid FHIRPath at {location} ('{expression}', offset {offset}): {message}")]
    Syntax {
        /// Where the expression is, e.g. `select[0].forEach`.
        location: String,
        /// The expression (shortened when long).
        expression: String,
        /// Byte offset of the problem in the expression.
        offset: usize,
        /// What is wrong.
        message: String,
    },
    /// Evaluating an expression on a resource failed (found by `rows`).
    #[error("FHIRPath evaluation failed at {location} ('{expression}'): {message}")]
    Evaluation {
        /// Where the expression is.
        location: String,
        /// The expression (shortened when long).
        expression: String,
        /// What went wrong.
        message: String,
    },
    /// One resource gave more rows (or `repeat` more nodes) than [`MAX_ROWS_PER_RESOURCE`]:
    /// sibling selects and nested `forEach`es multiply, and a view must not be able to exhaust
    /// the server's memory with one resource (found by `rows`).
    #[error("the view gives more than {limit} rows (or repeat nodes) for one resource")]
    TooManyRows {
        /// The limit.
        limit: usize,
    },
    /// A column without `collection: true` found several values (found by `rows`).
    #[error("column '{column}' found {count} values but is not declared with \"collection\": true")]
    MultipleValues {
        /// The column name.
        column: String,
        /// How many values its path gave.
        count: usize,
    },
    /// A `where` gave something other than empty or a single boolean (found by `rows`).
    #[error("where[{index}] ('{expression}') must give a boolean, but gave {found}")]
    WhereNotBoolean {
        /// Position of the `where` in the view.
        index: usize,
        /// The expression (shortened when long).
        expression: String,
        /// What it gave instead, e.g. `a string` or `3 values`.
        found: String,
    },
}

fn invalid(location: impl Into<String>, message: impl Into<String>) -> ViewError {
    ViewError::Invalid { location: location.into(), message: message.into() }
}

/// A FHIRPath expression of the view, with where it came from for error messages.
#[derive(Debug)]
struct Path {
    location: String,
    source: String,
    expr: Expr,
}

impl Path {
    fn parse(value: &Value, location: String, constants: &[String]) -> Result<Path, ViewError> {
        let Some(source) = value.as_str() else {
            return Err(invalid(
                location,
                format!("must be a FHIRPath string, got {}", json_kind(value)),
            ));
        };
        match fhirpath::parse(source, constants) {
            Ok(expr) => Ok(Path { location, source: source.to_owned(), expr }),
            Err(e) => Err(ViewError::Syntax {
                location,
                expression: truncate_for_message(source),
                offset: e.offset,
                message: e.message,
            }),
        }
    }

    fn eval<'a>(&'a self, focus: &Item<'a>, env: &Env<'a>) -> Result<Vec<Item<'a>>, ViewError> {
        fhirpath::evaluate(&self.expr, focus.clone(), env).map_err(|e| ViewError::Evaluation {
            location: self.location.clone(),
            expression: truncate_for_message(&self.source),
            message: e.message,
        })
    }
}

#[derive(Debug)]
enum Iteration {
    None,
    ForEach(Path),
    ForEachOrNull(Path),
    Repeat(Vec<Path>),
}

#[derive(Debug)]
struct ColumnDef {
    name: String,
    path: Path,
    collection: bool,
}

/// A selection structure. Its rows are partial rows holding its own columns, then those of each
/// nested select, then those of its `unionAll`: a contiguous run of the view's columns.
#[derive(Debug)]
struct Select {
    iteration: Iteration,
    columns: Vec<ColumnDef>,
    selects: Vec<Select>,
    union_all: Vec<Select>,
    /// The row a `forEachOrNull` that finds nothing gives.
    null_row: Vec<Value>,
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The `sql-name` invariant: `^[A-Za-z][A-Za-z0-9_]*$`.
fn is_sql_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn object<'v>(value: &'v Value, location: &str) -> Result<&'v Map<String, Value>, ViewError> {
    value
        .as_object()
        .ok_or_else(|| invalid(location, format!("must be an object, got {}", json_kind(value))))
}

fn array<'v>(value: &'v Value, location: &str) -> Result<&'v [Value], ViewError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(invalid(location, format!("must be an array, got {}", json_kind(other)))),
    }
}

fn only_keys(map: &Map<String, Value>, location: &str, allowed: &[&str]) -> Result<(), ViewError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(invalid(
            format!("{location}.{}", truncate_for_message(key)),
            format!("is not an element here (expected one of: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn sql_name(map: &Map<String, Value>, location: &str) -> Result<String, ViewError> {
    let location = format!("{location}.name");
    match map.get("name") {
        Some(Value::String(name)) if is_sql_name(name) => Ok(name.clone()),
        Some(Value::String(name)) => Err(invalid(
            location,
            format!(
                "'{}' is not a valid name: use letters, digits and '_', starting with a letter",
                truncate_for_message(name)
            ),
        )),
        Some(other) => {
            Err(invalid(location, format!("must be a string, got {}", json_kind(other))))
        }
        None => Err(invalid(location, "is required")),
    }
}

/// Appends `new` to `columns`, refusing a name already there.
fn append_columns(
    columns: &mut Vec<Column>,
    new: Vec<Column>,
    location: &str,
) -> Result<(), ViewError> {
    for column in new {
        if columns.iter().any(|c| c.name == column.name) {
            return Err(invalid(
                location,
                format!("column '{}' is defined more than once", column.name),
            ));
        }
        columns.push(column);
    }
    Ok(())
}

/// The FHIR types a constant may have (`ViewDefinition.constant.value[x]`).
const CONSTANT_TYPES: &[&str] = &[
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "integer64",
    "oid",
    "string",
    "positiveInt",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
];

fn parse_constant(value: &Value, location: &str) -> Result<(String, Constant), ViewError> {
    let map = object(value, location)?;
    let name = sql_name(map, location)?;
    if name == "rowIndex" {
        return Err(invalid(format!("{location}.name"), "'rowIndex' is reserved for %rowIndex"));
    }
    let mut found = None;
    for (key, v) in map {
        match key.as_str() {
            "name" | "id" | "extension" => {}
            _ => {
                let ty = key
                    .strip_prefix("value")
                    .and_then(fhirpath::choice_type)
                    .filter(|t| CONSTANT_TYPES.contains(t))
                    .ok_or_else(|| {
                        invalid(
                            format!("{location}.{}", truncate_for_message(key)),
                            "is not an element of a constant (expected name and one value[x] of a primitive type)",
                        )
                    })?;
                if found.is_some() {
                    return Err(invalid(location, "has more than one value[x]"));
                }
                found = Some((key, ty, v));
            }
        }
    }
    let Some((key, ty, v)) = found else {
        return Err(invalid(location, format!("constant '{name}' has no value[x]")));
    };
    let at = format!("{location}.{key}");
    let wrong = || invalid(at.clone(), format!("is not a valid {ty}, got {}", json_kind(v)));
    let value = match ty {
        "boolean" => v.as_bool().map(Value::Bool).ok_or_else(wrong)?,
        "integer" | "positiveInt" | "unsignedInt" => {
            let min = match ty {
                "positiveInt" => 1,
                "unsignedInt" => 0,
                _ => i64::from(i32::MIN),
            };
            match v.as_i64() {
                Some(i) if i >= min && i <= i64::from(i32::MAX) => Value::from(i),
                _ => return Err(wrong()),
            }
        }
        "integer64" => match v {
            Value::Number(n) if n.is_i64() => v.clone(),
            Value::String(s) => s.parse::<i64>().map(Value::from).map_err(|_| wrong())?,
            _ => return Err(wrong()),
        },
        "decimal" => match v {
            Value::Number(n) if fhirpath::Decimal::from_number(n).is_some() => v.clone(),
            _ => return Err(wrong()),
        },
        "date" | "dateTime" | "instant" => {
            let parsed = v.as_str().and_then(fhirpath::Temporal::parse_date_time);
            match parsed {
                Some(t)
                    if ty == "dateTime"
                        || (ty == "date" && t.is_date())
                        || (ty == "instant" && t.is_instant()) =>
                {
                    v.clone()
                }
                _ => return Err(wrong()),
            }
        }
        "time" => match v.as_str().and_then(fhirpath::Temporal::parse_time) {
            Some(_) => v.clone(),
            None => return Err(wrong()),
        },
        _ => match v {
            Value::String(_) => v.clone(),
            _ => return Err(wrong()),
        },
    };
    Ok((name, Constant { value, ty }))
}

fn parse_select(
    value: &Value,
    location: &str,
    constants: &[String],
    depth: usize,
) -> Result<(Select, Vec<Column>), ViewError> {
    if depth > MAX_SELECT_DEPTH {
        return Err(invalid(
            location,
            format!("selects are nested deeper than {MAX_SELECT_DEPTH} levels"),
        ));
    }
    let map = object(value, location)?;
    only_keys(
        map,
        location,
        &["column", "select", "forEach", "forEachOrNull", "repeat", "unionAll", "id", "extension"],
    )?;
    let iterations =
        ["forEach", "forEachOrNull", "repeat"].iter().filter(|k| map.contains_key(**k)).count();
    if iterations > 1 {
        return Err(invalid(location, "may have only one of forEach, forEachOrNull and repeat"));
    }
    let iteration = if let Some(v) = map.get("forEach") {
        Iteration::ForEach(Path::parse(v, format!("{location}.forEach"), constants)?)
    } else if let Some(v) = map.get("forEachOrNull") {
        Iteration::ForEachOrNull(Path::parse(v, format!("{location}.forEachOrNull"), constants)?)
    } else if let Some(v) = map.get("repeat") {
        let at = format!("{location}.repeat");
        let items = array(v, &at)?;
        if items.is_empty() {
            return Err(invalid(at, "must not be empty"));
        }
        let paths = items
            .iter()
            .enumerate()
            .map(|(i, p)| Path::parse(p, format!("{at}[{i}]"), constants))
            .collect::<Result<Vec<_>, _>>()?;
        Iteration::Repeat(paths)
    } else {
        Iteration::None
    };

    let mut all = Vec::new();
    let mut columns = Vec::new();
    let mut null_row = Vec::new();
    if let Some(v) = map.get("column") {
        let at = format!("{location}.column");
        let mut own = Vec::new();
        for (i, c) in array(v, &at)?.iter().enumerate() {
            let (def, column) = parse_column(c, &format!("{at}[{i}]"), constants)?;
            null_row.push(if def.path.expr.is_row_index() { Value::from(0) } else { Value::Null });
            columns.push(def);
            own.push(column);
        }
        append_columns(&mut all, own, &at)?;
    }
    let mut selects = Vec::new();
    if let Some(v) = map.get("select") {
        let at = format!("{location}.select");
        for (i, s) in array(v, &at)?.iter().enumerate() {
            let here = format!("{at}[{i}]");
            let (select, nested) = parse_select(s, &here, constants, depth + 1)?;
            null_row.extend(select.null_row.iter().cloned());
            append_columns(&mut all, nested, &here)?;
            selects.push(select);
        }
    }
    let mut union_all = Vec::new();
    if let Some(v) = map.get("unionAll") {
        let at = format!("{location}.unionAll");
        let branches = array(v, &at)?;
        if branches.is_empty() {
            return Err(invalid(at, "must not be empty"));
        }
        let mut first: Option<Vec<Column>> = None;
        for (i, s) in branches.iter().enumerate() {
            let here = format!("{at}[{i}]");
            let (select, branch) = parse_select(s, &here, constants, depth + 1)?;
            match &first {
                None => {
                    null_row.extend(select.null_row.iter().cloned());
                    first = Some(branch);
                }
                Some(expected) => check_union_branch(expected, &branch, &here)?,
            }
            union_all.push(select);
        }
        append_columns(&mut all, first.unwrap_or_default(), &at)?;
    }
    Ok((Select { iteration, columns, selects, union_all, null_row }, all))
}

/// Every `unionAll` branch must give the columns of the first, in the same order.
fn check_union_branch(
    expected: &[Column],
    branch: &[Column],
    location: &str,
) -> Result<(), ViewError> {
    let names =
        |columns: &[Column]| columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
    if expected.len() != branch.len() || expected.iter().zip(branch).any(|(a, b)| a.name != b.name)
    {
        return Err(invalid(
            location,
            format!(
                "unionAll branches must give the same columns in the same order: this one gives [{}], the first gives [{}]",
                names(branch),
                names(expected)
            ),
        ));
    }
    for (a, b) in expected.iter().zip(branch) {
        if a.collection != b.collection {
            return Err(invalid(
                location,
                format!("column '{}' is a collection in one unionAll branch only", a.name),
            ));
        }
        if let (Some(x), Some(y)) = (&a.type_name, &b.type_name)
            && x != y
        {
            return Err(invalid(
                location,
                format!(
                    "column '{}' has type '{y}' here but '{x}' in the first unionAll branch",
                    a.name
                ),
            ));
        }
    }
    Ok(())
}

fn parse_column(
    value: &Value,
    location: &str,
    constants: &[String],
) -> Result<(ColumnDef, Column), ViewError> {
    let map = object(value, location)?;
    only_keys(
        map,
        location,
        &["name", "path", "description", "collection", "type", "tag", "tags", "id", "extension"],
    )?;
    let name = sql_name(map, location)?;
    let path = match map.get("path") {
        Some(p) => Path::parse(p, format!("{location}.path"), constants)?,
        None => return Err(invalid(format!("{location}.path"), "is required")),
    };
    let collection = match map.get("collection") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(
                format!("{location}.collection"),
                format!("must be a boolean, got {}", json_kind(other)),
            ));
        }
    };
    let type_name = match map.get("type") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(other) => {
            return Err(invalid(
                format!("{location}.type"),
                format!("must be a string, got {}", json_kind(other)),
            ));
        }
    };
    Ok((ColumnDef { name: name.clone(), path, collection }, Column { name, type_name, collection }))
}

/// The most rows one resource may give, and the most nodes one `repeat` may visit.
pub const MAX_ROWS_PER_RESOURCE: usize = 100_000;

/// Every combination of a row of `left` followed by a row of `right`.
fn cross<T: Clone>(left: Vec<Vec<T>>, mut right: Vec<Vec<T>>) -> Result<Vec<Vec<T>>, ViewError> {
    if left.len().saturating_mul(right.len()) > MAX_ROWS_PER_RESOURCE {
        return Err(ViewError::TooManyRows { limit: MAX_ROWS_PER_RESOURCE });
    }
    // Values are moved where they are used last and cloned only where a row is repeated (one
    // select and one row, the common case, copies nothing).
    let mut out = Vec::with_capacity(left.len() * right.len());
    let left_len = left.len();
    let right_len = right.len();
    for (i, l) in left.into_iter().enumerate() {
        let last_left = i + 1 == left_len;
        let mut l = Some(l);
        for (j, r) in right.iter_mut().enumerate() {
            let mut row = if j + 1 == right_len { l.take() } else { l.clone() }.unwrap_or_default();
            if last_left {
                row.append(r);
            } else {
                row.extend_from_slice(r);
            }
            out.push(row);
        }
    }
    Ok(out)
}

impl ViewDefinition {
    /// Parses and validates a ViewDefinition (JSON), parsing every FHIRPath expression in it.
    ///
    /// See the module notes for what is refused.
    pub fn parse(view: &Value) -> Result<ViewDefinition, ViewError> {
        let map = object(view, "ViewDefinition")?;
        match map.get("resourceType") {
            None => {}
            Some(Value::String(t)) if t == "ViewDefinition" => {}
            Some(other) => {
                return Err(invalid(
                    "resourceType",
                    format!("must be \"ViewDefinition\", got {other}"),
                ));
            }
        }
        let resource = match map.get("resource") {
            Some(Value::String(t)) => ResourceType::parse(t).map_err(|_| {
                invalid(
                    "resource",
                    format!("'{}' is not a FHIR R4 resource type", truncate_for_message(t)),
                )
            })?,
            Some(other) => {
                return Err(invalid(
                    "resource",
                    format!("must be a string, got {}", json_kind(other)),
                ));
            }
            None => return Err(invalid("resource", "is required")),
        };
        let name = match map.get("name") {
            None => None,
            Some(_) => Some(sql_name(map, "ViewDefinition")?),
        };

        let mut constant_names = Vec::new();
        let mut constants = Vec::new();
        if let Some(v) = map.get("constant") {
            for (i, c) in array(v, "constant")?.iter().enumerate() {
                let location = format!("constant[{i}]");
                let (name, constant) = parse_constant(c, &location)?;
                if constant_names.contains(&name) {
                    return Err(invalid(
                        format!("{location}.name"),
                        format!("constant '{name}' is defined more than once"),
                    ));
                }
                constant_names.push(name);
                constants.push(constant);
            }
        }

        let mut wheres = Vec::new();
        if let Some(v) = map.get("where") {
            for (i, w) in array(v, "where")?.iter().enumerate() {
                let location = format!("where[{i}]");
                let w = object(w, &location)?;
                only_keys(w, &location, &["path", "description", "id", "extension"])?;
                match w.get("path") {
                    Some(p) => {
                        wheres.push(Path::parse(p, format!("{location}.path"), &constant_names)?)
                    }
                    None => return Err(invalid(format!("{location}.path"), "is required")),
                }
            }
        }

        let select = match map.get("select") {
            Some(v) => array(v, "select")?,
            None => return Err(invalid("select", "is required")),
        };
        if select.is_empty() {
            return Err(invalid("select", "must not be empty"));
        }
        let mut columns = Vec::new();
        let mut selects = Vec::new();
        for (i, s) in select.iter().enumerate() {
            let location = format!("select[{i}]");
            let (select, new) = parse_select(s, &location, &constant_names, 1)?;
            append_columns(&mut columns, new, &location)?;
            selects.push(select);
        }
        let mut view =
            ViewDefinition { resource, name, constants, wheres, selects, columns, reads: None };
        view.reads = reach::reads(&view).ok();
        Ok(view)
    }

    /// The resource type the view is over, e.g. `Patient`.
    pub fn resource(&self) -> &str {
        self.resource.as_str()
    }

    /// The view's `name`, if it has one (a valid SQL name).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The output columns, in output order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The elements of a resource the view can read (always its `resourceType` and `id`), or
    /// `None` when it can read the resource whole.
    pub fn reads(&self) -> Option<&Reads> {
        self.reads.as_ref()
    }

    /// Parses the JSON text of a resource for [`rows`](ViewDefinition::rows), building only the
    /// elements the view can read ([`reads`](ViewDefinition::reads)): the rows are those of the
    /// whole resource, and building the values a view never looks at is most of the cost of
    /// running it over stored resources. The whole text is still checked to be JSON.
    pub fn parse_resource(&self, json: &[u8]) -> Result<Value, serde_json::Error> {
        match &self.reads {
            Some(reads) => project::parse(json, reads),
            None => serde_json::from_slice(json),
        }
    }

    /// The rows `resource` gives, each holding one value per column in [`columns`] order
    /// (`Value::Null` where nothing was found). A resource of another type, or one a `where`
    /// rejects, gives no rows.
    ///
    /// [`columns`]: ViewDefinition::columns
    pub fn rows(&self, resource: &Value) -> Result<Vec<Vec<Value>>, ViewError> {
        Ok(self
            .rows_borrowed(resource)?
            .into_iter()
            .map(|row| row.into_iter().map(Cow::into_owned).collect())
            .collect())
    }

    /// [`rows`](ViewDefinition::rows), with the values found in `resource` borrowed from it
    /// rather than copied (a writer that only reads them, as the export's, copies nothing).
    pub fn rows_borrowed<'a>(
        &'a self,
        resource: &'a Value,
    ) -> Result<Vec<Vec<Cow<'a, Value>>>, ViewError> {
        if resource.get("resourceType").and_then(Value::as_str) != Some(self.resource.as_str()) {
            return Ok(Vec::new());
        }
        let root = Item::borrowed(resource, None);
        let env = Env { resource, constants: &self.constants, row_index: 0, typed: false };
        for (index, w) in self.wheres.iter().enumerate() {
            let result = w.eval(&root, &env)?;
            let found = match result.as_slice() {
                [] => return Ok(Vec::new()),
                [one] => match &*one.value {
                    Value::Bool(true) => continue,
                    Value::Bool(false) => return Ok(Vec::new()),
                    other => json_kind(other).to_owned(),
                },
                many => format!("{} values", many.len()),
            };
            return Err(ViewError::WhereNotBoolean {
                index,
                expression: truncate_for_message(&w.source),
                found,
            });
        }
        let mut rows = vec![Vec::new()];
        for select in &self.selects {
            let part = self.process(select, &root, 0, resource)?;
            rows = cross(std::mem::take(&mut rows), part)?;
        }
        Ok(rows)
    }

    /// The partial rows of `select` on `node` (the `Process(S, N)` step of the specification).
    fn process<'a>(
        &'a self,
        select: &'a Select,
        node: &Item<'a>,
        row_index: usize,
        resource: &'a Value,
    ) -> Result<Vec<Vec<Cow<'a, Value>>>, ViewError> {
        let env = |row_index| Env { resource, constants: &self.constants, row_index, typed: false };
        let outer = env(row_index);
        let foci = match &select.iteration {
            Iteration::None => vec![node.clone()],
            Iteration::ForEach(path) | Iteration::ForEachOrNull(path) => path.eval(node, &outer)?,
            Iteration::Repeat(paths) => {
                let mut found = Vec::new();
                repeat(paths, node, &outer, &mut found, 0)?;
                found
            }
        };
        let iterating = !matches!(select.iteration, Iteration::None);
        let mut rows = Vec::new();
        for (i, focus) in foci.iter().enumerate() {
            let row_index = if iterating { i } else { row_index };
            let env = env(row_index);
            let mut own = Vec::with_capacity(select.columns.len());
            for column in &select.columns {
                own.push(column_value(column, focus, &env)?);
            }
            let mut partial = vec![own];
            for nested in &select.selects {
                let part = self.process(nested, focus, row_index, resource)?;
                partial = cross(partial, part)?;
            }
            if !select.union_all.is_empty() {
                let mut union = Vec::new();
                for branch in &select.union_all {
                    union.extend(self.process(branch, focus, row_index, resource)?);
                    if union.len() > MAX_ROWS_PER_RESOURCE {
                        return Err(ViewError::TooManyRows { limit: MAX_ROWS_PER_RESOURCE });
                    }
                }
                partial = cross(partial, union)?;
            }
            rows.extend(partial);
            if rows.len() > MAX_ROWS_PER_RESOURCE {
                return Err(ViewError::TooManyRows { limit: MAX_ROWS_PER_RESOURCE });
            }
        }
        if foci.is_empty() && matches!(select.iteration, Iteration::ForEachOrNull(_)) {
            rows.push(select.null_row.iter().map(Cow::Borrowed).collect());
        }
        Ok(rows)
    }
}

/// `repeat`: every node reachable from `node` by following the paths again and again, depth
/// first, in document order.
fn repeat<'a>(
    paths: &'a [Path],
    node: &Item<'a>,
    env: &Env<'a>,
    found: &mut Vec<Item<'a>>,
    depth: usize,
) -> Result<(), ViewError> {
    for path in paths {
        if depth > fhirpath::MAX_DEPTH {
            return Err(ViewError::Evaluation {
                location: path.location.clone(),
                expression: truncate_for_message(&path.source),
                message: format!("repeat went deeper than {} levels", fhirpath::MAX_DEPTH),
            });
        }
        for child in path.eval(node, env)? {
            if found.len() >= MAX_ROWS_PER_RESOURCE {
                return Err(ViewError::TooManyRows { limit: MAX_ROWS_PER_RESOURCE });
            }
            found.push(child.clone());
            repeat(paths, &child, env, found, depth + 1)?;
        }
    }
    Ok(())
}

fn column_value<'a>(
    column: &'a ColumnDef,
    focus: &Item<'a>,
    env: &Env<'a>,
) -> Result<Cow<'a, Value>, ViewError> {
    let mut values = column.path.eval(focus, env)?;
    Ok(match (values.len(), column.collection) {
        (_, true) => {
            Cow::Owned(Value::Array(values.into_iter().map(|v| v.value.into_owned()).collect()))
        }
        (0, false) => Cow::Owned(Value::Null),
        (1, false) => values.pop().map_or(Cow::Owned(Value::Null), |v| v.value),
        (count, false) => {
            return Err(ViewError::MultipleValues { column: column.name.clone(), count });
        }
    })
}
