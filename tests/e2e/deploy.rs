//! deploy/ renders with the real `kubectl kustomize`, and the rendered
//! objects keep the security invariants: non-root, read-only root fs, no
//! capabilities, resource limits, /healthz probes on the API port, graceful
//! shutdown, minimal RBAC, agent pods with only a projected token for
//! audience `sallyport`, and a config the real config parser accepts.
//!
//! Rendered YAML is turned into JSON by `kubectl annotate --local -o json`
//! (no API server needed; there is no YAML crate in the tree).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::run_cmd;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// `kubectl kustomize DIR` → objects as JSON.
fn render(dir: &Path) -> Vec<Value> {
    let mut k = Command::new("kubectl");
    k.arg("kustomize").arg(dir).env("KUBECONFIG", "/dev/null");
    let r = run_cmd(k, None, Duration::from_secs(60), String::new()).success();
    let mut a = Command::new("kubectl");
    a.args([
        "annotate",
        "--local",
        "-f",
        "-",
        "-o",
        "json",
        "sallyport.dev/rendered=1",
    ])
    .env("KUBECONFIG", "/dev/null");
    let j = run_cmd(
        a,
        Some(&r.output.stdout),
        Duration::from_secs(60),
        String::new(),
    )
    .success();
    let objs: Vec<Value> = serde_json::Deserializer::from_slice(&j.output.stdout)
        .into_iter::<Value>()
        .map(|v| v.unwrap())
        .flat_map(|v| {
            if v["kind"] == "List" {
                v["items"].as_array().cloned().unwrap_or_default()
            } else {
                vec![v]
            }
        })
        .collect();
    assert!(objs.len() >= 10, "rendered only {} objects", objs.len());
    objs
}

