//! What a running shell/exec session holds from policy, and re-checking it
//! when the policy is reloaded (issue 4: "sessions already open are
//! re-checked against the new policy where that makes sense"). Also the
//! session limits the grant sets (`max_duration`, `idle_timeout`), which a
//! reload may change.
//!
//! A session task keeps one [`Held`] and one policy watch receiver; on a new
//! generation it calls [`recheck`]. What ends a session: no role matches
//! any more, the session kind (shell / exec) is no longer granted, the
//! login principal the policy granted is no longer among its principals, an
//! exec's command is now denied, or the new policy's masking cannot be
//! compiled (fail closed, as at session start). What a session that stays
//! allowed picks up: `max_duration` (counted from the session start),
//! `idle_timeout`, and the output masking rules (applied to output from the
//! reload on). What it keeps: `record_input` (the recording's shape is fixed
//! at start); `strict` and exec rules for lines typed later are for the
//! interactive line guard to check per line against the policy in force;
//! the certificate keeps its TTL. Forwards are checked per channel open
//! only; an exec still waiting for approval is re-checked when approved.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::guard::parse;
use crate::identity::Identity;
use crate::policy::{Policy, SessionGrant, Verdict};

/// What the session was granted, and what it runs: the input to
/// [`recheck`].
#[derive(Debug, Clone)]
pub struct Held {
    pub identity: Identity,
    /// Login name the client asked for.
    pub user: String,
    /// The command run (after force-command); `None` = interactive shell.
    pub command: Option<String>,
    /// Whether the policy in force at session start granted `user` as a
    /// principal. Certificates signed by an operator (`ca sign`) may carry
    /// principals no policy lists; only a principal the policy granted can
    /// be withdrawn by a policy change.
    pub principal_granted: bool,
    /// The grant in force (from session start or the last reload).
    pub grant: SessionGrant,
    /// Policy generation `grant` was computed from.
    pub generation: u64,
    /// When the session's child started (max duration counts from here).
    pub started: Instant,
}

impl Held {
    /// What a session starting now under `policy` (generation `generation`) holds.
    pub fn new(
        policy: &Policy,
        generation: u64,
        identity: &Identity,
        user: &str,
        command: Option<String>,
        grant: SessionGrant,
    ) -> Self {
        Self {
            identity: identity.clone(),
            user: user.to_string(),
            command,
            principal_granted: principal_granted(policy, identity, user),
            grant,
            generation,
            started: Instant::now(),
        }
    }

    /// When `max_duration` ends the session, if it is set.
    pub fn deadline(&self) -> Option<Instant> {
        self.grant.max_duration.map(|d| self.started + d)
    }

    /// Whether the masking part of the grant changed between `self` and `new`.
    pub fn mask_changed(&self, new: &SessionGrant) -> bool {
        self.grant.mask_live != new.mask_live
            || self.grant.mask_detectors != new.mask_detectors
            || self.grant.mask_custom != new.mask_custom
    }
}

fn principal_granted(policy: &Policy, identity: &Identity, user: &str) -> bool {
    policy
        .issue(identity)
        .is_ok_and(|g| g.principals.iter().any(|p| p == user))
}

/// Why a session no longer stands under a new policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// For the user and the audit detail, e.g. `interactive shells are no
    /// longer allowed`.
    pub why: String,
    /// The new policy's reason: the rule or roles that decided, or
    /// `no role matched (default deny)`.
    pub rule: String,
}

/// Re-check a running session against `policy`. `Ok` is the new grant (its
/// limits and masking now apply); `Err` says why the session must end.
/// `mask_text` masks command text quoted in reasons (strict reasons may
/// quote the command).
pub fn recheck(
    policy: &Policy,
    held: &Held,
    mask_text: impl Fn(&str) -> String,
) -> Result<SessionGrant, Revoked> {
    let id = &held.identity;
    let grant = policy.session(id);
    if policy.matching(id).is_empty() {
        return Err(Revoked {
            why: format!("no role grants {} anything any more", id.display()),
            rule: grant.reason,
        });
    }
    match &held.command {
        None if !grant.shell => {
            return Err(Revoked {
                why: "interactive shells are no longer allowed".into(),
                rule: grant.reason,
            });
        }
        Some(_) if !grant.exec => {
            return Err(Revoked {
                why: "commands are no longer allowed".into(),
                rule: grant.reason,
            });
        }
        Some(c) => {
            let d = policy.exec(id, &parse::parse(c));
            // Approve: it was allowed or approved when it started; an
            // approval is for starting a command, so it keeps running.
            if d.verdict == Verdict::Deny {
                return Err(Revoked {
                    why: "the command is now denied".into(),
                    rule: mask_text(&d.reason),
                });
            }
        }
        None => {}
    }
    if held.principal_granted && !principal_granted(policy, id, &held.user) {
        let rule = match policy.issue(id) {
            Ok(g) => g.reason,
            Err(d) => d.reason,
        };
        return Err(Revoked {
            why: format!("login '{}' is no longer a granted principal", held.user),
            rule,
        });
    }
    Ok(grant)
}

/// The last client input of a session (idle timeout). Written by the
/// handler side for every input chunk, read by the session task.
#[derive(Debug, Default)]
pub struct Activity {
    last_input: Mutex<Option<Instant>>,
}

impl Activity {
    pub fn touch(&self) {
        let now = Instant::now();
        match self.last_input.lock() {
            Ok(mut g) => *g = Some(now),
            Err(p) => *p.into_inner() = Some(now),
        }
    }

