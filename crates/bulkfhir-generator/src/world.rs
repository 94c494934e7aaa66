//! The shared part of the population: provider organizations, their
//! practitioners and locations, and the `Group` of all patients.
//!
//! There is one Organization and one Location per ~20 patients (at least
//! one) and two Practitioners per Organization. Practitioner `j` works for
//! Organization `j / 2` (same address), and Location `i` is the site of
//! Organization `i`; encounters keep that affiliation consistent.

use std::fmt::Write as _;

use crate::GenerateError;
use crate::json::Json;
use crate::output::{Output, ResourceType};
use crate::rng::{Id, Rng, fnv1a};
use crate::vocab::{
    CITIES, City, FAMILY, FEMALE_GIVEN, MALE_GIVEN, ORG_SUFFIXES, STATE_CODE, STREET_NAMES,
    STREET_SUFFIXES,
};

/// Patients per Organization (and per Location).
const PATIENTS_PER_ORGANIZATION: u64 = 20;
/// Practitioners per Organization.
pub(crate) const PRACTITIONERS_PER_ORGANIZATION: usize = 2;
/// The fixed id of the Group of all patients.
pub(crate) const GROUP_ID: &str = "all-patients";

/// A provider organization and its single location.
#[derive(Debug)]
pub(crate) struct Organization {
    pub(crate) id: Id,
    pub(crate) location: Id,
    pub(crate) name: String,
    hospital: bool,
    line: String,
    city: &'static City,
    /// The city name as written in the address (upper case, like Synthea).
    city_name: String,
    phone: String,
    npi: u64,
    lat: f64,
    lon: f64,
    /// Administrative contact person.
    contact: (&'static str, &'static str),
}

/// A practitioner working for one organization.
#[derive(Debug)]
pub(crate) struct Practitioner {
    pub(crate) id: Id,
    pub(crate) organization: usize,
    /// `"Dr. <given> <family>"`.
    pub(crate) display: String,
    given: &'static str,
    family: &'static str,
    female: bool,
    npi: u64,
}

/// Everything shared by all patients of one generation run.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) seed: u64,
    pub(crate) patients: u64,
    pub(crate) organizations: Vec<Organization>,
    pub(crate) practitioners: Vec<Practitioner>,
}

impl World {
    pub(crate) fn new(seed: u64, patients: u64) -> Self {
        let n_orgs = patients.div_ceil(PATIENTS_PER_ORGANIZATION).max(1);
        let organizations = (0..n_orgs).map(|i| Organization::sample(seed, i)).collect::<Vec<_>>();
        let practitioners = (0..n_orgs * PRACTITIONERS_PER_ORGANIZATION as u64)
            .map(|j| {
                Practitioner::sample(seed, j, (j / PRACTITIONERS_PER_ORGANIZATION as u64) as usize)
            })
            .collect();
        Self { seed, patients, organizations, practitioners }
    }

    /// Writes all Organizations, Practitioners and Locations.
    pub(crate) fn write_shared(
        &self,
        json: &mut Json,
        out: &mut Output,
    ) -> Result<(), GenerateError> {
        for org in &self.organizations {
            json.clear();
            org.write(json);
            out.emit(ResourceType::Organization, json)?;
        }
        for (i, org) in self.organizations.iter().enumerate() {
            json.clear();
            org.write_location(json, i);
            out.emit(ResourceType::Location, json)?;
        }
        for prac in &self.practitioners {
            json.clear();
            prac.write(json, &self.organizations[prac.organization]);
            out.emit(ResourceType::Practitioner, json)?;
        }
        Ok(())
    }

    /// Writes the Group listing every Patient, streamed in chunks so that
    /// huge populations do not need one huge buffer.
    pub(crate) fn write_group(
        &self,
        json: &mut Json,
        out: &mut Output,
    ) -> Result<(), GenerateError> {
        const CHUNK: usize = 64 * 1024;
        json.clear();
        json.raw("{\"resourceType\":\"Group\",\"id\":");
        json.str(GROUP_ID);
        json.raw(
            ",\"identifier\":[{\"system\":\"urn:ietf:rfc:3986\",\"value\":\"urn:bulkfhir:group:",
        );
        json.escaped(GROUP_ID);
        json.raw("\"}],\"active\":true,\"type\":\"person\",\"actual\":true,\"name\":\"All patients\",\"quantity\":");
        json.u64(self.patients);
        json.raw(",\"member\":[");
        for p in 0..self.patients {
            if p > 0 {
                json.raw(",");
            }
            json.raw("{\"entity\":");
            json.reference("Patient", &ResourceType::Patient.id(self.seed, p));
            json.raw("}");
            if json.len() >= CHUNK {
                out.emit_partial(ResourceType::Group, json)?;
                json.clear();
            }
        }
        json.raw("]}");
        out.emit_partial(ResourceType::Group, json)?;
        out.end_partial(ResourceType::Group)
    }
}

/// A street address line like `"167 Nikolaus Gate"`.
pub(crate) fn street_line(rng: &mut Rng, out: &mut String) {
    let number = rng.between(1, 999);
    let _ = write!(out, "{number} {} {}", rng.pick(&STREET_NAMES), rng.pick(&STREET_SUFFIXES));
}

