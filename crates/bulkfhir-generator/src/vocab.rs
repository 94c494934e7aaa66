//! Fixed vocabularies: code systems, clinical concepts (SNOMED CT, LOINC,
//! RxNorm, CVX), the simulated disease and care programs, and the name and
//! address lists used for people and places. Modeled on the concepts that
//! dominate Synthea's output.

/// SNOMED CT.
pub(crate) const SNOMED: &str = "http://snomed.info/sct";
/// LOINC.
pub(crate) const LOINC: &str = "http://loinc.org";
/// RxNorm.
pub(crate) const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
/// CVX vaccine codes.
pub(crate) const CVX: &str = "http://hl7.org/fhir/sid/cvx";

/// A code with its display text (the system is implied by where it is used).
#[derive(Debug)]
pub(crate) struct Concept {
    pub(crate) code: &'static str,
    pub(crate) display: &'static str,
}

const fn cc(code: &'static str, display: &'static str) -> Concept {
    Concept { code, display }
}

// ---------------------------------------------------------------------------
// Encounters

/// The v3 ActCode class of an encounter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Ambulatory,
    Emergency,
    Inpatient,
}

impl Class {
    pub(crate) const fn code(self) -> &'static str {
        match self {
            Self::Ambulatory => "AMB",
            Self::Emergency => "EMER",
            Self::Inpatient => "IMP",
        }
    }
}

/// An encounter type (SNOMED) with its class.
#[derive(Debug)]
pub(crate) struct EncounterType {
    pub(crate) class: Class,
    pub(crate) concept: Concept,
}

const fn enc(class: Class, code: &'static str, display: &'static str) -> EncounterType {
    EncounterType { class, concept: cc(code, display) }
}

use Class::{Ambulatory as AMB, Emergency as EMER, Inpatient as IMP};

pub(crate) static GENERAL_EXAM: EncounterType =
    enc(AMB, "162673000", "General examination of patient (procedure)");
pub(crate) static WELL_CHILD: EncounterType = enc(AMB, "410620009", "Well child visit (procedure)");
pub(crate) static CHECK_UP: EncounterType =
    enc(AMB, "185349003", "Encounter for check up (procedure)");
pub(crate) static SYMPTOM: EncounterType = enc(AMB, "185345009", "Encounter for symptom");
pub(crate) static PROBLEM: EncounterType =
    enc(AMB, "185347001", "Encounter for problem (procedure)");
pub(crate) static FOLLOW_UP: EncounterType = enc(AMB, "390906007", "Follow-up encounter");
pub(crate) static HYPERTENSION_FOLLOW_UP: EncounterType =
    enc(AMB, "390906007", "Hypertension follow-up encounter");
pub(crate) static ASTHMA_FOLLOW_UP: EncounterType = enc(AMB, "394701000", "Asthma follow-up");
pub(crate) static ALLERGY_FOLLOW_UP: EncounterType =
    enc(AMB, "170838006", "Allergic disorder follow-up assessment");
pub(crate) static CONSULTATION: EncounterType = enc(AMB, "698314001", "Consultation for treatment");
pub(crate) static OUTPATIENT_PROCEDURE: EncounterType =
    enc(AMB, "371883000", "Outpatient procedure");
pub(crate) static PATIENT_PROCEDURE: EncounterType =
    enc(AMB, "308335008", "Patient encounter procedure");
pub(crate) static URGENT_CARE: EncounterType =
    enc(AMB, "702927004", "Urgent care clinic (procedure)");
pub(crate) static PRENATAL_INITIAL: EncounterType = enc(AMB, "424441002", "Prenatal initial visit");
pub(crate) static PRENATAL: EncounterType = enc(AMB, "424619006", "Prenatal visit");
pub(crate) static POSTNATAL: EncounterType = enc(AMB, "169762003", "Postnatal visit");
pub(crate) static OBSTETRIC_ADMISSION: EncounterType =
    enc(EMER, "183460006", "Obstetric emergency hospital admission");
pub(crate) static EMERGENCY_ROOM: EncounterType =
    enc(EMER, "50849002", "Emergency room admission (procedure)");
pub(crate) static INPATIENT: EncounterType = enc(IMP, "183452005", "Encounter Inpatient");

// ---------------------------------------------------------------------------
// Procedures, medications, vaccines

/// A procedure (SNOMED) with its typical cost in cents.
#[derive(Debug)]
pub(crate) struct Procedure {
    pub(crate) concept: Concept,
    pub(crate) cents: i64,
}

const fn proc(code: &'static str, display: &'static str, cents: i64) -> Procedure {
    Procedure { concept: cc(code, display), cents }
}

pub(crate) static MED_RECONCILIATION: Procedure =
    proc("430193006", "Medication Reconciliation (procedure)", 69_949);
pub(crate) static DEPRESSION_SCREENING: Procedure =
    proc("171207006", "Depression screening", 43_140);
pub(crate) static MAMMOGRAPHY: Procedure = proc("71651007", "Mammography (procedure)", 60_830);
pub(crate) static COLONOSCOPY: Procedure = proc("73761001", "Colonoscopy", 1_097_990);
pub(crate) static CERVICAL_SMEAR: Procedure =
    proc("90226004", "Cytopathology procedure, preparation of smear, genital source", 51_320);
pub(crate) static THROAT_CULTURE: Procedure =
    proc("117015009", "Throat culture (procedure)", 33_250);
pub(crate) static RESPIRATORY_FUNCTION: Procedure =
    proc("23426006", "Measurement of respiratory function (procedure)", 51_665);
pub(crate) static SUTURE: Procedure = proc("288086009", "Suture open wound", 121_540);
pub(crate) static BONE_IMMOBILIZATION: Procedure =
    proc("274474001", "Bone immobilization", 184_210);
pub(crate) static CHEST_XRAY: Procedure =
    proc("399208008", "Plain chest X-ray (procedure)", 43_580);
pub(crate) static SPIROMETRY: Procedure = proc("127783003", "Spirometry (procedure)", 36_110);
pub(crate) static IMMUNOTHERAPY: Procedure =
    proc("180256009", "Subcutaneous immunotherapy", 104_320);