fn find<'a>(objs: &'a [Value], kind: &str, name_prefix: &str) -> Option<&'a Value> {
    objs.iter().find(|o| {
        o["kind"] == kind
            && o["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(name_prefix))
    })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Every violated invariant, as readable lines (empty = all good).
fn violations(objs: &[Value]) -> Vec<String> {
    let mut bad = Vec::new();
    let mut need = |ok: bool, what: String| {
        if !ok {
            bad.push(what);
        }
    };
    for (kind, name) in [
        ("Namespace", "sallyport"),
        ("ServiceAccount", "sallyport"),
        ("ClusterRole", "sallyport"),
        ("ClusterRoleBinding", "sallyport"),
        ("Deployment", "sallyport"),
        ("Service", "sallyport"),
        ("ConfigMap", "sallyport-config"),
        ("ConfigMap", "sallyport-policies"),
        ("Secret", "sallyport-ca"),
        ("PersistentVolumeClaim", "sallyport-data"),
        ("NetworkPolicy", "agents-egress"),
        ("Pod", "copilot-agent"),
    ] {
        need(
            find(objs, kind, name).is_some(),
            format!("missing {kind} {name}"),
        );
    }

    // Pod-level and container-level hardening for every pod template.
    let mut pods: Vec<(String, &Value)> = Vec::new();
    if let Some(d) = find(objs, "Deployment", "sallyport") {
        pods.push((
            "Deployment/sallyport".into(),
            &d["spec"]["template"]["spec"],
        ));
    }
    if let Some(p) = find(objs, "Pod", "copilot-agent") {
        pods.push(("Pod/copilot-agent".into(), &p["spec"]));
    }
    for (who, spec) in &pods {
        let sc = &spec["securityContext"];
        need(sc["runAsNonRoot"] == true, format!("{who}: runAsNonRoot"));
        need(
            sc["runAsUser"].as_u64().is_some_and(|u| u != 0),
            format!("{who}: runAsUser must be set and not 0"),
        );
        need(
            sc["seccompProfile"]["type"] == "RuntimeDefault",
            format!("{who}: seccompProfile RuntimeDefault"),
        );
        let containers = spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array())
            .flatten();
        for c in containers {
            let cn = format!("{who} container {}", s(&c["name"]));
            let csc = &c["securityContext"];
            need(
                csc["readOnlyRootFilesystem"] == true,
                format!("{cn}: readOnlyRootFilesystem"),
            );
            need(
                csc["allowPrivilegeEscalation"] == false,
                format!("{cn}: allowPrivilegeEscalation false"),
            );
            need(
                csc["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x == "ALL")),
                format!("{cn}: capabilities drop ALL"),
            );
            need(csc["privileged"] != true, format!("{cn}: privileged"));
            need(csc["runAsUser"] != 0, format!("{cn}: runAsUser 0"));
            for r in ["cpu", "memory"] {
                need(
                    !c["resources"]["limits"][r].is_null(),
                    format!("{cn}: limits.{r}"),
                );
                need(
                    !c["resources"]["requests"][r].is_null(),
                    format!("{cn}: requests.{r}"),
                );
            }
        }
        need(
            spec["hostNetwork"] != true && spec["hostPID"] != true,
            format!("{who}: host namespaces"),
        );
    }

    // The bastion container: ports, probes, graceful shutdown, config.
    let config = find(objs, "ConfigMap", "sallyport-config")
        .and_then(|c| c["data"]["sallyport.toml"].as_str())
        .unwrap_or("");
    let cfg = sallyport::config::parse(config, Path::new("deploy/config/sallyport.toml"))
        .map_err(|e| e.to_string())
        .and_then(|raw| {
            raw.validate(Path::new("deploy/config/sallyport.toml"), None)
                .map_err(|e| e.to_string())
        });
    need(
        cfg.is_ok(),
        format!("config does not validate: {:?}", cfg.as_ref().err()),
    );
    if let (Some(d), Ok(cfg)) = (find(objs, "Deployment", "sallyport"), &cfg) {
        let spec = &d["spec"]["template"]["spec"];
        need(
            d["spec"]["replicas"] == 1,
            "Deployment: one replica (SQLite, RWO volume)".into(),
        );
        need(
            d["spec"]["strategy"]["type"] == "Recreate",
            "Deployment: Recreate strategy".into(),
        );
        need(
            spec["terminationGracePeriodSeconds"]
                .as_u64()
                .is_some_and(|t| t >= 30),
            "Deployment: terminationGracePeriodSeconds >= 30".into(),
        );
        need(
            spec["serviceAccountName"] == "sallyport",
            "Deployment: serviceAccountName".into(),
        );
        let c = spec["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "sallyport"));
        need(c.is_some(), "Deployment: container sallyport".into());
        if let Some(c) = c {
            let port = |name: &str| {
                c["ports"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == name))
                    .and_then(|p| p["containerPort"].as_u64())
            };
            need(
                port("api") == cfg.api.listen.map(|a| u64::from(a.port())),
                format!(
                    "api containerPort {:?} != config api.listen {:?}",
                    port("api"),
                    cfg.api.listen
                ),
            );
            need(
                port("ssh") == Some(u64::from(cfg.ssh.listen.port())),
                format!(
                    "ssh containerPort {:?} != config ssh.listen {}",
                    port("ssh"),
                    cfg.ssh.listen
                ),
            );
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let p = &c[probe]["httpGet"];
                need(
                    p["path"] == "/healthz"
                        && (p["port"] == "api" || p["port"].as_u64() == port("api")),
                    format!("{probe}: httpGet /healthz on the api port"),
                );
            }
            need(!c["lifecycle"]["preStop"].is_null(), "preStop hook".into());
            // Mounted config/policy paths are the ones the config names.
            let mounts: Vec<String> = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| s(&m["mountPath"]).to_string())
                .collect();
            need(
                mounts.contains(&cfg.policy_dir.display().to_string()),
                format!(
                    "policy dir {} not mounted ({mounts:?})",
                    cfg.policy_dir.display()
                ),
            );
            need(
                mounts.contains(&cfg.data_dir.display().to_string()),
                format!("data dir {} not mounted", cfg.data_dir.display()),
            );
            let args: Vec<&str> = c["args"].as_array().into_iter().flatten().map(s).collect();
            let cfg_path = args
                .iter()
                .position(|a| *a == "--config")
                .and_then(|i| args.get(i + 1));
            need(
                cfg_path.is_some_and(|p| mounts.iter().any(|m| m == p)),
                format!("--config path {cfg_path:?} not mounted"),
            );
        }
        // Every referenced ConfigMap/Secret/PVC exists in the render.
        for v in spec["volumes"].as_array().into_iter().flatten() {
            if let Some(n) = v["configMap"]["name"].as_str() {
                need(
                    find(objs, "ConfigMap", n).is_some_and(|o| o["metadata"]["name"] == n),
                    format!("volume: ConfigMap {n} not rendered"),
                );
            }
            if let Some(n) = v["secret"]["secretName"].as_str() {
                need(
                    find(objs, "Secret", n).is_some(),
                    format!("volume: Secret {n} not rendered"),
                );
            }
            if let Some(n) = v["persistentVolumeClaim"]["claimName"].as_str() {
                need(
                    find(objs, "PersistentVolumeClaim", n).is_some(),
                    format!("volume: PVC {n} not rendered"),
                );
            }
        }
    }

    // RBAC: exactly the minimal rule set, no wildcards, no secrets.
    if let Some(role) = find(objs, "ClusterRole", "sallyport") {
        let mut got: Vec<String> = Vec::new();
        for r in role["rules"].as_array().into_iter().flatten() {
            for g in r["apiGroups"].as_array().into_iter().flatten() {
                for res in r["resources"].as_array().into_iter().flatten() {
                    for v in r["verbs"].as_array().into_iter().flatten() {
                        got.push(format!("{}|{}|{}", s(g), s(res), s(v)));
                    }
                }
            }
            need(
                r["nonResourceURLs"].is_null(),
                "ClusterRole: nonResourceURLs".into(),
            );
            need(
                r["resourceNames"].is_null() || r["resourceNames"].is_array(),
                "ClusterRole: resourceNames".into(),
            );
        }
        got.sort();
        let mut want: Vec<String> = [
            "|users|impersonate",
            "|groups|impersonate",
            "|serviceaccounts|impersonate",
            "authentication.k8s.io|userextras/sallyport-session|impersonate",
            "authentication.k8s.io|userextras/sallyport-on-behalf-of|impersonate",
            "authentication.k8s.io|tokenreviews|create",
            "|pods|get",
            "|pods|list",
            "|pods/portforward|create",
            "|pods/exec|create",
            "|services|get",
            "|services|list",
            "|endpoints|get",
            "|endpoints|list",
            "discovery.k8s.io|endpointslices|get",
            "discovery.k8s.io|endpointslices|list",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        want.sort();
        need(
            got == want,
            format!("ClusterRole rules differ from the minimal set:\n got {got:?}\nwant {want:?}"),
        );
    }
    if let Some(b) = find(objs, "ClusterRoleBinding", "sallyport") {
        need(
            b["subjects"].as_array().is_some_and(|ss| {
                ss.len() == 1
                    && ss[0]["kind"] == "ServiceAccount"
                    && ss[0]["name"] == "sallyport"
                    && ss[0]["namespace"] == "sallyport"
            }),
            "ClusterRoleBinding: only the sallyport service account".into(),
        );
    }

    // The agent: no API token, only a projected token for sallyport, used by
    // `sallyport login --token-file`.
    if let Some(p) = find(objs, "Pod", "copilot-agent") {
        let spec = &p["spec"];
        need(
            spec["automountServiceAccountToken"] == false,
            "agent: automountServiceAccountToken false".into(),
        );
        let mut token_dirs: Vec<(String, String)> = Vec::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            for src in v["projected"]["sources"].as_array().into_iter().flatten() {
                let t = &src["serviceAccountToken"];
                if t.is_null() {
                    continue;
                }
                need(
                    t["audience"] == "sallyport",
                    format!("agent: token audience {}", t["audience"]),
                );
                need(
                    t["expirationSeconds"].as_u64().is_some_and(|e| e <= 600),
                    format!(
                        "agent: token expirationSeconds {} > 600",
                        t["expirationSeconds"]
                    ),
                );
                token_dirs.push((s(&v["name"]).to_string(), s(&t["path"]).to_string()));
            }
        }
        need(
            token_dirs.len() == 1,
            format!("agent: one projected token, got {token_dirs:?}"),
        );
        let c = &spec["containers"][0];
        let args: Vec<&str> = c["args"].as_array().into_iter().flatten().map(s).collect();
        let file = args
            .iter()
            .position(|a| *a == "--token-file")
            .and_then(|i| args.get(i + 1));
        need(
            args.first() == Some(&"login"),
            format!("agent: runs `sallyport login`, got {args:?}"),
        );
        let mounted = token_dirs.first().and_then(|(vol, path)| {
            c["volumeMounts"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == vol.as_str())
                .map(|m| format!("{}/{path}", s(&m["mountPath"])))
        });
        need(
            file.is_some() && file.map(|f| f.to_string()) == mounted,
            format!("agent: --token-file {file:?} is not the projected token {mounted:?}"),
        );
        // The token audience must be one the bastion accepts.
        if let Ok(cfg) = &cfg {
            need(
                cfg.issuers.iter().any(|i| {
                    i.kind == sallyport::config::IssuerKind::Kubernetes
                        && i.audience.iter().any(|a| a == "sallyport")
                }),
                "config: no kubernetes issuer accepting audience sallyport".into(),
            );
        }
    }

    // NetworkPolicy: agents egress only to the bastion (and DNS).
    if let Some(np) = find(objs, "NetworkPolicy", "agents-egress") {
        let types: Vec<&str> = np["spec"]["policyTypes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        need(
            types.contains(&"Egress"),
            "NetworkPolicy: Egress policy type".into(),
        );
        let agent_labels =
            find(objs, "Pod", "copilot-agent").map(|p| p["metadata"]["labels"].clone());
        let sel = &np["spec"]["podSelector"]["matchLabels"];
        need(
            sel.as_object().is_some_and(|m| {
                !m.is_empty()
                    && m.iter()
                        .all(|(k, v)| agent_labels.as_ref().is_some_and(|l| &l[k] == v))
            }),
            "NetworkPolicy: selects the example agent pod".into(),
        );
        for e in np["spec"]["egress"].as_array().into_iter().flatten() {
            let to = e["to"].as_array().cloned().unwrap_or_default();
            need(
                !to.is_empty(),
                "NetworkPolicy: egress rule without `to` allows everything".into(),
            );
            for peer in &to {
                need(
                    peer["ipBlock"].is_null(),
                    "NetworkPolicy: ipBlock egress".into(),
                );
                let ns =
                    s(&peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]);
                let ok = (ns == "sallyport"
                    && peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "sallyport")
                    || (ns == "kube-system"
                        && peer["podSelector"]["matchLabels"]["k8s-app"] == "kube-dns");
                need(
                    ok,
                    format!("NetworkPolicy: egress to {peer} is neither the bastion nor DNS"),
                );
            }
        }
    }
    bad
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Negative first: the checker catches weakened manifests.
#[test]
fn deploy_checker_rejects_weakened_manifests() {
    for (file, from, to, expect) in [
        (
            "deployment.yaml",
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "readOnlyRootFilesystem",
        ),
        (
            "deployment.yaml",
            "runAsNonRoot: true",
            "runAsNonRoot: false",
            "runAsNonRoot",
        ),
        (
            "deployment.yaml",
            "path: /healthz",
            "path: /",
            "httpGet /healthz",
        ),
        (
            "rbac.yaml",
            "verbs: [\"get\", \"list\"]",
            "verbs: [\"*\"]",
            "ClusterRole rules differ",
        ),
        (
            "rbac.yaml",
            "resources: [\"pods\"]",
            "resources: [\"pods\", \"secrets\"]",
            "ClusterRole rules differ",
        ),
        (
            "agent/pod.yaml",
            "audience: sallyport",
            "audience: https://kubernetes.default.svc",
            "token audience",
        ),
        (
            "agent/pod.yaml",
            "expirationSeconds: 600",
            "expirationSeconds: 86400",
            "expirationSeconds",
        ),
        (
            "agent/pod.yaml",
            "automountServiceAccountToken: false",
            "automountServiceAccountToken: true",
            "automountServiceAccountToken",
        ),
        (
            "agent/networkpolicy.yaml",
            "k8s-app: kube-dns",
            "k8s-app: anything",
            "neither the bastion nor DNS",
        ),
        (
            "config/sallyport.toml",
            "listen = \"0.0.0.0:8022\"",
            "listen = \"0.0.0.0:9999\"",
            "api containerPort",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&deploy_dir(), dir.path());
        let p = dir.path().join(file);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.contains(from),
            "{file} no longer contains {from:?}: update this test"
        );
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
        let bad = violations(&render(dir.path()));
        assert!(
            bad.iter().any(|b| b.contains(expect)),
            "{file}: {from:?} -> {to:?} not caught (want {expect:?}); got {bad:#?}"
        );
    }
}

#[test]
fn deploy_kustomize_renders_and_keeps_invariants() {
    let objs = render(&deploy_dir());
    let bad = violations(&objs);
    assert!(bad.is_empty(), "deploy/ violates:\n{}", bad.join("\n"));
}
