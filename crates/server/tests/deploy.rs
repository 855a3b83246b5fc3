//! The deployment files in `deploy/` checked with the tools their formats come with, since no
//! container engine or cluster runs here: `promtool` on the Prometheus config and alert rules
//! (and the rules' unit tests), PyPI's `kubernetes-validate` (the Kubernetes OpenAPI schemas)
//! on the manifests, Debian's `docker-compose config` (the Compose schema) on the compose file,
//! `systemd-analyze verify` on the unit; the Dockerfile's shape and the binary's shared
//! libraries against its runtime image; the Chorus configs they ship parsed by the server's own
//! config loader. Each checker is also shown a broken file, to prove it rejects one.
//!
//! `./scripts/test` installs every tool; a missing one fails the test, naming how to get it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("chorus-deploy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An outside program, or a loud failure saying how to install it.
fn tool(name: &str, candidates: &[PathBuf], install: &str) -> PathBuf {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    candidates
        .iter()
        .chain(on_path.iter())
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "DEPLOY TEST CANNOT RUN: `{name}` is missing. {install}, or run ./scripts/test, \
                 which installs everything the suite needs."
            )
        })
}

fn promtool() -> PathBuf {
    tool(
        "promtool",
        &[PathBuf::from("/usr/bin/promtool")],
        "Install Debian's prometheus (apt-get install prometheus)",
    )
}

fn kubernetes_validate() -> PathBuf {
    let tools = std::env::var_os("CHORUS_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/tools"));
    tool(
        "kubernetes-validate",
        &[tools.join("venv/bin/kubernetes-validate")],
        "Install PyPI's kubernetes-validate (pip install kubernetes-validate)",
    )
}

fn docker_compose() -> PathBuf {
    tool(
        "docker-compose",
        &[PathBuf::from("/usr/bin/docker-compose")],
        "Install Debian's docker-compose (apt-get install docker-compose)",
    )
}

fn systemd_analyze() -> PathBuf {
    tool(
        "systemd-analyze",
        &[PathBuf::from("/usr/bin/systemd-analyze")],
        "Install Debian's systemd (apt-get install systemd)",
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn promtool_accepts_the_prometheus_config_and_its_rules() {
    let promtool = promtool();
    // `check config` also checks the rule files the config names.
    let out = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(deploy("prometheus/prometheus.yml")));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("alerts.yml") && text(&out).contains("SUCCESS"),
        "the rules were not checked: {}",
        text(&out)
    );

    // A rule with a broken expression is refused.
    let scratch = Scratch::new("promtool");
    let broken = read(&deploy("prometheus/alerts.yml"))
        .replace("up{job=\"chorus\"} == 0", "up{job=\"chorus\" == 0");
    std::fs::write(scratch.0.join("alerts.yml"), broken).expect("write");
    let out = run(Command::new(&promtool)
        .args(["check", "rules"])
        .arg(scratch.0.join("alerts.yml")));
    assert!(
        !out.status.success(),
        "a broken rule passed: {}",
        text(&out)
    );
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    let out = run(Command::new(promtool())
        .args(["test", "rules"])
        .arg(deploy("prometheus/alerts_test.yml")));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));

    // Every alert is tested, firing and silent: its name is in at least two test cases.
    let rules = read(&deploy("prometheus/alerts.yml"));
    let tests = read(&deploy("prometheus/alerts_test.yml"));
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for alert in alerts {
        let cases = tests.matches(&format!("alertname: {alert}\n")).count();
        assert!(
            cases >= 2,
            "{alert} has {cases} test case(s) in alerts_test.yml"
        );
    }
}

/// The manifests, each on its own, so a failure names the file.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_kubernetes_manifests_pass_the_kubernetes_schemas() {
    let kv = kubernetes_validate();
    let files = manifests();
    let kinds: String = files.iter().map(|f| read(f)).collect();
    for kind in [
        "kind: DaemonSet",
        "kind: PodDisruptionBudget",
        "kind: ConfigMap",
        "kind: Secret",
        "kind: Service",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }
    // The oldest Kubernetes the files are for (preStop `sleep` is on by default from 1.30) and
    // the newest the tool knows.
    for file in &files {
        for version in [&["-k", "1.30.0"][..], &[]] {
            let out = run(Command::new(&kv).arg("--strict").args(version).arg(file));
            assert!(out.status.success(), "{}: {}", file.display(), text(&out));
        }
    }

    // A misspelt field is refused.
    let scratch = Scratch::new("kubernetes");
    let broken = scratch.0.join("daemonset.yaml");
    std::fs::write(
        &broken,
        read(&deploy("kubernetes/daemonset.yaml")).replace("readinessProbe:", "readinesProbe:"),
    )
    .expect("write");
    let out = run(Command::new(&kv).arg("--strict").arg(&broken));
    assert!(
        !out.status.success(),
        "a misspelt field passed: {}",
        text(&out)
    );
}