pub(crate) static CARDIOVERSION: Procedure =
    proc("180325003", "Electrical cardioversion", 2_569_000);
pub(crate) static WISDOM_TOOTH: Procedure = proc("65546002", "Extraction of wisdom tooth", 172_060);
pub(crate) static STANDARD_PREGNANCY_TEST: Procedure =
    proc("252160004", "Standard pregnancy test", 42_970);
pub(crate) static FUNDAL_HEIGHT: Procedure =
    proc("274804006", "Evaluation of uterine fundal height", 34_890);
pub(crate) static FETAL_HEART: Procedure =
    proc("225158009", "Auscultation of the fetal heart", 51_520);
pub(crate) static URINE_GLUCOSE: Procedure =
    proc("268556000", "Urine screening for glucose", 39_220);
pub(crate) static NORMAL_DELIVERY: Procedure =
    proc("177184002", "Normal delivery procedure", 1_080_340);
pub(crate) static LABOR_INDUCTION: Procedure =
    proc("31208007", "Medical induction of labor", 482_250);
pub(crate) static EPISIOTOMY: Procedure = proc("85548006", "Episiotomy", 298_470);

/// Screening tests at the first prenatal visit.
pub(crate) static PRENATAL_SCREENING: [Procedure; 14] = [
    proc("169230002", "Ultrasound scan for fetal viability", 53_020),
    proc("44608003", "Blood typing, RH typing", 36_040),
    proc("47758006", "Hepatitis B Surface Antigen Measurement", 29_380),
    proc("31676001", "Human immunodeficiency virus antigen test", 31_990),
    proc("310861008", "Chlamydia antigen test", 27_640),
    proc("165829005", "Gonorrhea infection test", 27_640),
    proc("269828009", "Syphilis infection test", 29_230),
    proc("117010004", "Urine culture", 30_280),
    proc("395123002", "Urine screening test for diabetes", 31_930),
    proc("104375008", "Hepatitis C antibody test", 33_180),
    proc("169690007", "Rubella screening", 29_540),
    proc("104326007", "Measurement of Varicella-zoster virus antibody", 31_890),
    proc("28163009", "Skin test for tuberculosis", 26_720),
    proc("167271000", "Urine protein test", 24_910),
];

/// Procedures done in their own outpatient encounter, with relative weights.
pub(crate) static OUTPATIENT_PROCEDURES: [(Procedure, u32); 8] = [
    (proc("76601001", "Intramuscular injection", 40_170), 30),
    (proc("104091002", "Hemoglobin / Hematocrit / Platelet count", 21_050), 15),
    (proc("228557008", "Cognitive and behavioral therapy", 32_770), 15),
    (proc("127783003", "Spirometry (procedure)", 36_110), 8),
    (proc("104435004", "Screening for occult blood (procedure)", 29_180), 8),
    (proc("269911007", "Sputum examination (procedure)", 28_930), 6),
    (proc("91251008", "Physical therapy procedure", 46_020), 12),
    (proc("65546002", "Extraction of wisdom tooth", 172_060), 6),
];

/// A medication (RxNorm) with its typical cost per fill in cents.
#[derive(Debug)]
pub(crate) struct Medication {
    pub(crate) concept: Concept,
    pub(crate) cents: i64,
}

const fn med(code: &'static str, display: &'static str, cents: i64) -> Medication {
    Medication { concept: cc(code, display), cents }
}

pub(crate) static HCTZ: Medication = med("310798", "Hydrochlorothiazide 25 MG Oral Tablet", 263);
pub(crate) static AMLODIPINE_COMBO: Medication = med(
    "999967",
    "amLODIPine 5 MG / Hydrochlorothiazide 12.5 MG / Olmesartan medoxomil 20 MG Oral Tablet",
    4_412,
);
pub(crate) static ATENOLOL_COMBO: Medication =
    med("746030", "Atenolol 50 MG / Chlorthalidone 25 MG Oral Tablet", 1_064);
pub(crate) static SIMVASTATIN_10: Medication =
    med("314231", "Simvastatin 10 MG Oral Tablet", 1_231);
pub(crate) static SIMVASTATIN_20: Medication =
    med("312961", "Simvastatin 20 MG Oral Tablet", 1_542);
pub(crate) static FLUTICASONE: Medication =
    med("895994", "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler", 21_470);
pub(crate) static ALBUTEROL: Medication =
    med("2123111", "NDA020503 200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", 4_786);
pub(crate) static FLUTICASONE_SALMETEROL: Medication = med(
    "896209",
    "60 ACTUAT Fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT Dry Powder Inhaler",
    29_841,
);
pub(crate) static WARFARIN: Medication = med("855332", "Warfarin Sodium 5 MG Oral Tablet", 1_142);
pub(crate) static VERAPAMIL: Medication = med("897718", "Verapamil Hydrochloride 40 MG", 1_864);
pub(crate) static DIGOXIN: Medication = med("197604", "Digoxin 0.125 MG Oral Tablet", 2_316);
pub(crate) static HUMULIN: Medication = med(
    "106892",
    "insulin human, isophane 70 UNT/ML / Regular Insulin, Human 30 UNT/ML Injectable Suspension [Humulin]",
    13_640,
);
pub(crate) static METFORMIN: Medication =
    med("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet", 1_580);
pub(crate) static ACETAMINOPHEN_325: Medication =
    med("313782", "Acetaminophen 325 MG Oral Tablet", 689);
pub(crate) static ACETAMINOPHEN_160: Medication =
    med("313820", "Acetaminophen 160 MG Chewable Tablet", 545);
pub(crate) static NITROGLYCERIN: Medication =
    med("705129", "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray", 24_331);
pub(crate) static AMLODIPINE: Medication = med("197361", "Amlodipine 5 MG Oral Tablet", 746);
pub(crate) static CLOPIDOGREL: Medication = med("309362", "Clopidogrel 75 MG Oral Tablet", 2_130);
pub(crate) static NAPROXEN: Medication = med("849574", "Naproxen sodium 220 MG Oral Tablet", 955);
pub(crate) static HYDROCODONE: Medication =
    med("856987", "Acetaminophen 300 MG / HYDROcodone Bitartrate 5 MG Oral Tablet", 1_118);
