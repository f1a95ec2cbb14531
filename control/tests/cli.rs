//! meshctl against the real coremesh-control: apply, get, validation
//! errors, rollback, tokens, and a kill -9 that loses nothing.

mod common;

use common::{temp_dir, Control, EXAMPLE};

#[test]
fn apply_get_reject_rollback_tokens_and_survive_kill_9() {
    let dir = temp_dir("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let mut control = Control::start(&dir, &[]);
    let example = dir.join("mesh.yaml");
    std::fs::write(&example, EXAMPLE).unwrap();

    // Apply creates version 1; the same apply again changes nothing.
    let out = control.ok(&["apply", "-f", example.to_str().unwrap()]);
    assert!(out.contains("version 1"), "{out}");
    let out = control.ok(&["apply", "-f", example.to_str().unwrap()]);
    assert!(out.contains("unchanged"), "{out}");

    let routes: serde_json::Value =
        serde_json::from_str(&control.ok(&["get", "routes", "-o", "json"])).unwrap();
    assert_eq!(routes[0]["kind"], "Route");
    assert_eq!(routes[0]["name"], "api-canary");
    assert_eq!(routes[0]["service"], "api");
    assert_eq!(routes[0]["rules"][1]["backends"][0]["weight"], 90);
    assert_eq!(routes[0]["rules"][1]["timeout"], "2s");
    let yaml = control.ok(&["get", "services", "-o", "yaml"]);
    assert!(yaml.contains("name: api"), "{yaml}");

    // An invalid document: exit 1, the error names it, nothing changes.
    let bad = "kind: Service\nname: web\n---\nkind: Route\nname: r\nservice: web\nrules:\n  - backends: [ { weight: 999999999 } ]\n";
    let out = control.meshctl_stdin(&["apply", "-f", "-"], Some(bad));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("route/r") && err.contains("weight"), "{err}");
    let services: serde_json::Value =
        serde_json::from_str(&control.ok(&["get", "services", "-o", "json"])).unwrap();
    assert_eq!(services.as_array().unwrap().len(), 1, "web was not applied");
    assert_eq!(
        control.ok(&["history"]).lines().count(),
        2,
        "header + version 1"
    );

    // Delete, then roll back to 1: the route is back, as version 3.
    control.ok(&["delete", "route", "api-canary"]);
    let routes: serde_json::Value =
        serde_json::from_str(&control.ok(&["get", "routes", "-o", "json"])).unwrap();
    assert!(routes.as_array().unwrap().is_empty());
    let out = control.ok(&["rollback", "--to", "1"]);
    assert!(out.contains("version 3"), "{out}");
    let routes: serde_json::Value =
        serde_json::from_str(&control.ok(&["get", "routes", "-o", "json"])).unwrap();
    assert_eq!(routes[0]["name"], "api-canary");
    let out = control.meshctl(&["rollback", "--to", "42"]);
    assert_eq!(out.status.code(), Some(1));
    let out = control.meshctl(&["delete", "route", "nope"]);
    assert_eq!(out.status.code(), Some(1));

    // Tokens: create prints the token alone; list; revoke.
    let token = control.ok(&[
        "token",
        "create",
        "--service",
        "api",
        "--ttl",
        "10m",
        "--uses",
        "2",
    ]);
    let token = token.trim();
    assert!(
        token.starts_with("cmjt1.") && !token.contains('\n'),
        "{token}"
    );
    let id = token.split('.').nth(1).unwrap().to_string();
    // No Service defines db: refused, unless asked for explicitly.
    let out = control.meshctl(&["token", "create", "--service", "db"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no Service resource defines \"db\"") && err.contains("--allow-undefined"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no token may be printed");
    let second = control.ok(&["token", "create", "--service", "db", "--allow-undefined"]);
    let second_id = second.trim().split('.').nth(1).unwrap().to_string();
    let list = control.ok(&["token", "list"]);
    assert!(list.contains(&id) && list.contains(&second_id), "{list}");
    control.ok(&["token", "revoke", &second_id]);
    let out = control.meshctl(&["token", "revoke", "nosuchtoken"]);
    assert_eq!(out.status.code(), Some(1));

    // kill -9 and restart: versions and tokens are all there.
    control.kill();
    let control = Control::start(&dir, &[]);
    let history = control.ok(&["history"]);
    assert!(history.contains("rollback to 1"), "{history}");
    assert_eq!(history.lines().count(), 4, "{history}");
    let tokens: serde_json::Value = serde_json::from_str(
        &String::from_utf8(control.meshctl(&["get", "services", "-o", "json"]).stdout).unwrap(),
    )
    .unwrap();
    assert_eq!(tokens[0]["name"], "api");
    let list = control.ok(&["token", "list"]);
    let revoked_line = list.lines().find(|l| l.contains(&second_id)).unwrap();
    assert!(revoked_line.contains("revoked"), "{list}");
    let active_line = list.lines().find(|l| l.contains(&id)).unwrap();
    assert!(
        active_line.contains("active") && active_line.contains(" 2 "),
        "{list}"
    );

    // Wrong credential: exit 1. Nobody listening: exit 2.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "--api",
            &format!("https://{}", control.api),
            "--credential",
            "00ff",
            "--ca",
        ])
        .arg(control.data_dir().join("api-ca.pem"))
        .arg("history")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "--api",
            "https://127.0.0.1:1",
            "--credential",
            "00ff",
            "--ca",
        ])
        .arg(control.data_dir().join("api-ca.pem"))
        .arg("history")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach control"));
    drop(control);
    let _ = std::fs::remove_dir_all(&dir);
}
