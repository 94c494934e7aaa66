//! Patient demographics and the `Patient` resource.

use std::fmt::Write as _;

use crate::json::Json;
use crate::output::ResourceType;
use crate::rng::{Id, Rng};
use crate::time::{DAY, REFERENCE, YEAR};
use crate::vocab::{
    CITIES, City, ETHNICITIES, FAMILY, FEMALE_GIVEN, LANGUAGES, MALE_GIVEN, PAYERS, RACES,
    SMOKING_ANSWERS, STATE,
};
use crate::world::{PRACTITIONERS_PER_ORGANIZATION, World, street_line};

/// Marital status (v3-MaritalStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marital {
    Married,
    Never,
    Divorced,
    Widowed,
}

impl Marital {
    const fn code_display(self) -> (&'static str, &'static str) {
        match self {
            Self::Married => ("M", "Married"),
            Self::Never => ("S", "Never Married"),
            Self::Divorced => ("D", "Divorced"),
            Self::Widowed => ("W", "Widowed"),
        }
    }
}

/// One patient's demographics and long-lived traits. Reused across
/// patients (its strings keep their allocations).
#[derive(Debug)]
pub(crate) struct Person {
    pub(crate) index: u64,
    pub(crate) id: Id,
    /// The seed of this person's random stream (shown in the narrative).
    pub(crate) person_seed: u64,
    pub(crate) female: bool,
    /// Birth instant (UTC seconds).
    pub(crate) birth: i64,
    /// `"Mr. Abram Lemke"`.
    pub(crate) display: String,
    /// `"Abram Lemke"`.
    pub(crate) name: String,
    /// Insurer before age 65.
    pub(crate) payer: &'static str,
    /// Primary care practitioner (index into the world's practitioners).
    pub(crate) practitioner: usize,
    /// Adult height in cm.
    pub(crate) adult_height: f64,
    /// Adult body-mass index.
    pub(crate) bmi: f64,
    /// Index into [`SMOKING_ANSWERS`].
    pub(crate) smoking: usize,
    given: &'static str,
    family: &'static str,
    maiden: &'static str,
    prefix: &'static str,
    mother: (&'static str, &'static str),
    birth_place: &'static City,
    city: &'static City,
    line: String,
    phone: String,
    ssn: String,
    lat: f64,
    lon: f64,
    marital: Marital,
    race: usize,
    ethnicity: usize,
    language: usize,
    multiple_birth: bool,
    licence: Option<u64>,
    passport: Option<u64>,
}

impl Default for Person {
    fn default() -> Self {
        Self {
            index: 0,
            id: ResourceType::Patient.id(0, 0),
            person_seed: 0,
            female: false,
            birth: 0,
            display: String::new(),
            name: String::new(),
            payer: PAYERS[0].0,
            practitioner: 0,
            adult_height: 0.0,
            bmi: 0.0,
            smoking: 0,
            given: "",
            family: "",
            maiden: "",
            prefix: "",
            mother: ("", ""),
            birth_place: &CITIES[0],
            city: &CITIES[0],
            line: String::new(),
            phone: String::new(),
            ssn: String::new(),
            lat: 0.0,
            lon: 0.0,
            marital: Marital::Never,
            race: 0,
            ethnicity: 0,
            language: 0,
            multiple_birth: false,
            licence: None,
            passport: None,
        }
    }
}

impl Person {
    /// Age in whole years at instant `t`.
    pub(crate) fn age_at(&self, t: i64) -> i64 {
        (t - self.birth).div_euclid(YEAR)
    }

    /// Age in fractional years at instant `t`.
    pub(crate) fn years_at(&self, t: i64) -> f64 {
        (t - self.birth) as f64 / YEAR as f64
    }

