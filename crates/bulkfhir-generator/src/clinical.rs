//! Writers for the clinical resources of an encounter: `Encounter`,
//! `Observation`, `DiagnosticReport`, `Condition`, `Procedure`,
//! `MedicationRequest` and `Immunization`, in Synthea's shape.

use crate::json::Json;
use crate::person::Person;
use crate::rng::Id;
use crate::time::{REFERENCE, YEAR};
use crate::vocab::{
    CVX, Class, Concept, EncounterType, LOINC, Measure, Medication, RXNORM, SNOMED,
};
use crate::world::World;

/// A procedure or vaccination billed on an encounter's claim.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Billed {
    pub(crate) id: Id,
    pub(crate) concept: &'static Concept,
    pub(crate) cents: i64,
}

/// A medication order (billed on its own pharmacy claim).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Prescription {
    pub(crate) id: Id,
    pub(crate) medication: &'static Medication,
    pub(crate) cents: i64,
}

/// The encounter being simulated and everything recorded in it.
#[derive(Debug)]
pub(crate) struct EncounterRecord {
    pub(crate) id: Id,
    pub(crate) ty: &'static EncounterType,
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) practitioner: usize,
    pub(crate) organization: usize,
    /// Reason for the visit (an acute condition), if any.
    pub(crate) reason: Option<&'static Concept>,
    /// Cost of the visit itself in cents.
    pub(crate) cents: i64,
    /// Conditions addressed: `(Condition id, code)`, new or pre-existing.
    pub(crate) diagnoses: Vec<(Id, &'static Concept)>,
    pub(crate) procedures: Vec<Billed>,
    pub(crate) immunizations: Vec<Billed>,
    pub(crate) prescriptions: Vec<Prescription>,
}

impl EncounterRecord {
    pub(crate) fn new(id: Id) -> Self {
        Self {
            id,
            ty: &crate::vocab::GENERAL_EXAM,
            start: 0,
            end: 0,
            practitioner: 0,
            organization: 0,
            reason: None,
            cents: 0,
            diagnoses: Vec::new(),
            procedures: Vec::new(),
            immunizations: Vec::new(),
            prescriptions: Vec::new(),
        }
    }
}

/// Writes the `Encounter` resource.
pub(crate) fn encounter(json: &mut Json, world: &World, person: &Person, enc: &EncounterRecord) {
    let prac = &world.practitioners[enc.practitioner];
    let org = &world.organizations[enc.organization];
    json.begin("Encounter", &enc.id);
    json.raw(",\"status\":\"finished\",\"class\":{\"system\":\"http://terminology.hl7.org/CodeSystem/v3-ActCode\",\"code\":\"");
    json.raw(enc.ty.class.code());
    json.raw("\"},\"type\":[");
    json.concept(SNOMED, enc.ty.concept.code, enc.ty.concept.display);
    json.raw("],\"subject\":");
    json.reference_display("Patient", &person.id, &person.display);
    json.raw(",\"participant\":[{\"type\":[");
    json.concept(
        "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
        "PPRF",
        "primary performer",
    );
    json.raw("],\"period\":");
    json.period(enc.start, enc.end);
    json.raw(",\"individual\":");
    json.reference_display("Practitioner", &prac.id, &prac.display);
    json.raw("}],\"period\":");
    json.period(enc.start, enc.end);
    if let Some(reason) = enc.reason {
        json.raw(",\"reasonCode\":[");
        json.concept_no_text(SNOMED, reason.code, reason.display);
        json.raw("]");
    }
    if enc.ty.class == Class::Inpatient {
        json.raw(",\"hospitalization\":{\"dischargeDisposition\":");
        json.concept(
            "http://www.nubc.org/patient-discharge",
            "01",
            "Discharged to home or self care",
        );
        json.raw("}");
    }
    json.raw(",\"location\":[{\"location\":");
    json.reference_display("Location", &org.location, &org.name);
    json.raw("}],\"serviceProvider\":");
    json.reference_display("Organization", &org.id, &org.name);
    json.end();
}

/// Observation categories.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Category {
    VitalSigns,
    Laboratory,
    Survey,
}

