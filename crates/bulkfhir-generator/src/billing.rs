//! Writers for `Claim` and `ExplanationOfBenefit`.
//!
//! Every encounter gets a professional/institutional Claim and an EOB;
//! every medication order gets a pharmacy Claim. Line items, sequences and
//! amounts follow Synthea's (Blue Button flavoured) layout, without
//! contained resources so that every reference is a resolvable `Type/id`.

use crate::clinical::{EncounterRecord, Prescription};
use crate::json::Json;
use crate::person::Person;
use crate::rng::Id;
use crate::vocab::{CVX, Class, Concept, RXNORM, SNOMED};
use crate::world::World;

const CLAIM_TYPE: &str = "http://terminology.hl7.org/CodeSystem/claim-type";

/// The insurer of `person` at the time of `enc` (Medicare from 65).
fn payer(person: &Person, enc: &EncounterRecord) -> &'static str {
    if person.age_at(enc.start) >= 65 { "Medicare" } else { person.payer }
}

fn claim_type(class: Class) -> &'static str {
    match class {
        Class::Ambulatory => "professional",
        Class::Emergency | Class::Inpatient => "institutional",
    }
}

/// Total submitted amount of an encounter's claim in cents.
fn encounter_total(enc: &EncounterRecord) -> i64 {
    enc.cents + enc.immunizations.iter().chain(&enc.procedures).map(|b| b.cents).sum::<i64>()
}

/// Fields shared by both kinds of Claim up to and including `priority`.
fn claim_head(
    json: &mut Json,
    id: &Id,
    kind: &str,
    world: &World,
    person: &Person,
    enc: &EncounterRecord,
) {
    let org = &world.organizations[enc.organization];
    json.begin("Claim", id);
    json.raw(",\"status\":\"active\",\"type\":{\"coding\":[{\"system\":\"");
    json.raw(CLAIM_TYPE);
    json.raw("\",\"code\":\"");
    json.raw(kind);
    json.raw("\"}]},\"use\":\"claim\",\"patient\":");
    json.reference_display("Patient", &person.id, &person.name);
    json.raw(",\"billablePeriod\":");
    json.period(enc.start, enc.end);
    json.raw(",\"created\":");
    json.datetime(enc.end);
    json.raw(",\"provider\":");
    json.reference_display("Organization", &org.id, &org.name);
    json.raw(",\"priority\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/processpriority\",\"code\":\"normal\"}]}");
}

fn care_team(json: &mut Json, world: &World, enc: &EncounterRecord) {
    let prac = &world.practitioners[enc.practitioner];
    json.raw(",\"careTeam\":[{\"sequence\":1,\"provider\":");
    json.reference("Practitioner", &prac.id);
    json.raw(",\"role\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/claimcareteamrole\",\"code\":\"primary\",\"display\":\"Primary Care Practitioner\"}]}}]");
}

fn insurance(json: &mut Json, payer: &str, with_sequence: bool) {
    json.raw(if with_sequence {
        ",\"insurance\":[{\"sequence\":1,\"focal\":true"
    } else {
        ",\"insurance\":[{\"focal\":true"
    });
    json.raw(",\"coverage\":{\"display\":");
    json.str(payer);
    json.raw("}}]");
}

fn supporting_info(json: &mut Json, enc: &EncounterRecord) {
    if enc.immunizations.is_empty() {
        return;
    }
    json.raw(",\"supportingInfo\":[");
    for (i, imm) in enc.immunizations.iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.raw("{\"sequence\":");
        json.u64(i as u64 + 1);
        json.raw(",\"category\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/claiminformationcategory\",\"code\":\"info\"}]},\"valueReference\":");
        json.reference("Immunization", &imm.id);
        json.raw("}");
    }
    json.raw("]");
}

fn diagnoses(json: &mut Json, enc: &EncounterRecord, with_type: bool) {
    if enc.diagnoses.is_empty() {
        return;
    }
    json.raw(",\"diagnosis\":[");
    for (i, (cond, _)) in enc.diagnoses.iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.raw("{\"sequence\":");
        json.u64(i as u64 + 1);
        json.raw(",\"diagnosisReference\":");
        json.reference("Condition", cond);
        if with_type {
            json.raw(",\"type\":[{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/ex-diagnosistype\",\"code\":");
            json.raw(if i == 0 { "\"principal\"" } else { "\"clinical\"" });
            json.raw("}]}]");
        }
        json.raw("}");
    }
    json.raw("]");
}

