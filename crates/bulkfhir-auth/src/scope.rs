//! SMART system scopes (App Launch 2.2, scopes-and-launch-context): what a backend client may do.
//!
//! - v1: `system/Patient.read` (read and search), `system/*.write` (create, update, delete),
//!   `system/Observation.*` (everything).
//! - v2: `system/Patient.rs`, `system/*.cruds`: the letters, in that order, for create, read,
//!   update, delete, search; a granular scope adds a search query that narrows what the scope
//!   covers: `system/Observation.rs?category=laboratory`.
//! - [`ADMIN_SCOPE`] (`bulkfhir/admin`) lets a client see and manage every export job, not only
//!   its own.
//! - [`TENANTS_SCOPE`] (`bulkfhir/tenants`), held by a client of the default tenant, lets its
//!   tokens reach every tenant (`/fhir/t/{tenant}`), within its other scopes: the operator's.
//!
//! Scopes of other contexts (`patient/`, `user/`), `openid` and the like are not for backend
//! services and are ignored, as SMART lets a server ignore what it does not grant.

use std::fmt;

use bulkfhir_model::{Instant, ResourceType};

/// The scope that lets a client see every export job, whoever started it.
pub const ADMIN_SCOPE: &str = "bulkfhir/admin";

/// The scope that lets a client of the default tenant use its tokens at every tenant.
pub const TENANTS_SCOPE: &str = "bulkfhir/tenants";

/// One interaction a scope can allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create a resource.
    Create,
    /// Read a resource by id (and its versions and history).
    Read,
    /// Update a resource.
    Update,
    /// Delete a resource.
    Delete,
    /// Search, list, and export.
    Search,
}

impl Action {
    const ALL: [Action; 5] =
        [Action::Create, Action::Read, Action::Update, Action::Delete, Action::Search];

    fn bit(self) -> u8 {
        match self {
            Action::Create => 1,
            Action::Read => 2,
            Action::Update => 4,
            Action::Delete => 8,
            Action::Search => 16,
        }
    }

    fn letter(self) -> char {
        match self {
            Action::Create => 'c',
            Action::Read => 'r',
            Action::Update => 'u',
            Action::Delete => 'd',
            Action::Search => 's',
        }
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    /// v1 `read`: read and search.
    const READ: Actions = Actions(2 | 16);
    /// v1 `write`: create, update, delete.
    const WRITE: Actions = Actions(1 | 4 | 8);
    /// v1 `*`, v2 `cruds`.
    const ALL: Actions = Actions(0b11111);

    /// Whether `action` is in the set.
    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// v2 letters (`cruds`, in that order) or a v1 word (`read`, `write`, `*`).
    fn parse(text: &str) -> Option<Actions> {
        match text {
            "read" => return Some(Actions::READ),
            "write" => return Some(Actions::WRITE),
            "*" => return Some(Actions::ALL),
            "" => return None,
            _ => {}
        }
        let mut set = 0u8;
        let mut next = 0;
        for c in text.chars() {
            // Letters must come in the order c, r, u, d, s, each once.
            let idx = Action::ALL.iter().position(|a| a.letter() == c)?;
            if idx < next {
                return None;
            }
            next = idx + 1;
            set |= Action::ALL[idx].bit();
        }
        Some(Actions(set))
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for action in Action::ALL.into_iter().filter(|a| self.contains(*a)) {
            write!(f, "{}", action.letter())?;
        }
        Ok(())
    }
}

/// One `system/` scope: a resource type (or all), actions, and maybe a narrowing query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeRule {
    /// The type, or `None` for `*`.
    pub resource_type: Option<ResourceType>,
    /// What may be done.
    pub actions: Actions,
    /// A granular v2 scope's search query (`category=laboratory`), which every resource the
    /// rule covers must match.
    pub query: Option<String>,
    /// Written in SMART v1 syntax (`read`, `write`, `*`): a granted scope is written back the
    /// way it was asked for when its actions allow it, so a v1 client reads its own words.
    pub v1: bool,
}

impl ScopeRule {
    fn covers(&self, resource_type: ResourceType) -> bool {
        self.resource_type.is_none_or(|t| t == resource_type)
    }
}

impl fmt::Display for ScopeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let type_name = self.resource_type.map_or("*", |t| t.as_str());
        let v1_word = match self.actions {
            _ if !self.v1 => None,
            a if a == Actions::READ => Some("read"),
            a if a == Actions::WRITE => Some("write"),
            a if a == Actions::ALL => Some("*"),
            _ => None,
        };
        match v1_word {
            Some(word) => write!(f, "system/{type_name}.{word}")?,
            None => write!(f, "system/{type_name}.{}", self.actions)?,
        }
        if let Some(query) = &self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// Why a scope string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope '{scope}': {reason}")]
pub struct ScopeError {
    /// The scope as written.
    pub scope: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What a client may do: the rules of its `system/` scopes, and whether it is an administrator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    rules: Vec<ScopeRule>,
    admin: bool,
    tenants: bool,
}

