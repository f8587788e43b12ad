//! docker-compose.yml and the Dockerfile, checked without a Docker engine: the services and
//! their health checks, that every environment variable set is one the CLI reads (with a
//! value it accepts), that each command exists, and that the image runs as non-root.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use clap::{CommandFactory, Parser};
use yaml_rust2::{Yaml, YamlLoader};

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compose() -> Yaml {
    let mut docs = YamlLoader::load_from_str(&repo_file("docker-compose.yml"))
        .expect("docker-compose.yml is valid YAML");
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

/// `${NAME:-default}` and `${NAME-default}` → default, `${NAME}` → "" (compose's
/// interpolation with nothing set).
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        let default = inner
            .split_once(":-")
            .or_else(|| inner.split_once('-'))
            .map_or("", |(_, d)| d);
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn str_of(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Real(r) => r.clone(),
        Yaml::Boolean(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A service's environment as (name, interpolated value), in map or `NAME=value` list form.
fn environment(service: &Yaml) -> Vec<(String, String)> {
    match &service["environment"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| (str_of(k), interpolate(&str_of(v))))
            .collect(),
        Yaml::Array(a) => a
            .iter()
            .map(|e| {
                let e = str_of(e);
                let (k, v) = e.split_once('=').unwrap_or((&e, ""));
                (k.to_owned(), interpolate(v))
            })
            .collect(),
        Yaml::BadValue => Vec::new(),
        other => panic!("environment: {other:?}"),
    }
}

fn env_value(service: &Yaml, name: &str) -> String {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("{name} not set"))
        .1
}

/// A service's `command` as arguments (list, or a string split on whitespace).
fn command_of(service: &Yaml) -> Vec<String> {
    match &service["command"] {
        Yaml::Array(a) => a.iter().map(str_of).collect(),
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => panic!("command: {other:?}"),
    }
}

fn healthcheck_test(service: &Yaml) -> Vec<String> {
    match &service["healthcheck"]["test"] {
        Yaml::Array(a) => a.iter().map(str_of).collect(),
        Yaml::String(s) => vec!["CMD-SHELL".into(), s.clone()],
        other => panic!("healthcheck.test missing: {other:?}"),
    }
}

fn pgrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgrelay"))
        .args(args)
        .env_clear()
        .output()
        .expect("run pgrelay")
}