    /// Samples patient `index` of `world` into `self`.
    pub(crate) fn sample(&mut self, rng: &mut Rng, world: &World, index: u64, person_seed: u64) {
        self.index = index;
        self.id = ResourceType::Patient.id(world.seed, index);
        self.person_seed = person_seed;
        self.female = rng.chance(0.51);
        // Ages spread roughly uniformly to 85, with a thinner tail to 100.
        let age_days = if rng.chance(0.92) {
            rng.between(0, 85 * 365)
        } else {
            rng.between(85 * 365, 100 * 365)
        };
        self.birth = REFERENCE - age_days * DAY - rng.between(1, DAY);
        let age = self.age_at(REFERENCE);

        self.given = if self.female { *rng.pick(&FEMALE_GIVEN) } else { *rng.pick(&MALE_GIVEN) };
        self.maiden = *rng.pick(&FAMILY);
        self.marital = if age < 18 {
            Marital::Never
        } else {
            match rng.below(100) {
                0..=47 => Marital::Married,
                48..=79 => Marital::Never,
                80..=91 => Marital::Divorced,
                _ if age >= 50 => Marital::Widowed,
                _ => Marital::Married,
            }
        };
        let took_spouse_name = self.female && self.marital != Marital::Never && rng.chance(0.8);
        self.family = if took_spouse_name { *rng.pick(&FAMILY) } else { self.maiden };
        self.prefix = match (age >= 18, self.female, self.marital) {
            (false, _, _) => "",
            (true, false, _) => "Mr.",
            (true, true, Marital::Never) => "Ms.",
            (true, true, _) => "Mrs.",
        };
        self.name.clear();
        let _ = write!(self.name, "{} {}", self.given, self.family);
        self.display.clear();
        if !self.prefix.is_empty() {
            self.display.push_str(self.prefix);
            self.display.push(' ');
        }
        self.display.push_str(&self.name);
        self.mother = (*rng.pick(&FEMALE_GIVEN), *rng.pick(&FAMILY));

        self.birth_place = rng.pick(&CITIES);
        self.city = if rng.chance(0.6) { self.birth_place } else { rng.pick(&CITIES) };
        self.line.clear();
        street_line(rng, &mut self.line);
        self.lat = self.city.lat + rng.uniform(-0.05, 0.05);
        self.lon = self.city.lon + rng.uniform(-0.05, 0.05);
        self.phone.clear();
        let _ = write!(self.phone, "555-{:03}-{:04}", rng.between(100, 999), rng.between(0, 9999));
        self.ssn.clear();
        let _ = write!(self.ssn, "999-{:02}-{:04}", rng.between(10, 99), rng.between(0, 9999));
        self.licence = (age >= 16).then(|| rng.between(10_000_000, 99_999_999) as u64);
        self.passport =
            (age >= 18 && rng.chance(0.5)).then(|| rng.between(10_000_000, 99_999_999) as u64);
        self.race = rng.weighted(RACES.iter().map(|r| r.2));
        self.ethnicity = rng.weighted(ETHNICITIES.iter().map(|e| e.2));
        self.language = rng.weighted(LANGUAGES.iter().map(|l| l.2));
        self.multiple_birth = rng.chance(0.02);

        self.payer = PAYERS[rng.weighted(PAYERS.iter().map(|p| p.1))].0;
        let org = rng.index(world.organizations.len());
        self.practitioner =
            org * PRACTITIONERS_PER_ORGANIZATION + rng.index(PRACTITIONERS_PER_ORGANIZATION);
        self.adult_height =
            if self.female { rng.normal(163.0, 6.5) } else { rng.normal(176.5, 7.0) };
        self.bmi = rng.normal(27.0, 4.5).clamp(17.5, 45.0);
        self.smoking = match rng.below(100) {
            0..=69 => 0,
            70..=85 => 1,
            _ => 2,
        };
    }