/// How much of a resource type a grant lets a client read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAccess {
    /// None of it.
    Denied,
    /// All of it.
    All,
    /// The resources that match one of these search queries (granular scopes), OR-ed.
    Matching(Vec<String>),
}

impl Grant {
    /// Parses a space-separated scope list. `system/` scopes must be well formed (a malformed
    /// one is an error); scopes of other contexts are ignored.
    pub fn parse(text: &str) -> Result<Grant, ScopeError> {
        let mut grant = Grant::default();
        for scope in text.split_ascii_whitespace() {
            if scope == ADMIN_SCOPE {
                grant.admin = true;
                continue;
            }
            if scope == TENANTS_SCOPE {
                grant.tenants = true;
                continue;
            }
            let Some(rest) = scope.strip_prefix("system/") else { continue };
            let error =
                |reason: &str| ScopeError { scope: scope.to_owned(), reason: reason.to_owned() };
            let (resource, query) = match rest.split_once('?') {
                Some((resource, query)) if !query.is_empty() => (resource, Some(query.to_owned())),
                Some(_) => return Err(error("the query after '?' is empty")),
                None => (rest, None),
            };
            let (type_name, actions_text) = resource
                .rsplit_once('.')
                .ok_or_else(|| error("expected system/Type.permissions"))?;
            let actions = Actions::parse(actions_text).ok_or_else(|| {
                error("permissions are v1 read, write or *, or v2 letters from cruds in that order")
            })?;
            let resource_type = match type_name {
                "*" => None,
                name => {
                    Some(ResourceType::parse(name).map_err(|_| error("unknown resource type"))?)
                }
            };
            // A query must be one the server can evaluate, on a named type: a scope whose query
            // could not narrow anything would widen access.
            if let Some(query) = &query {
                let Some(resource_type) = resource_type else {
                    return Err(error("a query needs a resource type, not *"));
                };
                let text = format!("{resource_type}?{query}");
                bulkfhir_model::search::SearchQuery::parse_type_filter(&text, Instant::now())
                    .map_err(|e| error(&format!("its query cannot be evaluated: {e}")))?;
            }
            let v1 = matches!(actions_text, "read" | "write" | "*");
            let rule = ScopeRule { resource_type, actions, query, v1 };
            if !grant.rules.contains(&rule) {
                grant.rules.push(rule);
            }
        }
        Ok(grant)
    }

