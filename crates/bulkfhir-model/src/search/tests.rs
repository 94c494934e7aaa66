//! Tests of the search API: every parameter type with its prefixes and modifiers on hand-written
//! resources, refusals, the shared Synthea data against counts computed here, the pre-check
//! against full evaluation, and property tests for panics.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use serde_json::{Value as Json, json};

use super::*;

/// A fixed "now" for `ap`: 2024-06-01T00:00:00Z.
fn now() -> Instant {
    Instant::parse_fhir("2024-06-01T00:00:00Z").unwrap()
}

fn query(filter: &str) -> SearchQuery {
    SearchQuery::parse_type_filter(filter, now()).unwrap_or_else(|e| panic!("{filter}: {e:?}"))
}

/// Whether `resource` matches `filter`, checked with and without the pre-check.
fn check(filter: &str, resource: &Json) -> bool {
    let q = query(filter);
    let body = serde_json::to_vec(resource).unwrap();
    let full = q.matches_without_precheck(&body).unwrap();
    assert_eq!(
        q.matches(&body).unwrap(),
        full,
        "pre-check changed the answer: {filter} {resource}"
    );
    assert_eq!(
        q.matches_parsed_whole(&body).unwrap(),
        full,
        "the partial parse changed the answer: {filter} {resource}"
    );
    full
}

/// Asserts which of `resources` (by index) match each filter.
fn expect(resources: &[Json], cases: &[(&str, &[usize])]) {
    for (filter, expected) in cases {
        let matching: Vec<usize> =
            (0..resources.len()).filter(|&i| check(filter, &resources[i])).collect();
        assert_eq!(&matching, expected, "{filter}");
    }
}

fn refused(filter: &str) -> SearchError {
    match SearchQuery::parse_type_filter(filter, now()) {
        Ok(q) => panic!("{filter} should be refused, got {q:?}"),
        Err(e) => e,
    }
}

