//! Named test policies (docs/policy.md format) shared by the e2e tests,
//! so a policy several tests run under is written once.

/// People and agents of the test OpenID provider (`tests/idp`), used by
/// the OIDC and bastion-login tests: people of `corp` whose subject starts
/// with a letter get their subject as login principal, shells and exec,
/// pty, the default TTL (15 min); `contractors` are capped at 5 minutes;
/// agents of the test cluster get their service-account name as principal,
/// exec, and may act on behalf of a human. Subjects like `@@@` match no
/// role, so they get nothing.
pub const OIDC: &str = r#"
[[role]]
name = "corp-people"
description = "people of the test IdP with a login-like subject"
[role.match]
issuer = ["corp"]
kind = "human"
subject = ["[a-z]*"]
[role.grant]
principals = ["{subject}"]
shell = true
exec = true
pty = true
[role.exec]
allow = ["*"]

[[role]]
name = "contractors"
[role.match]
issuer = ["corp"]
groups = ["contractors"]
[role.grant]
principals = ["{subject}"]
cert_ttl = "5m"

[[role]]
name = "cluster-agents"
[role.match]
issuer = ["cluster"]
kind = "agent"
[role.grant]
principals = ["{service_account}"]
exec = true
on_behalf_of = true
[role.exec]
allow = ["*"]
"#;

/// One role for operator-signed certificates (`sallyport ca sign`, issuer
/// `local`), the identities most session tests use: login = subject,
/// shells, exec and a pty. `grant` adds lines to `[role.grant]`; `tables`
/// is appended as is (`[role.exec]`, `[role.mask]`, `[role.forward]`, ...).
/// Role name and tables are the test's own, so reasons in audit rows name
/// them.
pub fn local_role(name: &str, grant: &str, tables: &str) -> String {
    format!(
        r#"
[[role]]
name = "{name}"
[role.match]
issuer = ["local"]
[role.grant]
principals = ["{{subject}}"]
shell = true
exec = true
pty = true
{grant}{tables}"#
    )
}

/// `[role.exec]` allowing every command.
pub const EXEC_ALLOW_ALL: &str = "[role.exec]\nallow = [\"*\"]\n";