/// The environment variables `pgrelay <command> --help` lists (`[env: NAME…]`).
fn env_names_in_help(command: &[String]) -> BTreeSet<String> {
    let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
    args.push("--help");
    let out = pgrelay(&args);
    assert!(out.status.success(), "pgrelay {args:?} failed");
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

/// Variables read by something other than the CLI parser.
const READ_ELSEWHERE: &[&str] = &[
    // tracing's EnvFilter (README: "Logging: RUST_LOG").
    "RUST_LOG",
];

/// Parse `pgrelay <command> --<flag of NAME> <value>` in-process: the value is one the CLI
/// accepts for that variable.
fn assert_value_accepted(command: &[String], name: &str, value: &str) {
    let mut root = pgrelay::config::Cli::command();
    root.build();
    let mut cmd = &root;
    for part in command {
        cmd = cmd
            .find_subcommand(part)
            .unwrap_or_else(|| panic!("no subcommand {part}"));
    }
    let arg = cmd
        .get_arguments()
        .chain(root.get_arguments())
        .find(|a| a.get_env().is_some_and(|e| e == name))
        .unwrap_or_else(|| panic!("no flag reads {name}"));
    let long = format!("--{}", arg.get_long().expect("long flag"));
    let mut argv = vec!["pgrelay".to_owned()];
    argv.extend(command.iter().cloned());
    argv.extend([long, value.to_owned()]);
    if let Err(e) = pgrelay::config::Cli::try_parse_from(&argv) {
        panic!("{name}={value} is rejected: {e}");
    }
}

#[test]
fn services_and_health_checks() {
    let doc = compose();
    let services: BTreeSet<String> = doc["services"]
        .as_hash()
        .expect("services")
        .keys()
        .map(str_of)
        .collect();
    assert_eq!(
        services,
        ["cleanup", "postgres", "redis", "relay", "relay-b"]
            .map(String::from)
            .into_iter()
            .collect()
    );

    let pg = &doc["services"]["postgres"];
    assert_eq!(str_of(&pg["image"]), "postgres:16", "the official image");
    assert!(!env_value(pg, "POSTGRES_PASSWORD").is_empty());
    let volume = pg["volumes"].as_vec().expect("postgres volumes")[0].clone();
    let (name, target) = str_of(&volume)
        .split_once(':')
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .expect("name:target");
    assert_eq!(target, "/var/lib/postgresql/data");
    assert!(
        !doc["volumes"][name.as_str()].is_badvalue(),
        "volume {name} is a named volume"
    );
    let test = healthcheck_test(pg);
    assert!(test.iter().any(|t| t.contains("pg_isready")), "{test:?}");

    let relay = &doc["services"]["relay"];
    let test = healthcheck_test(relay);
    assert!(test.iter().any(|t| t.contains("/ready")), "{test:?}");
    assert_eq!(
        str_of(&relay["depends_on"]["postgres"]["condition"]),
        "service_healthy"
    );
    let cleanup = &doc["services"]["cleanup"];
    assert_eq!(
        str_of(&cleanup["depends_on"]["relay"]["condition"]),
        "service_healthy",
        "cleanup needs the schema the relay creates"
    );
    assert_eq!(
        str_of(&relay["image"]),
        str_of(&cleanup["image"]),
        "one image"
    );
    for s in [relay, cleanup] {
        assert_eq!(str_of(&s["build"]), ".", "built from the Dockerfile");
        assert!(
            env_value(s, "DATABASE_URL").contains("@postgres:5432/"),
            "DATABASE_URL points at the postgres service"
        );
    }
    assert_eq!(command_of(relay), ["serve"]);
    assert_eq!(command_of(cleanup), ["cleanup"]);

    // Two relays acting as one through the official Redis image.
    let redis = &doc["services"]["redis"];
    assert_eq!(str_of(&redis["image"]), "redis:7", "the official image");
    assert!(healthcheck_test(redis).iter().any(|t| t.contains("ping")));
    let relay_b = &doc["services"]["relay-b"];
    assert_eq!(command_of(relay_b), ["serve"]);
    assert_eq!(
        str_of(&relay_b["image"]),
        str_of(&relay["image"]),
        "one image"
    );
    for s in [relay, relay_b] {
        assert_eq!(env_value(s, "PGRELAY_REDIS_URL"), "redis://redis:6379");
        assert_eq!(
            str_of(&s["depends_on"]["redis"]["condition"]),
            "service_healthy"
        );
        assert!(healthcheck_test(s).iter().any(|t| t.contains("/ready")));
    }
    for name in ["PGRELAY_CLEANUP_INTERVAL", "PGRELAY_STALE_AFTER"] {
        env_value(cleanup, name);
    }
}

#[test]
fn relay_ports_match_their_listen_addresses() {
    let doc = compose();
    let mut host_ports = BTreeSet::new();
    for name in ["relay", "relay-b"] {
        let relay = &doc["services"][name];
        let listen: std::net::SocketAddr =
            env_value(relay, "PGRELAY_LISTEN").parse().expect("addr");
        assert!(
            listen.ip().is_unspecified(),
            "{name} {listen}: reachable from outside the container"
        );
        let ports: Vec<String> = relay["ports"]
            .as_vec()
            .expect("ports")
            .iter()
            .map(str_of)
            .collect();
        let parsed: Vec<(String, u16)> = ports
            .iter()
            .map(|p| {
                let (host, container) = p.rsplit_once(':').unwrap_or(("", p));
                let container = container
                    .split('/')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("port {p}"));
                (host.to_owned(), container)
            })
            .collect();
        assert!(
            parsed.iter().any(|(_, c)| *c == listen.port()),
            "{name}: {ports:?} publishes {}",
            listen.port()
        );
        for (host, _) in parsed {
            assert!(
                host_ports.insert(host.clone()),
                "host port {host} used twice"
            );
        }
        let test = healthcheck_test(relay).join(" ");
        assert!(
            test.contains(&format!(":{}/ready", listen.port())),
            "{name}: the health check asks the relay's port: {test}"
        );
    }
}