fn procedures(json: &mut Json, enc: &EncounterRecord) {
    if enc.procedures.is_empty() {
        return;
    }
    json.raw(",\"procedure\":[");
    for (i, p) in enc.procedures.iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.raw("{\"sequence\":");
        json.u64(i as u64 + 1);
        json.raw(",\"procedureReference\":");
        json.reference("Procedure", &p.id);
        json.raw("}");
    }
    json.raw("]");
}

/// What a claim line is for, with the sequence of the entry it points at.
#[derive(Debug, Clone, Copy)]
enum Line {
    Visit,
    Vaccine(u64),
    Procedure(u64),
    Diagnosis(u64),
}

/// Calls `f` for every line item of the encounter's claim, in order:
/// the visit, vaccines, procedures, then diagnoses (unpriced).
fn for_each_line(enc: &EncounterRecord, mut f: impl FnMut(u64, Line, &str, &Concept, Option<i64>)) {
    let mut seq = 1;
    f(seq, Line::Visit, SNOMED, &enc.ty.concept, Some(enc.cents));
    for (i, imm) in enc.immunizations.iter().enumerate() {
        seq += 1;
        f(seq, Line::Vaccine(i as u64 + 1), CVX, imm.concept, Some(imm.cents));
    }
    for (i, p) in enc.procedures.iter().enumerate() {
        seq += 1;
        f(seq, Line::Procedure(i as u64 + 1), SNOMED, p.concept, Some(p.cents));
    }
    for (i, (_, concept)) in enc.diagnoses.iter().enumerate() {
        seq += 1;
        f(seq, Line::Diagnosis(i as u64 + 1), SNOMED, concept, None);
    }
}

fn line_link(json: &mut Json, line: Line) {
    let (key, n) = match line {
        Line::Visit => return,
        Line::Vaccine(n) => ("informationSequence", n),
        Line::Procedure(n) => ("procedureSequence", n),
        Line::Diagnosis(n) => ("diagnosisSequence", n),
    };
    json.raw(",\"");
    json.raw(key);
    json.raw("\":[");
    json.u64(n);
    json.raw("]");
}

/// The Claim for an encounter.
pub(crate) fn encounter_claim(
    json: &mut Json,
    id: &Id,
    world: &World,
    person: &Person,
    enc: &EncounterRecord,
) {
    claim_head(json, id, claim_type(enc.ty.class), world, person, enc);
    care_team(json, world, enc);
    supporting_info(json, enc);
    diagnoses(json, enc, false);
    procedures(json, enc);
    insurance(json, payer(person, enc), true);
    json.raw(",\"item\":[");
    for_each_line(enc, |seq, line, system, concept, cents| {
        if seq > 1 {
            json.raw(",");
        }
        json.raw("{\"sequence\":");
        json.u64(seq);
        line_link(json, line);
        json.raw(",\"productOrService\":");
        json.concept(system, concept.code, concept.display);
        if matches!(line, Line::Visit) {
            json.raw(",\"encounter\":[");
            json.reference("Encounter", &enc.id);
            json.raw("]");
        }
        if let Some(c) = cents {
            json.raw(",\"net\":");
            json.money(c);
        }
        json.raw("}");
    });
    json.raw("],\"total\":");
    json.money(encounter_total(enc));
    json.end();
}

/// The pharmacy Claim for one medication order.
pub(crate) fn pharmacy_claim(
    json: &mut Json,
    id: &Id,
    world: &World,
    person: &Person,
    enc: &EncounterRecord,
    rx: &Prescription,
) {
    claim_head(json, id, "pharmacy", world, person, enc);
    json.raw(",\"prescription\":");
    json.reference("MedicationRequest", &rx.id);
    insurance(json, payer(person, enc), true);
    json.raw(",\"item\":[{\"sequence\":1,\"productOrService\":");
    json.concept(RXNORM, rx.medication.concept.code, rx.medication.concept.display);
    json.raw(",\"encounter\":[");
    json.reference("Encounter", &enc.id);
    json.raw("],\"net\":");
    json.money(rx.cents);
    json.raw("}],\"total\":");
    json.money(rx.cents);
    json.end();
}

fn place_of_service(class: Class) -> (&'static str, &'static str) {
    match class {
        Class::Ambulatory => ("11", "Office"),
        Class::Emergency => ("23", "Emergency Room - Hospital"),
        Class::Inpatient => ("21", "Inpatient Hospital"),
    }
}

const ADJUDICATIONS: [(&str, &str); 4] = [
    ("line_coinsrnc_amt", "Line Beneficiary Coinsurance Amount"),
    ("line_prvdr_pmt_amt", "Line Provider Payment Amount"),
    ("line_sbmtd_chrg_amt", "Line Submitted Charge Amount"),
    ("line_alowd_chrg_amt", "Line Allowed Charge Amount"),
];