    pub fn last_input(&self) -> Option<Instant> {
        match self.last_input.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

/// When an idle session ends: `idle` after the later of the last output
/// and the last input.
pub fn idle_deadline(
    idle: Option<Duration>,
    last_output: Instant,
    last_input: Option<Instant>,
) -> Option<Instant> {
    let last = match last_input {
        Some(i) if i > last_output => i,
        _ => last_output,
    };
    idle.map(|d| last + d)
}

/// `8h`, `90s` for messages.
pub fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        Policy::from_toml("p.toml", text).unwrap()
    }

    const BASE: &str = r#"
[[role]]
name = "ops"
[role.match]
issuer = ["local"]
[role.grant]
principals = ["{subject}"]
shell = true
exec = true
max_duration = "1h"
idle_timeout = "10m"
[role.exec]
allow = ["*"]
deny = ["rm *"]
"#;

    fn alice() -> Identity {
        Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        }
    }

    fn held(p: &Policy, command: Option<&str>) -> Held {
        Held::new(
            p,
            0,
            &alice(),
            "alice",
            command.map(str::to_string),
            p.session(&alice()),
        )
    }

    fn id(s: &str) -> String {
        s.to_string()
    }

    // Negative cases first: each way a grant can go away ends the session
    // and names the new policy's reason.
    #[test]
    fn recheck_ends_sessions_whose_grant_is_gone() {
        let p = policy(BASE);
        let shell = held(&p, None);
        let exec = held(&p, Some("ls -l"));
        assert!(shell.principal_granted);

        let no_role = policy(&BASE.replace("issuer = [\"local\"]", "issuer = [\"other\"]"));
        let r = recheck(&no_role, &shell, id).unwrap_err();
        assert_eq!(r.rule, "no role matched (default deny)");
        assert!(r.why.contains("alice (local)"), "{}", r.why);

        let no_shell = policy(&BASE.replace("shell = true", "shell = false"));
        let r = recheck(&no_shell, &shell, id).unwrap_err();
        assert_eq!(r.why, "interactive shells are no longer allowed");
        assert!(r.rule.contains("role 'ops'"), "{}", r.rule);
        // ... while the exec session under the same policy stays.
        assert!(recheck(&no_shell, &exec, id).is_ok());

        let no_exec = policy(&BASE.replace("exec = true", "exec = false"));
        let r = recheck(&no_exec, &exec, id).unwrap_err();
        assert_eq!(r.why, "commands are no longer allowed");

        let ls_denied = policy(&BASE.replace("deny = [\"rm *\"]", "deny = [\"ls *\"]"));
        let r = recheck(&ls_denied, &exec, |s| s.replace("ls", "XX")).unwrap_err();
        assert_eq!(r.why, "the command is now denied");
        assert!(r.rule.contains("exec.deny 'XX *'"), "{}", r.rule);

        let other_login = policy(&BASE.replace("{subject}", "ops-{subject}"));
        let r = recheck(&other_login, &shell, id).unwrap_err();
        assert_eq!(r.why, "login 'alice' is no longer a granted principal");
        assert!(r.rule.contains("role 'ops'"), "{}", r.rule);
    }

    #[test]
    fn recheck_keeps_allowed_sessions_and_hands_back_new_limits() {
        let p = policy(BASE);
        let shell = held(&p, None);
        let longer = policy(
            &BASE
                .replace("max_duration = \"1h\"", "max_duration = \"2h\"")
                .replace("idle_timeout = \"10m\"", "idle_timeout = \"5m\""),
        );
        let g = recheck(&longer, &shell, id).unwrap();
        assert_eq!(g.max_duration, Some(Duration::from_secs(7200)));
        assert_eq!(g.idle_timeout, Some(Duration::from_secs(300)));
        assert!(!shell.mask_changed(&g));
        // An approve rule for a running command does not end it.
        let approve = policy(&BASE.replace("deny = [\"rm *\"]", "approve = [\"ls *\"]"));
        assert!(recheck(&approve, &held(&p, Some("ls -l")), id).is_ok());
        // Masking changes are reported so the output masker is rebuilt.
        let masked = policy(&format!(
            "{BASE}[role.mask]\ncustom = [{{ name = \"acme\", regex = \"acme_[a-z]{{8}}\" }}]\n"
        ));
        let g = recheck(&masked, &shell, id).unwrap();
        assert!(shell.mask_changed(&g));
    }

    #[test]
    fn a_principal_the_policy_never_granted_is_not_withdrawn() {
        // `ca sign --principal root` for alice: policy grants "alice" only.
        let p = policy(BASE);
        let h = Held::new(&p, 0, &alice(), "root", None, p.session(&alice()));
        assert!(!h.principal_granted);
        assert!(recheck(&p, &h, id).is_ok());
    }

    #[test]
    fn deadlines_follow_the_grant_and_the_last_activity() {
        let p = policy(BASE);
        let mut h = held(&p, None);
        assert_eq!(h.deadline(), Some(h.started + Duration::from_secs(3600)));
        h.grant.max_duration = None;
        assert_eq!(h.deadline(), None);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(5);
        let idle = Some(Duration::from_secs(60));
        assert_eq!(idle_deadline(None, t0, Some(later)), None);
        assert_eq!(
            idle_deadline(idle, t0, None),
            Some(t0 + Duration::from_secs(60))
        );
        assert_eq!(
            idle_deadline(idle, t0, Some(later)),
            Some(later + Duration::from_secs(60))
        );
        assert_eq!(
            idle_deadline(idle, later, Some(t0)),
            Some(later + Duration::from_secs(60))
        );
        let a = Activity::default();
        assert_eq!(a.last_input(), None);
        a.touch();
        assert!(a.last_input().is_some());
        assert_eq!(human(Duration::from_millis(90_500)), "1m 30s");
    }
}