pub(crate) static AMOXICILLIN_CLAVULANATE: Medication =
    med("562251", "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet", 2_460);
pub(crate) static AMOXICILLIN: Medication = med("308182", "Amoxicillin 250 MG Oral Capsule", 1_092);
pub(crate) static IBUPROFEN_200: Medication = med("310965", "Ibuprofen 200 MG Oral Tablet", 482);
pub(crate) static IBUPROFEN_100: Medication = med("198405", "Ibuprofen 100 MG Oral Tablet", 391);
pub(crate) static COUGH_SYRUP: Medication = med(
    "1043400",
    "Acetaminophen 21.7 MG/ML / Dextromethorphan Hydrobromide 1 MG/ML / doxylamine succinate 0.417 MG/ML Oral Solution",
    804,
);
pub(crate) static PENICILLIN: Medication =
    med("834102", "Penicillin V Potassium 500 MG Oral Tablet", 1_337);
pub(crate) static LORATADINE: Medication = med("311372", "Loratadine 10 MG Oral Tablet", 617);
pub(crate) static ALENDRONATE: Medication =
    med("904419", "Alendronic acid 10 MG Oral Tablet", 3_318);

/// Hormonal contraceptives, renewed at wellness visits.
pub(crate) static CONTRACEPTIVES: [Medication; 6] = [
    med("748879", "Levora 0.15/30 28 Day Pack", 3_612),
    med("749762", "Seasonique 91 Day Pack", 5_984),
    med("757594", "Jolivette 28 Day Pack", 2_850),
    med("748856", "Yaz 28 Day Pack", 4_771),
    med("978950", "Natazia 28 Day Pack", 6_412),
    med("831533", "Errin 28 Day Pack", 2_963),
];

/// Cost of one vaccine administration in cents.
pub(crate) const VACCINE_CENTS: i64 = 14_052;

pub(crate) static FLU: Concept = cc("140", "Influenza, seasonal, injectable, preservative free");
static HEP_B_PED: Concept = cc("08", "Hep B, adolescent or pediatric");
static ROTAVIRUS: Concept = cc("119", "rotavirus, monovalent");
static DTAP: Concept = cc("20", "DTaP");
static HIB: Concept = cc("49", "Hib (PRP-OMP)");
static PCV13: Concept = cc("133", "Pneumococcal conjugate PCV 13");
static IPV: Concept = cc("10", "IPV");
static MMR: Concept = cc("03", "MMR");
static VARICELLA: Concept = cc("21", "varicella");
static HEP_A_PED: Concept = cc("83", "Hep A, ped/adol, 2 dose");
static TDAP: Concept = cc("115", "Tdap");
static HPV: Concept = cc("62", "HPV, quadrivalent");
static MCV4: Concept = cc("114", "meningococcal MCV4P");
static TD: Concept = cc("113", "Td (adult) preservative free");
static ZOSTER: Concept = cc("121", "zoster");
static PPSV23: Concept = cc("33", "pneumococcal polysaccharide vaccine, 23 valent");

const fn years(y: i64) -> i64 {
    y * 365 + y / 4
}

/// The routine immunization schedule: `(vaccine, age in days when due)`,
/// sorted by age. Influenza is handled separately (yearly from 6 months).
pub(crate) static VACCINE_SCHEDULE: [(&Concept, i64); 40] = [
    (&HEP_B_PED, 0),
    (&HEP_B_PED, 30),
    (&ROTAVIRUS, 60),
    (&DTAP, 60),
    (&HIB, 60),
    (&PCV13, 60),
    (&IPV, 60),
    (&ROTAVIRUS, 120),
    (&DTAP, 120),
    (&HIB, 120),
    (&PCV13, 120),
    (&IPV, 120),
    (&HEP_B_PED, 180),
    (&DTAP, 180),
    (&PCV13, 180),
    (&IPV, 180),
    (&HIB, 365),
    (&PCV13, 365),
    (&MMR, 365),
    (&VARICELLA, 365),
    (&HEP_A_PED, 365),
    (&DTAP, 450),
    (&HEP_A_PED, 545),
    (&DTAP, years(4)),
    (&IPV, years(4)),
    (&MMR, years(4)),
    (&VARICELLA, years(4)),
    (&TDAP, years(11)),
    (&HPV, years(11)),
    (&MCV4, years(11)),
    (&HPV, years(11) + 180),
    (&MCV4, years(16)),
    (&TD, years(21)),
    (&TD, years(31)),
    (&TD, years(41)),
    (&TD, years(51)),
    (&ZOSTER, years(60)),
    (&TD, years(61)),
    (&PCV13, years(65)),
    (&PPSV23, years(66)),
];

// ---------------------------------------------------------------------------
// Observations

/// A quantitative observation: LOINC concept, UCUM unit, decimal places.
#[derive(Debug)]
pub(crate) struct Measure {
    pub(crate) concept: Concept,
    pub(crate) unit: &'static str,
    pub(crate) places: u32,
}

const fn measure(
    code: &'static str,
    display: &'static str,
    unit: &'static str,
    places: u32,
) -> Measure {
    Measure { concept: cc(code, display), unit, places }
}

pub(crate) static BODY_HEIGHT: Measure = measure("8302-2", "Body Height", "cm", 1);
pub(crate) static BODY_WEIGHT: Measure = measure("29463-7", "Body Weight", "kg", 1);
pub(crate) static BMI: Measure = measure("39156-5", "Body Mass Index", "kg/m2", 1);
pub(crate) static BMI_PERCENTILE: Measure =
    measure("59576-9", "Body mass index (BMI) [Percentile] Per age and gender", "%", 1);
pub(crate) static WEIGHT_FOR_LENGTH: Measure =
    measure("77606-2", "Weight-for-length Per age and sex", "%", 1);
pub(crate) static HEAD_CIRCUMFERENCE: Measure =
    measure("9843-4", "Head Occipital-frontal circumference", "cm", 1);
