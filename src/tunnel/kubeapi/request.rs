//! Turns one HTTP request line (method, path, query) into what policy sees: a
//! [`KubeRequest`] (verb, API group, resource, subresource, namespace, name),
//! a discovery read, or a rejection. Follows the apiserver's own
//! `RequestInfoFactory` (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go)
//! so the verb policy matches is the verb Kubernetes RBAC will check.
//!
//! Paths are checked before anything else: anything that is not a plain,
//! normalised, unencoded path (`%`, `..`, `.`, `//`, backslashes, control
//! characters, trailing slashes) is refused, so there is never a second
//! interpretation of the path upstream that policy did not see.

use crate::policy::KubeRequest;

/// Longest path accepted (the apiserver itself allows more, but no real
/// resource path comes close; long paths are an attack signal).
pub const MAX_PATH_LEN: usize = 4096;

/// Why a request was refused before policy was asked (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("percent-encoded characters are not accepted in the path")]
    Encoded,
    #[error("path is not normalised (empty, '.' or '..' segment)")]
    NotNormalised,
    #[error("character {0:?} is not accepted in the path")]
    BadChar(char),
    #[error("unsupported HTTP method {0}")]
    Method(String),
    #[error("incomplete resource path")]
    Incomplete,
}

/// What a request is, as far as the proxy is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// A resource request; policy decides.
    Resource(KubeRequest),
    /// Read-only API discovery (`/api`, `/apis/...` without resources,
    /// `/version`, `/openapi/...`): holds no object data, needed by every
    /// kubectl command, allowed without asking policy (upstream RBAC still
    /// applies through impersonation).
    Discovery,
    /// Any other non-resource path (`/metrics`, `/logs`, `/debug/...`,
    /// `/healthz` writes...): refused.
    NonResource,
}

/// Subresources that start a stream (SPDY / WebSocket upgrade). The apiserver
/// authorizes them as `create` whatever the method (since 1.31 also for the
/// WebSocket GET form, KEP-4006 / `AuthorizePodWebsocketUpgradeCreatePermission`).
const CONNECT_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward"];

/// Namespace subresources: `/api/v1/namespaces/<ns>/status` is the status of
/// the namespace, not a resource called `status` (requestinfo.go
/// `namespaceSubresources`).
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Check the raw path (before any decoding; nothing is decoded after it).
pub fn check_path(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if path == "/" {
        return Ok(());
    }
    for c in path.chars() {
        match c {
            '%' => return Err(PathError::Encoded),
            'a'..='z'
            | 'A'..='Z'
            | '0'..='9'
            | '/'
            | '.'
            | '-'
            | '_'
            | ':'
            | '@'
            | '~'
            | '+'
            | '=' => {}
            other => return Err(PathError::BadChar(other)),
        }
    }
    for seg in path.split('/').skip(1) {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(PathError::NotNormalised);
        }
    }
    Ok(())
}

/// True when the query asks for a watch (`watch=true` / `watch=1`).
fn query_watch(query: Option<&str>) -> bool {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1" || v.is_empty()))
}

