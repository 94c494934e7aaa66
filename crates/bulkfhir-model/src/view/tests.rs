//! Unit tests of the ViewDefinition engine and its FHIRPath subset, beyond the conformance suite
//! (`tests/sql_on_fhir.rs`).

use serde_json::{Value, json};

use super::{ViewDefinition, ViewError};
use crate::fhirpath::{self, Env, Item};

/// Evaluates `expr` on `resource` (no constants), giving the values or the error message.
fn eval(expr: &str, resource: &Value) -> Result<Vec<Value>, String> {
    let parsed = fhirpath::parse(expr, &[]).map_err(|e| format!("parse: {}", e.message))?;
    let env = Env { resource, constants: &[], row_index: 0, typed: false };
    fhirpath::evaluate(&parsed, Item::borrowed(resource, None), &env)
        .map(|items| items.into_iter().map(|i| i.value.into_owned()).collect())
        .map_err(|e| format!("eval: {}", e.message))
}

fn eval_ok(expr: &str, resource: &Value) -> Vec<Value> {
    eval(expr, resource).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

fn one(expr: &str) -> Value {
    let values = eval_ok(expr, &json!({"resourceType": "Patient"}));
    assert_eq!(values.len(), 1, "{expr} gave {values:?}");
    values.into_iter().next().unwrap()
}

fn empty(expr: &str) -> bool {
    eval_ok(expr, &json!({"resourceType": "Patient"})).is_empty()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "gender": "female",
        "birthDate": "1970-06",
        "name": [
            {"use": "official", "family": "Doe", "given": ["Jane", "J"]},
            {"use": "nickname", "given": ["JD"]}
        ],
        "deceasedBoolean": false,
        "extension": [{"url": "http://e/x", "valueCode": "c1"}],
        "managingOrganization": {"reference": "Organization/o1"}
    })
}

#[test]
fn paths_indexers_and_choice_elements() {
    let p = patient();
    assert_eq!(eval_ok("name.given", &p), [json!("Jane"), json!("J"), json!("JD")]);
    assert_eq!(eval_ok("Patient.name[1].given", &p), [json!("JD")]);
    assert_eq!(eval_ok("name[5]", &p), Vec::<Value>::new());
    assert_eq!(eval_ok("`name`.family", &p), [json!("Doe")]);
    assert_eq!(eval_ok("deceased", &p), [json!(false)]);
    assert_eq!(eval_ok("deceased.ofType(boolean)", &p), [json!(false)]);
    assert!(eval_ok("deceased.ofType(dateTime)", &p).is_empty());
    // code is a specialisation of string
    assert_eq!(eval_ok("extension.value.ofType(string)", &p), [json!("c1")]);
    assert_eq!(eval_ok("extension('http://e/x').value is code", &p), [json!(true)]);
    assert_eq!(eval_ok("(extension.value as code) & '!'", &p), [json!("c1!")]);
    assert_eq!(eval_ok("name.where(use = 'official').given.first()", &p), [json!("Jane")]);
    assert_eq!(eval_ok("name.select(given.count())", &p), [json!(2), json!(1)]);
    assert_eq!(eval_ok("name.given.where($index > 0 and $this != 'JD')", &p), [json!("J")]);
    assert_eq!(eval_ok("name.exists(family.exists())", &p), [json!(true)]);
    assert_eq!(eval_ok("name.all(given.exists())", &p), [json!(true)]);
    assert_eq!(
        eval_ok("name.given.last() | name.given.first() | 'JD'", &p),
        [json!("JD"), json!("Jane")]
    );
    assert_eq!(eval_ok("name.given.tail().take(1)", &p), [json!("J")]);
    assert_eq!(eval_ok("name.given.skip(2).single()", &p), [json!("JD")]);
    assert!(eval("name.given.single()", &p).unwrap_err().contains("single value"));
    assert_eq!(eval_ok("%resource.id", &p), [json!("p1")]);
    assert_eq!(eval_ok("iif(active, 'yes', 'no')", &p), [json!("yes")]);
    assert_eq!(eval_ok("'JD' in name.given", &p), [json!(true)]);
    assert_eq!(eval_ok("name.given contains 'X'", &p), [json!(false)]);
}