pub(crate) static HEART_RATE: Measure = measure("8867-4", "Heart rate", "/min", 0);
pub(crate) static RESPIRATORY_RATE: Measure = measure("9279-1", "Respiratory rate", "/min", 0);
pub(crate) static PAIN_SCORE: Measure = measure(
    "72514-3",
    "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
    "{score}",
    0,
);
pub(crate) static BODY_TEMPERATURE: Measure = measure("8310-5", "Body temperature", "Cel", 1);
pub(crate) static BLOOD_PRESSURE: Concept = cc("85354-9", "Blood Pressure");
pub(crate) static DIASTOLIC: Measure = measure("8462-4", "Diastolic Blood Pressure", "mm[Hg]", 0);
pub(crate) static SYSTOLIC: Measure = measure("8480-6", "Systolic Blood Pressure", "mm[Hg]", 0);
pub(crate) static SMOKING_STATUS: Concept = cc("72166-2", "Tobacco smoking status NHIS");

/// Answers to the smoking-status survey (SNOMED).
pub(crate) static SMOKING_ANSWERS: [Concept; 3] = [
    cc("266919005", "Never smoker"),
    cc("8517006", "Former smoker"),
    cc("449868002", "Smokes tobacco daily"),
];

/// A laboratory test with its usual result range.
#[derive(Debug)]
pub(crate) struct LabTest {
    pub(crate) measure: Measure,
    pub(crate) low: f64,
    pub(crate) high: f64,
}

const fn lab(
    code: &'static str,
    display: &'static str,
    unit: &'static str,
    places: u32,
    low: f64,
    high: f64,
) -> LabTest {
    LabTest { measure: measure(code, display, unit, places), low, high }
}

/// A lab panel, reported as a DiagnosticReport over one Observation per test.
#[derive(Debug)]
pub(crate) struct Panel {
    pub(crate) concept: Concept,
    pub(crate) tests: &'static [LabTest],
}

pub(crate) static LIPID_PANEL: Panel = Panel {
    concept: cc("57698-3", "Lipid Panel"),
    tests: &[
        lab("2093-3", "Total Cholesterol", "mg/dL", 1, 150.0, 240.0),
        lab("2571-8", "Triglycerides", "mg/dL", 1, 80.0, 200.0),
        lab("18262-6", "Low Density Lipoprotein Cholesterol", "mg/dL", 1, 70.0, 160.0),
        lab("2085-9", "High Density Lipoprotein Cholesterol", "mg/dL", 1, 35.0, 80.0),
    ],
};

pub(crate) static BASIC_METABOLIC_PANEL: Panel = Panel {
    concept: cc("51990-0", "Basic Metabolic Panel"),
    tests: &[
        lab("2339-0", "Glucose", "mg/dL", 1, 65.0, 110.0),
        lab("6299-2", "Urea Nitrogen", "mg/dL", 2, 7.0, 20.0),
        lab("38483-4", "Creatinine", "mg/dL", 2, 0.6, 1.3),
        lab("49765-1", "Calcium", "mg/dL", 2, 8.5, 10.2),
        lab("2947-0", "Sodium", "mmol/L", 1, 136.0, 144.0),
        lab("6298-4", "Potassium", "mmol/L", 2, 3.6, 5.1),
        lab("2069-3", "Chloride", "mmol/L", 1, 98.0, 107.0),
        lab("20565-8", "Carbon Dioxide", "mmol/L", 1, 21.0, 30.0),
    ],
};

pub(crate) static COMPREHENSIVE_METABOLIC_PANEL: Panel = Panel {
    concept: cc("24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma"),
    tests: &[
        lab("2339-0", "Glucose", "mg/dL", 1, 65.0, 110.0),
        lab("6299-2", "Urea Nitrogen", "mg/dL", 2, 7.0, 20.0),
        lab("38483-4", "Creatinine", "mg/dL", 2, 0.6, 1.3),
        lab("49765-1", "Calcium", "mg/dL", 2, 8.5, 10.2),
        lab("2947-0", "Sodium", "mmol/L", 1, 136.0, 144.0),
        lab("6298-4", "Potassium", "mmol/L", 2, 3.6, 5.1),
        lab("2069-3", "Chloride", "mmol/L", 1, 98.0, 107.0),
        lab("20565-8", "Carbon Dioxide", "mmol/L", 1, 21.0, 30.0),
        lab(
            "33914-3",
            "Glomerular filtration rate/1.73 sq M.predicted",
            "mL/min/{1.73_m2}",
            1,
            60.0,
            120.0,
        ),
        lab("2885-2", "Protein [Mass/volume] in Serum or Plasma", "g/dL", 1, 6.0, 8.3),
        lab("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "g/dL", 1, 3.5, 5.0),
        lab("10834-0", "Globulin [Mass/volume] in Serum by calculation", "g/dL", 1, 2.0, 3.5),
        lab("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "mg/dL", 1, 0.1, 1.2),
        lab(
            "6768-6",
            "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L",
            1,
            44.0,
            147.0,
        ),
        lab(
            "1742-6",
            "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L",
            1,
            7.0,
            56.0,
        ),
        lab(
            "1920-8",
            "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L",
            1,
            10.0,
            40.0,
        ),
    ],
};

pub(crate) static CBC_PANEL: Panel = Panel {
    concept: cc("58410-2", "Complete blood count (hemogram) panel - Blood by Automated count"),
    tests: &[
        lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 1, 3.8, 10.8),
        lab("789-8", "Erythrocytes [#/volume] in Blood by Automated count", "10*6/uL", 2, 4.2, 5.8),
        lab("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 1, 12.0, 17.0),
        lab(
            "4544-3",
            "Hematocrit [Volume Fraction] of Blood by Automated count",
            "%",
            1,
            36.0,
            50.0,
        ),
        lab("787-2", "MCV [Entitic volume] by Automated count", "fL", 1, 80.0, 100.0),
        lab("785-6", "MCH [Entitic mass] by Automated count", "pg", 1, 27.0, 33.0),
        lab("786-4", "MCHC [Mass/volume] by Automated count", "g/dL", 1, 32.0, 36.0),
        lab(
            "21000-5",
            "Erythrocyte distribution width [Entitic volume] by Automated count",
            "fL",
            1,
            39.0,
            46.0,
        ),
        lab(
            "777-3",
            "Platelets [#/volume] in Blood by Automated count",
            "10*3/uL",
            1,
            150.0,
            450.0,
        ),
        lab(
            "32207-3",
            "Platelet distribution width [Entitic volume] in Blood by Automated count",
            "fL",
            1,
            10.0,
            17.0,
        ),
        lab(
            "32623-1",
            "Platelet mean volume [Entitic volume] in Blood by Automated count",
            "fL",
            1,
            9.4,
            12.4,
        ),
    ],
};

pub(crate) static HBA1C: LabTest =
    lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 1, 4.5, 6.0);
pub(crate) static MICROALBUMIN: LabTest =
    lab("14959-1", "Microalbumin Creatinine Ratio", "mg/g", 1, 5.0, 30.0);

/// A lab order that a care program can request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lab {
    Lipid,
    Metabolic,
    Comprehensive,
    BloodCount,
    Hba1c,
    Microalbumin,
}