/// Every variable the relay and cleanup services set is one their command reads, with a
/// value it accepts; every command exists.
#[test]
fn environment_names_are_read_by_the_cli() {
    let doc = compose();
    for service in ["relay", "relay-b", "cleanup"] {
        let s = &doc["services"][service];
        let command = command_of(s);
        let out = pgrelay(
            &command
                .iter()
                .map(String::as_str)
                .chain(["--help"])
                .collect::<Vec<_>>(),
        );
        assert!(out.status.success(), "`pgrelay {command:?}` does not exist");
        let read = env_names_in_help(&command);
        assert!(read.contains("DATABASE_URL"), "{read:?}");
        for (name, value) in environment(s) {
            if READ_ELSEWHERE.contains(&name.as_str()) {
                continue;
            }
            assert!(
                read.contains(&name),
                "{service} sets {name}, which `pgrelay {}` does not read (it reads {read:?})",
                command.join(" ")
            );
            assert_value_accepted(&command, &name, &value);
        }
    }
}

/// The Dockerfile's stages, each as (name, instructions joined across line continuations).
fn dockerfile_stages() -> Vec<(String, Vec<String>)> {
    let text = repo_file("Dockerfile").replace("\\\n", " ");
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.to_ascii_uppercase().starts_with("FROM ") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let name = match words.as_slice() {
                [.., as_, name] if as_.eq_ignore_ascii_case("as") => (*name).to_owned(),
                _ => stages.len().to_string(),
            };
            stages.push((name, vec![line.to_owned()]));
        } else if let Some((_, lines)) = stages.last_mut() {
            lines.push(line.to_owned());
        }
    }
    stages
}

#[test]
fn dockerfile_builds_with_rust_and_runs_as_non_root() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let (build_name, build) = &stages[0];
    assert!(
        build[0].contains("rust:"),
        "official Rust image: {}",
        build[0]
    );
    assert!(
        build
            .iter()
            .any(|l| l.contains("cargo build --release --locked --bin pgrelay")),
        "{build:?}"
    );
    // What the crate embeds at build time is in the build context.
    for dir in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "sql",
        "triggers",
        "static",
    ] {
        assert!(
            build
                .iter()
                .any(|l| l.starts_with("COPY ") && l.contains(dir)),
            "build stage does not copy {dir}"
        );
    }
    let ignored = repo_file(".dockerignore");
    for dir in ["src", "sql", "triggers", "static"] {
        assert!(
            !ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == dir),
            ".dockerignore excludes {dir}"
        );
    }

    let (_, runtime) = stages.last().expect("runtime stage");
    assert!(
        runtime[0].contains("debian:bookworm-slim") || runtime[0].contains("distroless/cc"),
        "small base: {}",
        runtime[0]
    );
    assert!(
        runtime.iter().any(|l| l.starts_with("COPY")
            && l.contains(&format!("--from={build_name}"))
            && l.contains("pgrelay")),
        "the binary comes from the build stage: {runtime:?}"
    );
    let user = runtime
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("USER in the runtime stage")
        .trim();
    let name = user.split(':').next().unwrap_or(user);
    assert!(name != "root" && name != "0", "runs as {user}");
    let entrypoint = runtime
        .iter()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    assert!(entrypoint.contains("\"pgrelay\""), "{entrypoint}");

    // The relay's health check program is in the image.
    let doc = compose();
    let test = healthcheck_test(&doc["services"]["relay"]);
    let program = &test[1];
    if program != "pgrelay" {
        assert!(
            runtime
                .iter()
                .any(|l| l.starts_with("RUN") && l.contains("install") && l.contains(program)),
            "{program} is not installed in the runtime stage"
        );
    }
}