#[test]
fn keys() {
    let p = patient();
    assert_eq!(eval_ok("getResourceKey()", &p), [json!("p1")]);
    assert_eq!(eval_ok("managingOrganization.getReferenceKey()", &p), [json!("o1")]);
    assert_eq!(eval_ok("managingOrganization.getReferenceKey(Organization)", &p), [json!("o1")]);
    assert!(eval_ok("managingOrganization.getReferenceKey(Patient)", &p).is_empty());
    assert!(eval_ok("name.getResourceKey()", &p).is_empty());
    assert_eq!(fhirpath::reference_key("Patient/a.b-1/_history/2", None), Some("a.b-1"));
    assert_eq!(fhirpath::reference_key("http://x.org/fhir/Patient/1", None), None);
    assert_eq!(fhirpath::reference_key("urn:uuid:9a3b", None), None);
    assert_eq!(fhirpath::reference_key("#c1", None), None);
    assert_eq!(fhirpath::reference_key("Patient/", None), None);
    assert_eq!(fhirpath::reference_key("patient/1", None), None);
}

#[test]
fn three_valued_logic() {
    assert_eq!(one("{} and false"), json!(false));
    assert!(empty("{} and true"));
    assert_eq!(one("{} or true"), json!(true));
    assert!(empty("{} or false"));
    assert!(empty("true xor {}"));
    assert_eq!(one("true xor false"), json!(true));
    assert_eq!(one("false implies {}"), json!(true));
    assert!(empty("true implies {}"));
    assert_eq!(one("{} implies true"), json!(true));
    assert!(empty("{}.not()"));
    assert_eq!(one("(1 = 1).not()"), json!(false));
    assert!(empty("{} = 1"));
    assert_eq!(one("{}.empty()"), json!(true));
    assert_eq!(one("{} ~ {}"), json!(true));
}

#[test]
fn exact_numbers() {
    assert_eq!(one("0.1 + 0.2 = 0.3"), json!(true));
    assert_eq!(one("2 + 3"), json!(5));
    assert_eq!(one("3 / 2"), json!(1.5));
    assert_eq!(one("7 div 2"), json!(3));
    assert_eq!(one("-7 mod 2"), json!(-1));
    assert_eq!(one("7.5 div 2"), json!(3));
    assert_eq!(one("7.5 mod 2"), json!(1.5));
    assert_eq!(one("1.10 * 3"), json!(3.3));
    assert_eq!(one("-(2 - 5)"), json!(3));
    assert!(empty("1 / 0"));
    assert!(empty("1 div 0"));
    assert!(empty("1 mod 0"));
    assert!(eval("9223372036854775807 + 1", &json!({})).unwrap_err().contains("overflow"));
    assert_eq!(one("'a' + 'b'"), json!("ab"));
    assert_eq!(one("'a' & {} & 1"), json!("a1"));
    assert_eq!(one("1 < 1.5"), json!(true));
    assert_eq!(one("'abc' < 'abd'"), json!(true));
    assert!(eval("1 < 'a'", &json!({})).unwrap_err().contains("compare"));
    assert!(eval("1 + 'a'", &json!({})).unwrap_err().contains("arithmetic"));
    let third = one("1 / 3");
    assert_eq!(third.to_string(), "0.3333333333333333");
}

#[test]
fn boundaries() {
    assert_eq!(one("1.587.lowBoundary()"), json!(1.5865));
    assert_eq!(one("1.587.highBoundary()"), json!(1.5875));
    assert_eq!(one("(-1.587).lowBoundary()"), json!(-1.5875));
    assert_eq!(one("1.587.lowBoundary(2)"), json!(1.58));
    assert_eq!(one("1.587.highBoundary(2)"), json!(1.59));
    assert_eq!(one("1.587.lowBoundary(0)"), json!(1));
    assert_eq!(one("1.587.highBoundary(0)"), json!(2));
    assert_eq!(one("1.587.lowBoundary(6)"), json!(1.5865));
    assert!(empty("1.587.lowBoundary(40)"));
    assert_eq!(one("@2014.lowBoundary()"), json!("2014-01-01"));
    assert_eq!(one("@2016-02.highBoundary()"), json!("2016-02-29"));
    assert_eq!(one("@2014.lowBoundary(6)"), json!("2014-01"));
    assert_eq!(one("@2014-01-01T08.lowBoundary()"), json!("2014-01-01T08:00:00.000+14:00"));
    assert_eq!(one("@2014-01-01T08:05:12.1Z.highBoundary()"), json!("2014-01-01T08:05:12.199Z"));
    assert_eq!(one("@2014-01-01T08:05-05:00.highBoundary(12)"), json!("2014-01-01T08:05-05:00"));
    assert_eq!(one("@T10:30.lowBoundary()"), json!("10:30:00.000"));
    assert_eq!(one("@T10:30.highBoundary(6)"), json!("10:30:59"));
    // untyped JSON strings are typed by their form
    let p = patient();
    assert_eq!(eval_ok("birthDate.highBoundary()", &p), [json!("1970-06-30")]);
    assert!(eval_ok("gender.lowBoundary()", &p).is_empty());
}