// ---------------------------------------------------------------------------
// Conditions

/// An acute illness or injury, diagnosed and treated in one encounter.
#[derive(Debug)]
pub(crate) struct Acute {
    pub(crate) condition: Concept,
    pub(crate) encounter: &'static EncounterType,
    /// Eligible ages in years, `min..max`.
    pub(crate) ages: (u32, u32),
    pub(crate) weight: u32,
    /// Days until the condition resolves, `min..=max`.
    pub(crate) days: (i64, i64),
    pub(crate) fever: bool,
    pub(crate) meds: &'static [(&'static Medication, f64)],
    pub(crate) procedures: &'static [(&'static Procedure, f64)],
}

/// Acute illnesses and injuries.
pub(crate) static ACUTE: [Acute; 16] = [
    Acute {
        condition: cc("444814009", "Viral sinusitis (disorder)"),
        encounter: &SYMPTOM,
        ages: (0, 120),
        weight: 100,
        days: (7, 21),
        fever: true,
        meds: &[(&AMOXICILLIN_CLAVULANATE, 0.2)],
        procedures: &[],
    },
    Acute {
        condition: cc("195662009", "Acute viral pharyngitis (disorder)"),
        encounter: &SYMPTOM,
        ages: (0, 120),
        weight: 70,
        days: (7, 14),
        fever: true,
        meds: &[(&ACETAMINOPHEN_325, 0.4)],
        procedures: &[(&THROAT_CULTURE, 0.2)],
    },
    Acute {
        condition: cc("10509002", "Acute bronchitis (disorder)"),
        encounter: &SYMPTOM,
        ages: (0, 120),
        weight: 50,
        days: (7, 21),
        fever: true,
        meds: &[(&COUGH_SYRUP, 0.5), (&ACETAMINOPHEN_325, 0.3)],
        procedures: &[(&RESPIRATORY_FUNCTION, 0.5), (&CHEST_XRAY, 0.3)],
    },
    Acute {
        condition: cc("65363002", "Otitis media"),
        encounter: &SYMPTOM,
        ages: (0, 10),
        weight: 60,
        days: (7, 14),
        fever: true,
        meds: &[(&AMOXICILLIN, 0.7), (&ACETAMINOPHEN_160, 0.4), (&IBUPROFEN_100, 0.3)],
        procedures: &[],
    },
    Acute {
        condition: cc("43878008", "Streptococcal sore throat (disorder)"),
        encounter: &SYMPTOM,
        ages: (3, 60),
        weight: 15,
        days: (7, 14),
        fever: true,
        meds: &[(&PENICILLIN, 0.9)],
        procedures: &[(&THROAT_CULTURE, 1.0)],
    },
    Acute {
        condition: cc("36971009", "Sinusitis (disorder)"),
        encounter: &PROBLEM,
        ages: (5, 120),
        weight: 10,
        days: (14, 35),
        fever: false,
        meds: &[(&AMOXICILLIN_CLAVULANATE, 0.6)],
        procedures: &[],
    },
    Acute {
        condition: cc("44465007", "Sprain of ankle"),
        encounter: &URGENT_CARE,
        ages: (8, 80),
        weight: 15,
        days: (21, 42),
        fever: false,
        meds: &[(&IBUPROFEN_200, 0.6), (&NAPROXEN, 0.3)],
        procedures: &[],
    },
    Acute {
        condition: cc("70704007", "Sprain of wrist"),
        encounter: &URGENT_CARE,
        ages: (8, 80),
        weight: 8,
        days: (21, 42),
        fever: false,
        meds: &[(&IBUPROFEN_200, 0.5), (&NAPROXEN, 0.3)],
        procedures: &[],
    },
    Acute {
        condition: cc("403190006", "First degree burn"),
        encounter: &URGENT_CARE,
        ages: (1, 90),
        weight: 7,
        days: (7, 21),
        fever: false,
        meds: &[(&IBUPROFEN_200, 0.3)],
        procedures: &[],
    },
    Acute {
        condition: cc("39848009", "Whiplash injury to neck"),
        encounter: &EMERGENCY_ROOM,
        ages: (16, 90),
        weight: 7,
        days: (28, 90),
        fever: false,
        meds: &[(&NAPROXEN, 0.5), (&HYDROCODONE, 0.2)],
        procedures: &[(&CHEST_XRAY, 0.2)],
    },
    Acute {
        condition: cc("284551006", "Laceration of foot"),
        encounter: &URGENT_CARE,
        ages: (2, 80),
        weight: 7,
        days: (14, 28),
        fever: false,
        meds: &[(&IBUPROFEN_200, 0.4)],
        procedures: &[(&SUTURE, 1.0)],
    },
    Acute {
        condition: cc("62106007", "Concussion with no loss of consciousness"),
        encounter: &EMERGENCY_ROOM,
        ages: (4, 90),
        weight: 5,
        days: (14, 42),
        fever: false,
        meds: &[(&ACETAMINOPHEN_325, 0.6)],
        procedures: &[],
    },
    Acute {
        condition: cc("65966004", "Fracture of forearm"),
        encounter: &EMERGENCY_ROOM,
        ages: (3, 95),
        weight: 5,
        days: (42, 84),
        fever: false,
        meds: &[(&HYDROCODONE, 0.6), (&IBUPROFEN_200, 0.4)],
        procedures: &[(&BONE_IMMOBILIZATION, 1.0)],
    },
    Acute {
        condition: cc("58150001", "Fracture of clavicle"),
        encounter: &EMERGENCY_ROOM,
        ages: (3, 95),
        weight: 3,
        days: (42, 84),
        fever: false,
        meds: &[(&HYDROCODONE, 0.5), (&NAPROXEN, 0.4)],
        procedures: &[(&BONE_IMMOBILIZATION, 1.0), (&CHEST_XRAY, 0.7)],
    },
    Acute {
        condition: cc("196416002", "Impacted molars"),
        encounter: &CONSULTATION,
        ages: (15, 30),
        weight: 10,
        days: (14, 28),
        fever: false,
        meds: &[(&HYDROCODONE, 0.5), (&IBUPROFEN_200, 0.5)],
        procedures: &[(&WISDOM_TOOTH, 1.0)],
    },
    Acute {
        condition: cc("233604007", "Pneumonia"),
        encounter: &INPATIENT,
        ages: (0, 120),
        weight: 4,
        days: (14, 35),
        fever: true,
        meds: &[(&AMOXICILLIN_CLAVULANATE, 0.8), (&ACETAMINOPHEN_325, 0.5)],
        procedures: &[(&CHEST_XRAY, 1.0), (&RESPIRATORY_FUNCTION, 0.6)],
    },
];

