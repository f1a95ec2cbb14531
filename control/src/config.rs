//! The desired state as one value ([`Config`]) and the pure functions that
//! turn an operator's request into a new one: [`plan_apply`],
//! [`plan_delete`], [`plan_rollback`]. They validate and diff, and touch no
//! store: the hub commits what they return.

use std::collections::BTreeMap;

use coremesh_api::resource::{
    self, Access, AccessPolicy, MeshConfig, Resilience, Resource, ResourceError, Route, Service,
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Every resource, each list sorted by name. This is what a store version
/// holds; versions written before a kind existed read with it empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_policies: Vec<AccessPolicy>,
    /// Sorted by [`Resilience::name`] (the service's, unless named).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resiliences: Vec<Resilience>,
    /// The one MeshConfig, if applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshConfig>,
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The AccessPolicy of `service`, if it has one.
    pub fn access_policy(&self, service: &str) -> Option<&AccessPolicy> {
        self.access_policies.iter().find(|p| p.service == service)
    }

    /// The Resilience of `service`, if it has one.
    pub fn resilience(&self, service: &str) -> Option<&Resilience> {
        self.resiliences.iter().find(|r| r.service == service)
    }

    /// The MeshConfig's `outboundPolicy`, or its default (allow: pass
    /// through).
    pub fn outbound_policy(&self) -> Access {
        self.mesh
            .as_ref()
            .map(|m| m.outbound_policy)
            .unwrap_or_default()
    }

    /// The MeshConfig's `defaultAccess`, or its default (allow).
    pub fn default_access(&self) -> Access {
        self.mesh
            .as_ref()
            .map(|m| m.default_access)
            .unwrap_or_default()
    }

    /// Every resource, services first, as `meshctl get` lists them.
    pub fn resources(&self) -> Vec<Resource> {
        self.services
            .iter()
            .cloned()
            .map(Resource::Service)
            .chain(self.routes.iter().cloned().map(Resource::Route))
            .chain(
                self.access_policies
                    .iter()
                    .cloned()
                    .map(Resource::AccessPolicy),
            )
            .chain(self.resiliences.iter().cloned().map(Resource::Resilience))
            .chain(self.mesh.iter().cloned().map(Resource::MeshConfig))
            .collect()
    }

    fn by_kind_name(&self) -> BTreeMap<String, Resource> {
        self.resources()
            .into_iter()
            .map(|r| (r.kind_name(), r))
            .collect()
    }

    fn from_resources(all: impl IntoIterator<Item = Resource>) -> Config {
        let mut c = Config::default();
        for r in all {
            match r {
                Resource::Service(s) => c.services.push(s),
                Resource::Route(r) => c.routes.push(r),
                Resource::AccessPolicy(p) => c.access_policies.push(p),
                Resource::Resilience(r) => c.resiliences.push(r),
                // Validation admits one name only, so there is one.
                Resource::MeshConfig(m) => c.mesh = Some(m),
            }
        }
        c.services.sort_by(|a, b| a.name.cmp(&b.name));
        c.routes.sort_by(|a, b| a.name.cmp(&b.name));
        c.access_policies.sort_by(|a, b| a.name.cmp(&b.name));
        c.resiliences.sort_by(|a, b| a.name().cmp(b.name()));
        c
    }
}

/// A change to commit: the new config, what changed (`kind/name`, sorted)
/// and the history summary. `changed` empty means nothing to commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub config: Config,
    pub changed: Vec<String>,
    pub summary: String,
}

/// `kind/name` of every resource that differs between `a` and `b`.
/// SHA-256 (hex) of a config's JSON: recorded with each committed version
/// and carried in snapshots, so a proxy can tell two different configs that
/// claim the same version number (a reinitialized store counts from 1
/// again) apart. The JSON has one form per value (structs and BTreeMaps
/// only), and the digest is stored at commit, so a later control with more
/// fields keeps the recorded one.
pub fn digest(config: &Config) -> String {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(config).unwrap_or_default();
    Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn diff(a: &Config, b: &Config) -> Vec<String> {
    let (a, b) = (a.by_kind_name(), b.by_kind_name());
    let mut changed: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

fn check_set(c: &Config) -> Result<(), Error> {
    resource::validate_set(&c.services, &c.routes, &c.access_policies, &c.resiliences)
        .map_err(|e| Error::rejected(e.to_string()))
}

/// Creates or replaces each of `docs` in `current`. Every document is
/// validated on its own, then the merged config as a set; the first error
/// names the document, the field and the reason.
pub fn plan_apply(current: &Config, docs: Vec<Resource>) -> Result<Plan, Error> {
    let mut merged = current.by_kind_name();
    let mut seen = BTreeMap::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let n = i + 1;
        if let Err(mut e) = resource::validate(&doc) {
            e.document.get_or_insert(n);
            return Err(Error::rejected(e.to_string()));
        }
        let key = doc.kind_name();
        if let Some(first) = seen.insert(key.clone(), n) {
            let mut e = ResourceError::new(
                key,
                "name",
                format!("defined twice in this apply (also document {first})"),
            );
            e.document = Some(n);
            return Err(Error::rejected(e.to_string()));
        }
        merged.insert(key, doc);
    }
    let config = Config::from_resources(merged.into_values());
    check_set(&config)?;
    let changed = diff(current, &config);
    let summary = format!("apply {}", changed.join(", "));
    Ok(Plan {
        config,
        changed,
        summary,
    })
}

/// The kinds `meshctl delete` takes.
pub const DELETE_KINDS: &str = "service, route, accesspolicy, resilience or meshconfig";

/// The singular lowercase kind of a name `meshctl` or the API accepts:
/// `service`/`services`/`svc`, `route`/`routes`,
/// `accesspolicy`/`accesspolicies`, `resilience`/`resiliences`,
/// `meshconfig`/`meshconfigs`, any case.
pub fn kind_of(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "service" | "services" | "svc" => "service",
        "route" | "routes" => "route",
        "accesspolicy" | "accesspolicies" => "accesspolicy",
        "resilience" | "resiliences" => "resilience",
        "meshconfig" | "meshconfigs" => "meshconfig",
        _ => return None,
    })
}

/// Removes `kind/name` (see [`kind_of`]). Refused when the rest would be
/// inconsistent (a route, access policy or resilience left pointing at a
/// deleted service, or a resilience mirroring to it).
pub fn plan_delete(current: &Config, kind: &str, name: &str) -> Result<Plan, Error> {
    let Some(kind) = kind_of(kind) else {
        return Err(Error::rejected(format!(
            "unknown kind {:?}: use {DELETE_KINDS}",
            kind.to_ascii_lowercase()
        )));
    };
    let key = format!("{kind}/{name}");
    let mut all = current.by_kind_name();
    if all.remove(&key).is_none() {
        return Err(Error::not_found(format!("{key} does not exist")));
    }
    let config = Config::from_resources(all.into_values());
    check_set(&config).map_err(|e| Error::rejected(format!("cannot delete {key}: {e}")))?;
    Ok(Plan {
        config,
        changed: vec![key.clone()],
        summary: format!("delete {key}"),
    })
}

/// Restores `target` (the config of version `to`) as a new version.
pub fn plan_rollback(current: &Config, target: Config, to: u64) -> Plan {
    let changed = diff(current, &target);
    Plan {
        config: target,
        changed,
        summary: format!("rollback to {to}"),
    }
}

#[cfg(test)]
mod tests;
