//! The per-patient simulation.
//!
//! For each patient a timeline of visits is planned: routine wellness
//! visits, chronic-condition onsets and follow-ups, acute illnesses,
//! outpatient procedures and pregnancies. Detail is dense in the last ten
//! years before the reference date and sparse before (as in Synthea
//! exports). The visits are then replayed in time order; each writes its
//! Encounter, the clinical resources recorded in it, and its billing.
//!
//! All randomness comes from the patient's own stream `(seed, index)`, and
//! ids are derived from `(seed, type, patient index << 24 | n)`, so any
//! patient (or any slice of patients) can be regenerated on its own.
//!
//! [`plan`] builds the timeline, [`visits`] decides what each visit
//! records, [`measurements`] produces vital signs and lab results; this
//! module holds the state and the bookkeeping that writes each resource.

mod measurements;
mod plan;
mod visits;

use crate::clinical::{self, Billed, Category, EncounterRecord, Prescription};
use crate::json::Json;
use crate::output::{Output, ResourceType};
use crate::person::Person;
use crate::rng::{Id, Rng, fnv1a, hash3};
use crate::time::REFERENCE;
use crate::vocab::{
    Acute, Chronic, Class, Concept, EncounterType, GENERAL_EXAM, Measure, Medication, Procedure,
    VACCINE_CENTS, WELL_CHILD,
};
use crate::world::{PRACTITIONERS_PER_ORGANIZATION, World};
use crate::{GenerateError, billing};

/// Stream tag of the per-patient random generators.
const PATIENT_STREAM: u64 = fnv1a("Patient");
const TYPES: usize = ResourceType::ALL.len();

/// Cost of a routine wellness visit in cents.
const WELLNESS_CENTS: i64 = 12_916;

