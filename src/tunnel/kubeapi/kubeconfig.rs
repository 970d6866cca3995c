//! The client side of the kube API proxy: the kubeconfig context and the one
//! `ssh -L` command `sallyport login` hands to users and agents. The
//! kubeconfig points at the local end of the forward and carries **no
//! credentials**: the bastion authenticates upstream itself and impersonates
//! the certificate's identity (docs/agents.md).

/// Name of the cluster, user and context written for the bastion.
pub const CONTEXT: &str = "sallyport";

/// A standalone kubeconfig (YAML) for `http://127.0.0.1:<local_port>`.
/// `namespace` becomes the context's default namespace. Values are quoted
/// as JSON strings, which YAML accepts verbatim, so nothing in them can
/// change the document's structure.
pub fn kubeconfig(local_port: u16, namespace: Option<&str>) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let ns = namespace
        .filter(|n| !n.is_empty())
        .map(|n| format!("      namespace: {}\n", q(n)))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n  - name: {c}\n    cluster:\n      server: {server}\ncontexts:\n  - name: {c}\n    context:\n      cluster: {c}\n      user: {c}\n{ns}current-context: {c}\nusers:\n  - name: {c}\n    user: {{}}\n",
        c = q(CONTEXT),
        server = q(&format!("http://127.0.0.1:{local_port}")),
    )
}

/// `ssh -N -L <port>:<target>:443 <host_alias>`: the forward the kubeconfig
/// expects. `ssh_config` is the `-F` file `login` wrote, if any.
pub fn ssh_forward_command(
    ssh_config: Option<&str>,
    host_alias: &str,
    local_port: u16,
    api_target: &str,
) -> String {
    let mut parts = vec!["ssh".to_string()];
    if let Some(f) = ssh_config {
        parts.push("-F".into());
        parts.push(shell_words::quote(f).into_owned());
    }
    parts.push("-N".into());
    parts.push("-L".into());
    parts.push(format!(
        "{local_port}:{}:443",
        shell_words::quote(api_target)
    ));
    parts.push(shell_words::quote(host_alias).into_owned());
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_has_server_and_no_credentials() {
        let k = kubeconfig(6443, Some("dev-team-a"));
        assert!(k.contains("server: \"http://127.0.0.1:6443\""), "{k}");
        assert!(k.contains("namespace: \"dev-team-a\""), "{k}");
        assert!(k.contains("user: {}"), "{k}");
        for secret in [
            "token",
            "client-key",
            "client-certificate",
            "password",
            "exec:",
        ] {
            assert!(!k.contains(secret), "{secret} in {k}");
        }
        assert!(!kubeconfig(6443, None).contains("namespace"));
    }

    #[test]
    fn hostile_namespace_cannot_add_keys() {
        let k = kubeconfig(1, Some("x\nusers:\n- name: evil\n  user:\n    token: t"));
        assert_eq!(k.matches("\nusers:").count(), 1, "{k}");
        assert!(k.contains(r#"namespace: "x\nusers:\n- name: evil"#), "{k}");
    }

    #[test]
    fn forward_command() {
        assert_eq!(
            ssh_forward_command(
                Some("/home/a b/.ssh/sallyport/config"),
                "bastion",
                6443,
                "kubernetes"
            ),
            "ssh -F '/home/a b/.ssh/sallyport/config' -N -L 6443:kubernetes:443 bastion"
        );
        assert_eq!(
            ssh_forward_command(None, "bastion", 7000, "kubernetes"),
            "ssh -N -L 7000:kubernetes:443 bastion"
        );
    }
}
