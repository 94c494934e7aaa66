//! Search parameters of the resource types outside R4 that the server stores
//! ([`crate::IG_TYPES`]), in the shape of the generated R4 table: SQL on FHIR v2's
//! `ViewDefinition` is searched by `name`, `resource`, `status`, `url` and `version`, as its
//! canonical-resource cousins in R4 (`ValueSet.name`, `ValueSet.url`, ...) are. The types of the
//! elements they read are in `crate::fhirpath::model`.

use crate::generated::search_params::{ParamType, SearchParamDef};

/// Sorted by (base, code), as the generated table.
#[rustfmt::skip]
pub(crate) static IG_SEARCH_PARAMS: &[SearchParamDef] = &[
    SearchParamDef {
        base: "ViewDefinition",
        code: "name",
        param_type: ParamType::String,
        expression: "ViewDefinition.name",
        targets: &[],
        unsupported: None,
    },
    SearchParamDef {
        base: "ViewDefinition",
        code: "resource",
        param_type: ParamType::Token,
        expression: "ViewDefinition.resource",
        targets: &[],
        unsupported: None,
    },
    SearchParamDef {
        base: "ViewDefinition",
        code: "status",
        param_type: ParamType::Token,
        expression: "ViewDefinition.status",
        targets: &[],
        unsupported: None,
    },
    SearchParamDef {
        base: "ViewDefinition",
        code: "url",
        param_type: ParamType::Uri,
        expression: "ViewDefinition.url",
        targets: &[],
        unsupported: None,
    },
    SearchParamDef {
        base: "ViewDefinition",
        code: "version",
        param_type: ParamType::Token,
        expression: "ViewDefinition.version",
        targets: &[],
        unsupported: None,
    },
];