/// The probes, drain and security settings the daemonset must keep.
#[test]
fn the_daemonset_probes_drains_and_runs_unprivileged() {
    let ds = read(&deploy("kubernetes/daemonset.yaml"));
    for needle in [
        "hostNetwork: true",
        "path: /readyz",
        "path: /healthz",
        "preStop:",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "configMap:",
        "secretName: chorus-secrets",
        "name: CHORUS_EXTERNAL_IPS",
    ] {
        assert!(ds.contains(needle), "daemonset.yaml lacks {needle:?}");
    }
    // The grace period covers preStop plus the configured drain.
    let number = |text: &str, key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} number"))
    };
    let grace = number(&ds, "terminationGracePeriodSeconds:");
    let pre_stop = number(&ds, "seconds:");
    let drain = number(&read(&deploy("kubernetes/configmap.yaml")), "drain_secs =");
    assert!(grace > pre_stop + drain, "{grace} <= {pre_stop} + {drain}");
}

#[test]
fn the_compose_file_passes_the_compose_schema() {
    let compose = docker_compose();
    let out = run(Command::new(&compose)
        .arg("--file")
        .arg(deploy("compose.yaml"))
        .arg("config"));
    assert!(out.status.success(), "{}", text(&out));
    let resolved = String::from_utf8_lossy(&out.stdout);
    for service in ["chorus:", "prometheus:", "grafana:", "coturn:"] {
        assert!(resolved.contains(service), "no {service} in\n{resolved}");
    }
    assert!(
        resolved.contains("7882"),
        "media port not published\n{resolved}"
    );

    // A misspelt key is refused. The copy sits in deploy/ so relative paths still resolve.
    let broken = deploy(&format!("compose-broken-{}.yaml", std::process::id()));
    std::fs::write(
        &broken,
        read(&deploy("compose.yaml")).replace(
            "    restart: unless-stopped\n    command: [\"serve\"",
            "    restrat: unless-stopped\n    command: [\"serve\"",
        ),
    )
    .expect("write");
    let out = run(Command::new(&compose)
        .arg("--file")
        .arg(&broken)
        .args(["config", "--quiet"]));
    let _ = std::fs::remove_file(&broken);
    assert!(
        !out.status.success(),
        "a misspelt key passed: {}",
        text(&out)
    );
    assert!(text(&out).contains("restrat"), "{}", text(&out));
}

#[test]
fn the_systemd_unit_verifies_and_is_sandboxed() {
    let analyze = systemd_analyze();
    let unit = read(&deploy("systemd/chorus.service"));
    for needle in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "LoadCredential=chorus.toml:",
    ] {
        assert!(unit.contains(needle), "chorus.service lacks {needle:?}");
    }
    // Verified with the binary this test was built beside in place of /usr/local/bin/chorus.
    let scratch = Scratch::new("systemd");
    let copy = scratch.0.join("chorus.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/chorus", env!("CARGO_BIN_EXE_chorus")),
    )
    .expect("write");
    let out = run(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&copy));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("chorus.service:"),
        "warnings about the unit: {}",
        text(&out)
    );

    // systemd's own exposure score (0 safest .. 10): 2.5 at most.
    let out = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=25"])
        .arg(&copy));
    assert!(out.status.success(), "{}", text(&out));

    // An unknown directive is reported.
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/chorus", env!("CARGO_BIN_EXE_chorus"))
            .replace("ProtectHome=yes", "ProtectHomes=yes"),
    )
    .expect("write");
    let out = run(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&copy));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ProtectHomes"),
        "an unknown directive passed: {}",
        text(&out)
    );
}

