//! What the schemas (scripts/validate-deploy.sh) cannot check in deploy/: that the binary
//! accepts the cluster's configuration as written, and that the manifests agree with it and
//! with the image (ports, probes, secret files, the drain's timing, the image's user).

mod common;

use common::*;
use serde::Deserialize;
use serde_yaml::Value;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document of a file.
fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(rel)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn one(rel: &str) -> Value {
    docs(rel).into_iter().next().unwrap()
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

fn u64_at(v: &Value, path: &str) -> u64 {
    at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number: {:?}", at(v, path)))
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", at(v, path)))
}

/// The ConfigMap's wxedge.yaml, parsed.
fn cluster_config() -> (String, Value) {
    let cm = one("deploy/kubernetes/configmap.yaml");
    let text = cm["data"]["wxedge.yaml"].as_str().unwrap().to_string();
    let v: Value = serde_yaml::from_str(&text).unwrap();
    (text, v)
}

fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn the_binary_accepts_the_cluster_configuration() {
    let (text, _) = cluster_config();
    let deployment = one("deploy/kubernetes/deployment.yaml");
    let secret = one("deploy/kubernetes/secret.yaml");
    let container = at(&deployment, "spec.template.spec.containers.0");
    let dir = temp_dir("deploy");
    let conf = dir.join("wxedge.yaml");
    std::fs::write(&conf, text).unwrap();
    // The Secret's files, where the Deployment mounts them.
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "secrets")
        .map(|m| str_at(m, "mountPath").to_string())
        .unwrap();
    let mut env: Vec<(String, String)> = vec![];
    for e in container["env"].as_sequence().unwrap() {
        let (name, value) = (str_at(e, "name"), str_at(e, "value"));
        if let Some(file) = value.strip_prefix(&format!("{mount}/")) {
            assert!(name.ends_with("_FILE"), "{name}");
            let content = str_at(&secret, &format!("stringData.{file}"));
            let local = dir.join(file);
            std::fs::write(&local, content).unwrap();
            env.push((name.into(), local.to_str().unwrap().into()));
        } else {
            env.push((name.into(), value.into()));
        }
    }
    // Here, not in the cluster: the fixture dist, and a backend address that resolves.
    env.push((
        "WXEDGE_DIST".into(),
        fixture_dist().to_str().unwrap().into(),
    ));
    env.push(("WXEDGE_BACKEND".into(), "http://127.0.0.1:9".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (mut cmd, _) = command(&env, &["-t", "-c", conf.to_str().unwrap()]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("listen: 0.0.0.0:8080"), "{stdout}");
    assert!(
        stdout.contains("shared: Redis at wxedge-redis:6379"),
        "{stdout}"
    );
    assert!(
        stdout.contains("metrics: http://0.0.0.0:9100/metrics"),
        "{stdout}"
    );
    assert!(
        stdout.contains("wechat: appid wx0000000000000000 via https://api.weixin.qq.com"),
        "the login at the edge is on, against WeChat: {stdout}"
    );
}

#[test]
fn the_deployment_matches_the_configuration_and_the_image() {
    let (_, conf) = cluster_config();
    let d = one("deploy/kubernetes/deployment.yaml");
    let pod = at(&d, "spec.template.spec");
    let c = &pod["containers"][0];
    let port = |name: &str| {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| u64_at(p, "containerPort"))
            .unwrap_or_else(|| panic!("no port {name}"))
    };
    assert_eq!(port("http"), port_of(str_at(&conf, "wxedge.listen.0")));
    assert_eq!(
        port("metrics"),
        port_of(str_at(&conf, "wxedge.ops.metrics_listen"))
    );
    assert_eq!(str_at(c, "readinessProbe.httpGet.path"), "/_wxedge/readyz");
    assert_eq!(str_at(c, "livenessProbe.httpGet.path"), "/_wxedge/healthz");
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(str_at(c, &format!("{probe}.httpGet.port")), "http");
    }
    // The drain: preStop, then at most grace_period_seconds, then the runtimes' timeout, all
    // before the SIGKILL.
    let pre_stop = at(c, "lifecycle.preStop.exec.command");
    assert_eq!(pre_stop[0], "sleep");
    let sleep: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    let drain =
        u64_at(&conf, "grace_period_seconds") + u64_at(&conf, "graceful_shutdown_timeout_seconds");
    let grace = u64_at(pod, "terminationGracePeriodSeconds");
    assert!(
        grace > sleep + drain && grace <= sleep + drain + 15,
        "terminationGracePeriodSeconds {grace} vs preStop {sleep} + drain {drain}"
    );
    // Non-root, as the image's user.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let uid: u64 = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG WXEDGE_UID="))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    assert_eq!(u64_at(pod, "securityContext.runAsUser"), uid);
    assert_eq!(
        at(c, "securityContext.allowPrivilegeEscalation").as_bool(),
        Some(false)
    );
    assert!(port("http") >= 1024, "no privilege to bind below 1024");
    // The Service exposes the public port only, to every replica of this Deployment.
    let svc = one("deploy/kubernetes/service.yaml");
    let ports = at(&svc, "spec.ports").as_sequence().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(str_at(&ports[0], "targetPort"), "http");
    assert_eq!(
        at(&svc, "spec.selector"),
        at(&d, "spec.selector.matchLabels")
    );
    let pdb = one("deploy/kubernetes/pdb.yaml");
    assert_eq!(
        at(&pdb, "spec.selector.matchLabels"),
        at(&d, "spec.selector.matchLabels")
    );
    assert!(u64_at(&d, "spec.replicas") >= 2);
    // Redis is where the configuration says.
    let redis_svc = &docs("deploy/kubernetes/redis.yaml")[1];
    assert_eq!(
        str_at(&conf, "wxedge.redis_url"),
        format!(
            "redis://{}:{}/0",
            str_at(redis_svc, "metadata.name"),
            u64_at(redis_svc, "spec.ports.0.port")
        )
    );
}

#[test]
fn compose_replicas_share_redis_and_read_secrets_from_files() {
    let c = one("deploy/compose.yaml");
    let edge = at(&c, "services.edge");
    assert!(u64_at(edge, "deploy.replicas") >= 2);
    let env = &edge["environment"];
    for (var, secret) in [
        ("WX_SECRET_FILE", "wx_secret"),
        ("WXEDGE_SESSION_KEY_FILE", "session_key"),
    ] {
        assert_eq!(str_at(env, var), format!("/run/secrets/{secret}"));
        assert!(edge["secrets"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|s| s == secret));
        assert!(at(&c, &format!("secrets.{secret}.file")).is_string());
    }
    assert!(env.get("WX_SECRET").is_none() && env.get("WXEDGE_SESSION_KEY").is_none());
    assert!(str_at(env, "WXEDGE_REDIS_URL").starts_with("redis://redis:"));
    assert!(c["services"]["redis"].is_mapping());
    // Compose's stop timeout covers the drain of the image's configuration.
    let image_conf: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("conf/wxedge.yaml")).unwrap())
            .unwrap();
    let drain = u64_at(&image_conf, "grace_period_seconds")
        + u64_at(&image_conf, "graceful_shutdown_timeout_seconds");
    let stop: u64 = str_at(edge, "stop_grace_period")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        stop > drain,
        "stop_grace_period {stop} s vs drain {drain} s"
    );
    // The metrics listener (with the admin endpoint) is never published.
    assert!(edge.get("ports").is_none());
}