    /// Whether the grant holds nothing at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && !self.admin && !self.tenants
    }

    /// Whether the client's tokens reach every tenant (when it belongs to the default one).
    pub fn crosses_tenants(&self) -> bool {
        self.tenants
    }

    /// Whether the client may see every export job.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// The part of `requested` that `registered` allows: each requested rule cut down to what a
    /// registered rule covers (the narrower type, the common actions, both queries).
    pub fn intersect(requested: &Grant, registered: &Grant) -> Grant {
        let mut out = Grant {
            rules: Vec::new(),
            admin: requested.admin && registered.admin,
            tenants: requested.tenants && registered.tenants,
        };
        for want in &requested.rules {
            for have in &registered.rules {
                let resource_type = match (want.resource_type, have.resource_type) {
                    (Some(a), Some(b)) if a == b => Some(a),
                    (Some(a), None) | (None, Some(a)) => Some(a),
                    (None, None) => None,
                    _ => continue,
                };
                let actions = want.actions.intersect(have.actions);
                if actions.is_empty() {
                    continue;
                }
                let query = match (&want.query, &have.query) {
                    (None, None) => None,
                    (Some(q), None) | (None, Some(q)) => Some(q.clone()),
                    (Some(a), Some(b)) if a == b => Some(a.clone()),
                    (Some(a), Some(b)) => Some(format!("{a}&{b}")),
                };
                let rule = ScopeRule { resource_type, actions, query, v1: want.v1 };
                if !out.rules.contains(&rule) {
                    out.rules.push(rule);
                }
            }
        }
        out
    }

    /// Whether `action` on `resource_type` is allowed at all (perhaps only for resources that
    /// match a granular query: see [`Grant::read_access`]).
    pub fn permits(&self, resource_type: ResourceType, action: Action) -> bool {
        self.rules.iter().any(|r| r.covers(resource_type) && r.actions.contains(action))
    }

    /// Whether `action` is allowed on every resource of `resource_type` (no granular query).
    pub fn permits_all(&self, resource_type: ResourceType, action: Action) -> bool {
        self.rules
            .iter()
            .any(|r| r.covers(resource_type) && r.actions.contains(action) && r.query.is_none())
    }

    /// What of `resource_type` the client may read with `action` (`Read` or `Search`).
    pub fn read_access(&self, resource_type: ResourceType, action: Action) -> ReadAccess {
        let mut queries = Vec::new();
        for rule in
            self.rules.iter().filter(|r| r.covers(resource_type) && r.actions.contains(action))
        {
            match &rule.query {
                None => return ReadAccess::All,
                Some(query) => {
                    if !queries.contains(query) {
                        queries.push(query.clone());
                    }
                }
            }
        }
        if queries.is_empty() { ReadAccess::Denied } else { ReadAccess::Matching(queries) }
    }

    /// The grant as a space-separated scope list (what a token response's `scope` says).
    pub fn to_scope_string(&self) -> String {
        let mut scopes: Vec<String> = self.rules.iter().map(ScopeRule::to_string).collect();
        if self.admin {
            scopes.push(ADMIN_SCOPE.to_owned());
        }
        if self.tenants {
            scopes.push(TENANTS_SCOPE.to_owned());
        }
        scopes.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> ResourceType {
        ResourceType::parse(name).unwrap()
    }

    #[test]
    fn v1_and_v2_scopes_parse_to_the_same_permissions() {
        let v1 = Grant::parse("system/Patient.read system/Observation.write").unwrap();
        let v2 = Grant::parse("system/Patient.rs system/Observation.cud").unwrap();
        for grant in [&v1, &v2] {
            assert!(grant.permits_all(t("Patient"), Action::Read));
            assert!(grant.permits_all(t("Patient"), Action::Search));
            assert!(!grant.permits(t("Patient"), Action::Update));
            assert!(grant.permits(t("Observation"), Action::Delete));
            assert!(!grant.permits(t("Observation"), Action::Read));
            assert!(!grant.permits(t("Condition"), Action::Read));
        }
        let all = Grant::parse("system/*.* openid fhirUser patient/Patient.read").unwrap();
        assert!(Action::ALL.iter().all(|a| all.permits_all(t("Condition"), *a)));
        assert_eq!(all.to_scope_string(), "system/*.*", "v1 scopes are written back in v1");
        assert!(Grant::parse("launch openid").unwrap().is_empty());
    }

    #[test]
    fn malformed_system_scopes_are_refused() {
        for bad in [
            "system/Patient",
            "system/Patient.rw",
            "system/Patient.sr",
            "system/Patient.rr",
            "system/Patient.",
            "system/Nope.rs",
            "system/Observation.rs?",
            "system/Observation.rs?nope=1",
            "system/*.rs?category=laboratory",
        ] {
            let error = Grant::parse(bad).unwrap_err();
            assert_eq!(error.scope, bad);
        }
    }

    #[test]
    fn granular_scopes_narrow_reads_to_their_query() {
        let grant =
            Grant::parse("system/Observation.rs?category=laboratory system/Patient.rs").unwrap();
        assert!(grant.permits(t("Observation"), Action::Search));
        assert!(!grant.permits_all(t("Observation"), Action::Search));
        assert_eq!(
            grant.read_access(t("Observation"), Action::Search),
            ReadAccess::Matching(vec!["category=laboratory".to_owned()])
        );
        assert_eq!(grant.read_access(t("Patient"), Action::Read), ReadAccess::All);
        assert_eq!(grant.read_access(t("Condition"), Action::Read), ReadAccess::Denied);
        // A broader rule for the same type lifts the narrowing.
        let wider = Grant::parse("system/Observation.rs?category=laboratory system/*.rs").unwrap();
        assert_eq!(wider.read_access(t("Observation"), Action::Search), ReadAccess::All);
    }

    #[test]
    fn the_granted_scope_is_the_intersection() {
        let registered =
            Grant::parse("system/*.rs system/Observation.rs?category=laboratory bulkfhir/admin")
                .unwrap();
        let asked = Grant::parse("system/Patient.cruds system/Observation.read").unwrap();
        let granted = Grant::intersect(&asked, &registered);
        assert_eq!(
            granted.to_scope_string(),
            "system/Patient.rs system/Observation.read system/Observation.read?category=laboratory"
        );
        // A v1 request is answered in v1 words where the granted actions have one.
        let v1 = Grant::intersect(
            &Grant::parse("system/*.* system/Patient.read").unwrap(),
            &Grant::parse("system/*.rs").unwrap(),
        );
        assert_eq!(v1.to_scope_string(), "system/*.read system/Patient.read");
        assert_eq!(Grant::parse(&v1.to_scope_string()).unwrap(), v1, "it reads back the same");
        assert!(!granted.is_admin(), "admin only when asked for");
        let narrowed = Grant::intersect(
            &Grant::parse("system/Observation.rs?status=final").unwrap(),
            &Grant::parse("system/Observation.rs?category=laboratory").unwrap(),
        );
        assert_eq!(
            narrowed.to_scope_string(),
            "system/Observation.rs?status=final&category=laboratory"
        );
        let nothing = Grant::intersect(
            &Grant::parse("system/Patient.rs").unwrap(),
            &Grant::parse("system/Observation.rs").unwrap(),
        );
        assert!(nothing.is_empty());
    }
}
