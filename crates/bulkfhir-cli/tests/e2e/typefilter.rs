//! `_typeFilter` end to end on medium: every expectation is a predicate written here over the raw
//! NDJSON, independent of the server's search evaluator.

use std::collections::BTreeSet;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use reqwest::Method;
use serde_json::Value;

use crate::{
    common::{Dataset, TestServer, assert_outcome, medium, test_export_config},
    export::{kick, kick_raw, output_by_type, wait_manifest},
};

type Predicate = Box<dyn Fn(&Value) -> bool>;

/// (system, code) of every Coding in a CodeableConcept, a Coding, or an array of either.
fn codings(value: &Value) -> Vec<(String, String)> {
    match value {
        Value::Array(items) => items.iter().flat_map(codings).collect(),
        Value::Object(map) if map.contains_key("coding") => codings(&map["coding"]),
        Value::Object(map) => vec![(
            map.get("system").and_then(Value::as_str).unwrap_or_default().to_owned(),
            map.get("code").and_then(Value::as_str).unwrap_or_default().to_owned(),
        )],
        _ => Vec::new(),
    }
}

fn has_code(value: &Value, system: Option<&str>, code: &str) -> bool {
    codings(value).iter().any(|(s, c)| c == code && system.is_none_or(|sys| s == sys))
}

fn instant(text: &str) -> DateTime<FixedOffset> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|_| {
        // A plain date: its first instant, in UTC.
        let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap();
        Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap()).fixed_offset()
    })
}

fn year_start(year: i32) -> DateTime<FixedOffset> {
    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0).unwrap().fixed_offset()
}

fn starts_with_ci(text: &str, prefix: &str) -> bool {
    text.to_lowercase().starts_with(&prefix.to_lowercase())
}

fn name_parts(patient: &Value) -> Vec<String> {
    let mut parts = Vec::new();
    for name in patient["name"].as_array().into_iter().flatten() {
        for key in ["family", "text"] {
            if let Some(s) = name[key].as_str() {
                parts.push(s.to_owned());
            }
        }
        for key in ["given", "prefix", "suffix"] {
            parts.extend(
                name[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_owned),
            );
        }
    }
    parts
}

fn ids_where(
    dataset: &Dataset,
    type_name: &str,
    predicate: &dyn Fn(&Value) -> bool,
) -> BTreeSet<String> {
    dataset.lines[type_name]
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| predicate(r))
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

fn first_value(
    dataset: &Dataset,
    type_name: &str,
    pick: impl Fn(&Value) -> Option<String>,
) -> String {
    dataset.lines[type_name]
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find_map(|r| pick(&r))
        .unwrap()
}