impl Category {
    /// `(code, display)` in the observation-category code system.
    const fn coding(self) -> (&'static str, &'static str) {
        match self {
            Self::VitalSigns => ("vital-signs", "Vital Signs"),
            Self::Laboratory => ("laboratory", "Laboratory"),
            Self::Survey => ("survey", "Survey"),
        }
    }
}

/// Everything of an Observation up to (excluding) its value.
fn observation_head(
    json: &mut Json,
    id: &Id,
    category: Category,
    code: &Concept,
    person: &Person,
    enc: &EncounterRecord,
    millis: u32,
) {
    json.begin("Observation", id);
    let (category_code, category_display) = category.coding();
    json.raw(",\"status\":\"final\",\"category\":[");
    json.concept_no_text(
        "http://terminology.hl7.org/CodeSystem/observation-category",
        category_code,
        category_display,
    );
    json.raw("],\"code\":");
    json.concept(LOINC, code.code, code.display);
    json.raw(",\"subject\":");
    json.reference("Patient", &person.id);
    json.raw(",\"encounter\":");
    json.reference("Encounter", &enc.id);
    json.raw(",\"effectiveDateTime\":");
    json.datetime(enc.start);
    json.raw(",\"issued\":");
    json.instant(enc.start, millis);
}

/// An Observation with a `valueQuantity`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn observation_quantity(
    json: &mut Json,
    id: &Id,
    category: Category,
    measure: &Measure,
    value: f64,
    person: &Person,
    enc: &EncounterRecord,
    millis: u32,
) {
    observation_head(json, id, category, &measure.concept, person, enc, millis);
    json.raw(",\"valueQuantity\":");
    json.quantity(value, measure.places, measure.unit);
    json.end();
}

/// An Observation with a SNOMED `valueCodeableConcept`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn observation_coded(
    json: &mut Json,
    id: &Id,
    category: Category,
    code: &Concept,
    answer: &Concept,
    person: &Person,
    enc: &EncounterRecord,
    millis: u32,
) {
    observation_head(json, id, category, code, person, enc, millis);
    json.raw(",\"valueCodeableConcept\":");
    json.concept(SNOMED, answer.code, answer.display);
    json.end();
}

/// A blood-pressure panel Observation with two components.
#[allow(clippy::too_many_arguments)]
pub(crate) fn observation_components(
    json: &mut Json,
    id: &Id,
    code: &Concept,
    components: [(&Measure, f64); 2],
    person: &Person,
    enc: &EncounterRecord,
    millis: u32,
) {
    observation_head(json, id, Category::VitalSigns, code, person, enc, millis);
    json.raw(",\"component\":[");
    for (i, (measure, value)) in components.into_iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.raw("{\"code\":");
        json.concept(LOINC, measure.concept.code, measure.concept.display);
        json.raw(",\"valueQuantity\":");
        json.quantity(value, measure.places, measure.unit);
        json.raw("}");
    }
    json.raw("]");
    json.end();
}