/// Classify a request. `path` must already have passed [`check_path`]
/// (this calls it again, so a caller cannot forget).
pub fn classify(method: &str, path: &str, query: Option<&str>) -> Result<Classified, PathError> {
    check_path(path)?;
    let parts: Vec<&str> = path.split('/').skip(1).filter(|s| !s.is_empty()).collect();
    let read = matches!(method, "GET" | "HEAD");

    // Where the resource part starts, and the API group.
    let (group, rest): (&str, &[&str]) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (group, rest),
        _ => {
            return Ok(if read && is_discovery(&parts) {
                Classified::Discovery
            } else {
                Classified::NonResource
            });
        }
    };
    if rest.is_empty() {
        // `/api/v1`, `/apis/apps/v1`: resource lists for discovery.
        return Ok(if read {
            Classified::Discovery
        } else {
            Classified::NonResource
        });
    }

    let mut rest = rest;
    let mut watch_prefix = false;
    // Deprecated `/api/v1/watch/...` form.
    if let ["watch", tail @ ..] = rest {
        watch_prefix = true;
        rest = tail;
        if rest.is_empty() {
            return Err(PathError::Incomplete);
        }
    }

    let mut namespace = None;
    if let ["namespaces", ns, tail @ ..] = rest {
        namespace = Some((*ns).to_string());
        if let [first, ..] = tail
            && !NAMESPACE_SUBRESOURCES.contains(first)
        {
            rest = tail;
        }
    }

    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub, ..] => (*resource, Some(*name), Some(*sub)),
        [] => return Err(PathError::Incomplete),
    };
    // Only `proxy` subresources take a trailing path.
    if rest.len() > 3 && subresource != Some("proxy") {
        return Err(PathError::Incomplete);
    }
    // `/api/v1/namespaces/<ns>` is the namespace object itself (the apiserver
    // reports it with namespace = name).
    let name = name.map(str::to_string);

    let verb = if let Some(sub) = subresource
        && CONNECT_SUBRESOURCES.contains(&sub)
    {
        "create"
    } else {
        match method {
            "GET" | "HEAD" => {
                if watch_prefix || query_watch(query) {
                    "watch"
                } else if name.is_some() {
                    "get"
                } else {
                    "list"
                }
            }
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" => {
                if name.is_some() {
                    "delete"
                } else {
                    "deletecollection"
                }
            }
            other => return Err(PathError::Method(other.to_string())),
        }
    };

    Ok(Classified::Resource(KubeRequest {
        verb: verb.to_string(),
        api_group: group.to_string(),
        resource: resource.to_string(),
        subresource: subresource.map(str::to_string),
        namespace,
        name,
    }))
}

/// Read-only discovery and version paths kubectl fetches before any command.
fn is_discovery(parts: &[&str]) -> bool {
    matches!(
        parts,
        ["api"] | ["apis"] | ["apis", _] | ["version"] | ["openapi", "v2"] | ["openapi", "v3", ..]
    )
}