#[test]
fn dates_and_times_compare_by_precision_and_offset() {
    assert_eq!(one("@2020-01-01T10:00:00+02:00 = @2020-01-01T08:00:00Z"), json!(true));
    assert_eq!(one("@2020-01-01T00:30:00+01:00 < @2019-12-31T23:45:00Z"), json!(true));
    assert!(empty("@2020-01-01 = @2020-01-01T10:00:00Z"));
    assert!(empty("@2020-01 < @2020-01-15"));
    assert_eq!(one("@2020-01 < @2020-02-15"), json!(false).as_bool().map(|_| json!(true)).unwrap());
    assert_eq!(one("@2020-01-01T10:30:00 = @2020-01-01T10:30:00.000"), json!(true));
    assert!(empty("@2020-01-01T10:30:00Z = @2020-01-01T10:30:00"));
    assert_eq!(one("@T10:30 > @T09:59:59"), json!(true));
    assert_eq!(one("@T10:30 = @2020-01-01"), json!(false));
    let p = patient();
    assert_eq!(eval_ok("birthDate < @1971", &p), [json!(true)]);
    assert_eq!(eval_ok("birthDate = @1970-06", &p), [json!(true)]);
}

#[test]
fn parse_errors() {
    let error = |expr: &str| match fhirpath::parse(expr, &["known".to_owned()]) {
        Ok(parsed) => panic!("{expr} parsed as {parsed:?}"),
        Err(e) => e.message,
    };
    assert!(error("name.foo()").contains("unknown or unsupported function 'foo()'"));
    assert!(error("first(1)").contains("first() takes 0 argument(s), got 1"));
    assert!(error("where()").contains("where() takes 1 argument(s), got 0"));
    assert!(error("%unknown").contains("unknown constant '%unknown'"));
    assert!(fhirpath::parse("%known", &["known".to_owned()]).is_ok());
    assert!(error("'abc").contains("unterminated"));
    assert!(error("@@").contains("malformed"));
    assert!(error("@2020-13-01").contains("malformed"));
    assert!(error("4 'mg'").contains("quantity literals"));
    assert!(error("4 days").contains("quantity literals"));
    assert!(error("ofType('x')").contains("type name"));
    assert!(error("name.").contains("expected a name"));
    assert!(error("(name").contains("expected ')'"));
    assert!(error("name name").contains("unexpected"));
    assert!(error("").contains("empty"));
    assert!(error("$total").contains("not supported"));
    assert!(error("a # b").contains("unexpected character"));
    assert!(fhirpath::parse("name /* c */ .given // end", &[]).is_ok());
}

#[test]
fn deep_expressions_are_refused_not_overflowing() {
    let deep = |n: usize, open: &str, close: &str, middle: &str| {
        format!("{}{middle}{}", open.repeat(n), close.repeat(n))
    };
    for expr in [
        deep(10_000, "(", ")", "1"),
        deep(10_000, "-", "", "1"),
        deep(10_000, "where(", ")", "true"),
        format!("a{}", ".a".repeat(10_000)),
        format!("1{}", " + 1".repeat(10_000)),
        format!("a{}", "[0]".repeat(10_000)),
    ] {
        let message = fhirpath::parse(&expr, &[]).unwrap_err().message;
        assert!(message.contains("deeper than 128"), "{message}");
    }
    assert!(fhirpath::parse(&deep(100, "(", ")", "1"), &[]).is_ok());
    assert!(fhirpath::parse(&format!("a{}", ".a".repeat(100)), &[]).is_ok());
}