fn observations() -> Vec<Json> {
    vec![
        // 0: LOINC blood pressure with components, dateTime with zone, subject Patient/p1
        json!({"resourceType":"Observation","id":"o0","status":"final",
            "code":{"coding":[{"system":"http://loinc.org","code":"85354-9","display":"Blood Pressure"}],"text":"Blood pressure panel"},
            "subject":{"reference":"Patient/p1"},
            "effectiveDateTime":"2020-01-15T10:30:00+01:00",
            "component":[
                {"code":{"coding":[{"system":"http://loinc.org","code":"8480-6"}]},"valueQuantity":{"value":120,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},
                {"code":{"coding":[{"system":"http://loinc.org","code":"8462-4"}]},"valueQuantity":{"value":80.0,"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}),
        // 1: body weight, Period, absolute subject, category, value 5.4 mg
        json!({"resourceType":"Observation","id":"o1","status":"amended",
            "category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],
            "code":{"coding":[{"system":"http://loinc.org","code":"29463-7"},{"code":"weight"}]},
            "subject":{"reference":"http://other.org/fhir/Patient/p2/_history/3"},
            "effectivePeriod":{"start":"2019-12-31","end":"2020-02"},
            "valueQuantity":{"value":5.40,"unit":"milligram","system":"http://unitsofmeasure.org","code":"mg"}}),
        // 2: a Group subject, open-ended Period, coded value, a code with a comma and a pipe
        json!({"resourceType":"Observation","id":"o2","status":"final",
            "code":{"coding":[{"system":"urn:x","code":"a,b"},{"system":"urn:y","code":"c|d"}]},
            "subject":{"reference":"Group/g1"},
            "effectivePeriod":{"start":"2021-06-01T00:00:00Z"},
            "valueCodeableConcept":{"coding":[{"system":"http://snomed.info/sct","code":"260385009","display":"Négatif"}]}}),
        // 3: no code system, instant, string value, contained subject
        json!({"resourceType":"Observation","id":"o3","status":"preliminary",
            "code":{"coding":[{"code":"85354-9"}]},
            "contained":[{"resourceType":"Patient","id":"c1"}],
            "subject":{"reference":"#c1"},
            "effectiveInstant":"2022-03-04T05:06:07.123Z",
            "valueString":"Élevé", "meta":{"lastUpdated":"2024-05-01T12:00:00.000001Z",
                "profile":["http://example.org/StructureDefinition/obs|2.0"],
                "tag":[{"system":"urn:tags","code":"reviewed"}],"security":[{"system":"urn:sec","code":"R"}]}}),
        // 4: Timing, no subject
        json!({"resourceType":"Observation","id":"o4","status":"final",
            "code":{"text":"timed"},
            "effectiveTiming":{"event":["2018-05-01T10:00:00Z","2018-05-03"]}}),
    ]
}

#[test]
fn token_forms_and_modifiers() {
    expect(
        &observations(),
        &[
            ("Observation?code=85354-9", &[0, 3]),
            ("Observation?code=http://loinc.org|85354-9", &[0]),
            ("Observation?code=|85354-9", &[3]),
            ("Observation?code=|weight", &[1]),
            ("Observation?code=http://loinc.org|", &[0, 1]),
            ("Observation?code=http://loinc.org|85354-9,http://loinc.org|29463-7", &[0, 1]),
            ("Observation?code=85354-9&code=http://loinc.org|85354-9", &[0]),
            ("Observation?code=29463-7&code=weight", &[1]),
            ("Observation?code:not=85354-9", &[1, 2, 4]),
            ("Observation?code:not=85354-9,29463-7", &[2, 4]),
            ("Observation?code:text=blood", &[0]),
            ("Observation?code:text=BLOOD%20PRESSURE", &[0]),
            ("Observation?code:text=pressure", &[]),
            ("Observation?code:text=tim", &[4]),
            ("Observation?code=a\\,b", &[2]),
            ("Observation?code=urn:x|a%5C%2Cb", &[2]),
            ("Observation?code=urn:x|a%2Cb", &[]),
            ("Observation?code=b%2Curn:x|a%5C,b", &[2]),
            ("Observation?code=urn:y|c\\|d", &[2]),
            ("Observation?code=urn:y|c%5C%7Cd", &[2]),
            ("Observation?code=a,b", &[]),
            ("Observation?code:missing=true", &[]),
            ("Observation?category:missing=true", &[0, 2, 3, 4]),
            ("Observation?category:missing=false", &[1]),
            ("Observation?category:missing=true,false", &[0, 1, 2, 3, 4]),
            ("Observation?status=final", &[0, 2, 4]),
            ("Observation?status=final,amended", &[0, 1, 2, 4]),
            ("Observation?status=FINAL", &[]),
            ("Observation?status:not=final", &[1, 3]),
            ("Observation?status=http://hl7.org/fhir/observation-status|final", &[0, 2, 4]),
            ("Observation?value-concept=http://snomed.info/sct|260385009", &[2]),
            ("Observation?value-concept:text=negatif", &[2]),
            ("Observation?combo-code=8480-6", &[0]),
            ("Observation?component-code=http://loinc.org|8462-4", &[0]),
            ("Observation?_id=o3", &[3]),
            ("Observation?_id=O3", &[]),
            ("Observation?_id=o1,o4", &[1, 4]),
            ("Observation?_tag=urn:tags|reviewed", &[3]),
            ("Observation?_security=R", &[3]),
            ("Observation?_tag:missing=true", &[0, 1, 2, 4]),
            ("Observation?code=", &[0, 1, 2, 3, 4]),
            ("Observation?code=&status=final", &[0, 2, 4]),
            ("Observation?_format=json&status=final", &[0, 2, 4]),
        ],
    );
}

fn patients() -> Vec<Json> {
    vec![
        json!({"resourceType":"Patient","id":"p1","active":true,"gender":"female","birthDate":"1970-05",
            "name":[{"family":"Müller-Lüdenscheidt","given":["Ève","Anne"],"prefix":["Dr."]}],
            "telecom":[{"system":"phone","value":"555-0100"},{"system":"email","value":"eve@example.org"}],
            "identifier":[{"system":"urn:mrn","value":"M1","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}],"text":"Medical record"}}],
            "address":[{"line":["1 Main St"],"city":"Boston","postalCode":"02101","country":"US"}],
            "generalPractitioner":[{"reference":"Practitioner/pr1"},{"identifier":{"system":"urn:npi","value":"42"}}],
            "managingOrganization":{"reference":"Organization/org1"},
            "communication":[{"language":{"coding":[{"system":"urn:ietf:bcp:47","code":"de"}]}}]}),
        json!({"resourceType":"Patient","id":"p2","active":false,"gender":"male","birthDate":"1950-01-01",
            "deceasedDateTime":"2010-02-03T04:05:06Z",
            "name":[{"text":"John Smith","family":"Smith"}],
            "telecom":[{"system":"email","value":"JOHN@EXAMPLE.ORG"}],
            "identifier":[{"value":"M1"}],
            "address":[{"city":"Cambridge","state":"MA"}]}),
        json!({"resourceType":"Patient","id":"p3","name":[{"given":["Evelyn"]}],
            "link":[{"other":{"reference":"Patient/p1"},"type":"seealso"}]}),
    ]
}

#[test]
fn tokens_on_primitives_identifiers_and_contact_points() {
    expect(
        &patients(),
        &[
            ("Patient?active=true", &[0]),
            ("Patient?active=false", &[1]),
            ("Patient?active:missing=true", &[2]),
            ("Patient?active=yes", &[]),
            ("Patient?gender=female", &[0]),
            ("Patient?gender:not=female", &[1, 2]),
            ("Patient?gender=http://hl7.org/fhir/administrative-gender|male", &[1]),
            ("Patient?identifier=M1", &[0, 1]),
            ("Patient?identifier=urn:mrn|M1", &[0]),
            ("Patient?identifier=|M1", &[1]),
            ("Patient?identifier=urn:mrn|", &[0]),
            ("Patient?identifier:text=medical", &[0]),
            (
                "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|M1",
                &[0],
            ),
            ("Patient?telecom=555-0100", &[0]),
            ("Patient?telecom=phone|555-0100", &[]),
            ("Patient?phone=555-0100", &[0]),
            ("Patient?email=555-0100", &[]),
            ("Patient?email=eve@example.org", &[0]),
            ("Patient?email:missing=false", &[0, 1]),
            ("Patient?language=de", &[0]),
        ],
    );
}

#[test]
fn strings_fold_case_and_accents() {
    expect(
        &patients(),
        &[
            ("Patient?name=eve", &[0, 2]),
            ("Patient?name=EVE", &[0, 2]),
            ("Patient?given=ève", &[0, 2]),
            ("Patient?given:exact=Ève", &[0]),
            ("Patient?given:exact=Eve", &[]),
            ("Patient?given:contains=vel", &[2]),
            ("Patient?family=muller", &[0]),
            ("Patient?family=Lüdenscheidt", &[]),
            ("Patient?family:contains=ludensch", &[0]),
            ("Patient?name=dr.", &[0]),
            ("Patient?name=john%20s", &[1]),
            ("Patient?name=smith&name=john", &[1]),
            ("Patient?name=smith,eve", &[0, 1, 2]),
            ("Patient?address=bost", &[0]),
            ("Patient?address=02101", &[0]),
            ("Patient?address-city=cambridge", &[1]),
            ("Patient?address-state=MA", &[1]),
            ("Patient?address-postalcode:missing=true", &[1, 2]),
            ("Patient?name:missing=false", &[0, 1, 2]),
        ],
    );
}

#[test]
fn references_in_every_form() {
    let obs = observations();
    expect(
        &obs,
        &[
            ("Observation?subject=Patient/p1", &[0]),
            ("Observation?subject=p1", &[0]),
            ("Observation?subject:Patient=p1", &[0]),
            ("Observation?subject:Group=p1", &[]),
            ("Observation?subject:Group=g1", &[2]),
            ("Observation?subject=http://mine.org/fhir/Patient/p1", &[0]),
            ("Observation?subject=http://other.org/fhir/Patient/p2", &[1]),
            ("Observation?subject=Patient/p2", &[]),
            ("Observation?subject=Patient/p1/_history/9", &[0]),
            ("Observation?patient=p1", &[0]),
            ("Observation?patient=g1", &[]),
            ("Observation?subject=g1", &[2]),
            ("Observation?patient:missing=true", &[2, 4]),
            ("Observation?patient:missing=false", &[0, 1, 3]),
            ("Observation?subject:missing=true", &[4]),
            ("Observation?subject=c1", &[]),
            ("Observation?subject=Patient/p1,Group/g1", &[0, 2]),
        ],
    );
    expect(
        &patients(),
        &[
            ("Patient?general-practitioner=Practitioner/pr1", &[0]),
            ("Patient?general-practitioner:identifier=urn:npi|42", &[0]),
            ("Patient?general-practitioner:identifier=42", &[0]),
            ("Patient?organization=org1", &[0]),
            ("Patient?link=p1", &[2]),
            ("Patient?link:Patient=p1", &[2]),
        ],
    );
}

#[test]
fn dates_are_ranges_with_the_r4_prefix_rules() {
    // Targets: o0 2020-01-15T09:30Z (one second); o1 [2019-12-31, 2020-03-01);
    // o2 [2021-06-01, ∞); o3 instant 2022-03-04T05:06:07.123Z; o4 [2018-05-01T10:00Z, 2018-05-04).
    expect(
        &observations(),
        &[
            ("Observation?date=2020", &[0]),
            ("Observation?date=eq2020-01", &[0]),
            ("Observation?date=2020-01-15", &[0]),
            ("Observation?date=2020-01-15T09:30Z", &[0]),
            ("Observation?date=2020-01-15T10:30:00%2B01:00", &[0]),
            ("Observation?date=2020-01-15T10:30:00 01:00", &[0]),
            ("Observation?date=2020-01-15T09:30:00", &[0]),
            ("Observation?date=2020-01-15T09:30:01Z", &[]),
            ("Observation?date=ne2020", &[1, 2, 3, 4]),
            ("Observation?date=gt2020-01-15", &[1, 2, 3]),
            ("Observation?date=ge2020-01-15", &[0, 1, 2, 3]),
            ("Observation?date=lt2020-01-15", &[1, 4]),
            ("Observation?date=le2020-01-15", &[0, 1, 4]),
            ("Observation?date=gt2020-02-29", &[2, 3]),
            ("Observation?date=ge2020-02-29", &[2, 3]),
            ("Observation?date=lt2019", &[4]),
            ("Observation?date=sa2019-12-30", &[0, 1, 2, 3]),
            ("Observation?date=sa2020-02-29", &[2, 3]),
            ("Observation?date=eb2020-03-01", &[0, 1, 4]),
            ("Observation?date=eb2020-02-29", &[0, 4]),
            ("Observation?date=eb2020-03-02", &[0, 1, 4]),
            ("Observation?date=gt2030", &[2]),
            ("Observation?date=lt2021-06-01", &[0, 1, 4]),
            ("Observation?date=lt2021-06-01T00:00:01Z", &[0, 1, 2, 4]),
            ("Observation?date=2018-05-02", &[]),
            ("Observation?date=2018-05", &[4]),
            ("Observation?date=2022-03-04T05:06:07Z", &[3]),
            // o1 ([2019-12-31, 2020-03-01)) is neither inside 2020 nor reaching beyond it: not ge2020.
            ("Observation?date=ge2020&date=lt2021", &[0]),
            ("Observation?date=ge2019-12-31&date=lt2021", &[0, 1]),
            ("Observation?date=2020,2022", &[0, 3]),
            ("Observation?date:missing=true", &[]),
            // ap: 10 % of the distance to now (2024-06-01), at least a day.
            ("Observation?date=ap2022-03-05", &[2, 3]),
            ("Observation?date=ap2024-05-31", &[2]),
            ("Observation?date=ap2019", &[0, 1]),
            ("Observation?date=ap2018-03", &[4]),
            ("Observation?_lastUpdated=gt2024-05-01T12:00:00Z", &[]),
            ("Observation?_lastUpdated=ge2024-05-01T12:00:00Z", &[3]),
            ("Observation?_lastUpdated=2024-05-01", &[3]),
        ],
    );
    expect(
        &patients(),
        &[
            ("Patient?birthdate=1970", &[0]),
            ("Patient?birthdate=1970-05-10", &[]),
            ("Patient?birthdate=ge1970-05-10", &[0]),
            ("Patient?birthdate=le1970-05-10", &[0, 1]),
            ("Patient?birthdate=lt1960", &[1]),
            ("Patient?death-date=2010", &[1]),
            ("Patient?death-date:missing=true", &[0, 2]),
        ],
    );
}

#[test]
fn quantities_and_numbers_use_implicit_precision() {
    expect(
        &observations(),
        &[
            ("Observation?value-quantity=5.4", &[1]),
            ("Observation?value-quantity=5.40", &[1]),
            ("Observation?value-quantity=5.4|http://unitsofmeasure.org|mg", &[1]),
            ("Observation?value-quantity=5.4||mg", &[1]),
            ("Observation?value-quantity=5.4||milligram", &[1]),
            ("Observation?value-quantity=5.4|http://unitsofmeasure.org|milligram", &[]),
            ("Observation?value-quantity=5.4|urn:other|mg", &[]),
            ("Observation?value-quantity=5.44", &[]),
            ("Observation?value-quantity=5", &[1]),
            ("Observation?value-quantity=5.35", &[]),
            ("Observation?value-quantity=ne5.4", &[]),
            ("Observation?value-quantity=ne5.3", &[1]),
            ("Observation?value-quantity=gt5.4", &[]),
            ("Observation?value-quantity=ge5.4", &[1]),
            ("Observation?value-quantity=lt5.41", &[1]),
            ("Observation?value-quantity=le5.39", &[]),
            ("Observation?value-quantity=sa5.3", &[1]),
            ("Observation?value-quantity=eb5.5", &[1]),
            ("Observation?value-quantity=ap5.9", &[1]),
            ("Observation?value-quantity=ap6.1", &[]),
            ("Observation?value-quantity=5.4e0", &[1]),
            ("Observation?value-quantity=540e-2", &[1]),
            ("Observation?value-quantity=0.0054e3||mg", &[1]),
            ("Observation?component-value-quantity=120", &[0]),
            ("Observation?component-value-quantity=80|http://unitsofmeasure.org|mm[Hg]", &[0]),
            ("Observation?component-value-quantity=gt100&component-value-quantity=lt90", &[0]),
            ("Observation?combo-value-quantity=5.4,120", &[0, 1]),
            ("Observation?value-quantity:missing=true", &[0, 2, 3, 4]),
        ],
    );
    let conditions = [
        json!({"resourceType":"Condition","id":"c0","subject":{"reference":"Patient/p1"},
            "onsetRange":{"low":{"value":40,"system":"http://unitsofmeasure.org","code":"a"},
                          "high":{"value":50,"system":"http://unitsofmeasure.org","code":"a"}}}),
        json!({"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},
            "onsetAge":{"value":45,"system":"http://unitsofmeasure.org","code":"a"}}),
        json!({"resourceType":"Condition","id":"c2","subject":{"reference":"Patient/p1"},
            "onsetRange":{"low":{"value":60,"system":"http://unitsofmeasure.org","code":"a"}}}),
    ];
    expect(
        &conditions,
        &[
            ("Condition?onset-age=45", &[1]),
            ("Condition?onset-age=5e1", &[1]),
            ("Condition?onset-age=ap45", &[0, 1]),
            ("Condition?onset-age=ne45", &[0, 2]),
            ("Condition?onset-age=gt45||a", &[0, 2]),
            ("Condition?onset-age=lt45", &[0]),
            ("Condition?onset-age=sa55", &[2]),
            ("Condition?onset-age=eb55", &[0, 1]),
            ("Condition?onset-age=ge100", &[2]),
        ],
    );
    let risks = [
        json!({"resourceType":"RiskAssessment","id":"r0","status":"final","subject":{"reference":"Patient/p1"},
            "prediction":[{"probabilityDecimal":0.8},{"probabilityDecimal":0.25}]}),
        // A Range target: [0.1, ∞).
        json!({"resourceType":"RiskAssessment","id":"r1","status":"final","subject":{"reference":"Patient/p1"},
            "prediction":[{"probabilityRange":{"low":{"value":0.1}}}]}),
    ];
    expect(
        &risks,
        &[
            ("RiskAssessment?probability=0.8", &[0]),
            ("RiskAssessment?probability=gt0.8", &[1]),
            ("RiskAssessment?probability=gt8e-1", &[1]),
            ("RiskAssessment?probability=ge0.8", &[0, 1]),
            ("RiskAssessment?probability=0.3", &[0]),
            ("RiskAssessment?probability=0.2", &[]),
            ("RiskAssessment?probability=0.25", &[0]),
            ("RiskAssessment?probability=ne0.8", &[0, 1]),
            ("RiskAssessment?probability=lt0.3", &[0, 1]),
            ("RiskAssessment?probability:missing=true", &[]),
            ("RiskAssessment?probability=gt0.5", &[0, 1]),
            ("RiskAssessment?probability=sa0.05", &[0, 1]),
            ("RiskAssessment?probability=eb0.2", &[]),
            ("RiskAssessment?probability=le0.1", &[1]),
            ("RiskAssessment?probability=lt0.1", &[]),
        ],
    );
}

#[test]
fn uris_match_exactly_or_by_prefix() {
    expect(
        &observations(),
        &[
            ("Observation?_profile=http://example.org/StructureDefinition/obs", &[3]),
            ("Observation?_profile=http://example.org/StructureDefinition/obs|2.0", &[3]),
            ("Observation?_profile=http://example.org/StructureDefinition/obs|1.0", &[]),
            ("Observation?_profile=http://example.org/StructureDefinition", &[]),
            ("Observation?_profile:below=http://example.org/", &[3]),
            ("Observation?_profile:above=http://example.org/StructureDefinition/obs|2.0/x", &[3]),
            ("Observation?_profile:missing=true", &[0, 1, 2, 4]),
        ],
    );
}

#[test]
fn queries_outside_the_supported_set_are_refused_by_name() {
    for (filter, parameter) in [
        ("Observation?_include=Observation:subject", "_include"),
        ("Observation?_revinclude=Provenance:target", "_revinclude"),
        ("Observation?_sort=date", "_sort"),
        ("Observation?_count=10", "_count"),
        ("Observation?_elements=id", "_elements"),
        ("Observation?_summary=true", "_summary"),
        ("Observation?_total=accurate", "_total"),
        ("Observation?_contained=true", "_contained"),
        ("Observation?_containedType=contained", "_containedType"),
        ("Patient?_has:Observation:patient:code=1234", "_has:Observation:patient:code"),
        ("Observation?subject.name=peter", "subject.name"),
        ("Observation?subject:Patient.name=peter", "subject:Patient.name"),
        ("Observation?code-value-quantity=x$5", "code-value-quantity"),
        ("Observation?nope=1", "nope"),
        ("Observation?_text=x", "_text"),
        ("Observation?_content=x", "_content"),
        ("Observation?_list=1", "_list"),
        ("Observation?_filter=code eq x", "_filter"),
        ("Patient?phonetic=smith", "phonetic"),
        ("Patient?deceased=true", "deceased"),
        ("Location?near=1|2|3|km", "near"),
        ("Observation?code:in=http://x/vs", "code:in"),
        ("Observation?code:below=123", "code:below"),
        ("Observation?code:exact=123", "code:exact"),
        ("Observation?date:not=2020", "date:not"),
        ("Observation?subject:Medication=1", "subject:Medication"),
        ("Observation?subject:above=1", "subject:above"),
        ("Observation?subject:Patient=Group/1", "subject:Patient"),
        ("Observation?date=2020-13", "date"),
        ("Observation?date=xx2020", "date"),
        ("Observation?date=ge", "date"),
        ("Observation?date=2020-01-01T10", "date"),
        ("Observation?value-quantity=abc", "value-quantity"),
        ("Observation?value-quantity=5|mg", "value-quantity"),
        ("Observation?value-quantity=gt", "value-quantity"),
        ("RiskAssessment?probability=1.2.3", "probability"),
        ("Observation?code=a|b|c", "code"),
        ("Observation?code=|", "code"),
        ("Observation?code=a\\b", "code"),
        ("Observation?code=%FF", "code"),
        ("Observation?code:missing=maybe", "code:missing"),
        ("Observation?subject=Nope/1", "subject"),
        ("Patient?identifier:of-type=a|b", "identifier:of-type"),
        ("ValueSet?url:below=urn:oid:1.2", "url:below"),
        ("Observation?=1", ""),
    ] {
        let error = refused(filter);
        assert_eq!(error.parameter.as_deref(), Some(parameter), "{filter}: {error:?}");
        assert!(!error.message.is_empty());
        assert_eq!(error.to_string(), error.message);
    }
    for filter in ["Observation", "Nope?a=b", "Observation?code", "observation?code=1"] {
        assert_eq!(refused(filter).parameter, None, "{filter}");
    }
}

#[test]
fn parse_takes_url_pairs_and_bodies_must_be_objects() {
    let pairs = vec![
        ("code".to_owned(), "http://loinc.org|85354-9,x".to_owned()),
        ("date".to_owned(), "ge2020".to_owned()),
    ];
    let observation = ResourceType::parse("Observation").unwrap();
    let q = SearchQuery::parse(observation, &pairs, now()).unwrap();
    assert_eq!(q.resource_type(), observation);
    let body = serde_json::to_vec(&observations()[0]).unwrap();
    assert!(q.matches(&body).unwrap());
    // Pairs arrive decoded by the URL layer: a `%7C` left in them is text, not a `|`.
    let pairs = [("code".to_owned(), "http://loinc.org%7C85354-9".to_owned())];
    assert!(!SearchQuery::parse(observation, &pairs, now()).unwrap().matches(&body).unwrap());
    let all = query("Observation?status:missing=false");
    for bad in [&b"[1]"[..], b"1", b"\"x\"", b"{", b"{} {}", b"", b"\xff{}"] {
        assert!(all.matches(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    // Deep nesting is refused, never a stack overflow; brackets in strings do not count.
    let missing = query("Observation?code:missing=true");
    // The object and `depth` arrays: `serde_json` parses up to 127 levels.
    for (depth, ok) in [(10, true), (126, true), (127, false), (100_000, false)] {
        let body = format!("{{\"code\":{}1{}}}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(missing.matches(body.as_bytes()).is_ok(), ok, "{depth}");
    }
    let brackets = format!(r#"{{"a":"{}\"{}","b":["\\"]}}"#, "[".repeat(300), "{".repeat(300));
    assert!(missing.matches(brackets.as_bytes()).unwrap());
    assert!(crate::json::nested_deeper_than(b"[[]]", 1));
    assert!(!crate::json::nested_deeper_than(br#"["[[",1]"#, 1));
    assert!(!crate::json::nested_deeper_than(br#"["\"[[",1]"#, 1));
    assert!(!crate::json::nested_deeper_than(br#"["[\"#, 1)); // unterminated: no panic
    // Bytes the pre-check rejects are not parsed.
    assert!(!query("Observation?code=85354-9").matches(b"not json").unwrap());
}

#[test]
fn supported_params_list_the_usable_parameters() {
    let observation = ResourceType::parse("Observation").unwrap();
    let params: Vec<_> = supported_params(observation).collect();
    let codes: Vec<&str> = params.iter().map(|p| p.0).collect();
    for code in ["_id", "_lastUpdated", "_profile", "_tag", "_security", "code", "date", "patient"]
    {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    for code in ["code-value-quantity", "_text", "_content", "_query"] {
        assert!(!codes.contains(&code), "{code} should not be listed");
    }
    assert!(params.contains(&("code", "token", "Observation.code")));
    assert_eq!(params.first().map(|p| p.0), Some("_id"));
    let bundle: Vec<_> = supported_params(ResourceType::BUNDLE).map(|p| p.0).collect();
    assert!(bundle.contains(&"identifier") && !bundle.contains(&"composition"));
    // Every listed parameter parses.
    for resource_type in ResourceType::all() {
        for (code, _, _) in supported_params(resource_type) {
            let filter = format!("{resource_type}?{code}:missing=true");
            SearchQuery::parse_type_filter(&filter, now()).unwrap();
        }
    }
}

#[test]
fn the_precheck_sees_through_escapes() {
    // `"85354-9"` written with \u escapes, a reference with `\/`, a non-ASCII code escaped.
    let bodies: [&[u8]; 4] = [
        br#"{"resourceType":"Observation","code":{"coding":[{"code":"\u0038\u0035354-9"}]}}"#,
        br#"{"resourceType":"Observation","code":{"coding":[{"code":"85354-9"}]},"subject":{"reference":"Patient\/p1"}}"#,
        br#"{"resourceType":"Observation","code":{"coding":[{"code":"caf\u00e9"}]}}"#,
        br#"{"resourceType":"Observation","code":{"coding":[{"code":"x"}]},"note":[{"text":"\"85354-9\" \\ \n"}]}"#,
    ];
    let cases: [(&str, [bool; 4]); 4] = [
        ("Observation?code=85354-9", [true, true, false, false]),
        ("Observation?subject=Patient/p1", [false, true, false, false]),
        ("Observation?code=café", [false, false, true, false]),
        ("Observation?code=caf%C3%A9", [false, false, true, false]),
    ];
    for (filter, expected) in cases {
        let q = query(filter);
        assert!(q.precheck.is_active(), "{filter}");
        for (body, expected) in bodies.iter().zip(expected) {
            assert_eq!(
                q.matches(body).unwrap(),
                expected,
                "{filter} {}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(q.matches_without_precheck(body).unwrap(), expected);
        }
    }
    for (filter, active) in [
        ("Observation?code:not=1", false),
        ("Observation?status=final", true),
        ("Observation?date=2020", false),
        ("Observation?code=1,2&code:missing=false", true),
        ("Observation?value-quantity=5", false),
        ("Observation?value-quantity=5||mg", true),
        ("Patient?active=true", false),
        ("Patient?name=x", false),
        ("Patient?name:exact=x", true),
        ("Observation?code=a%22b", false),
        ("Observation?code=a,b%5C%5Cc", false),
    ] {
        assert_eq!(query(filter).precheck.is_active(), active, "{filter}");
    }
}

// ---- the vendored Synthea data ---------------------------------------------------------------

/// The Synthea samples vendored in the repository (`testdata/synthea`). Missing data fails the
/// test.
fn synthea_dir() -> PathBuf {
    let dir = crate::manifest_dir().join("../../testdata/synthea");
    assert!(dir.join("small.tar.xz").is_file(), "the Synthea data is missing at {}", dir.display());
    dir
}

/// The small data set, unpacked once per test process: type → NDJSON lines.
fn small() -> &'static BTreeMap<String, Vec<String>> {
    static DATA: OnceLock<BTreeMap<String, Vec<String>>> = OnceLock::new();
    DATA.get_or_init(|| {
        let target =
            std::env::temp_dir().join(format!("bulkfhir-search-small-{}", std::process::id()));
        std::fs::create_dir_all(&target).unwrap();
        let status = std::process::Command::new("tar")
            .arg("-xJf")
            .arg(synthea_dir().join("small.tar.xz"))
            .arg("-C")
            .arg(&target)
            .status()
            .expect("run tar");
        assert!(status.success(), "unpack small.tar.xz");
        let mut lines = BTreeMap::new();
        for entry in std::fs::read_dir(&target).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if let Some(type_name) = name.strip_suffix(".ndjson") {
                let text = std::fs::read_to_string(&path).unwrap();
                let type_lines =
                    text.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect();
                lines.insert(type_name.to_owned(), type_lines);
            }
        }
        std::fs::remove_dir_all(&target).unwrap();
        assert!(lines.len() >= 15, "unexpected archive content: {:?}", lines.keys());
        lines
    })
}

fn resources_of(type_name: &str) -> Vec<(String, Json)> {
    small()[type_name].iter().map(|l| (l.clone(), serde_json::from_str(l).unwrap())).collect()
}

fn count(filter: &str, resources: &[(String, Json)]) -> usize {
    let q = query(filter);
    resources.iter().filter(|(line, _)| q.matches(line.as_bytes()).unwrap()).count()
}

fn codings(concept: &Json) -> impl Iterator<Item = &Json> {
    concept["coding"].as_array().into_iter().flatten()
}

fn instant_of(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text).unwrap().timestamp_micros()
}

#[test]
fn real_data_counts_match_an_independent_walk() {
    let observations = resources_of("Observation");
    let patients = resources_of("Patient");
    let conditions = resources_of("Condition");
    let encounters = resources_of("Encounter");

    let with_code = |system: &str, code: &str| {
        observations
            .iter()
            .filter(|(_, o)| {
                codings(&o["code"]).any(|c| c["system"] == system && c["code"] == code)
            })
            .count()
    };
    let expected = with_code("http://loinc.org", "85354-9");
    assert!(expected > 0);
    assert_eq!(count("Observation?code=http://loinc.org|85354-9", &observations), expected);
    assert_eq!(count("Observation?code=85354-9", &observations), expected);
    let either = with_code("http://loinc.org", "8302-2") + with_code("http://loinc.org", "29463-7");
    assert_eq!(
        count("Observation?code=http://loinc.org|8302-2,http://loinc.org|29463-7", &observations),
        either
    );

    // A component with a systolic code and a component above 120 mm[Hg]: two independent
    // conditions (no composite parameter), walked the same way here.
    let components =
        |o: &Json| o["component"].as_array().into_iter().flatten().cloned().collect::<Vec<_>>();
    let high_systolic = observations
        .iter()
        .filter(|(_, o)| {
            let components = components(o);
            components.iter().any(|c| codings(&c["code"]).any(|cd| cd["code"] == "8480-6"))
                && components.iter().any(|c| {
                    c["valueQuantity"]["code"] == "mm[Hg]"
                        && c["valueQuantity"]["value"].as_f64().unwrap() > 120.0
                })
        })
        .count();
    assert!(high_systolic > 0);
    assert_eq!(
        count(
            "Observation?component-value-quantity=gt120||mm[Hg]&component-code=8480-6",
            &observations
        ),
        high_systolic
    );

    // Effective on or after 2015 (dateTimes with offsets).
    let since = instant_of("2015-01-01T00:00:00Z");
    let recent = observations
        .iter()
        .filter(|(_, o)| instant_of(o["effectiveDateTime"].as_str().unwrap()) >= since)
        .count();
    assert!(recent > 0 && recent < observations.len());
    assert_eq!(count("Observation?date=ge2015-01-01", &observations), recent);
    assert_eq!(count("Observation?date=lt2015-01-01", &observations), observations.len() - recent);

    // One patient's observations.
    let patient_id = patients[0].1["id"].as_str().unwrap();
    let reference = format!("Patient/{patient_id}");
    let theirs = observations
        .iter()
        .filter(|(_, o)| o["subject"]["reference"] == reference.as_str())
        .count();
    assert!(theirs > 0);
    assert_eq!(count(&format!("Observation?subject={reference}"), &observations), theirs);
    assert_eq!(count(&format!("Observation?patient={patient_id}"), &observations), theirs);
    let their_encounters =
        encounters.iter().filter(|(_, e)| e["subject"]["reference"] == reference.as_str()).count();
    assert_eq!(count(&format!("Encounter?patient={reference}"), &encounters), their_encounters);

    // Patients by gender and birth date.
    let female = patients.iter().filter(|(_, p)| p["gender"] == "female").count();
    assert_eq!(count("Patient?gender=female", &patients), female);
    assert_eq!(count("Patient?gender:not=female", &patients), patients.len() - female);
    let born_before_1960 =
        patients.iter().filter(|(_, p)| p["birthDate"].as_str().unwrap() < "1960").count();
    assert_eq!(count("Patient?birthdate=lt1960", &patients), born_before_1960);
    let family = patients[1].1["name"][0]["family"].as_str().unwrap();
    let prefix: String = family.chars().take(3).collect();
    let by_family = patients
        .iter()
        .filter(|(_, p)| {
            p["name"].as_array().into_iter().flatten().any(|n| {
                n["family"]
                    .as_str()
                    .is_some_and(|f| f.to_lowercase().starts_with(&prefix.to_lowercase()))
            })
        })
        .count();
    assert!(by_family > 0);
    assert_eq!(count(&format!("Patient?family={}", prefix.to_uppercase()), &patients), by_family);

    // Active conditions.
    let active = conditions
        .iter()
        .filter(|(_, c)| codings(&c["clinicalStatus"]).any(|cd| cd["code"] == "active"))
        .count();
    assert_eq!(
        count(
            "Condition?clinical-status=http://terminology.hl7.org/CodeSystem/condition-clinical|active",
            &conditions
        ),
        active
    );
}

/// Token values that occur in the data, to build selective queries from.
fn token_values(resources: &[(String, Json)], field: &str) -> Vec<String> {
    let mut values: Vec<String> = resources
        .iter()
        .flat_map(|(_, r)| {
            codings(&r[field])
                .map(|c| {
                    format!(
                        "{}|{}",
                        c["system"].as_str().unwrap_or(""),
                        c["code"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    values.sort();
    values.dedup();
    values
}

#[test]
fn the_precheck_never_changes_an_answer_on_real_data() {
    let mut filters: Vec<String> = Vec::new();
    let observations = resources_of("Observation");
    for token in token_values(&observations, "code").iter().take(40) {
        let (system, code) = token.split_once('|').unwrap();
        filters.push(format!("Observation?code={system}|{code}"));
        filters.push(format!("Observation?code={code}&status=final"));
        filters.push(format!("Observation?code={code},8302-2&date=ge2012"));
        filters.push(format!("Observation?combo-code={code}&value-quantity=gt5"));
    }
    let patients = resources_of("Patient");
    for (_, patient) in patients.iter().take(5) {
        let id = patient["id"].as_str().unwrap();
        for type_name in ["Observation", "Encounter", "Condition", "MedicationRequest", "Procedure"]
        {
            filters.push(format!("{type_name}?patient={id}"));
            filters.push(format!("{type_name}?patient=Patient/{id}&_id:missing=false"));
        }
        filters.push(format!("Patient?_id={id}"));
        filters.push(format!("Patient?identifier={id}"));
    }
    filters.extend(
        [
            "Patient?family:exact=Nope,Müller",
            "Observation?value-quantity=181.2||cm",
            "Observation?value-quantity=ge100|http://unitsofmeasure.org|mg/dL",
            "Condition?code=http://snomed.info/sct|44054006",
            "Encounter?class=AMB",
            "Claim?use=claim",
            "ExplanationOfBenefit?status=active",
            "Immunization?vaccine-code=140",
            "CarePlan?category=http://snomed.info/sct|",
            "Organization?_id:not=x",
            "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|",
        ]
        .map(str::to_owned),
    );
    let mut n_checked = 0;
    for filter in &filters {
        let q = query(filter);
        let type_name = q.resource_type().as_str();
        for line in small().get(type_name).into_iter().flatten() {
            let body = line.as_bytes();
            let full = q.matches_parsed_whole(body).unwrap();
            assert_eq!(
                q.matches(body).unwrap(),
                full,
                "{filter} on {}",
                &line[..line.len().min(200)]
            );
            assert_eq!(q.matches_without_precheck(body).unwrap(), full, "{filter}");
            n_checked += 1;
        }
    }
    assert!(n_checked > 100_000, "{n_checked}");
}

// ---- property tests ------------------------------------------------------------------------

fn sample_bodies() -> Vec<Vec<u8>> {
    observations().iter().chain(patients().iter()).map(|r| serde_json::to_vec(r).unwrap()).collect()
}

/// Parameter names of a few types, with modifiers real and invented.
fn arb_pair() -> impl Strategy<Value = (String, String)> {
    let names: Vec<&'static str> = ["Observation", "Patient", "Condition", "Encounter"]
        .iter()
        .flat_map(|t| supported_params(ResourceType::parse(t).unwrap()).map(|p| p.0))
        .chain(["_has", "_sort", "subject.name", "nope", "code-value-quantity", "phonetic"])
        .collect();
    let modifiers = prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            ":missing",
            ":not",
            ":text",
            ":exact",
            ":contains",
            ":below",
            ":above",
            ":Patient",
            ":identifier",
            ":of-type",
            ":in",
            ":Group",
            ":x",
        ])
        .prop_map(str::to_owned),
        "[:.a-zA-Z]{1,6}",
    ];
    let prefixes =
        prop::sample::select(vec!["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz"]);
    let values = prop_oneof![
        "\\PC{0,12}",
        "[0-9.eE+-]{1,8}",
        "[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,8})?)?(Z|[+ -][0-9]{2}:[0-9]{2})?)?)?)?",
        "[a-z:/|,\\\\%0-9A-F$]{0,16}",
        Just("true".to_owned()),
        Just("Patient/p1".to_owned()),
    ];
    (prop::sample::select(names), modifiers, prefixes, values).prop_map(
        |(name, modifier, prefix, value)| (format!("{name}{modifier}"), format!("{prefix}{value}")),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_type_filters_never_panic(text in "\\PC{0,60}") {
        let _ = SearchQuery::parse_type_filter(&text, now());
        let _ = SearchQuery::parse_type_filter(&format!("Observation?{text}"), now());
    }

    #[test]
    fn arbitrary_pairs_parse_or_fail_cleanly_and_evaluate(pairs in prop::collection::vec(arb_pair(), 1..4)) {
        for type_name in ["Observation", "Patient"] {
            let resource_type = ResourceType::parse(type_name).unwrap();
            match SearchQuery::parse(resource_type, &pairs, now()) {
                Ok(q) => {
                    for body in sample_bodies() {
                        let with = q.matches(&body).unwrap();
                        prop_assert_eq!(with, q.matches_without_precheck(&body).unwrap());
                    }
                }
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }

    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), json in arb_resource()) {
        let queries = [
            query("Observation?code=85354-9&date=ge2020&value-quantity=ap5"),
            query("Observation?subject=Patient/p1&_lastUpdated=gt2020&value-string=a"),
            query("Patient?name=a&address=b&birthdate=2020&telecom=x&active=true"),
        ];
        let serialized = serde_json::to_vec(&json).unwrap();
        for q in &queries {
            let _ = q.matches(&body);
            let _ = q.matches_without_precheck(&body);
            prop_assert_eq!(q.matches(&serialized).unwrap(), q.matches_without_precheck(&serialized).unwrap());
        }
    }
}

/// JSON objects with FHIR-ish member names and wrongly typed values at every level.
fn arb_resource() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        "\\PC{0,10}".prop_map(Json::from),
        Just(Json::from("2020-01-01T00:00:00Z")),
        Just(Json::from("Patient/p1")),
    ];
    let keys = prop::sample::select(vec![
        "code",
        "coding",
        "system",
        "display",
        "text",
        "subject",
        "reference",
        "type",
        "value",
        "valueQuantity",
        "valueString",
        "effectiveDateTime",
        "effectivePeriod",
        "start",
        "end",
        "event",
        "name",
        "family",
        "given",
        "address",
        "line",
        "telecom",
        "meta",
        "lastUpdated",
        "contained",
        "id",
        "resourceType",
        "unit",
        "birthDate",
        "active",
        "low",
        "high",
    ]);
    leaf.prop_recursive(4, 40, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|m| Json::Object(
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
    .prop_map(|v| match v {
        Json::Object(_) => v,
        other => json!({"resourceType":"Observation","code":other}),
    })
}

#[test]
fn every_supported_expression_parses_and_the_model_types_it() {
    use crate::generated::search_params::SEARCH_PARAMS;
    let mut n = 0;
    for def in SEARCH_PARAMS.iter().chain(ig::IG_SEARCH_PARAMS) {
        if def.unsupported.is_some() {
            continue;
        }
        let expr = crate::fhirpath::parse(def.expression, &[])
            .unwrap_or_else(|e| panic!("{}.{}: {}", def.base, def.code, e.message));
        // The common parameters are typed on each concrete type (checked through Patient).
        let base = match def.base {
            "Resource" | "DomainResource" => "Patient",
            base => base,
        };
        let types = crate::fhirpath::model::result_types(&expr, base)
            .unwrap_or_else(|| panic!("{}.{}: `{}` not typed", def.base, def.code, def.expression));
        let comparable = def.param_type.comparable_types();
        assert!(
            types.iter().any(|t| comparable.contains(t)),
            "{}.{}: {types:?} has nothing a {:?} search compares",
            def.base,
            def.code,
            def.param_type
        );
        n += 1;
    }
    assert_eq!(n, 1627);
}