/// What happens at a planned visit.
#[derive(Debug, Clone, Copy)]
enum Visit {
    Wellness,
    HistoricExam,
    Acute(&'static Acute),
    Onset(usize),
    FollowUp(usize),
    Outpatient(&'static Procedure),
    PrenatalInitial(usize),
    Prenatal(usize),
    Miscarriage(usize),
    Delivery(usize),
    Postnatal(usize),
}

/// A chronic condition of the current patient.
#[derive(Debug, Clone, Copy)]
struct ActiveChronic {
    def: &'static Chronic,
    onset: i64,
    condition: Id,
    meds: [Option<&'static Medication>; 3],
}

#[derive(Debug, Clone, Copy)]
struct Pregnancy {
    condition: Id,
    end: i64,
}

#[derive(Debug, Clone, Copy)]
struct Contraception {
    medication: &'static Medication,
    from: i64,
    until: i64,
}

/// Who sees the patient at a visit.
#[derive(Debug, Clone, Copy)]
enum Provider {
    /// The patient's primary care practitioner and organization.
    Primary,
    /// Any organization (emergencies, urgent care).
    Any,
}

/// Generates patients one at a time, reusing its buffers.
#[derive(Debug)]
pub(crate) struct PatientSim<'w> {
    world: &'w World,
    json: Json,
    rng: Rng,
    person: Person,
    counters: [u64; TYPES],
    visits: Vec<(i64, Visit)>,
    chronic: Vec<ActiveChronic>,
    pregnancies: Vec<Pregnancy>,
    contraception: Option<Contraception>,
    enc: EncounterRecord,
    /// Milliseconds of the `issued` instant of the current encounter's results.
    issued_ms: u32,
    results: Vec<(Id, &'static str)>,
    next_vaccine: usize,
    last_flu: i64,
}

impl<'w> PatientSim<'w> {
    pub(crate) fn new(world: &'w World) -> Self {
        Self {
            world,
            json: Json::with_capacity(16 * 1024),
            rng: Rng::for_stream(world.seed, PATIENT_STREAM, 0),
            person: Person::default(),
            counters: [0; TYPES],
            visits: Vec::new(),
            chronic: Vec::new(),
            pregnancies: Vec::new(),
            contraception: None,
            enc: EncounterRecord::new(ResourceType::Encounter.id(world.seed, 0)),
            issued_ms: 0,
            results: Vec::new(),
            next_vaccine: 0,
            last_flu: 0,
        }
    }

    /// Generates patient `index` and all of its resources into `out`.
    pub(crate) fn generate(&mut self, index: u64, out: &mut Output) -> Result<(), GenerateError> {
        let seed = self.world.seed;
        self.rng = Rng::for_stream(seed, PATIENT_STREAM, index);
        self.counters = [0; TYPES];
        self.person.sample(&mut self.rng, self.world, index, hash3(seed, PATIENT_STREAM, index));
        self.json.clear();
        self.person.write(&mut self.json, seed);
        out.emit(ResourceType::Patient, &self.json)?;

        self.plan();
        let visits = std::mem::take(&mut self.visits);
        let result = visits.iter().try_for_each(|&(time, visit)| self.visit(time, visit, out));
        self.visits = visits;
        result
    }

    fn next_id(&mut self, ty: ResourceType) -> Id {
        let n = self.counters[ty as usize];
        self.counters[ty as usize] += 1;
        ty.id(self.world.seed, (self.person.index << 24) | n)
    }

    // -----------------------------------------------------------------------
    // Encounter bookkeeping

    fn open(&mut self, ty: &'static EncounterType, start: i64, provider: Provider) {
        let id = self.next_id(ResourceType::Encounter);
        let minutes = match ty.class {
            Class::Ambulatory => self.rng.between(15, 45),
            Class::Emergency => self.rng.between(60, 360),
            Class::Inpatient => self.rng.between(24 * 60, 5 * 24 * 60),
        };
        let (practitioner, organization) = match provider {
            Provider::Primary => {
                let p = self.person.practitioner;
                (p, p / PRACTITIONERS_PER_ORGANIZATION)
            }
            Provider::Any => {
                let org = self.rng.index(self.world.organizations.len());
                (
                    org * PRACTITIONERS_PER_ORGANIZATION
                        + self.rng.index(PRACTITIONERS_PER_ORGANIZATION),
                    org,
                )
            }
        };
        let cents = match ty.class {
            Class::Ambulatory
                if std::ptr::eq(ty, &GENERAL_EXAM) || std::ptr::eq(ty, &WELL_CHILD) =>
            {
                WELLNESS_CENTS
            }
            Class::Ambulatory => self.rng.between(7_500, 15_000),
            Class::Emergency => self.rng.between(60_000, 150_000),
            Class::Inpatient => self.rng.between(300_000, 1_200_000),
        };
        let enc = &mut self.enc;
        enc.id = id;
        enc.ty = ty;
        enc.start = start;
        enc.end = (start + minutes * 60).min(REFERENCE - 1);
        enc.practitioner = practitioner;
        enc.organization = organization;
        enc.reason = None;
        enc.cents = cents;
        enc.diagnoses.clear();
        enc.procedures.clear();
        enc.immunizations.clear();
        enc.prescriptions.clear();
        self.issued_ms = self.rng.below(1000) as u32;
    }

    /// Writes the Encounter and its Claim, EOB and pharmacy Claims.
    fn close(&mut self, out: &mut Output) -> Result<(), GenerateError> {
        let world = self.world;
        self.json.clear();
        clinical::encounter(&mut self.json, world, &self.person, &self.enc);
        out.emit(ResourceType::Encounter, &self.json)?;

        let claim = self.next_id(ResourceType::Claim);
        self.json.clear();
        billing::encounter_claim(&mut self.json, &claim, world, &self.person, &self.enc);
        out.emit(ResourceType::Claim, &self.json)?;

        let eob = self.next_id(ResourceType::ExplanationOfBenefit);
        self.json.clear();
        billing::explanation_of_benefit(
            &mut self.json,
            &eob,
            &claim,
            world,
            &self.person,
            &self.enc,
        );
        out.emit(ResourceType::ExplanationOfBenefit, &self.json)?;

        for i in 0..self.enc.prescriptions.len() {
            let rx = self.enc.prescriptions[i];
            let id = self.next_id(ResourceType::Claim);
            self.json.clear();
            billing::pharmacy_claim(&mut self.json, &id, world, &self.person, &self.enc, &rx);
            out.emit(ResourceType::Claim, &self.json)?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Resources recorded during an encounter

    fn new_condition(
        &mut self,
        out: &mut Output,
        code: &'static Concept,
        resolves: Option<i64>,
    ) -> Result<Id, GenerateError> {
        let id = self.next_id(ResourceType::Condition);
        let abatement = resolves.filter(|&t| t < REFERENCE);
        self.json.clear();
        clinical::condition(&mut self.json, &id, code, &self.person, &self.enc, abatement);
        out.emit(ResourceType::Condition, &self.json)?;
        self.enc.diagnoses.push((id, code));
        Ok(id)
    }

    fn procedure(
        &mut self,
        out: &mut Output,
        procedure: &'static Procedure,
        reason: Option<(Id, &'static Concept)>,
    ) -> Result<(), GenerateError> {
        let id = self.next_id(ResourceType::Procedure);
        let end = (self.enc.start + self.rng.between(10, 30) * 60).min(REFERENCE - 1);
        self.json.clear();
        let reason_ref = reason.as_ref().map(|(id, c)| (id, *c));
        clinical::procedure(
            &mut self.json,
            &id,
            &procedure.concept,
            &self.person,
            &self.enc,
            end,
            reason_ref,
        );
        out.emit(ResourceType::Procedure, &self.json)?;
        let cents = (procedure.cents as f64 * self.rng.uniform(0.85, 1.15)).round() as i64;
        self.enc.procedures.push(Billed { id, concept: &procedure.concept, cents });
        Ok(())
    }

    fn prescribe(
        &mut self,
        out: &mut Output,
        medication: &'static Medication,
        reason: Option<(Id, &'static Concept)>,
    ) -> Result<(), GenerateError> {
        let id = self.next_id(ResourceType::MedicationRequest);
        self.json.clear();
        let reason_ref = reason.as_ref().map(|(id, c)| (id, *c));
        clinical::medication_request(
            &mut self.json,
            &id,
            medication,
            self.world,
            &self.person,
            &self.enc,
            reason_ref,
        );
        out.emit(ResourceType::MedicationRequest, &self.json)?;
        let cents = (medication.cents as f64 * self.rng.uniform(0.9, 1.1)).round() as i64;
        self.enc.prescriptions.push(Prescription { id, medication, cents });
        Ok(())
    }

    /// Prescribes a chronic condition's medications again.
    fn renew(&mut self, out: &mut Output, c: &ActiveChronic) -> Result<(), GenerateError> {
        for medication in c.meds.into_iter().flatten() {
            self.prescribe(out, medication, Some((c.condition, &c.def.condition)))?;
        }
        Ok(())
    }

    fn immunization(
        &mut self,
        out: &mut Output,
        vaccine: &'static Concept,
    ) -> Result<(), GenerateError> {
        let id = self.next_id(ResourceType::Immunization);
        self.json.clear();
        clinical::immunization(&mut self.json, &id, vaccine, &self.person, &self.enc);
        out.emit(ResourceType::Immunization, &self.json)?;
        self.enc.immunizations.push(Billed { id, concept: vaccine, cents: VACCINE_CENTS });
        Ok(())
    }

    fn quantity_observation(
        &mut self,
        out: &mut Output,
        category: Category,
        measure: &'static Measure,
        value: f64,
    ) -> Result<Id, GenerateError> {
        let id = self.next_id(ResourceType::Observation);
        self.json.clear();
        clinical::observation_quantity(
            &mut self.json,
            &id,
            category,
            measure,
            value,
            &self.person,
            &self.enc,
            self.issued_ms,
        );
        out.emit(ResourceType::Observation, &self.json)?;
        Ok(id)
    }

    fn coded_observation(
        &mut self,
        out: &mut Output,
        category: Category,
        code: &'static Concept,
        answer: &'static Concept,
    ) -> Result<(), GenerateError> {
        let id = self.next_id(ResourceType::Observation);
        self.json.clear();
        clinical::observation_coded(
            &mut self.json,
            &id,
            category,
            code,
            answer,
            &self.person,
            &self.enc,
            self.issued_ms,
        );
        out.emit(ResourceType::Observation, &self.json)
    }
}