#[test]
fn the_dockerfile_builds_the_server_alone_and_runs_it_unprivileged() {
    let file = read(&deploy("Dockerfile"));
    let froms: Vec<&str> = file.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "not multi-stage: {froms:?}");
    // The builder's Rust is at least the workspace's rust-version.
    let want = read(&root().join("Cargo.toml"))
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("workspace rust-version");
    let have = froms[0]
        .split_once("rust:")
        .and_then(|(_, t)| t.split('-').next())
        .expect("builder is rust:<version>");
    let version = |v: &str| -> Vec<u32> { v.split('.').filter_map(|n| n.parse().ok()).collect() };
    assert!(
        version(have) >= version(&want),
        "rust:{have} < rust-version {want}"
    );
    assert!(file.contains("cargo build --release --locked -p chorus-server"));
    let runtime: Vec<&str> = file
        .lines()
        .skip_while(|l| !l.starts_with(froms[froms.len() - 1]))
        .collect();
    assert!(
        runtime[0].contains("distroless/cc"),
        "runtime base: {}",
        runtime[0]
    );
    let copies: Vec<&&str> = runtime.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies.len(),
        1,
        "the runtime image gets the binary only: {copies:?}"
    );
    assert!(
        copies[0].starts_with("COPY --from=build /chorus "),
        "{copies:?}"
    );
    let user = runtime
        .iter()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the runtime stage");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|u| u.parse().ok())
        .expect("numeric USER");
    assert_ne!(uid, 0, "runs as root");
    assert!(root().join("deploy/Dockerfile.dockerignore").is_file());

    // The runtime image (distroless cc: glibc and libgcc) has every library the binary needs.
    let out = run(Command::new("ldd").arg(env!("CARGO_BIN_EXE_chorus")));
    assert!(out.status.success(), "{}", text(&out));
    let provided = [
        "linux-vdso",
        "libgcc_s",
        "libm",
        "libc",
        "ld-linux",
        "libpthread",
        "libdl",
        "librt",
    ];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let lib = line.trim().split(['.', ' ']).next().unwrap_or("");
        let lib = lib.rsplit('/').next().unwrap_or(lib);
        assert!(
            provided.contains(&lib) || lib.starts_with("ld-linux"),
            "the binary needs {line:?}, which distroless/cc lacks"
        );
    }
}

/// The text of a YAML block scalar `key: |` (indented by more than the key).
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines.next().unwrap_or_else(|| panic!("no {key} block"));
    let indent = head.len() - head.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn chorus_config(text: &str, from: &str) -> chorus_server::Config {
    let config: chorus_server::Config =
        toml::from_str(text).unwrap_or_else(|e| panic!("{from}: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{from}: {e:#}"));
    assert!(!config.dev_mode(), "{from} runs in dev mode");
    config
}

#[test]
fn the_shipped_chorus_configs_load() {
    // Compose: one file; its TURN secret is coturn's.
    let compose = chorus_config(&read(&deploy("compose/chorus.toml")), "compose/chorus.toml");
    let turn = read(&deploy("compose/turnserver.conf"));
    let coturn_secret = turn
        .lines()
        .find_map(|l| l.strip_prefix("static-auth-secret="))
        .expect("static-auth-secret");
    let toml_text = read(&deploy("compose/chorus.toml"));
    assert!(
        toml_text.contains(&format!("secret = \"{coturn_secret}\"")),
        "chorus.toml's TURN secret is not coturn's"
    );
    assert_eq!(compose.server.http_bind.port(), 7880);

    // Kubernetes: the ConfigMap's settings followed by the Secret's, as the init container
    // concatenates them.
    let settings = block(&read(&deploy("kubernetes/configmap.yaml")), "chorus.toml");
    let secrets = block(&read(&deploy("kubernetes/secret.yaml")), "secrets.toml");
    assert!(!settings.contains("[auth]"), "secrets in the ConfigMap");
    let k8s = chorus_config(
        &format!("{settings}\n{secrets}\n"),
        "the ConfigMap + Secret",
    );
    assert_eq!(k8s.server.drain_secs, 600);
}

/// The README's test command is `./scripts/test`, and CI runs exactly it.
#[test]
fn ci_runs_the_readme_test_command() {
    let readme = read(&root().join("README.md"));
    assert!(
        readme.contains("\n    ./scripts/test\n"),
        "README.md lacks the test command"
    );
    let ci = read(&root().join(".ci/run"));
    let commands: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        commands.last(),
        Some(&"exec ./scripts/test"),
        ".ci/run must end by running the README's command: {commands:?}"
    );
    let out = run(Command::new("bash")
        .arg("-n")
        .arg(root().join("scripts/test")));
    assert!(out.status.success(), "{}", text(&out));
}

/// Without root, `./scripts/test` installs nothing: it prints the one `sudo` command that
/// installs what is missing and exits 1. (`dpkg-query` and `id` are stand-ins on PATH that
/// report docker-compose unknown, prometheus removed but remembered, and a non-root user.)
#[test]
fn without_root_the_test_command_prints_the_sudo_command() {
    let scratch = Scratch::new("no-root");
    let bin = scratch.0.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let stub = |name: &str, body: &str| {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("stub");
        let chmod = run(Command::new("chmod").arg("+x").arg(&path));
        assert!(chmod.status.success());
    };
    stub(
        "dpkg-query",
        "case \"$3\" in docker-compose) exit 1;; prometheus) printf 'deinstall ok config-files';; *) printf 'install ok installed';; esac",
    );
    stub("id", "echo 1000");
    stub("apt-get", "echo apt-get must not run >&2; exit 99");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = run(Command::new(root().join("scripts/test"))
        .arg("--setup-only")
        .env("PATH", path));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sudo apt-get update && sudo apt-get install -y prometheus docker-compose"),
        "{}",
        text(&out)
    );
    assert!(!err.contains("apt-get must not run"), "{}", text(&out));
}