fn view(json: Value) -> Result<ViewDefinition, ViewError> {
    ViewDefinition::parse(&json)
}

fn invalid_at(json: Value) -> String {
    match view(json) {
        Err(ViewError::Invalid { location, message }) => format!("{location}: {message}"),
        Err(other) => format!("other: {other}"),
        Ok(v) => panic!("accepted: {v:?}"),
    }
}

#[test]
fn view_validation() {
    let with_column =
        |column: Value| json!({"resource": "Patient", "select": [{"column": [column]}]});
    assert!(
        invalid_at(with_column(json!({"name": "1a", "path": "id"})))
            .contains("select[0].column[0].name")
    );
    assert!(
        invalid_at(with_column(json!({"name": "a-b", "path": "id"}))).contains("not a valid name")
    );
    assert!(
        invalid_at(with_column(json!({"name": "_a", "path": "id"}))).contains("not a valid name")
    );
    assert!(invalid_at(with_column(json!({"path": "id"}))).contains("name: is required"));
    assert!(invalid_at(with_column(json!({"name": "a"}))).contains("path: is required"));
    assert!(
        invalid_at(with_column(json!({"name": "a", "path": "id", "collection": "yes"})))
            .contains("collection")
    );
    assert!(
        invalid_at(with_column(json!({"name": "a", "path": "id", "colection": true})))
            .contains("colection")
    );
    assert!(
        invalid_at(json!({"resource": "Patient", "select": [{"forEachOrNul": "name"}]}))
            .contains("forEachOrNul")
    );
    assert!(
        invalid_at(
            json!({"resource": "Patient", "select": [{"forEach": "name", "forEachOrNull": "name"}]})
        )
        .contains("only one of")
    );
    assert!(
        invalid_at(
            json!({"resource": "Patient", "select": [{"forEach": "name", "repeat": ["item"]}]})
        )
        .contains("only one of")
    );
    assert!(
        invalid_at(json!({"resource": "Patient", "select": [{"repeat": []}]}))
            .contains("must not be empty")
    );
    assert!(
        invalid_at(json!({"resource": "Patient", "select": [{"unionAll": []}]}))
            .contains("must not be empty")
    );
    assert!(
        invalid_at(json!({"resource": "Patient", "select": []}))
            .contains("select: must not be empty")
    );
    assert!(invalid_at(json!({"resource": "Patient"})).contains("select: is required"));
    assert!(
        invalid_at(json!({"resource": "Nope", "select": [{}]}))
            .contains("not a FHIR R4 resource type")
    );
    assert!(
        invalid_at(json!({"resourceType": "Patient", "resource": "Patient", "select": [{}]}))
            .contains("resourceType")
    );
    assert!(
        invalid_at(json!({"resource": "Patient", "name": "my view", "select": [{}]}))
            .contains("name")
    );
    let twice = json!({"resource": "Patient", "select": [
        {"column": [{"name": "a", "path": "id"}]},
        {"select": [{"column": [{"name": "a", "path": "gender"}]}]}
    ]});
    assert!(invalid_at(twice).contains("column 'a' is defined more than once"));
    let union_types = json!({"resource": "Patient", "select": [{"unionAll": [
        {"column": [{"name": "a", "path": "id", "type": "id"}]},
        {"column": [{"name": "a", "path": "gender", "type": "code"}]}
    ]}]});
    assert!(invalid_at(union_types).contains("type 'code'"));
    let constant = |c: Value| json!({"resource": "Patient", "constant": [c], "select": [{}]});
    assert!(
        invalid_at(constant(json!({"name": "x", "valueBoolean": "true"})))
            .contains("not a valid boolean")
    );
    assert!(
        invalid_at(constant(json!({"name": "x", "valuePositiveInt": 0})))
            .contains("not a valid positiveInt")
    );
    assert!(
        invalid_at(constant(json!({"name": "x", "valueDate": "2020-01-01T10:00:00Z"})))
            .contains("valid date")
    );
    assert!(
        invalid_at(constant(json!({"name": "x", "valueInstant": "2020-01-01"})))
            .contains("valid instant")
    );
    assert!(
        invalid_at(constant(json!({"name": "x", "valueQuantity": {"value": 1}})))
            .contains("valueQuantity")
    );
    assert!(
        invalid_at(constant(json!({"name": "x", "valueString": "a", "valueCode": "b"})))
            .contains("more than one")
    );
    assert!(
        invalid_at(constant(json!({"name": "rowIndex", "valueInteger": 1}))).contains("reserved")
    );
    let syntax =
        view(json!({"resource": "Patient", "where": [{"path": "name.bogus()"}], "select": [{}]}));
    assert!(
        matches!(syntax, Err(ViewError::Syntax { ref location, .. }) if location == "where[0].path"),
        "{syntax:?}"
    );

    let ok = view(json!({
        "resourceType": "ViewDefinition", "name": "patients", "resource": "Patient", "status": "active",
        "constant": [{"name": "n", "valueInteger64": "12"}],
        "select": [{"column": [{"name": "id", "path": "id", "type": "id", "description": "d", "tags": []}]}]
    }))
    .unwrap();
    assert_eq!(ok.resource(), "Patient");
    assert_eq!(ok.name(), Some("patients"));
    assert_eq!(ok.columns()[0].type_name.as_deref(), Some("id"));
}