impl Organization {
    fn sample(seed: u64, index: u64) -> Self {
        let mut rng = Rng::for_stream(seed, fnv1a("Organization"), index);
        let city = rng.pick(&CITIES);
        let &(suffix, hospital) = rng.pick(&ORG_SUFFIXES);
        let city_name = city.name.to_uppercase();
        let name = format!("{city_name} {suffix}");
        let mut line = String::new();
        street_line(&mut rng, &mut line);
        let line = line.to_uppercase();
        let area = rng.pick(&["413", "508", "617", "781", "978"]);
        let phone = format!("{area}{:03}{:04}", rng.between(200, 999), rng.between(0, 9999));
        Self {
            id: ResourceType::Organization.id(seed, index),
            location: ResourceType::Location.id(seed, index),
            name,
            hospital,
            line,
            city,
            city_name,
            phone,
            npi: 1_000_000_000 + rng.below(900_000_000),
            lat: city.lat + rng.uniform(-0.03, 0.03),
            lon: city.lon + rng.uniform(-0.03, 0.03),
            contact: (
                if rng.chance(0.5) { *rng.pick(&FEMALE_GIVEN) } else { *rng.pick(&MALE_GIVEN) },
                *rng.pick(&FAMILY),
            ),
        }
    }

    fn address(&self, json: &mut Json) {
        json.raw("{\"line\":[");
        json.str(&self.line);
        json.raw("],\"city\":");
        json.str(&self.city_name);
        json.raw(",\"state\":\"");
        json.raw(STATE_CODE);
        json.raw("\",\"postalCode\":");
        json.str(self.city.zip);
        json.raw(",\"country\":\"US\"}");
    }

    fn write(&self, json: &mut Json) {
        json.begin("Organization", &self.id);
        json.raw(",\"identifier\":[{\"system\":\"http://hl7.org/fhir/sid/us-npi\",\"value\":\"");
        json.u64(self.npi);
        json.raw("\"}],\"active\":true,\"type\":[");
        json.concept(
            "http://terminology.hl7.org/CodeSystem/organization-type",
            "prov",
            "Healthcare Provider",
        );
        json.raw("],\"name\":");
        json.str(&self.name);
        json.raw(",\"telecom\":[{\"system\":\"phone\",\"value\":");
        json.str(&self.phone);
        json.raw(",\"use\":\"work\"}],\"address\":[");
        self.address(json);
        json.raw("],\"contact\":[{\"purpose\":");
        json.concept(
            "http://terminology.hl7.org/CodeSystem/contactentity-type",
            "ADMIN",
            "Administrative",
        );
        json.raw(",\"name\":{\"use\":\"official\",\"family\":");
        json.str(self.contact.1);
        json.raw(",\"given\":[");
        json.str(self.contact.0);
        json.raw("]},\"telecom\":[{\"system\":\"phone\",\"value\":");
        json.str(&self.phone);
        json.raw(",\"use\":\"work\"}]}]");
        json.end();
    }

    fn write_location(&self, json: &mut Json, index: usize) {
        json.begin("Location", &self.location);
        json.raw(",\"identifier\":[{\"system\":\"urn:bulkfhir:location\",\"value\":\"LOC");
        json.u64(index as u64 + 1);
        json.raw("\"}],\"status\":\"active\",\"name\":");
        json.str(&self.name);
        json.raw(",\"mode\":\"instance\",\"type\":[");
        let (code, display) =
            if self.hospital { ("HOSP", "Hospital") } else { ("OF", "Outpatient facility") };
        json.concept("http://terminology.hl7.org/CodeSystem/v3-RoleCode", code, display);
        json.raw("],\"telecom\":[{\"system\":\"phone\",\"value\":");
        json.str(&self.phone);
        json.raw("}],\"address\":");
        self.address(json);
        json.raw(",\"position\":{\"longitude\":");
        json.dec(self.lon, 6);
        json.raw(",\"latitude\":");
        json.dec(self.lat, 6);
        json.raw("},\"managingOrganization\":");
        json.reference_display("Organization", &self.id, &self.name);
        json.end();
    }
}

impl Practitioner {
    fn sample(seed: u64, index: u64, organization: usize) -> Self {
        let mut rng = Rng::for_stream(seed, fnv1a("Practitioner"), index);
        let female = rng.chance(0.5);
        let given = if female { *rng.pick(&FEMALE_GIVEN) } else { *rng.pick(&MALE_GIVEN) };
        let family = *rng.pick(&FAMILY);
        Self {
            id: ResourceType::Practitioner.id(seed, index),
            organization,
            display: format!("Dr. {given} {family}"),
            given,
            family,
            female,
            npi: 9_000_000_000 + rng.below(999_999_999),
        }
    }

    fn write(&self, json: &mut Json, org: &Organization) {
        json.begin("Practitioner", &self.id);
        json.raw(",\"identifier\":[{\"system\":\"http://hl7.org/fhir/sid/us-npi\",\"value\":\"");
        json.u64(self.npi);
        json.raw("\"}],\"active\":true,\"name\":[{\"family\":");
        json.str(self.family);
        json.raw(",\"given\":[");
        json.str(self.given);
        json.raw("],\"prefix\":[\"Dr.\"]}],\"telecom\":[{\"system\":\"email\",\"value\":\"");
        email_part(json, self.given);
        json.raw(".");
        email_part(json, self.family);
        json.raw("@example.com\",\"use\":\"work\"}],\"address\":[");
        org.address(json);
        json.raw("],\"gender\":");
        json.raw(if self.female { "\"female\"" } else { "\"male\"" });
        json.raw(",\"qualification\":[{\"code\":");
        json.concept("http://terminology.hl7.org/CodeSystem/v2-0360", "MD", "Doctor of Medicine");
        json.raw(",\"issuer\":{\"display\":\"Massachusetts Board of Registration in Medicine\"}}]");
        json.end();
    }
}

/// Appends the ASCII alphanumeric characters of `name` (for e-mail addresses).
fn email_part(json: &mut Json, name: &str) {
    let mut buf = [0u8; 64];
    let mut n = 0;
    for b in name.bytes().filter(u8::is_ascii_alphanumeric).take(buf.len()) {
        buf[n] = b;
        n += 1;
    }
    json.escaped(std::str::from_utf8(&buf[..n]).unwrap_or_default());
}