/// Which sex a chronic program applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Only {
    Anyone,
    Female,
}

/// A long-term condition: diagnosed once, then managed with medications,
/// labs and follow-up visits for the rest of the record.
#[derive(Debug)]
pub(crate) struct Chronic {
    pub(crate) condition: Concept,
    pub(crate) only: Only,
    /// Onset ages in years, `min..max`.
    pub(crate) onset: (u32, u32),
    /// Chance of developing it by the top onset age.
    pub(crate) probability: f64,
    /// One medication is chosen from each group.
    pub(crate) meds: &'static [&'static [&'static Medication]],
    /// Follow-up visit type and visits per year, if managed with follow-ups.
    pub(crate) follow_up: Option<(&'static EncounterType, f64)>,
    pub(crate) follow_up_procedures: &'static [(&'static Procedure, f64)],
    /// Labs ordered at follow-ups and (at half the rate) at wellness visits.
    pub(crate) labs: &'static [(Lab, f64)],
    /// Added to systolic/diastolic blood pressure while active.
    pub(crate) raises_blood_pressure: bool,
}

/// SNOMED code of diabetes (drives HbA1c results).
pub(crate) const DIABETES: &str = "44054006";
/// SNOMED code of prediabetes (drives HbA1c results).
pub(crate) const PREDIABETES: &str = "15777000";

/// Chronic conditions.
pub(crate) static CHRONIC: [Chronic; 15] = [
    Chronic {
        condition: cc("59621000", "Hypertension"),
        only: Only::Anyone,
        onset: (30, 75),
        probability: 0.35,
        meds: &[&[&HCTZ, &HCTZ, &AMLODIPINE_COMBO, &ATENOLOL_COMBO]],
        follow_up: Some((&HYPERTENSION_FOLLOW_UP, 1.5)),
        follow_up_procedures: &[],
        labs: &[(Lab::Metabolic, 0.5)],
        raises_blood_pressure: true,
    },
    Chronic {
        condition: cc(PREDIABETES, "Prediabetes"),
        only: Only::Anyone,
        onset: (25, 70),
        probability: 0.3,
        meds: &[],
        follow_up: None,
        follow_up_procedures: &[],
        labs: &[(Lab::Hba1c, 0.8)],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc(DIABETES, "Diabetes"),
        only: Only::Anyone,
        onset: (35, 75),
        probability: 0.12,
        meds: &[&[&METFORMIN], &[&METFORMIN, &HUMULIN]],
        follow_up: Some((&FOLLOW_UP, 2.0)),
        follow_up_procedures: &[],
        labs: &[(Lab::Hba1c, 1.0), (Lab::Metabolic, 0.5), (Lab::Microalbumin, 0.5)],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("55822004", "Hyperlipidemia"),
        only: Only::Anyone,
        onset: (35, 75),
        probability: 0.25,
        meds: &[&[&SIMVASTATIN_10, &SIMVASTATIN_20]],
        follow_up: None,
        follow_up_procedures: &[],
        labs: &[(Lab::Lipid, 1.0)],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("162864005", "Body mass index 30+ - obesity (finding)"),
        only: Only::Anyone,
        onset: (18, 60),
        probability: 0.2,
        meds: &[],
        follow_up: None,
        follow_up_procedures: &[],
        labs: &[],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("271737000", "Anemia (disorder)"),
        only: Only::Female,
        onset: (12, 70),
        probability: 0.35,
        meds: &[],
        follow_up: None,
        follow_up_procedures: &[],
        labs: &[(Lab::BloodCount, 1.0)],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("233678006", "Childhood asthma"),
        only: Only::Anyone,
        onset: (2, 10),
        probability: 0.07,
        meds: &[&[&FLUTICASONE], &[&ALBUTEROL]],
        follow_up: Some((&ASTHMA_FOLLOW_UP, 1.0)),
        follow_up_procedures: &[(&SPIROMETRY, 0.3)],
        labs: &[],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("195967001", "Asthma"),
        only: Only::Anyone,
        onset: (18, 60),
        probability: 0.05,
        meds: &[&[&FLUTICASONE_SALMETEROL, &FLUTICASONE], &[&ALBUTEROL]],
        follow_up: Some((&ASTHMA_FOLLOW_UP, 1.0)),
        follow_up_procedures: &[(&SPIROMETRY, 0.3)],
        labs: &[],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("49436004", "Atrial Fibrillation"),
        only: Only::Anyone,
        onset: (55, 90),
        probability: 0.12,
        meds: &[&[&WARFARIN], &[&VERAPAMIL], &[&DIGOXIN]],
        follow_up: Some((&FOLLOW_UP, 2.0)),
        follow_up_procedures: &[(&CARDIOVERSION, 0.3)],
        labs: &[(Lab::Comprehensive, 0.3)],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("53741008", "Coronary Heart Disease"),
        only: Only::Anyone,
        onset: (50, 85),
        probability: 0.12,
        meds: &[&[&CLOPIDOGREL], &[&NITROGLYCERIN], &[&SIMVASTATIN_20, &AMLODIPINE]],
        follow_up: Some((&FOLLOW_UP, 1.0)),
        follow_up_procedures: &[],
        labs: &[(Lab::Lipid, 0.6), (Lab::Comprehensive, 0.3)],
        raises_blood_pressure: true,
    },
    Chronic {
        condition: cc("239873007", "Osteoarthritis of knee"),
        only: Only::Anyone,
        onset: (45, 85),
        probability: 0.15,
        meds: &[&[&NAPROXEN, &ACETAMINOPHEN_325]],
        follow_up: None,
        follow_up_procedures: &[],
        labs: &[],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("40055000", "Chronic sinusitis (disorder)"),
        only: Only::Anyone,
        onset: (10, 70),
        probability: 0.08,
        meds: &[],
        follow_up: None,
        follow_up_procedures: &[],
        labs: &[],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("82423001", "Chronic pain"),
        only: Only::Anyone,
        onset: (25, 80),
        probability: 0.08,
        meds: &[&[&HYDROCODONE, &NAPROXEN]],
        follow_up: Some((&FOLLOW_UP, 1.0)),
        follow_up_procedures: &[],
        labs: &[],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("232353008", "Perennial allergic rhinitis with seasonal variation"),
        only: Only::Anyone,
        onset: (3, 30),
        probability: 0.1,
        meds: &[&[&LORATADINE]],
        follow_up: Some((&ALLERGY_FOLLOW_UP, 2.0)),
        follow_up_procedures: &[(&IMMUNOTHERAPY, 1.0)],
        labs: &[],
        raises_blood_pressure: false,
    },
    Chronic {
        condition: cc("64859006", "Osteoporosis (disorder)"),
        only: Only::Female,
        onset: (50, 85),
        probability: 0.15,
        meds: &[&[&ALENDRONATE]],
        follow_up: None,
        follow_up_procedures: &[],
        labs: &[],
        raises_blood_pressure: false,
    },
];