#[test]
fn deep_selects_are_refused() {
    let mut select = json!({"column": [{"name": "a", "path": "id"}]});
    for _ in 0..70 {
        select = json!({"select": [select]});
    }
    assert!(
        invalid_at(json!({"resource": "Patient", "select": [select]})).contains("deeper than 64")
    );

    let mut select = json!({"forEach": "name", "column": [{"name": "a", "path": "id"}]});
    for _ in 0..62 {
        select = json!({"forEachOrNull": "%resource", "select": [select]});
    }
    let v = view(json!({"resource": "Patient", "select": [select]})).unwrap();
    assert_eq!(v.rows(&json!({"resourceType": "Patient", "name": [{}, {}]})).unwrap().len(), 2);
}

#[test]
fn rows_follow_the_processing_algorithm() {
    let v = view(json!({
        "resource": "Patient",
        "constant": [{"name": "use", "valueCode": "official"}],
        "where": [{"path": "active"}],
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "top", "path": "%rowIndex"}]},
            {"forEachOrNull": "name.where(use = %use)", "column": [{"name": "i", "path": "%rowIndex"}],
             "select": [{"forEach": "given", "column": [{"name": "g", "path": "$this"}, {"name": "gi", "path": "%rowIndex"}]}]},
            {"forEachOrNull": "address", "column": [{"name": "city", "path": "city"}],
             "select": [{"column": [{"name": "ai", "path": " %rowIndex "}]}]}
        ]
    }))
    .unwrap();
    let p = patient();
    assert_eq!(
        v.rows(&p).unwrap(),
        [
            vec![json!("p1"), json!(0), json!(0), json!("Jane"), json!(0), Value::Null, json!(0)],
            vec![json!("p1"), json!(0), json!(0), json!("J"), json!(1), Value::Null, json!(0)],
        ]
    );
    let mut inactive = p.clone();
    inactive["active"] = json!(false);
    assert!(v.rows(&inactive).unwrap().is_empty());
    assert!(v.rows(&json!({"resourceType": "Observation", "active": true})).unwrap().is_empty());
    assert!(v.rows(&json!({"active": true})).unwrap().is_empty());

    let not_boolean =
        view(json!({"resource": "Patient", "where": [{"path": "name.given"}], "select": [{}]}))
            .unwrap();
    assert!(
        matches!(not_boolean.rows(&p), Err(ViewError::WhereNotBoolean { ref found, .. }) if found == "3 values")
    );

    let multiple = view(json!({"resource": "Patient", "select": [{"column": [{"name": "g", "path": "name.given"}]}]})).unwrap();
    assert_eq!(
        multiple.rows(&p),
        Err(ViewError::MultipleValues { column: "g".to_owned(), count: 3 })
    );

    let failing = view(json!({"resource": "Patient", "select": [{"column": [{"name": "x", "path": "gender + 1"}]}]})).unwrap();
    assert!(
        matches!(failing.rows(&p), Err(ViewError::Evaluation { ref location, .. }) if location == "select[0].column[0].path")
    );

    let objects = view(json!({"resource": "Patient", "select": [{"column": [
        {"name": "org", "path": "managingOrganization", "type": "Reference"},
        {"name": "names", "path": "name.family", "collection": true},
        {"name": "none", "path": "address", "collection": true}
    ]}]}))
    .unwrap();
    assert_eq!(
        objects.rows(&p).unwrap(),
        [vec![json!({"reference": "Organization/o1"}), json!(["Doe"]), json!([])]]
    );
}