fn cases(dataset: &Dataset) -> Vec<(&'static str, String, Predicate)> {
    const LOINC: &str = "http://loinc.org";
    let patient_id = first_value(dataset, "Patient", |p| p["id"].as_str().map(str::to_owned));
    let patient_family =
        first_value(dataset, "Patient", |p| p["name"][0]["family"].as_str().map(str::to_owned));
    let family_prefix: String = patient_family.chars().take(3).collect();
    let given =
        first_value(dataset, "Patient", |p| p["name"][0]["given"][0].as_str().map(str::to_owned));
    let city =
        first_value(dataset, "Patient", |p| p["address"][0]["city"].as_str().map(str::to_owned));
    let mrn = first_value(dataset, "Patient", |p| {
        p["identifier"][1]["value"].as_str().map(str::to_owned)
    });
    let obs_ids: Vec<String> = dataset.lines["Observation"]
        .iter()
        .take(3)
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    let concept_code = first_value(dataset, "Observation", |o| {
        o["valueCodeableConcept"]["coding"][0]["code"].as_str().map(str::to_owned)
    });
    let effective = |o: &Value| o["effectiveDateTime"].as_str().map(instant);
    let quantity = |o: &Value| o["valueQuantity"]["value"].as_f64();
    let pid = patient_id.clone();
    let pid2 = patient_id.clone();
    let (ids_a, ids_b) = (obs_ids.clone(), obs_ids.clone());
    let (fam, giv, cty, mrn2) = (family_prefix.clone(), given.clone(), city.clone(), mrn.clone());
    let cc = concept_code.clone();
    vec![
        ("Observation", format!("Observation?code={LOINC}|8302-2"), Box::new(|o| has_code(&o["code"], Some(LOINC), "8302-2"))),
        ("Observation", "Observation?code=29463-7".into(), Box::new(|o| has_code(&o["code"], None, "29463-7"))),
        ("Observation", format!("Observation?code={LOINC}|8302-2,{LOINC}|29463-7"), Box::new(|o| has_code(&o["code"], Some(LOINC), "8302-2") || has_code(&o["code"], Some(LOINC), "29463-7"))),
        ("Observation", format!("Observation?code:not={LOINC}|72514-3"), Box::new(|o| !has_code(&o["code"], Some(LOINC), "72514-3"))),
        ("Observation", "Observation?category=laboratory".into(), Box::new(|o| has_code(&o["category"], None, "laboratory"))),
        ("Observation", "Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs".into(), Box::new(|o| has_code(&o["category"], Some("http://terminology.hl7.org/CodeSystem/observation-category"), "vital-signs"))),
        ("Observation", "Observation?date=ge2019".into(), Box::new(move |o| effective(o).is_some_and(|t| t >= year_start(2019)))),
        ("Observation", "Observation?date=lt2012".into(), Box::new(move |o| effective(o).is_some_and(|t| t < year_start(2012)))),
        ("Observation", "Observation?date=2016".into(), Box::new(move |o| effective(o).is_some_and(|t| t >= year_start(2016) && t < year_start(2017)))),
        ("Observation", "Observation?date=gt2017&date=lt2019".into(), Box::new(move |o| effective(o).is_some_and(|t| t >= year_start(2018) && t < year_start(2019)))),
        ("Observation", "Observation?value-quantity=gt150".into(), Box::new(move |o| quantity(o).is_some_and(|v| v > 150.0))),
        ("Observation", "Observation?value-quantity=lt20|http://unitsofmeasure.org|kg/m2".into(), Box::new(move |o| quantity(o).is_some_and(|v| v < 20.0) && o["valueQuantity"]["code"] == "kg/m2")),
        ("Observation", format!("Observation?subject=Patient/{patient_id}"), Box::new(move |o| o["subject"]["reference"] == format!("Patient/{pid}"))),
        ("Observation", format!("Observation?patient={patient_id}&code=8302-2"), Box::new(move |o| o["subject"]["reference"] == format!("Patient/{pid2}") && has_code(&o["code"], None, "8302-2"))),
        ("Observation", format!("Observation?_id={}", obs_ids.join(",")), Box::new(move |o| ids_a.iter().any(|i| o["id"] == i.as_str()))),
        ("Observation", "Observation?value-quantity:missing=true".into(), Box::new(|o| o.get("valueQuantity").is_none())),
        ("Observation", format!("Observation?value-concept={concept_code}"), Box::new(move |o| has_code(&o["valueCodeableConcept"], None, &cc))),
        ("Observation", "Observation?status=final".into(), Box::new(|o| o["status"] == "final")),
        ("Observation", format!("Observation?_id:not={}", ids_b[0]), Box::new(move |o| o["id"] != ids_b[0].as_str())),
        ("Condition", "Condition?code=http://snomed.info/sct|444814009".into(), Box::new(|c| has_code(&c["code"], Some("http://snomed.info/sct"), "444814009"))),
        ("Condition", "Condition?clinical-status=active".into(), Box::new(|c| has_code(&c["clinicalStatus"], None, "active"))),
        ("Condition", "Condition?abatement-date:missing=true".into(), Box::new(|c| !c.as_object().unwrap().keys().any(|k| k.starts_with("abatement")))),
        ("Condition", "Condition?onset-date=ge2015".into(), Box::new(|c| c["onsetDateTime"].as_str().is_some_and(|t| instant(t) >= year_start(2015)))),
        ("Patient", "Patient?gender=female".into(), Box::new(|p| p["gender"] == "female")),
        ("Patient", "Patient?birthdate=lt1970".into(), Box::new(|p| p["birthDate"].as_str().is_some_and(|d| instant(d) < year_start(1970)))),
        ("Patient", format!("Patient?family={}", family_prefix.to_lowercase()), Box::new(move |p| p["name"].as_array().into_iter().flatten().any(|n| n["family"].as_str().is_some_and(|f| starts_with_ci(f, &fam))))),
        ("Patient", format!("Patient?name:exact={given}"), Box::new(move |p| name_parts(p).contains(&giv))),
        ("Patient", format!("Patient?address-city={city}"), Box::new(move |p| p["address"].as_array().into_iter().flatten().any(|a| a["city"].as_str().is_some_and(|c| starts_with_ci(c, &cty))))),
        ("Patient", format!("Patient?identifier=http://hospital.smarthealthit.org|{mrn}"), Box::new(move |p| p["identifier"].as_array().into_iter().flatten().any(|i| i["system"] == "http://hospital.smarthealthit.org" && i["value"] == mrn2.as_str()))),
        ("Encounter", "Encounter?class=EMER,IMP".into(), Box::new(|e| e["class"]["code"] == "EMER" || e["class"]["code"] == "IMP")),
        ("Immunization", "Immunization?vaccine-code=http://hl7.org/fhir/sid/cvx|140".into(), Box::new(|i| has_code(&i["vaccineCode"], Some("http://hl7.org/fhir/sid/cvx"), "140"))),
        ("Immunization", "Immunization?date=lt2014".into(), Box::new(|i| i["occurrenceDateTime"].as_str().is_some_and(|t| instant(t) < year_start(2014)))),
        ("MedicationRequest", "MedicationRequest?status=active".into(), Box::new(|m| m["status"] == "active")),
        ("MedicationRequest", "MedicationRequest?authoredon=ge2018".into(), Box::new(|m| m["authoredOn"].as_str().is_some_and(|t| instant(t) >= year_start(2018)))),
        ("Procedure", "Procedure?code=430193006".into(), Box::new(|p| has_code(&p["code"], None, "430193006"))),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn type_filter_queries_select_exactly_what_an_independent_reading_of_the_data_selects()
 {
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let cases = cases(dataset);
    assert!(cases.len() >= 30);
    // One query per type per export: filters of different types are independent.
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (idx, (type_name, _, _)) in cases.iter().enumerate() {
        match rounds.iter_mut().find(|r| r.iter().all(|&i| cases[i].0 != *type_name)) {
            Some(round) => round.push(idx),
            None => rounds.push(vec![idx]),
        }
    }
    for round in rounds {
        let types: Vec<&str> = round.iter().map(|&i| cases[i].0).collect();
        let mut query = format!("$export?_type={}", types.join(","));
        for &idx in &round {
            let encoded: String =
                form_urlencoded::byte_serialize(cases[idx].1.as_bytes()).collect();
            query.push_str(&format!("&_typeFilter={encoded}"));
        }
        let manifest = wait_manifest(&server, &kick(&server, &query).await).await;
        let output = output_by_type(&server, &manifest, "output").await;
        for &idx in &round {
            let (type_name, text, predicate) = &cases[idx];
            let want = ids_where(dataset, type_name, predicate.as_ref());
            let got: BTreeSet<String> = output
                .get(*type_name)
                .map(|r| r.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect())
                .unwrap_or_default();
            assert!(
                !want.is_empty() || text.contains(":missing"),
                "{text}: the case selects something"
            );
            assert_eq!(got, want, "{text}");
            // The REST search API answers the same query the same way (paged, 200 a page).
            assert_eq!(search_all(&server, text).await, want, "GET {text}");
        }
    }
}

/// Every id a `GET [base]/Type?params` search returns, following `next` links.
async fn search_all(server: &TestServer, query_text: &str) -> BTreeSet<String> {
    let (type_name, params) = query_text.split_once('?').unwrap();
    let pairs: Vec<(String, String)> = params
        .split('&')
        .map(|p| p.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).unwrap())
        .collect();
    let encoded: String =
        form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
    let mut url = server.url(&format!("{type_name}?{encoded}&_count=200"));
    let mut ids = BTreeSet::new();
    loop {
        let response = server.client.get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "GET {url}");
        let page: Value = response.json().await.unwrap();
        for entry in page["entry"].as_array().unwrap() {
            assert!(
                ids.insert(entry["resource"]["id"].as_str().unwrap().to_owned()),
                "paging returns each once"
            );
        }
        match page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => return ids,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn type_filter_queries_encoded_inside_the_value_are_decoded_as_query_strings() {
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let exported = async |query: &str| -> BTreeSet<String> {
        let manifest = wait_manifest(&server, &kick(&server, query).await).await;
        let output = output_by_type(&server, &manifest, "output").await;
        output
            .get("Observation")
            .map(|r| r.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    // What Cumulus's smart-fetch sends: the inner query is itself percent-encoded, so the wire
    // carries `%252C` and the inner query reads `category=social-history%2Cvital-signs...`,
    // whose `%2C` separates values (it used to be read as a literal comma: no Observation).
    let categories = ["social-history", "vital-signs", "laboratory"];
    let want = ids_where(dataset, "Observation", &|o| {
        categories.iter().any(|c| has_code(&o["category"], None, c))
    });
    assert!(!want.is_empty());
    let query = "$export?_type=Observation&_typeFilter=Observation%3Fcategory%3Dsocial-history%252Cvital-signs%252Claboratory";
    assert_eq!(exported(query).await, want, "%2C inside the inner query ORs values");
    // The same query with the inner query not encoded selects the same.
    let plain = "$export?_type=Observation&_typeFilter=Observation%3Fcategory%3Dsocial-history%2Cvital-signs%2Claboratory";
    assert_eq!(exported(plain).await, want);
    // FHIR's escaped comma (`\,`, encoded `%5C%2C` inside the value) stays one value: no
    // category is literally "social-history,vital-signs".
    let escaped = "$export?_type=Observation&_typeFilter=Observation%3Fcategory%3Dsocial-history%255C%252Cvital-signs";
    assert_eq!(exported(escaped).await, BTreeSet::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn type_filters_or_within_a_type_and_leave_other_types_alone() {
    let dataset = medium();
    let server = TestServer::start_loaded(dataset, test_export_config()).await;
    let query = "$export?_type=Observation,Patient&_typeFilter=Observation%3Fcode%3D8302-2&_typeFilter=Observation%3Fcode%3D29463-7";
    let manifest = wait_manifest(&server, &kick(&server, query).await).await;
    let output = output_by_type(&server, &manifest, "output").await;
    let want = ids_where(dataset, "Observation", &|o| {
        has_code(&o["code"], None, "8302-2") || has_code(&o["code"], None, "29463-7")
    });
    let got: BTreeSet<String> =
        output["Observation"].iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, want, "repeated _typeFilter for one type are OR-ed");
    assert_eq!(
        output["Patient"].len(),
        dataset.lines["Patient"].len(),
        "types without a filter are unaffected"
    );

    // Refused: search-result parameters, chains, composites, unknown parameters, bad values.
    for bad in [
        "Observation?code=x&_sort=date",
        "Observation?_include=Observation:subject",
        "Observation?subject.name=x",
        "Observation?nope=1",
        "Observation?date=garbage",
        "Nope?code=x",
        "Observation",
    ] {
        let encoded: String = form_urlencoded::byte_serialize(bad.as_bytes()).collect();
        let (status, _, outcome) =
            kick_raw(&server, Method::GET, &format!("$export?_typeFilter={encoded}"), &[], None)
                .await;
        assert_outcome(status, 400, &outcome);
    }
    // Random strings never produce a 500 or a panic.
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..200 {
        let mut text = String::from("Observation?");
        let alphabet = b"abcdeqwz?=&|,:$%.-_019 lgteqnsaebp[]\\\"";
        for _ in 0..(seed % 40) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push(alphabet[(seed % alphabet.len() as u64) as usize] as char);
        }
        let encoded: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
        let (status, headers, body) = kick_raw(
            &server,
            Method::GET,
            &format!("$export?_type=Patient&_typeFilter={encoded}"),
            &[],
            None,
        )
        .await;
        assert!(status == 202 || status == 400, "{text}: {status} {body}");
        if status == 202 {
            // Keep the queue short.
            let status_url = headers["content-location"].to_str().unwrap();
            assert_eq!(
                server.client.delete(status_url).send().await.unwrap().status().as_u16(),
                202
            );
        }
    }
}