    /// Writes the `Patient` resource.
    pub(crate) fn write(&self, json: &mut Json, population_seed: u64) {
        json.begin("Patient", &self.id);
        json.raw(",\"text\":{\"status\":\"generated\",\"div\":\"");
        json.escaped("<div xmlns=\"http://www.w3.org/1999/xhtml\">Generated by bulkfhir-generator. Person seed: ");
        json.u64(self.person_seed);
        json.raw("  Population seed: ");
        json.u64(population_seed);
        json.escaped("</div>");
        json.raw("\"}");

        let (race_code, race, _) = RACES[self.race];
        let (eth_code, eth, _) = ETHNICITIES[self.ethnicity];
        json.raw(",\"extension\":[");
        omb_extension(json, "us-core-race", race_code, race);
        json.raw(",");
        omb_extension(json, "us-core-ethnicity", eth_code, eth);
        json.raw(",{\"url\":\"http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName\",\"valueString\":\"");
        json.escaped(self.mother.0);
        json.raw(" ");
        json.escaped(self.mother.1);
        json.raw("\"},{\"url\":\"http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex\",\"valueCode\":");
        json.raw(if self.female { "\"F\"" } else { "\"M\"" });
        json.raw("},{\"url\":\"http://hl7.org/fhir/StructureDefinition/patient-birthPlace\",\"valueAddress\":{\"city\":");
        json.str(self.birth_place.name);
        json.raw(",\"state\":");
        json.str(STATE);
        json.raw(",\"country\":\"US\"}}]");

        json.raw(",\"identifier\":[");
        identifier(json, "MR", "Medical Record Number", "http://hospital.smarthealthit.org");
        json.id(&self.id);
        json.raw("},");
        identifier(json, "SS", "Social Security Number", "http://hl7.org/fhir/sid/us-ssn");
        json.str(&self.ssn);
        json.raw("}");
        if let Some(dl) = self.licence {
            json.raw(",");
            identifier(json, "DL", "Driver's License", "urn:oid:2.16.840.1.113883.4.3.25");
            json.raw("\"S");
            json.u64(dl);
            json.raw("\"}");
        }
        if let Some(pp) = self.passport {
            json.raw(",");
            identifier(json, "PPN", "Passport Number", "http://hl7.org/fhir/sid/passport-USA");
            json.raw("\"X");
            json.u64(pp);
            json.raw("X\"}");
        }
        json.raw("]");

        json.raw(",\"name\":[{\"use\":\"official\",\"family\":");
        json.str(self.family);
        json.raw(",\"given\":[");
        json.str(self.given);
        json.raw("]");
        if !self.prefix.is_empty() {
            json.raw(",\"prefix\":[");
            json.str(self.prefix);
            json.raw("]");
        }
        json.raw("}");
        if self.family != self.maiden {
            json.raw(",{\"use\":\"maiden\",\"family\":");
            json.str(self.maiden);
            json.raw(",\"given\":[");
            json.str(self.given);
            json.raw("]}");
        }
        json.raw("],\"telecom\":[{\"system\":\"phone\",\"value\":");
        json.str(&self.phone);
        json.raw(",\"use\":\"home\"}],\"gender\":");
        json.raw(if self.female { "\"female\"" } else { "\"male\"" });
        json.raw(",\"birthDate\":");
        json.date(self.birth.div_euclid(DAY));

        json.raw(",\"address\":[{\"extension\":[{\"url\":\"http://hl7.org/fhir/StructureDefinition/geolocation\",\"extension\":[{\"url\":\"latitude\",\"valueDecimal\":");
        json.dec(self.lat, 6);
        json.raw("},{\"url\":\"longitude\",\"valueDecimal\":");
        json.dec(self.lon, 6);
        json.raw("}]}],\"line\":[");
        json.str(&self.line);
        json.raw("],\"city\":");
        json.str(self.city.name);
        json.raw(",\"state\":");
        json.str(STATE);
        json.raw(",\"postalCode\":");
        json.str(self.city.zip);
        json.raw(",\"country\":\"US\"}]");

        let (code, display) = self.marital.code_display();
        json.raw(",\"maritalStatus\":");
        json.concept("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", code, display);
        json.raw(if self.multiple_birth {
            ",\"multipleBirthInteger\":2"
        } else {
            ",\"multipleBirthBoolean\":false"
        });
        let (lang, lang_display, _) = LANGUAGES[self.language];
        json.raw(",\"communication\":[{\"language\":");
        json.concept("urn:ietf:bcp:47", lang, lang_display);
        json.raw("}]");
        json.end();
    }

    /// The smoking-status answer for this person.
    pub(crate) fn smoking_answer(&self) -> &'static crate::vocab::Concept {
        &SMOKING_ANSWERS[self.smoking]
    }
}

/// Opens a typed identifier up to and including `"value":` (the caller
/// writes the value and the closing brace).
fn identifier(json: &mut Json, code: &str, display: &str, system: &str) {
    json.raw("{\"type\":");
    json.concept("http://terminology.hl7.org/CodeSystem/v2-0203", code, display);
    json.raw(",\"system\":");
    json.str(system);
    json.raw(",\"value\":");
}

/// A US Core race or ethnicity extension with one OMB category.
fn omb_extension(json: &mut Json, name: &str, code: &str, display: &str) {
    json.raw("{\"url\":\"http://hl7.org/fhir/us/core/StructureDefinition/");
    json.raw(name);
    json.raw("\",\"extension\":[{\"url\":\"ombCategory\",\"valueCoding\":");
    json.coding("urn:oid:2.16.840.1.113883.6.238", code, display);
    json.raw("},{\"url\":\"text\",\"valueString\":");
    json.str(display);
    json.raw("}]}");
}