#[test]
fn repeat_is_depth_first_and_bounded() {
    let v = view(
        json!({"resource": "QuestionnaireResponse", "select": [{"repeat": ["item"], "column": [
            {"name": "link", "path": "linkId"}, {"name": "i", "path": "%rowIndex"}
        ]}]}),
    )
    .unwrap();
    let qr = json!({"resourceType": "QuestionnaireResponse", "item": [
        {"linkId": "1", "item": [{"linkId": "1.1"}]}, {"linkId": "2"}
    ]});
    assert_eq!(
        v.rows(&qr).unwrap(),
        [vec![json!("1"), json!(0)], vec![json!("1.1"), json!(1)], vec![json!("2"), json!(2)]]
    );
    // Deeper than serde_json would parse, built by hand.
    let mut item = json!({"linkId": "leaf"});
    for _ in 0..200 {
        item = json!({"linkId": "x", "item": [item]});
    }
    let deep = json!({"resourceType": "QuestionnaireResponse", "item": [item]});
    assert!(
        matches!(v.rows(&deep), Err(ViewError::Evaluation { ref message, .. }) if message.contains("deeper than 128"))
    );
}

/// The deepest expressions the parser accepts parse and evaluate within 1.5 MiB of stack in a
/// debug build (measured: about 1.1 MiB; a release build needs under 256 KiB). Test threads and
/// tokio workers get 2 MiB.
#[test]
fn the_deepest_accepted_expressions_fit_a_small_stack() {
    type Shape = (&'static str, fn(usize) -> String);
    let shapes: [Shape; 7] = [
        ("parentheses", |n| format!("{}1{}", "(".repeat(n), ")".repeat(n))),
        ("negations", |n| format!("{}1", "-".repeat(n))),
        ("where", |n| format!("{}true{}", "where(".repeat(n), ")".repeat(n))),
        ("exists in where", |n| {
            format!("{}true{}", "name.where(exists(".repeat(n), "))".repeat(n))
        }),
        ("path", |n| format!("name{}", ".given".repeat(n))),
        ("sum", |n| format!("1{}", " + 1".repeat(n))),
        ("right-nested sum", |n| format!("{}1{}", "(1 + ".repeat(n), ")".repeat(n))),
    ];
    let resource = patient();
    std::thread::Builder::new()
        .stack_size(3 << 19)
        .spawn(move || {
            for (shape, build) in shapes {
                let deepest = (1..400)
                    .take_while(|n| fhirpath::parse(&build(*n), &[]).is_ok())
                    .last()
                    .unwrap();
                assert!(deepest >= 30, "{shape}: only {deepest} levels parse");
                let expr = build(deepest);
                let result = eval(&expr, &resource);
                assert!(result.is_ok(), "{shape} at {deepest} levels: {result:?}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_view_cannot_multiply_rows_or_repeat_nodes_without_bound() {
    // Ten sibling forEach selects over 10 names each: 10^10 rows if nothing stopped them.
    let names: Vec<serde_json::Value> =
        (0..10).map(|i| serde_json::json!({"family": format!("f{i}")})).collect();
    let patient = serde_json::json!({"resourceType": "Patient", "id": "p", "name": names});
    let selects: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({"forEach": "name", "column": [{"name": format!("c{i}"), "path": "family"}]}))
        .collect();
    let view = ViewDefinition::parse(&serde_json::json!({
        "resourceType": "ViewDefinition", "resource": "Patient", "select": selects
    }))
    .unwrap();
    assert!(matches!(view.rows(&patient), Err(ViewError::TooManyRows { .. })));
    // repeat over the same path twice doubles at every level: 2^20 nodes for 20 levels.
    let mut item = serde_json::json!({"linkId": "leaf"});
    for level in 0..20 {
        item = serde_json::json!({"linkId": format!("l{level}"), "item": [item]});
    }
    let questionnaire =
        serde_json::json!({"resourceType": "Questionnaire", "id": "q", "item": [item]});
    let view = ViewDefinition::parse(&serde_json::json!({
        "resourceType": "ViewDefinition", "resource": "Questionnaire",
        "select": [{"repeat": ["item", "item"], "column": [{"name": "id", "path": "linkId"}]}]
    }))
    .unwrap();
    assert!(matches!(view.rows(&questionnaire), Err(ViewError::TooManyRows { .. })));
}

/// A view of `resource` with one select of `columns` (name, path) and an optional `forEach`.
fn view_of(resource: &str, for_each: Option<&str>, columns: &[(&str, &str)]) -> ViewDefinition {
    let columns: Vec<Value> =
        columns.iter().map(|(name, path)| json!({"name": name, "path": path})).collect();
    let mut select = json!({"column": columns});
    if let Some(path) = for_each {
        select["forEach"] = json!(path);
    }
    ViewDefinition::parse(&json!({"resource": resource, "select": [select]})).expect("valid view")
}

/// The kept elements as paths (`a.b`), a whole one marked `*`.
fn kept(view: &ViewDefinition) -> Option<Vec<String>> {
    fn walk(reads: &super::Reads, prefix: &str, out: &mut Vec<String>) {
        for (name, child) in &reads.children {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
            if child.whole {
                out.push(format!("{path}*"));
            } else if child.children.is_empty() {
                out.push(path);
            } else {
                walk(child, &path, out);
            }
        }
    }
    view.reads().map(|reads| {
        let mut out = Vec::new();
        walk(reads, "", &mut out);
        out
    })
}

#[test]
fn a_view_reads_only_the_elements_its_paths_reach() {
    let observation = view_of(
        "Observation",
        None,
        &[
            ("id", "getResourceKey()"),
            ("code", "code.coding.first().code"),
            ("value", "value.ofType(Quantity).value"),
            ("effective", "effective.ofType(dateTime)"),
            ("subject", "subject.getReferenceKey(Patient)"),
            ("has_note", "note.exists()"),
        ],
    );
    assert_eq!(
        kept(&observation).unwrap(),
        [
            "code.coding.code*",
            "effective*",
            "id*",
            "note",
            "resourceType*",
            "subject.reference*",
            "value.resourceType*",
            "value.value*"
        ]
    );
    // `where()` reads its criterion on each item; `forEach` makes the items the focus.
    let names = view_of(
        "Patient",
        Some("name.where(use = 'official')"),
        &[("family", "family"), ("first", "given.first()"), ("birth", "%resource.birthDate")],
    );
    assert_eq!(
        kept(&names).unwrap(),
        ["birthDate*", "id*", "name.family*", "name.given*", "name.use*", "resourceType*"]
    );
    // Content that is compared or joined is kept whole.
    let joined = view_of("Patient", None, &[("n", "name.distinct().count()")]);
    assert_eq!(kept(&joined).unwrap(), ["id*", "name*", "resourceType*"]);
}

#[test]
fn a_view_that_uses_the_resource_itself_reads_it_whole() {
    for path in ["%resource", "$this", "Patient", "%resource = %resource", "iif(true, $this, 1)"] {
        let view = view_of("Patient", None, &[("c", path)]);
        assert_eq!(kept(&view), None, "{path}");
    }
}

#[test]
fn a_resource_parsed_as_the_view_reads_it_gives_the_same_rows() {
    let view = view_of(
        "Patient",
        Some("name"),
        &[("id", "getResourceKey()"), ("family", "family"), ("given", "given.join(' ')")],
    );
    let patient = patient();
    let text = serde_json::to_vec(&patient).unwrap();
    let projected = view.parse_resource(&text).unwrap();
    assert_eq!(view.rows(&projected).unwrap(), view.rows(&patient).unwrap());
    // What the view does not read is not built, but the text is still checked as JSON.
    assert!(projected.get("gender").is_none() && projected.get("birthDate").is_none());
    assert!(view.parse_resource(b"{\"resourceType\": \"Patient\", \"gender\": }").is_err());
    assert!(view.parse_resource(b"{\"resourceType\": \"Patient\"} trailing").is_err());
}