pub(crate) static NORMAL_PREGNANCY: Concept = cc("72892002", "Normal pregnancy");
pub(crate) static MISCARRIAGE: Concept = cc("19169002", "Miscarriage in first trimester");

// ---------------------------------------------------------------------------
// People and places

pub(crate) static MALE_GIVEN: [&str; 64] = [
    "James",
    "John",
    "Robert",
    "Michael",
    "William",
    "David",
    "Richard",
    "Joseph",
    "Thomas",
    "Charles",
    "Christopher",
    "Daniel",
    "Matthew",
    "Anthony",
    "Mark",
    "Donald",
    "Steven",
    "Paul",
    "Andrew",
    "Joshua",
    "Kenneth",
    "Kevin",
    "Brian",
    "George",
    "Timothy",
    "Ronald",
    "Edward",
    "Jason",
    "Jeffrey",
    "Ryan",
    "Jacob",
    "Gary",
    "Nicholas",
    "Eric",
    "Jonathan",
    "Stephen",
    "Larry",
    "Justin",
    "Scott",
    "Brandon",
    "Benjamin",
    "Samuel",
    "Gregory",
    "Alexander",
    "Frank",
    "Patrick",
    "Raymond",
    "Jack",
    "Dennis",
    "Jerry",
    "Tyler",
    "Aaron",
    "Jose",
    "Adam",
    "Nathan",
    "Henry",
    "Douglas",
    "Zachary",
    "Peter",
    "Kyle",
    "Abram",
    "Otis",
    "Alfredo",
    "Wilbur",
];

pub(crate) static FEMALE_GIVEN: [&str; 64] = [
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Lisa",
    "Nancy",
    "Betty",
    "Margaret",
    "Sandra",
    "Ashley",
    "Kimberly",
    "Emily",
    "Donna",
    "Michelle",
    "Carol",
    "Amanda",
    "Dorothy",
    "Melissa",
    "Deborah",
    "Stephanie",
    "Rebecca",
    "Sharon",
    "Laura",
    "Cynthia",
    "Kathleen",
    "Amy",
    "Angela",
    "Shirley",
    "Anna",
    "Brenda",
    "Pamela",
    "Emma",
    "Nicole",
    "Helen",
    "Samantha",
    "Katherine",
    "Christine",
    "Debra",
    "Rachel",
    "Carolyn",
    "Janet",
    "Catherine",
    "Maria",
    "Heather",
    "Diane",
    "Ruth",
    "Julie",
    "Olivia",
    "Joyce",
    "Virginia",
    "Victoria",
    "Kelly",
    "Lauren",
    "Christina",
    "Aleta",
    "Lettie",
    "Darlena",
    "Rosalind",
];

pub(crate) static FAMILY: [&str; 120] = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Gomez",
    "Phillips",
    "Evans",
    "Turner",
    "Diaz",
    "Parker",
    "Cruz",
    "Edwards",
    "Collins",
    "Reyes",
    "Stewart",
    "Morris",
    "Morales",
    "Murphy",
    "Cook",
    "Rogers",
    "Gutierrez",
    "Ortiz",
    "Morgan",
    "Cooper",
    "Peterson",
    "Bailey",
    "Reed",
    "Kelly",
    "Howard",
    "Ramos",
    "Kim",
    "Cox",
    "Ward",
    "Richardson",
    "Watson",
    "Brooks",
    "Chavez",
    "Wood",
    "James",
    "Bennett",
    "Gray",
    "Mendoza",
    "Ruiz",
    "Hughes",
    "Price",
    "Alvarez",
    "Castillo",
    "Sanders",
    "Patel",
    "Myers",
    "Long",
    "Ross",
    "Foster",
    "Jimenez",
    "Lemke",
    "Wintheiser",
    "Alaniz",
    "Christiansen",
    "Boyle",
    "Kuhlman",
    "Schinner",
    "Bergstrom",
    "O'Keefe",
    "Hackett",
    "Kertzmann",
    "Lind",
    "Runolfsdottir",
    "Stracke",
    "Ziemann",
    "Wiza",
    "Pfannerstill",
    "Gleichner",
    "Heller",
    "Bashirian",
];

