//! Command policy for `kubectl exec` through the proxy: the exec request's
//! argv (its `command=` query parameters) is checked against the caller's
//! `[role.exec]` rules before the upgrade goes upstream, exactly as an SSH
//! exec request is (`guard::parse` splits it, `sh -c` payloads included,
//! then `Policy::exec` matches every simple command); and lines typed into
//! an interactive shell in the pod are checked the same way while the
//! stream runs ([`LineChecker`], used by `stream::ExecRelay`).
//!
//! The pod runs argv directly (no shell in between), so argv is turned back
//! into one shell word per argument with single quotes ([`quote_argv`]):
//! the parser then sees exactly the argv the kubelet will run, a literal
//! `X=1` stays a program name rather than an assignment, and only a real
//! `sh -c` payload is parsed as shell text.

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::audit::events::Event;
use crate::guard::line::{Certainty, Submitted};
use crate::guard::{CommandLine, parse};
use crate::identity::Identity;
use crate::policy::{Decision, Verdict};

use super::{KubeAuthorizer, KubeProxyContext, MaskFn};

/// Longest command text kept in audit rows, markers and messages.
pub const MAX_SHOWN: usize = 4096;

/// What the exec/attach query asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// `command=` values in order (exec only).
    pub argv: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
}

impl StreamOptions {
    /// From the raw query string (`command=sh&command=-c&command=...&stdin=true&tty=true`).
    pub fn from_query(query: Option<&str>) -> Self {
        let mut o = Self::default();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let on = v == "true" || v == "1";
            match k.as_ref() {
                "command" => o.argv.push(v.into_owned()),
                "stdin" => o.stdin = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        o
    }
}

/// One shell word per argument, single-quoted (`'` written as `'\''`), so
/// [`parse::parse`] reads back exactly `argv`.
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The argv as a parsed command line (what policy matches).
pub fn command_line(argv: &[String]) -> CommandLine {
    let mut cl = parse::parse(&quote_argv(argv));
    // Keep the readable form for messages (the quoted one is only for the parser).
    cl.raw = argv.join(" ");
    cl
}

const SHELLS: &[&str] = &[
    "sh", "bash", "zsh", "dash", "ksh", "ash", "mksh", "yash", "fish",
];

/// Does argv start a shell that reads commands from stdin (no `-c`
/// payload, no script file) — anywhere in it, so `sh -c 'sh; ls'` counts?
/// Its typed lines are then checked one by one.
pub fn is_interactive_shell(argv: &[String]) -> bool {
    command_line(argv).simple.iter().any(|a| reads_commands(a))
}

fn reads_commands(argv: &[String]) -> bool {
    let mut args = argv.iter().map(String::as_str);
    let Some(mut prog) = args.next() else {
        return false;
    };
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let mut prog_base = base(prog);
    if prog_base == "busybox" {
        match args.next() {
            Some(p) => {
                prog = p;
                prog_base = base(prog);
            }
            None => return false,
        }
    }
    if !SHELLS.contains(&prog_base.as_str()) {
        return false;
    }
    // `-c` (alone or in a flag cluster like `-ec`) runs its payload (the
    // parser has checked it) instead of reading stdin; a non-option
    // argument is a script file.
    for a in args {
        if a == "--" || a == "-" {
            break;
        }
        if let Some(flags) = a.strip_prefix('-').or_else(|| a.strip_prefix('+')) {
            if !a.starts_with("--") && flags.contains('c') {
                return false;
            }
            continue;
        }
        return false;
    }
    true
}

/// At most `max` bytes of `s`, cut at a char boundary, "…" when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or(""))
}

/// Mask and clip text for audit rows, markers and messages.
pub fn shown(mask: &MaskFn, text: &str) -> String {
    clip(&String::from_utf8_lossy(&mask(text.as_bytes())), MAX_SHOWN)
}

/// The policy answer for an exec request's argv.
pub fn decide_argv(auth: &dyn KubeAuthorizer, id: &Identity, argv: &[String]) -> Decision {
    if argv.is_empty() {
        return Decision::deny("sallyport: exec without a command cannot be checked");
    }
    auth.exec(id, &command_line(argv))
}

