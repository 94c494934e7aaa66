//! Planning a patient's timeline of visits.

use super::{ActiveChronic, Contraception, PatientSim, Pregnancy, Visit};
use crate::output::ResourceType;
use crate::time::{DAY, REFERENCE, YEAR};
use crate::vocab::{
    ACUTE, Acute, CHRONIC, CONTRACEPTIVES, OUTPATIENT_PROCEDURES, Only, VACCINE_SCHEDULE,
};

/// Years of detailed history before the reference date.
const WINDOW: i64 = 10 * YEAR;
const WEEK: i64 = 7 * DAY;
/// Chance that an adult has a wellness visit in a given year.
const ADULT_WELLNESS: f64 = 0.75;
/// Yearly chance of a recorded encounter before the detailed window.
const HISTORY_RATE: f64 = 0.35;
/// Outpatient-procedure visits per year.
const OUTPATIENT_RATE: f64 = 0.5;

impl PatientSim<'_> {
    pub(super) fn plan(&mut self) {
        self.visits.clear();
        self.chronic.clear();
        self.pregnancies.clear();
        self.contraception = None;
        let birth = self.person.birth;
        let window_start = (REFERENCE - WINDOW).max(birth);

        self.plan_wellness(window_start);
        self.plan_history(window_start);
        self.plan_chronic(window_start);
        self.plan_episodes(window_start);
        if self.person.female {
            self.plan_pregnancies(window_start);
            self.plan_contraception(window_start);
        }
        self.visits.sort_by_key(|&(t, _)| t);

        // Vaccines due before the window are not part of the record.
        self.next_vaccine = VACCINE_SCHEDULE
            .iter()
            .position(|&(_, age)| birth + age * DAY >= window_start - 30 * DAY)
            .unwrap_or(VACCINE_SCHEDULE.len());
        self.last_flu = i64::MIN / 2;
    }

    fn push(&mut self, time: i64, visit: Visit) {
        if time < REFERENCE {
            self.visits.push((time, visit));
        }
    }

    /// A time during office hours (Eastern) on the day of `t`, not before birth.
    fn clinic_time(&mut self, t: i64) -> i64 {
        let time = t.div_euclid(DAY) * DAY + 13 * 3600 + self.rng.between(0, 9 * 3600);
        time.max(self.person.birth + 3600)
    }

    fn plan_wellness(&mut self, window_start: i64) {
        const CHILD_VISITS: [i64; 12] = [3, 30, 60, 120, 180, 270, 365, 450, 545, 730, 910, 1095];
        let birth = self.person.birth;
        for days in CHILD_VISITS {
            let t = birth + (days + self.rng.between(0, 5)) * DAY;
            if t >= window_start {
                let t = self.clinic_time(t);
                self.push(t, Visit::Wellness);
            }
        }
        for age in 4..=self.person.age_at(REFERENCE) {
            let t = birth + age * YEAR + self.rng.between(0, 60) * DAY;
            if t >= window_start && (age < 18 || self.rng.chance(ADULT_WELLNESS)) {
                let t = self.clinic_time(t);
                self.push(t, Visit::Wellness);
            }
        }
    }

    /// Sparse encounters before the detailed window.
    fn plan_history(&mut self, window_start: i64) {
        let birth = self.person.birth;
        let mut year = 1;
        while birth + (year + 1) * YEAR <= window_start {
            if self.rng.chance(HISTORY_RATE) {
                let t = birth + year * YEAR + self.rng.between(0, 364) * DAY;
                let t = self.clinic_time(t);
                let visit = if self.rng.chance(0.85) {
                    Visit::HistoricExam
                } else {
                    Visit::Acute(self.pick_acute(year as f64))
                };
                self.push(t, visit);
            }
            year += 1;
        }
    }

    fn plan_chronic(&mut self, window_start: i64) {
        for def in &CHRONIC {
            if def.only == Only::Female && !self.person.female {
                continue;
            }
            if !self.rng.chance(def.probability) {
                continue;
            }
            let onset_age = self.rng.uniform(f64::from(def.onset.0), f64::from(def.onset.1));
            let onset = self.person.birth + (onset_age * YEAR as f64) as i64;
            if onset >= REFERENCE {
                continue;
            }
            let onset = self.clinic_time(onset);
            let mut meds = [None; 3];
            for (slot, group) in meds.iter_mut().zip(def.meds) {
                *slot = Some(*self.rng.pick(group));
            }
            let condition = self.next_id(ResourceType::Condition);
            let idx = self.chronic.len();
            self.chronic.push(ActiveChronic { def, onset, condition, meds });
            self.push(onset, Visit::Onset(idx));

            if let Some((_, per_year)) = def.follow_up {
                let interval = YEAR as f64 / per_year;
                let mut t =
                    onset.max(window_start) + (interval * self.rng.uniform(0.3, 1.0)) as i64;
                while t < REFERENCE {
                    let visit_time = self.clinic_time(t);
                    self.push(visit_time, Visit::FollowUp(idx));
                    t += (interval * self.rng.uniform(0.75, 1.25)) as i64;
                }
            }
        }
    }

    /// Acute illnesses and outpatient procedures, month by month.
    fn plan_episodes(&mut self, window_start: i64) {
        let mut t = window_start;
        while t < REFERENCE {
            let age = self.person.years_at(t);
            let rate = match age {
                a if a < 5.0 => 0.8,
                a if a < 18.0 => 0.45,
                a if a < 65.0 => 0.3,
                _ => 0.4,
            };
            if self.rng.chance(rate / 12.0) {
                let when = t + self.rng.between(0, 29) * DAY;
                let def = self.pick_acute(age);
                let when = self.clinic_time(when);
                self.push(when, Visit::Acute(def));
            }
            if age >= 2.0 && self.rng.chance(OUTPATIENT_RATE / 12.0) {
                let when = t + self.rng.between(0, 29) * DAY;
                let i = self.rng.weighted(OUTPATIENT_PROCEDURES.iter().map(|p| p.1));
                let when = self.clinic_time(when);
                self.push(when, Visit::Outpatient(&OUTPATIENT_PROCEDURES[i].0));
            }
            t += 30 * DAY;
        }
    }

    fn pick_acute(&mut self, age: f64) -> &'static Acute {
        let i = self.rng.weighted(ACUTE.iter().map(|a| {
            if age >= f64::from(a.ages.0) && age < f64::from(a.ages.1) { a.weight } else { 0 }
        }));
        &ACUTE[i]
    }

    fn plan_pregnancies(&mut self, window_start: i64) {
        let birth = self.person.birth;
        let from = (birth + 18 * YEAR).max(window_start);
        let until = (birth + 40 * YEAR).min(REFERENCE);
        if until - from < YEAR {
            return;
        }
        let count = match self.rng.below(100) {
            0..=49 => 0,
            50..=84 => 1,
            _ => 2,
        };
        if count == 0 {
            return;
        }
        let slot = (until - from) / count;
        for k in 0..count {
            let conception = from + k * slot + self.rng.between(0, (slot - 30 * WEEK).max(0));
            let idx = self.pregnancies.len();
            let condition = self.next_id(ResourceType::Condition);
            let initial = self.clinic_time(conception + 8 * WEEK);
            self.push(initial, Visit::PrenatalInitial(idx));
            let end = if self.rng.chance(0.15) {
                let end = self.clinic_time(conception + 11 * WEEK);
                self.push(end, Visit::Miscarriage(idx));
                end
            } else {
                for week in [12, 16, 20, 24, 28, 32, 34, 36, 38] {
                    let t = conception + week * WEEK + self.rng.between(0, 3) * DAY;
                    let t = self.clinic_time(t);
                    self.push(t, Visit::Prenatal(idx));
                }
                let end = conception + 40 * WEEK + self.rng.between(-10, 7) * DAY;
                let end = self.clinic_time(end);
                self.push(end, Visit::Delivery(idx));
                let post = self.clinic_time(end + 6 * WEEK);
                self.push(post, Visit::Postnatal(idx));
                end
            };
            self.pregnancies.push(Pregnancy { condition, end });
        }
    }

    fn plan_contraception(&mut self, window_start: i64) {
        let birth = self.person.birth;
        let from = (birth + 15 * YEAR).max(window_start);
        let until = (birth + 45 * YEAR).min(REFERENCE);
        if until > from && self.rng.chance(0.45) {
            let medication = self.rng.pick(&CONTRACEPTIVES);
            let from = from + self.rng.between(0, (until - from) / 2);
            self.contraception = Some(Contraception { medication, from, until });
        }
    }
}