/// A laboratory DiagnosticReport over the given result Observations.
pub(crate) fn diagnostic_report(
    json: &mut Json,
    id: &Id,
    code: &Concept,
    results: &[(Id, &'static str)],
    person: &Person,
    enc: &EncounterRecord,
    millis: u32,
) {
    json.begin("DiagnosticReport", id);
    json.raw(",\"status\":\"final\",\"category\":[");
    json.concept_no_text("http://terminology.hl7.org/CodeSystem/v2-0074", "LAB", "Laboratory");
    json.raw("],\"code\":");
    json.concept(LOINC, code.code, code.display);
    json.raw(",\"subject\":");
    json.reference("Patient", &person.id);
    json.raw(",\"encounter\":");
    json.reference("Encounter", &enc.id);
    json.raw(",\"effectiveDateTime\":");
    json.datetime(enc.start);
    json.raw(",\"issued\":");
    json.instant(enc.start, millis);
    json.raw(",\"result\":[");
    for (i, (obs, display)) in results.iter().enumerate() {
        if i > 0 {
            json.raw(",");
        }
        json.reference_display("Observation", obs, display);
    }
    json.raw("]");
    json.end();
}

/// A `Condition`; `abatement` (if any) must lie before the reference date.
pub(crate) fn condition(
    json: &mut Json,
    id: &Id,
    code: &Concept,
    person: &Person,
    enc: &EncounterRecord,
    abatement: Option<i64>,
) {
    json.begin("Condition", id);
    json.raw(",\"clinicalStatus\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-clinical\",\"code\":");
    json.raw(if abatement.is_some() { "\"resolved\"" } else { "\"active\"" });
    json.raw("}]},\"verificationStatus\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-ver-status\",\"code\":\"confirmed\"}]},\"code\":");
    json.concept(SNOMED, code.code, code.display);
    json.raw(",\"subject\":");
    json.reference("Patient", &person.id);
    json.raw(",\"encounter\":");
    json.reference("Encounter", &enc.id);
    json.raw(",\"onsetDateTime\":");
    json.datetime(enc.start);
    if let Some(end) = abatement {
        json.raw(",\"abatementDateTime\":");
        json.datetime(end);
    }
    json.raw(",\"recordedDate\":");
    json.datetime(enc.start);
    json.end();
}

/// A completed `Procedure` during the encounter.
pub(crate) fn procedure(
    json: &mut Json,
    id: &Id,
    code: &Concept,
    person: &Person,
    enc: &EncounterRecord,
    end: i64,
    reason: Option<(&Id, &Concept)>,
) {
    json.begin("Procedure", id);
    json.raw(",\"status\":\"completed\",\"code\":");
    json.concept(SNOMED, code.code, code.display);
    json.raw(",\"subject\":");
    json.reference("Patient", &person.id);
    json.raw(",\"encounter\":");
    json.reference("Encounter", &enc.id);
    json.raw(",\"performedPeriod\":");
    json.period(enc.start, end);
    if let Some((cond, concept)) = reason {
        json.raw(",\"reasonReference\":[");
        json.reference_display("Condition", cond, concept.display);
        json.raw("]");
    }
    json.end();
}

/// A `MedicationRequest` written by the encounter's practitioner. Orders
/// from the last year before the reference date are still active.
pub(crate) fn medication_request(
    json: &mut Json,
    id: &Id,
    medication: &Medication,
    world: &World,
    person: &Person,
    enc: &EncounterRecord,
    reason: Option<(&Id, &Concept)>,
) {
    let prac = &world.practitioners[enc.practitioner];
    json.begin("MedicationRequest", id);
    json.raw(if enc.start >= REFERENCE - YEAR {
        ",\"status\":\"active\""
    } else {
        ",\"status\":\"stopped\""
    });
    json.raw(",\"intent\":\"order\",\"medicationCodeableConcept\":");
    json.concept(RXNORM, medication.concept.code, medication.concept.display);
    json.raw(",\"subject\":");
    json.reference("Patient", &person.id);
    json.raw(",\"encounter\":");
    json.reference("Encounter", &enc.id);
    json.raw(",\"authoredOn\":");
    json.datetime(enc.start);
    json.raw(",\"requester\":");
    json.reference_display("Practitioner", &prac.id, &prac.display);
    if let Some((cond, concept)) = reason {
        json.raw(",\"reasonReference\":[");
        json.reference_display("Condition", cond, concept.display);
        json.raw("]");
    }
    json.end();
}

/// A completed `Immunization` given during the encounter.
pub(crate) fn immunization(
    json: &mut Json,
    id: &Id,
    vaccine: &Concept,
    person: &Person,
    enc: &EncounterRecord,
) {
    json.begin("Immunization", id);
    json.raw(",\"status\":\"completed\",\"vaccineCode\":");
    json.concept(CVX, vaccine.code, vaccine.display);
    json.raw(",\"patient\":");
    json.reference("Patient", &person.id);
    json.raw(",\"encounter\":");
    json.reference("Encounter", &enc.id);
    json.raw(",\"occurrenceDateTime\":");
    json.datetime(enc.start);
    json.raw(",\"primarySource\":true}");
}
