//! Vital signs and laboratory results.

use super::PatientSim;
use crate::GenerateError;
use crate::clinical::{self, Category};
use crate::output::{Output, ResourceType};
use crate::vocab::{
    BASIC_METABOLIC_PANEL, BLOOD_PRESSURE, BMI, BMI_PERCENTILE, BODY_HEIGHT, BODY_TEMPERATURE,
    BODY_WEIGHT, CBC_PANEL, COMPREHENSIVE_METABOLIC_PANEL, DIABETES, DIASTOLIC, HBA1C,
    HEAD_CIRCUMFERENCE, HEART_RATE, LIPID_PANEL, Lab, LabTest, MICROALBUMIN, PAIN_SCORE,
    PREDIABETES, Panel, RESPIRATORY_RATE, SYSTOLIC, WEIGHT_FOR_LENGTH,
};

impl PatientSim<'_> {
    /// Vital signs for the patient's age, plus a raised body temperature
    /// with `fever`.
    pub(super) fn vitals(
        &mut self,
        out: &mut Output,
        set: Vitals,
        fever: bool,
    ) -> Result<(), GenerateError> {
        let full = matches!(set, Vitals::Full);
        let t = self.enc.start;
        let age = self.person.years_at(t);
        let height = self.person.adult_height * growth_fraction(age);
        let bmi = body_mass_index(age, self.person.bmi) + self.rng.normal(0.0, 0.4);
        let weight = bmi * (height / 100.0) * (height / 100.0);
        let hypertensive = self.chronic.iter().any(|c| c.def.raises_blood_pressure && c.onset <= t);

        if full || age < 18.0 {
            self.quantity_observation(out, Category::VitalSigns, &BODY_HEIGHT, height)?;
        }
        if full && (0.0..2.0).contains(&age) {
            let v = self.rng.uniform(5.0, 95.0);
            self.quantity_observation(out, Category::VitalSigns, &WEIGHT_FOR_LENGTH, v)?;
        }
        if full && age < 3.0 {
            let v = head_circumference(age) + self.rng.normal(0.0, 0.8);
            self.quantity_observation(out, Category::VitalSigns, &HEAD_CIRCUMFERENCE, v)?;
        }
        self.quantity_observation(out, Category::VitalSigns, &BODY_WEIGHT, weight)?;
        if full && age >= 2.0 {
            self.quantity_observation(out, Category::VitalSigns, &BMI, bmi)?;
        }
        if full && (2.0..20.0).contains(&age) {
            let v = self.rng.uniform(5.0, 95.0);
            self.quantity_observation(out, Category::VitalSigns, &BMI_PERCENTILE, v)?;
        }
        if age >= 3.0 {
            let raise = if hypertensive { 1.0 } else { 0.0 };
            let systolic =
                self.rng.normal(114.0 + (age - 30.0).max(0.0) * 0.25 + 20.0 * raise, 9.0);
            let diastolic = self.rng.normal(75.0 + 10.0 * raise, 6.0);
            let id = self.next_id(ResourceType::Observation);
            self.json.clear();
            clinical::observation_components(
                &mut self.json,
                &id,
                &BLOOD_PRESSURE,
                [(&DIASTOLIC, diastolic.round()), (&SYSTOLIC, systolic.round())],
                &self.person,
                &self.enc,
                self.issued_ms,
            );
            out.emit(ResourceType::Observation, &self.json)?;
        }
        if full {
            let child = age < 12.0;
            let heart_rate = self.rng.normal(if child { 95.0 } else { 74.0 }, 8.0).round();
            self.quantity_observation(out, Category::VitalSigns, &HEART_RATE, heart_rate)?;
            let respiration = self.rng.normal(if child { 22.0 } else { 15.0 }, 2.0).round();
            self.quantity_observation(out, Category::VitalSigns, &RESPIRATORY_RATE, respiration)?;
        }
        if full && age >= 3.0 {
            let pain = self.rng.below(5) as f64;
            self.quantity_observation(out, Category::VitalSigns, &PAIN_SCORE, pain)?;
        }
        if fever {
            let v = self.rng.uniform(37.8, 39.3);
            self.quantity_observation(out, Category::VitalSigns, &BODY_TEMPERATURE, v)?;
        }
        Ok(())
    }

    pub(super) fn labs(&mut self, out: &mut Output, labs: LabSet) -> Result<(), GenerateError> {
        for lab in labs.iter() {
            match lab {
                Lab::Lipid => self.panel(out, &LIPID_PANEL)?,
                Lab::Metabolic => self.panel(out, &BASIC_METABOLIC_PANEL)?,
                Lab::Comprehensive => self.panel(out, &COMPREHENSIVE_METABOLIC_PANEL)?,
                Lab::BloodCount => self.panel(out, &CBC_PANEL)?,
                Lab::Hba1c => {
                    let diabetic = self.has_condition(DIABETES);
                    let prediabetic = self.has_condition(PREDIABETES);
                    let v = match (diabetic, prediabetic) {
                        (true, _) => self.rng.uniform(6.5, 9.8),
                        (false, true) => self.rng.uniform(5.7, 6.4),
                        _ => self.rng.uniform(HBA1C.low, 5.6),
                    };
                    self.quantity_observation(out, Category::Laboratory, &HBA1C.measure, v)?;
                }
                Lab::Microalbumin => {
                    let v = self.lab_value(&MICROALBUMIN);
                    self.quantity_observation(out, Category::Laboratory, &MICROALBUMIN.measure, v)?;
                }
            }
        }
        Ok(())
    }

    fn has_condition(&self, code: &str) -> bool {
        self.chronic.iter().any(|c| c.onset <= self.enc.start && c.def.condition.code == code)
    }

    fn lab_value(&mut self, test: &LabTest) -> f64 {
        let span = test.high - test.low;
        (test.low + span * self.rng.normal(0.5, 0.22)).max(test.low * 0.5)
    }

    /// One Observation per test of `panel` plus their DiagnosticReport.
    fn panel(&mut self, out: &mut Output, panel: &'static Panel) -> Result<(), GenerateError> {
        self.results.clear();
        for test in panel.tests {
            let v = self.lab_value(test);
            let id = self.quantity_observation(out, Category::Laboratory, &test.measure, v)?;
            self.results.push((id, test.measure.concept.display));
        }
        let id = self.next_id(ResourceType::DiagnosticReport);
        self.json.clear();
        clinical::diagnostic_report(
            &mut self.json,
            &id,
            &panel.concept,
            &self.results,
            &self.person,
            &self.enc,
            self.issued_ms,
        );
        out.emit(ResourceType::DiagnosticReport, &self.json)
    }
}

