//! deploy/: the Kubernetes manifests parsed and checked for the fields a
//! scaled-out mqlink depends on (probes, metrics, instance names from the
//! pod, secrets only through the Secret), the ConfigMap's pipeline
//! validated by `mqlink validate` as the pod would run it, and the
//! Dockerfile building through deploy/build.sh. (The image itself is not
//! built here: these machines cannot pull base images; deploy/build.sh
//! runs its steps, see docs/guides/scaling.md.)

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn manifest(name: &str) -> Value {
    let path = deploy().join("k8s").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn at<'v>(v: &'v Value, path: &str) -> &'v Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
        assert!(!cur.is_null(), "{path}: no {key}");
    }
    cur
}

fn str_at<'v>(v: &'v Value, path: &str) -> &'v str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

#[test]
fn the_deployment_probes_scrapes_and_names_each_pod() {
    let d = manifest("deployment.yaml");
    assert_eq!(str_at(&d, "kind"), "Deployment");
    assert!(
        at(&d, "spec.replicas").as_u64().unwrap() > 1,
        "several replicas"
    );
    let pod = at(&d, "spec.template");
    let c = at(pod, "spec.containers.0");
    assert_eq!(str_at(c, "readinessProbe.httpGet.path"), "/ready");
    assert_eq!(str_at(c, "livenessProbe.httpGet.path"), "/health");
    // Probes carry no secret: /health and /ready need no token.
    assert!(c["readinessProbe"]["httpGet"]["httpHeaders"].is_null());
    let port = at(c, "ports.0.containerPort").as_u64().unwrap();
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            str_at(c, &format!("{probe}.httpGet.port")),
            str_at(c, "ports.0.name")
        );
    }
    let ann = at(pod, "metadata.annotations");
    assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"));
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );

    let env = at(c, "env").as_sequence().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no env {name}"))
    };
    assert_eq!(
        str_at(var("MQLINK_INSTANCE"), "valueFrom.fieldRef.fieldPath"),
        "metadata.name",
        "the instance is the pod's name"
    );
    // Every other variable comes from the Secret, none is written here.
    let secret = manifest("secret.yaml");
    let secret_name = str_at(&secret, "metadata.name");
    for e in env {
        let name = e["name"].as_str().unwrap();
        assert!(
            e["value"].is_null(),
            "{name}: a literal value in the Deployment"
        );
        if name != "MQLINK_INSTANCE" {
            let r = at(e, "valueFrom.secretKeyRef");
            assert_eq!(str_at(r, "name"), secret_name, "{name}");
            let key = str_at(r, "key");
            assert!(
                !secret["stringData"][key].is_null(),
                "{name}: {key} is not in the Secret"
            );
        }
    }
    assert!(
        env.iter()
            .any(|e| e["name"].as_str() == Some("MQLINK_HTTP_TOKEN")),
        "the HTTP token off loopback"
    );

    // The pipeline comes from the ConfigMap, mounted where args name it.
    let cm = manifest("configmap.yaml");
    let mount = at(c, "volumeMounts")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("pipeline"))
        .expect("the pipeline volume mounted");
    let volume = at(pod, "spec.volumes")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str() == Some("pipeline"))
        .unwrap();
    assert_eq!(
        str_at(volume, "configMap.name"),
        str_at(&cm, "metadata.name")
    );
    let args: Vec<&str> = at(c, "args")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let file = at(&cm, "data")
        .as_mapping()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(
        args,
        ["run", &format!("{}/{file}", str_at(mount, "mountPath"))]
    );
}

/// The ConfigMap's pipeline as a pod runs it: valid, the secrets only as
/// `${VAR}`s, the client ids ending in the pod's name, HTTP on the port
/// the probes and Prometheus use.
#[test]
fn the_configmap_pipeline_validates_with_the_pod_s_environment() {
    let cm = manifest("configmap.yaml");
    let text = cm["data"]["pipeline.toml"]
        .as_str()
        .expect("data.pipeline.toml");
    for line in text.lines().map(str::trim) {
        for key in ["password", "url", "token"] {
            if line.starts_with(&format!("{key} ")) {
                let value = line.split_once('=').unwrap().1.trim();
                assert!(
                    value.starts_with("\"${"),
                    "{line}: a secret in plain config"
                );
            }
        }
    }
    let d = manifest("deployment.yaml");
    let port = at(&d, "spec.template.spec.containers.0.ports.0.containerPort")
        .as_u64()
        .unwrap();
    assert!(
        text.contains(&format!("listen = \"0.0.0.0:{port}\"")),
        "HTTP on the probed port"
    );

    let dir = testkit::TempDir::new().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .arg("validate")
        .arg(&file)
        .env("MQLINK_INSTANCE", "mqlink-7d4b9c-x2kq9")
        .env("MQTT_PASSWORD", "pw")
        .env("PG_URL", "postgres://mqlink:pw@postgres:5432/iot")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sources.telemetry: MQTT client id ingest-telemetry-mqlink-7d4b9c-x2kq9"),
        "{stdout}"
    );
    // Without the Secret's variables it is refused by name.
    let out = Command::new(env!("CARGO_BIN_EXE_mqlink"))
        .arg("validate")
        .arg(&file)
        .env_remove("MQTT_PASSWORD")
        .env("PG_URL", "postgres://h/d")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MQTT_PASSWORD is not set"));
}

#[test]
fn the_dockerfile_caches_dependencies_and_builds_through_build_sh() {
    let text = std::fs::read_to_string(deploy().join("Dockerfile")).unwrap();
    let deps = text
        .find("RUN deploy/build.sh deps")
        .expect("a dependency layer");
    let sources = text.find("COPY crates crates").expect("the sources copied");
    let build = text.find("RUN deploy/build.sh build").expect("the build");
    assert!(
        deps < sources && sources < build,
        "dependencies before the sources"
    );
    assert!(
        text.contains("ARG FEATURES=\"\""),
        "features chosen: none by default"
    );
    let script = std::fs::read_to_string(deploy().join("build.sh")).unwrap();
    assert!(script.contains("--no-default-features --features \"$FEATURES\""));
    assert!(script.contains("--locked"));
}
