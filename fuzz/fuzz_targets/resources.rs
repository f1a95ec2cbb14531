//! The YAML resource parser and its validation. Properties:
//! - round trip: accepted resources written back as YAML parse to the same;
//! - validation never accepts what the proxy then refuses: a set of resources
//!   that passes validation, put into a snapshot as control would, compiles
//!   into the proxy's routing table.
#![no_main]

use coremesh_api::resource::{self, Resource};
use coremesh_api::snapshot::{ServiceEndpoints, Snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = resource::parse_documents(text) else {
        return;
    };
    let yaml = resource::to_yaml(&resources);
    match resource::parse_documents(&yaml) {
        Ok(again) => assert_eq!(again, resources, "round trip through:\n{yaml}"),
        Err(e) => panic!("written back, it does not parse: {e}\n{yaml}"),
    }

    let (mut services, mut routes, mut policies, mut resiliences) =
        (vec![], vec![], vec![], vec![]);
    for r in resources {
        match r {
            Resource::Service(s) => services.push(s),
            Resource::Route(r) => routes.push(r),
            Resource::AccessPolicy(p) => policies.push(p),
            Resource::Resilience(r) => resiliences.push(r),
            Resource::MeshConfig(_) => {}
        }
    }
    if resource::validate_set(&services, &routes, &policies, &resiliences).is_err() {
        return;
    }
    let snap = Snapshot {
        version: 1,
        config_version: 1,
        services: services
            .iter()
            .map(|s| ServiceEndpoints {
                name: s.name.clone(),
                port: s.port,
                addresses: s.addresses.clone(),
                protocol: s.protocol,
                endpoints: vec![],
            })
            .collect(),
        routes,
        resilience: resiliences,
        ..Snapshot::default()
    };
    if let Err(e) = coremesh_policy::routing::RoutingTable::compile(&snap) {
        panic!("validated resources the proxy refuses: {e}\n{yaml}");
    }
});