/// Which vital signs to record.
#[derive(Debug, Clone, Copy)]
pub(super) enum Vitals {
    /// Everything measured at a wellness visit for the patient's age.
    Full,
    /// Weight and blood pressure.
    Brief,
}

/// A set of lab orders; a comprehensive panel replaces a basic one.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LabSet(u8);

impl LabSet {
    const ORDER: [Lab; 6] = [
        Lab::Lipid,
        Lab::Metabolic,
        Lab::Comprehensive,
        Lab::BloodCount,
        Lab::Hba1c,
        Lab::Microalbumin,
    ];

    pub(super) fn add(&mut self, lab: Lab) {
        self.0 |= 1 << lab as u8;
    }

    fn iter(self) -> impl Iterator<Item = Lab> {
        let has = move |lab: Lab| self.0 & (1 << lab as u8) != 0;
        Self::ORDER
            .into_iter()
            .filter(move |&lab| has(lab) && !(lab == Lab::Metabolic && has(Lab::Comprehensive)))
    }
}

/// Linear interpolation in a table of `(x, y)` points sorted by `x`.
fn interpolate(table: &[(f64, f64)], x: f64) -> f64 {
    let mut prev = table[0];
    if x <= prev.0 {
        return prev.1;
    }
    for &point in &table[1..] {
        if x <= point.0 {
            return prev.1 + (point.1 - prev.1) * (x - prev.0) / (point.0 - prev.0);
        }
        prev = point;
    }
    prev.1
}

/// Height as a fraction of adult height at `age` years.
fn growth_fraction(age: f64) -> f64 {
    const TABLE: [(f64, f64); 9] = [
        (0.0, 0.29),
        (1.0, 0.43),
        (2.0, 0.50),
        (5.0, 0.63),
        (10.0, 0.80),
        (14.0, 0.94),
        (18.0, 1.0),
        (70.0, 1.0),
        (95.0, 0.97),
    ];
    interpolate(&TABLE, age)
}

/// Typical BMI at `age`, converging to the person's adult BMI.
fn body_mass_index(age: f64, adult: f64) -> f64 {
    const CHILD: [(f64, f64); 8] = [
        (0.0, 13.4),
        (0.5, 17.0),
        (1.0, 17.2),
        (2.0, 16.4),
        (5.0, 15.4),
        (8.0, 16.0),
        (12.0, 18.5),
        (16.0, 21.0),
    ];
    if age < 16.0 {
        interpolate(&CHILD, age)
    } else if age < 25.0 {
        21.0 + (adult - 21.0) * (age - 16.0) / 9.0
    } else {
        adult + ((age - 25.0) * 0.03).min(1.5)
    }
}

/// Typical head circumference in cm at `age` years (infants).
fn head_circumference(age: f64) -> f64 {
    const TABLE: [(f64, f64); 5] =
        [(0.0, 35.0), (0.5, 43.0), (1.0, 46.0), (2.0, 48.5), (3.0, 49.5)];
    interpolate(&TABLE, age)
}
