//! What happens at each kind of visit.

use super::measurements::{LabSet, Vitals};
use super::{PatientSim, Provider, Visit};
use crate::GenerateError;
use crate::clinical::{self, Category};
use crate::output::{Output, ResourceType};
use crate::time::{DAY, REFERENCE};
use crate::vocab::{
    Acute, BODY_TEMPERATURE, CERVICAL_SMEAR, CHECK_UP, COLONOSCOPY, Class, DEPRESSION_SCREENING,
    EPISIOTOMY, FETAL_HEART, FLU, FUNDAL_HEIGHT, GENERAL_EXAM, LABOR_INDUCTION, Lab, MAMMOGRAPHY,
    MED_RECONCILIATION, MISCARRIAGE, NORMAL_DELIVERY, NORMAL_PREGNANCY, OBSTETRIC_ADMISSION,
    OUTPATIENT_PROCEDURE, PAIN_SCORE, PATIENT_PROCEDURE, POSTNATAL, PRENATAL, PRENATAL_INITIAL,
    PRENATAL_SCREENING, PROBLEM, SMOKING_STATUS, STANDARD_PREGNANCY_TEST, URINE_GLUCOSE,
    VACCINE_SCHEDULE, WELL_CHILD,
};

impl PatientSim<'_> {
    pub(super) fn visit(
        &mut self,
        t: i64,
        visit: Visit,
        out: &mut Output,
    ) -> Result<(), GenerateError> {
        match visit {
            Visit::Wellness => self.wellness(t, out),
            Visit::HistoricExam => {
                let ty = if self.person.age_at(t) < 18 { &WELL_CHILD } else { &GENERAL_EXAM };
                self.open(ty, t, Provider::Primary);
                self.close(out)
            }
            Visit::Acute(def) => self.acute(t, def, out),
            Visit::Onset(i) => self.onset(t, i, out),
            Visit::FollowUp(i) => self.follow_up(t, i, out),
            Visit::Outpatient(procedure) => {
                let ty =
                    if self.rng.chance(0.5) { &OUTPATIENT_PROCEDURE } else { &PATIENT_PROCEDURE };
                self.open(ty, t, Provider::Primary);
                self.procedure(out, procedure, None)?;
                self.close(out)
            }
            Visit::PrenatalInitial(k) => self.prenatal_initial(t, k, out),
            Visit::Prenatal(k) => {
                let reason = (self.pregnancies[k].condition, &NORMAL_PREGNANCY);
                self.open(&PRENATAL, t, Provider::Primary);
                self.enc.diagnoses.push(reason);
                self.vitals(out, Vitals::Brief, false)?;
                self.procedure(out, &FUNDAL_HEIGHT, Some(reason))?;
                self.procedure(out, &FETAL_HEART, Some(reason))?;
                if self.rng.chance(0.3) {
                    self.procedure(out, &URINE_GLUCOSE, Some(reason))?;
                }
                self.close(out)
            }
            Visit::Miscarriage(k) => {
                self.open(&PROBLEM, t, Provider::Primary);
                self.enc.reason = Some(&MISCARRIAGE);
                self.enc.diagnoses.push((self.pregnancies[k].condition, &NORMAL_PREGNANCY));
                self.new_condition(out, &MISCARRIAGE, Some(t + 14 * DAY))?;
                self.close(out)
            }
            Visit::Delivery(k) => {
                let reason = (self.pregnancies[k].condition, &NORMAL_PREGNANCY);
                self.open(&OBSTETRIC_ADMISSION, t, Provider::Primary);
                self.enc.diagnoses.push(reason);
                self.vitals(out, Vitals::Brief, false)?;
                if self.rng.chance(0.3) {
                    self.procedure(out, &LABOR_INDUCTION, Some(reason))?;
                }
                self.procedure(out, &NORMAL_DELIVERY, Some(reason))?;
                if self.rng.chance(0.15) {
                    self.procedure(out, &EPISIOTOMY, Some(reason))?;
                }
                self.close(out)
            }
            Visit::Postnatal(k) => {
                self.open(&POSTNATAL, t, Provider::Primary);
                self.enc.diagnoses.push((self.pregnancies[k].condition, &NORMAL_PREGNANCY));
                self.vitals(out, Vitals::Brief, false)?;
                self.procedure(out, &DEPRESSION_SCREENING, None)?;
                self.close(out)
            }
        }
    }

    fn wellness(&mut self, t: i64, out: &mut Output) -> Result<(), GenerateError> {
        let age = self.person.years_at(t);
        let ty = match age {
            a if a < 18.0 => &WELL_CHILD,
            _ if self.rng.chance(0.15) => &CHECK_UP,
            _ => &GENERAL_EXAM,
        };
        self.open(ty, t, Provider::Primary);
        self.vitals(out, Vitals::Full, false)?;
        let answer = if age < 16.0 {
            &crate::vocab::SMOKING_ANSWERS[0]
        } else {
            self.person.smoking_answer()
        };
        self.coded_observation(out, Category::Survey, &SMOKING_STATUS, answer)?;

        // Labs: routine adult screening plus what active conditions call for.
        let mut labs = LabSet::default();
        if age >= 18.0 {
            for (lab, p) in [
                (Lab::Lipid, 0.4),
                (Lab::Metabolic, 0.3),
                (Lab::BloodCount, 0.25),
                (Lab::Comprehensive, 0.08),
            ] {
                if self.rng.chance(p) {
                    labs.add(lab);
                }
            }
        }
        for i in 0..self.chronic.len() {
            let c = self.chronic[i];
            if c.onset <= t {
                for &(lab, p) in c.def.labs {
                    if self.rng.chance(p / 2.0) {
                        labs.add(lab);
                    }
                }
            }
        }
        self.labs(out, labs)?;

        // Immunizations due by now, and the yearly flu shot.
        let birth = self.person.birth;
        while let Some(&(vaccine, due)) = VACCINE_SCHEDULE.get(self.next_vaccine) {
            if birth + due * DAY > t + 14 * DAY {
                break;
            }
            self.immunization(out, vaccine)?;
            self.next_vaccine += 1;
        }
        self.flu_shot(out, t)?;

        // Screening procedures.
        let contraception = self.contraception.filter(|c| (c.from..c.until).contains(&t));
        let on_meds = contraception.is_some()
            || self.chronic.iter().any(|c| c.onset <= t && c.meds[0].is_some());
        if on_meds {
            self.procedure(out, &MED_RECONCILIATION, None)?;
        }
        if age >= 12.0 && self.rng.chance(0.2) {
            self.procedure(out, &DEPRESSION_SCREENING, None)?;
        }
        if self.person.female && age >= 40.0 && self.rng.chance(0.45) {
            self.procedure(out, &MAMMOGRAPHY, None)?;
        }
        if self.person.female && (21.0..65.0).contains(&age) && self.rng.chance(0.3) {
            self.procedure(out, &CERVICAL_SMEAR, None)?;
        }
        if age >= 50.0 && self.rng.chance(0.08) {
            self.procedure(out, &COLONOSCOPY, None)?;
        }

        // Renew long-term medications.
        for i in 0..self.chronic.len() {
            let c = self.chronic[i];
            if c.onset <= t {
                self.renew(out, &c)?;
            }
        }
        if let Some(c) = contraception {
            self.prescribe(out, c.medication, None)?;
        }
        self.close(out)
    }

    /// The yearly flu shot, if due.
    fn flu_shot(&mut self, out: &mut Output, t: i64) -> Result<(), GenerateError> {
        if self.person.years_at(t) >= 0.5 && t - self.last_flu > 300 * DAY && self.rng.chance(0.9) {
            self.immunization(out, &FLU)?;
            self.last_flu = t;
        }
        Ok(())
    }

    fn onset(&mut self, t: i64, i: usize, out: &mut Output) -> Result<(), GenerateError> {
        let c = self.chronic[i];
        self.open(&PROBLEM, t, Provider::Primary);
        self.enc.reason = Some(&c.def.condition);
        self.json.clear();
        clinical::condition(
            &mut self.json,
            &c.condition,
            &c.def.condition,
            &self.person,
            &self.enc,
            None,
        );
        out.emit(ResourceType::Condition, &self.json)?;
        self.enc.diagnoses.push((c.condition, &c.def.condition));
        let mut labs = LabSet::default();
        for &(lab, p) in c.def.labs {
            if self.rng.chance(p) {
                labs.add(lab);
            }
        }
        self.labs(out, labs)?;
        self.renew(out, &c)?;
        self.close(out)
    }

    fn follow_up(&mut self, t: i64, i: usize, out: &mut Output) -> Result<(), GenerateError> {
        let c = self.chronic[i];
        let Some((ty, _)) = c.def.follow_up else { return Ok(()) };
        let reason = (c.condition, &c.def.condition);
        self.open(ty, t, Provider::Primary);
        self.enc.diagnoses.push(reason);
        self.vitals(out, Vitals::Brief, false)?;
        self.flu_shot(out, t)?;
        let mut labs = LabSet::default();
        for &(lab, p) in c.def.labs {
            if self.rng.chance(p) {
                labs.add(lab);
            }
        }
        self.labs(out, labs)?;
        for &(procedure, p) in c.def.follow_up_procedures {
            if self.rng.chance(p) {
                self.procedure(out, procedure, Some(reason))?;
            }
        }
        if c.meds[0].is_some() {
            self.procedure(out, &MED_RECONCILIATION, Some(reason))?;
        }
        // The medication review covers every long-term medication.
        for j in 0..self.chronic.len() {
            let other = self.chronic[j];
            if other.onset <= t {
                self.renew(out, &other)?;
            }
        }
        self.close(out)
    }

    fn acute(
        &mut self,
        t: i64,
        def: &'static Acute,
        out: &mut Output,
    ) -> Result<(), GenerateError> {
        let provider = if def.encounter.class == Class::Ambulatory && self.rng.chance(0.7) {
            Provider::Primary
        } else {
            Provider::Any
        };
        self.open(def.encounter, t, provider);
        self.enc.reason = Some(&def.condition);
        let resolves = t + self.rng.between(def.days.0, def.days.1) * DAY;
        let condition = self.new_condition(out, &def.condition, Some(resolves))?;
        let reason = Some((condition, &def.condition));
        if def.encounter.class == Class::Inpatient {
            self.vitals(out, Vitals::Full, def.fever)?;
        } else {
            if def.fever {
                let v = self.rng.uniform(37.8, 39.3);
                self.quantity_observation(out, Category::VitalSigns, &BODY_TEMPERATURE, v)?;
            }
            if self.rng.chance(0.3) {
                let v = self.rng.between(2, 7) as f64;
                self.quantity_observation(out, Category::VitalSigns, &PAIN_SCORE, v)?;
            }
        }
        for &(procedure, p) in def.procedures {
            if self.rng.chance(p) {
                self.procedure(out, procedure, reason)?;
            }
        }
        for &(medication, p) in def.meds {
            if self.rng.chance(p) {
                self.prescribe(out, medication, reason)?;
            }
        }
        self.close(out)
    }

    fn prenatal_initial(
        &mut self,
        t: i64,
        k: usize,
        out: &mut Output,
    ) -> Result<(), GenerateError> {
        let pregnancy = self.pregnancies[k];
        let reason = (pregnancy.condition, &NORMAL_PREGNANCY);
        self.open(&PRENATAL_INITIAL, t, Provider::Primary);
        self.enc.reason = Some(&NORMAL_PREGNANCY);
        let abatement = (pregnancy.end < REFERENCE).then_some(pregnancy.end);
        self.json.clear();
        clinical::condition(
            &mut self.json,
            &pregnancy.condition,
            &NORMAL_PREGNANCY,
            &self.person,
            &self.enc,
            abatement,
        );
        out.emit(ResourceType::Condition, &self.json)?;
        self.enc.diagnoses.push(reason);
        self.vitals(out, Vitals::Full, false)?;
        self.procedure(out, &STANDARD_PREGNANCY_TEST, Some(reason))?;
        for test in &PRENATAL_SCREENING {
            if self.rng.chance(0.6) {
                self.procedure(out, test, Some(reason))?;
            }
        }
        self.close(out)
    }
}