/// `resource/subresource` as policy files write it.
pub fn resource_label(req: &KubeRequest) -> String {
    match &req.subresource {
        Some(s) => format!("{}/{s}", req.resource),
        None => req.resource.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(method: &str, path: &str, query: Option<&str>) -> KubeRequest {
        match classify(method, path, query) {
            Ok(Classified::Resource(r)) => r,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn refuses_encoded_and_unnormalised_paths() {
        for (p, e) in [
            ("/api/v1/namespaces/%2e%2e/secrets", PathError::Encoded),
            ("/api/v1/namespaces/%2E%2E/secrets", PathError::Encoded),
            ("/api/v1/namespaces/dev%2fsecrets", PathError::Encoded),
            (
                "/api/v1/namespaces/dev/../kube-system/secrets",
                PathError::NotNormalised,
            ),
            ("/api/v1/namespaces/./pods", PathError::NotNormalised),
            ("/api//v1/pods", PathError::NotNormalised),
            ("/api/v1/pods/", PathError::NotNormalised),
            ("/api/v1/pods\\x", PathError::BadChar('\\')),
            ("/api/v1/pods\u{0}", PathError::BadChar('\u{0}')),
            ("/api/v1/pods x", PathError::BadChar(' ')),
            ("api/v1/pods", PathError::NotAbsolute),
        ] {
            assert_eq!(classify("GET", p, None), Err(e), "{p}");
        }
        let long = format!("/api/v1/namespaces/{}/pods", "a".repeat(MAX_PATH_LEN));
        assert_eq!(classify("GET", &long, None), Err(PathError::TooLong));
    }

    #[test]
    fn refuses_odd_shapes() {
        assert_eq!(
            classify("GET", "/api/v1/watch", None),
            Err(PathError::Incomplete)
        );
        assert_eq!(
            classify("GET", "/api/v1/namespaces/dev/pods/a/log/extra", None),
            Err(PathError::Incomplete)
        );
        assert_eq!(
            classify("TRACE", "/api/v1/pods", None),
            Err(PathError::Method("TRACE".into()))
        );
    }

    #[test]
    fn verbs_follow_requestinfo() {
        let r = res("GET", "/api/v1/namespaces/dev/pods", None);
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.namespace.as_deref()),
            ("list", "pods", Some("dev"))
        );
        assert_eq!(
            res("GET", "/api/v1/namespaces/dev/pods/web", None).verb,
            "get"
        );
        assert_eq!(
            res(
                "GET",
                "/api/v1/namespaces/dev/pods",
                Some("watch=true&rv=1")
            )
            .verb,
            "watch"
        );
        assert_eq!(
            res("GET", "/api/v1/namespaces/dev/pods", Some("watch=false")).verb,
            "list"
        );
        assert_eq!(
            res("GET", "/api/v1/watch/namespaces/dev/pods", None).verb,
            "watch"
        );
        assert_eq!(
            res("POST", "/api/v1/namespaces/dev/pods", None).verb,
            "create"
        );
        assert_eq!(
            res("PUT", "/api/v1/namespaces/dev/pods/a", None).verb,
            "update"
        );
        assert_eq!(
            res("PATCH", "/api/v1/namespaces/dev/pods/a", None).verb,
            "patch"
        );
        assert_eq!(
            res("DELETE", "/api/v1/namespaces/dev/pods/a", None).verb,
            "delete"
        );
        assert_eq!(
            res("DELETE", "/api/v1/namespaces/dev/pods", None).verb,
            "deletecollection"
        );
        assert_eq!(res("HEAD", "/api/v1/pods", None).verb, "list");
    }

    #[test]
    fn streams_are_create_even_over_get() {
        for sub in ["exec", "attach", "portforward"] {
            let r = res(
                "GET",
                &format!("/api/v1/namespaces/dev/pods/web/{sub}"),
                Some("command=sh"),
            );
            assert_eq!(r.verb, "create");
            assert_eq!(r.subresource.as_deref(), Some(sub));
            assert_eq!(r.name.as_deref(), Some("web"));
        }
        let r = res(
            "GET",
            "/api/v1/namespaces/dev/pods/web/log",
            Some("follow=true"),
        );
        assert_eq!(
            (r.verb.as_str(), r.subresource.as_deref()),
            ("get", Some("log"))
        );
    }

    #[test]
    fn groups_namespaces_and_cluster_scope() {
        let r = res("GET", "/apis/apps/v1/namespaces/prod/deployments/api", None);
        assert_eq!(r.api_group, "apps");
        assert_eq!(r.resource, "deployments");
        assert_eq!(r.namespace.as_deref(), Some("prod"));
        let r = res("GET", "/api/v1/nodes", None);
        assert_eq!((r.resource.as_str(), r.namespace), ("nodes", None));
        let r = res("GET", "/api/v1/pods", None);
        assert_eq!(r.namespace, None);
        let r = res("GET", "/api/v1/namespaces", None);
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str()),
            ("list", "namespaces")
        );
        let r = res("DELETE", "/api/v1/namespaces/prod", None);
        assert_eq!(r.resource, "namespaces");
        assert_eq!(r.name.as_deref(), Some("prod"));
        assert_eq!(r.namespace.as_deref(), Some("prod"));
        let r = res("PUT", "/api/v1/namespaces/prod/finalize", None);
        assert_eq!(r.subresource.as_deref(), Some("finalize"));
        assert_eq!(r.resource, "namespaces");
        let r = res(
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:aggregate-to-view",
            None,
        );
        assert_eq!(r.name.as_deref(), Some("system:aggregate-to-view"));
        let r = res(
            "GET",
            "/api/v1/namespaces/dev/pods/web/proxy/metrics/x",
            None,
        );
        assert_eq!(r.subresource.as_deref(), Some("proxy"));
        assert_eq!(resource_label(&r), "pods/proxy");
    }

    #[test]
    fn discovery_and_non_resource() {
        for p in [
            "/api",
            "/apis",
            "/api/v1",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
            "/openapi/v3/apis/apps/v1",
        ] {
            assert_eq!(classify("GET", p, None), Ok(Classified::Discovery), "{p}");
        }
        assert_eq!(
            classify("POST", "/api/v1", None),
            Ok(Classified::NonResource)
        );
        for p in [
            "/",
            "/metrics",
            "/logs/kube-apiserver.log",
            "/debug/pprof",
            "/healthz",
        ] {
            assert_eq!(classify("GET", p, None), Ok(Classified::NonResource), "{p}");
        }
    }
}