pub(crate) static STREET_NAMES: [&str; 40] = [
    "Main",
    "Oak",
    "Pine",
    "Maple",
    "Cedar",
    "Elm",
    "Washington",
    "Lake",
    "Hill",
    "Park",
    "Walnut",
    "Spring",
    "North",
    "Ridge",
    "Church",
    "Willow",
    "Mill",
    "Sunset",
    "Highland",
    "River",
    "Jackson",
    "Franklin",
    "Chestnut",
    "Lincoln",
    "Madison",
    "Prospect",
    "School",
    "Center",
    "Union",
    "Nikolaus",
    "Hintz",
    "Crooks",
    "Wehner",
    "Lowe",
    "Ankunding",
    "Bogan",
    "Cummerata",
    "Dietrich",
    "Ebert",
    "Fahey",
];

pub(crate) static STREET_SUFFIXES: [&str; 12] = [
    "Street",
    "Avenue",
    "Road",
    "Lane",
    "Drive",
    "Court",
    "Way",
    "Place",
    "Terrace",
    "Gate",
    "Boulevard",
    "Parade",
];

/// A town with a ZIP code and approximate coordinates.
#[derive(Debug)]
pub(crate) struct City {
    pub(crate) name: &'static str,
    pub(crate) zip: &'static str,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

const fn city(name: &'static str, zip: &'static str, lat: f64, lon: f64) -> City {
    City { name, zip, lat, lon }
}

/// The state every generated address is in.
pub(crate) const STATE: &str = "Massachusetts";
/// Its postal abbreviation (used for organizations, as Synthea does).
pub(crate) const STATE_CODE: &str = "MA";

pub(crate) static CITIES: [City; 42] = [
    city("Boston", "02108", 42.3601, -71.0589),
    city("Worcester", "01608", 42.2626, -71.8023),
    city("Springfield", "01103", 42.1015, -72.5898),
    city("Cambridge", "02139", 42.3736, -71.1097),
    city("Lowell", "01852", 42.6334, -71.3162),
    city("Brockton", "02301", 42.0834, -71.0184),
    city("New Bedford", "02740", 41.6362, -70.9342),
    city("Quincy", "02169", 42.2529, -71.0023),
    city("Lynn", "01901", 42.4668, -70.9495),
    city("Fall River", "02720", 41.7015, -71.1550),
    city("Newton", "02458", 42.3370, -71.2092),
    city("Somerville", "02143", 42.3876, -71.0995),
    city("Lawrence", "01840", 42.7070, -71.1631),
    city("Framingham", "01701", 42.2793, -71.4162),
    city("Haverhill", "01830", 42.7762, -71.0773),
    city("Waltham", "02451", 42.3765, -71.2356),
    city("Malden", "02148", 42.4251, -71.0662),
    city("Brookline", "02445", 42.3318, -71.1212),
    city("Plymouth", "02360", 41.9584, -70.6673),
    city("Medford", "02155", 42.4184, -71.1062),
    city("Taunton", "02780", 41.9001, -71.0898),
    city("Chicopee", "01013", 42.1487, -72.6079),
    city("Weymouth", "02188", 42.2181, -70.9410),
    city("Revere", "02151", 42.4084, -71.0120),
    city("Peabody", "01960", 42.5279, -70.9287),
    city("Methuen", "01844", 42.7262, -71.1909),
    city("Barnstable", "02630", 41.7003, -70.3002),
    city("Pittsfield", "01201", 42.4501, -73.2454),
    city("Attleboro", "02703", 41.9445, -71.2856),
    city("Salem", "01970", 42.5195, -70.8967),
    city("Westfield", "01085", 42.1251, -72.7495),
    city("Leominster", "01453", 42.5251, -71.7598),
    city("Fitchburg", "01420", 42.5834, -71.8023),
    city("Holyoke", "01040", 42.2043, -72.6162),
    city("Beverly", "01915", 42.5584, -70.8800),
    city("Marlborough", "01752", 42.3459, -71.5523),
    city("Woburn", "01801", 42.4793, -71.1523),
    city("Chelsea", "02150", 42.3918, -71.0328),
    city("Easthampton", "01027", 42.2668, -72.6690),
    city("Northampton", "01060", 42.3251, -72.6412),
    city("Amherst", "01002", 42.3732, -72.5199),
    city("Gloucester", "01930", 42.6159, -70.6620),
];

/// Suffixes of provider organization names (`"<CITY> <SUFFIX>"`), and
/// whether such an organization is a hospital.
pub(crate) static ORG_SUFFIXES: [(&str, bool); 8] = [
    ("MEDICAL CENTER", true),
    ("HOSPITAL", true),
    ("COMMUNITY HEALTH CENTER", false),
    ("FAMILY PRACTICE", false),
    ("PRIMARY CARE ASSOCIATES", false),
    ("URGENT CARE", false),
    ("HEALTH SERVICES, INC", true),
    ("PHYSICIANS GROUP", false),
];

/// OMB race categories (`urn:oid:2.16.840.1.113883.6.238`) with weights.
pub(crate) static RACES: [(&str, &str, u32); 5] = [
    ("2106-3", "White", 74),
    ("2054-5", "Black or African American", 9),
    ("2028-9", "Asian", 7),
    ("1002-5", "American Indian or Alaska Native", 1),
    ("2131-1", "Other", 9),
];

/// OMB ethnicity categories with weights.
pub(crate) static ETHNICITIES: [(&str, &str, u32); 2] =
    [("2186-5", "Not Hispanic or Latino", 88), ("2135-2", "Hispanic or Latino", 12)];

/// Preferred languages (BCP-47) with weights.
pub(crate) static LANGUAGES: [(&str, &str, u32); 6] = [
    ("en-US", "English", 90),
    ("es", "Spanish", 5),
    ("pt", "Portuguese", 2),
    ("zh", "Chinese", 1),
    ("vi", "Vietnamese", 1),
    ("fr-FR", "French", 1),
];

/// Insurers of patients under 65 with weights (65+ have Medicare).
pub(crate) static PAYERS: [(&str, u32); 7] = [
    ("Medicaid", 20),
    ("Blue Cross Blue Shield", 22),
    ("Aetna", 15),
    ("UnitedHealthcare", 15),
    ("Cigna Health", 10),
    ("Humana", 8),
    ("NO_INSURANCE", 10),
];