/// Combine the kube rule's answer with the exec rules' answer: deny wins,
/// then approve (one approval covers both), then allow.
pub fn combine(kube: Decision, exec: Decision) -> Decision {
    match (kube.verdict, exec.verdict) {
        (Verdict::Deny, _) => kube,
        (_, Verdict::Deny) => exec,
        (Verdict::Approve, Verdict::Approve) => {
            Decision::approve(format!("{}; {}", kube.reason, exec.reason))
        }
        (Verdict::Approve, _) => {
            Decision::approve(format!("{}; exec: {}", kube.reason, exec.reason))
        }
        (_, Verdict::Approve) => exec,
        _ => Decision::allow(format!("{}; exec: {}", kube.reason, exec.reason)),
    }
}

/// What the relay does with a submitted line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    /// Release the Enter.
    Allow,
    /// Clear the line; tell the user `reason`; `shown` is the masked line.
    Block { reason: String, shown: String },
    /// Hold the Enter until [`LineCheck::approve`] answers.
    Approve { reason: String, shown: String },
}

/// Checks lines typed into a shell in a pod against `[role.exec]` (the
/// policy in force at the time of each line) and audits the outcome.
#[derive(Clone)]
pub struct LineChecker {
    ctx: KubeProxyContext,
    /// Where the shell runs, for audit text (`dev/web-1`).
    pub target: String,
}

impl std::fmt::Debug for LineChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineChecker")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl LineChecker {
    pub fn new(ctx: KubeProxyContext, target: String) -> Self {
        Self { ctx, target }
    }

    fn event(&self, kind: &str, shown: &str, decision: &str, reason: &str) {
        record_event(
            &self.ctx,
            Event {
                connection_id: Some(self.ctx.session_id.as_str()).filter(|s| !s.is_empty()),
                session_id: None,
                kind,
                subject: Some(&self.ctx.identity.subject),
                detail: &format!("kubectl exec {}: {shown}", self.target),
                decision: Some(decision),
                reason: Some(reason),
            },
        );
    }
}

/// The relay's questions for each submitted line.
pub trait LineCheck: Send + Sync {
    fn check(&self, sub: &Submitted) -> LineOutcome;
    /// Ask a human about a line under `approve`: `Ok(())` approved,
    /// `Err(why)` not. The default refuses.
    fn approve(&self, _shown: &str, _reason: &str) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Err("no approvals for typed lines".to_string()) })
    }
}

impl LineCheck for LineChecker {
    /// Decide one line. Unsure lines are denied under a strict grant.
    fn check(&self, sub: &Submitted) -> LineOutcome {
        let line = sub.line.trim();
        if line.is_empty() {
            return LineOutcome::Allow;
        }
        let id = &*self.ctx.identity;
        let auth: &dyn KubeAuthorizer = &*self.ctx.authorizer;
        let decision = match &sub.certainty {
            Certainty::Unsure(why) if auth.session(id).strict => Decision::deny(format!(
                "sallyport: the typed line cannot be read reliably ({why}) and the role is strict"
            )),
            _ => auth.exec(id, &parse::parse(line)),
        };
        let shown = shown(&self.ctx.mask, line);
        let reason = shown_reason(&self.ctx.mask, &decision.reason);
        match decision.verdict {
            Verdict::Allow => {
                self.event("command-allowed", &shown, "allow", &reason);
                LineOutcome::Allow
            }
            Verdict::Deny => {
                self.event("command-blocked", &shown, "deny", &reason);
                LineOutcome::Block { reason, shown }
            }
            // Audited when the approval ends.
            Verdict::Approve => LineOutcome::Approve { reason, shown },
        }
    }