/// `(coinsurance, provider payment)` of a line of `cents` under `payer`.
fn split(payer: &str, cents: i64) -> (i64, i64) {
    if payer == "NO_INSURANCE" {
        (cents, 0)
    } else {
        let coinsurance = cents / 5;
        (coinsurance, cents - coinsurance)
    }
}

fn adjudication(json: &mut Json, payer: &str, cents: i64) {
    let (coinsurance, paid) = split(payer, cents);
    let amounts = [coinsurance, paid, cents, cents];
    json.raw(",\"adjudication\":[");
    for (i, ((var, display), amount)) in ADJUDICATIONS.iter().zip(amounts).enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.raw("{\"category\":{\"coding\":[{\"system\":\"https://bluebutton.cms.gov/resources/codesystem/adjudication\",\"code\":\"https://bluebutton.cms.gov/resources/variables/");
        json.raw(var);
        json.raw("\",\"display\":");
        json.str(display);
        json.raw("}]},\"amount\":");
        json.money(amount);
        json.raw("}");
    }
    json.raw("]");
}

/// The ExplanationOfBenefit for an encounter's claim `claim`.
pub(crate) fn explanation_of_benefit(
    json: &mut Json,
    id: &Id,
    claim: &Id,
    world: &World,
    person: &Person,
    enc: &EncounterRecord,
) {
    let org = &world.organizations[enc.organization];
    let payer = payer(person, enc);
    let (pos_code, pos_display) = place_of_service(enc.ty.class);
    json.begin("ExplanationOfBenefit", id);
    json.raw(",\"identifier\":[{\"system\":\"https://bluebutton.cms.gov/resources/variables/clm_id\",\"value\":");
    json.id(claim);
    json.raw("},{\"system\":\"https://bluebutton.cms.gov/resources/identifier/claim-group\",\"value\":\"99999999999\"}],\"status\":\"active\",\"type\":{\"coding\":[{\"system\":\"");
    json.raw(CLAIM_TYPE);
    json.raw("\",\"code\":\"");
    json.raw(claim_type(enc.ty.class));
    json.raw("\"}]},\"use\":\"claim\",\"patient\":");
    json.reference("Patient", &person.id);
    json.raw(",\"billablePeriod\":");
    json.period(enc.start, enc.end);
    json.raw(",\"created\":");
    json.datetime(enc.end);
    json.raw(",\"insurer\":{\"display\":");
    json.str(payer);
    json.raw("},\"provider\":");
    json.reference("Organization", &org.id);
    json.raw(",\"claim\":");
    json.reference("Claim", claim);
    json.raw(",\"outcome\":\"complete\"");
    care_team(json, world, enc);
    supporting_info(json, enc);
    diagnoses(json, enc, true);
    procedures(json, enc);
    insurance(json, payer, false);
    json.raw(",\"item\":[");
    let mut paid_total = 0;
    for_each_line(enc, |seq, line, system, concept, cents| {
        if seq > 1 {
            json.raw(",");
        }
        json.raw("{\"sequence\":");
        json.u64(seq);
        line_link(json, line);
        json.raw(",\"category\":{\"coding\":[{\"system\":\"https://bluebutton.cms.gov/resources/variables/line_cms_type_srvc_cd\",\"code\":\"1\",\"display\":\"Medical care\"}]},\"productOrService\":");
        json.concept(system, concept.code, concept.display);
        json.raw(",\"servicedPeriod\":");
        json.period(enc.start, enc.end);
        json.raw(",\"locationCodeableConcept\":");
        json.concept_no_text(
            "http://terminology.hl7.org/CodeSystem/ex-serviceplace",
            pos_code,
            pos_display,
        );
        if matches!(line, Line::Visit) {
            json.raw(",\"encounter\":[");
            json.reference("Encounter", &enc.id);
            json.raw("]");
        }
        if let Some(c) = cents {
            json.raw(",\"net\":");
            json.money(c);
            adjudication(json, payer, c);
            paid_total += split(payer, c).1;
        }
        json.raw("}");
    });
    json.raw("],\"total\":[{\"category\":");
    json.concept(
        "http://terminology.hl7.org/CodeSystem/adjudication",
        "submitted",
        "Submitted Amount",
    );
    json.raw(",\"amount\":");
    json.money(encounter_total(enc));
    json.raw("},{\"category\":");
    json.concept("http://terminology.hl7.org/CodeSystem/adjudication", "benefit", "Benefit Amount");
    json.raw(",\"amount\":");
    json.money(paid_total);
    json.raw("}],\"payment\":{\"amount\":");
    json.money(paid_total);
    json.raw("}}");
}