    /// Through the proxy's approver (the approvals table, decided with
    /// `sallyport approvals approve|deny ID`), at most the grant's
    /// `approval_timeout`; the shell waits, keys typed meanwhile queue.
    fn approve(&self, shown: &str, reason: &str) -> BoxFuture<'static, Result<(), String>> {
        let this = self.clone();
        let shown = shown.to_string();
        let reason = reason.to_string();
        Box::pin(async move {
            let outcome = match &this.ctx.approver {
                None => Err("no approver is configured".to_string()),
                Some(a) => {
                    let ask = super::ApprovalRequest {
                        requester: (*this.ctx.identity).clone(),
                        session_id: this.ctx.session_id.clone(),
                        request: format!("kubectl exec {}: {shown}", this.target),
                        reason: reason.clone(),
                        timeout: this.ctx.approval_timeout,
                    };
                    match tokio::time::timeout(this.ctx.approval_timeout, a.request(ask)).await {
                        Ok(Ok(true)) => Ok(()),
                        Ok(Ok(false)) => Err("not approved".to_string()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("approval timed out".to_string()),
                    }
                }
            };
            match &outcome {
                Ok(()) => this.event(
                    "command-approved",
                    &shown,
                    "allow",
                    &format!("{reason} (approved)"),
                ),
                Err(why) => this.event(
                    "command-blocked",
                    &shown,
                    "deny",
                    &format!("{reason} ({why})"),
                ),
            }
            outcome.map_err(|why| format!("{reason}: {why}"))
        })
    }
}

fn shown_reason(mask: &MaskFn, reason: &str) -> String {
    String::from_utf8_lossy(&mask(reason.as_bytes())).into_owned()
}

/// Write an `events` row (errors are logged: the kube row still exists).
pub fn record_event(ctx: &KubeProxyContext, e: Event<'_>) {
    if let Some(store) = &ctx.audit
        && let Err(err) = store.record_event(&e)
    {
        tracing::warn!(error = %err, "kube proxy: cannot record event");
    }
}

/// A shared checker for the relay.
pub type SharedChecker = Arc<dyn LineCheck>;

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv_is_parsed_as_the_pod_runs_it() {
        let cl = command_line(&v(&["sh", "-c", "rm -rf /x; echo ok"]));
        assert!(cl.simple.contains(&v(&["rm", "-rf", "/x"])), "{cl:?}");
        assert!(cl.simple.contains(&v(&["echo", "ok"])), "{cl:?}");
        // No shell: the words are literal, quotes and all.
        let cl = command_line(&v(&["echo", "it's $HOME; rm -rf /"]));
        assert_eq!(cl.simple, vec![v(&["echo", "it's $HOME; rm -rf /"])]);
        let cl = command_line(&v(&["/bin/rm", "-rf", "/x"]));
        assert_eq!(cl.simple, vec![v(&["rm", "-rf", "/x"])]);
        assert_eq!(cl.raw, "/bin/rm -rf /x");
    }

    #[test]
    fn interactive_shells_are_recognised() {
        for a in [
            &["sh"][..],
            &["/bin/bash", "-i"],
            &["bash", "-l"],
            &["busybox", "sh"],
            &["env", "TERM=xterm", "bash"],
            &["sh", "-c", "sh; ls"],
            &["bash", "-c", "exec bash -l"],
        ] {
            assert!(is_interactive_shell(&v(a)), "{a:?}");
        }
        for a in [
            &["sh", "-c", "ls"][..],
            &["bash", "-ec", "ls"],
            &["sh", "script.sh"],
            &["cat"],
            &["python3"],
            &["busybox", "ls"],
        ] {
            assert!(!is_interactive_shell(&v(a)), "{a:?}");
        }
    }

    #[test]
    fn options_from_query() {
        let o = StreamOptions::from_query(Some(
            "command=sh&command=-c&command=echo+a%3Db&stdin=true&stdout=true&tty=true",
        ));
        assert_eq!(o.argv, v(&["sh", "-c", "echo a=b"]));
        assert!(o.stdin && o.tty);
        let o = StreamOptions::from_query(None);
        assert!(o.argv.is_empty() && !o.stdin && !o.tty);
    }

    #[test]
    fn combine_deny_then_approve_then_allow() {
        let a = Decision::allow("k");
        let d = Decision::deny("e");
        assert_eq!(combine(a.clone(), d.clone()).verdict, Verdict::Deny);
        assert_eq!(combine(a.clone(), d).reason, "e");
        assert_eq!(
            combine(Decision::approve("k"), Decision::allow("e")).verdict,
            Verdict::Approve
        );
        assert_eq!(
            combine(a.clone(), Decision::approve("e")).verdict,
            Verdict::Approve
        );
        assert_eq!(combine(a, Decision::allow("e")).verdict, Verdict::Allow);
    }

    #[test]
    fn clip_keeps_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h…");
        assert_eq!(clip("abc", 3), "abc");
    }
}
