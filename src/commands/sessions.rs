//! `sallyport sessions`: list, show and play recorded sessions from the
//! audit database and the recordings folder.

use std::process::ExitCode;

use anyhow::Context;

use super::{Global, open_store};
use crate::audit::approvals::ApprovalRow;
use crate::audit::events::EventRow;
use crate::audit::sessions::SessionRow;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List sessions, newest first.
    List(ListArgs),
    /// Show one session (every column), its blocked commands, approvals,
    /// masking hits and events, each with its time.
    Show(ShowArgs),
    /// Replay a session's recording (`asciinema play`; when asciinema is not
    /// installed or stdout is not a terminal, print what the client saw).
    Play(PlayArgs),
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON (an array of session objects).
    #[arg(long)]
    pub json: bool,
    /// At most this many sessions.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Session id (or a unique prefix).
    pub id: String,
    /// Print JSON: `session`, `blocked`, `approvals`, `mask_hits`, `events`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlayArgs {
    /// Session id (or a unique prefix).
    pub id: String,
}

pub async fn run(g: &Global, cmd: Command) -> anyhow::Result<ExitCode> {
    let cfg = g.load_config()?;
    let store = open_store(&cfg)?;
    match cmd {
        Command::List(a) => {
            let rows = store.list_sessions(a.limit)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&rows);
            }
        }
        Command::Show(a) => show(&store, &a)?,
        Command::Play(a) => {
            let s = find(&store, &a.id)?;
            let path = s
                .recording
                .ok_or_else(|| anyhow::anyhow!("session {} has no recording", s.id))?;
            // asciinema play needs a terminal; piped, print the output instead.
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let has_asciinema = tty
                && std::process::Command::new("asciinema")
                    .arg("--version")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
            if has_asciinema {
                let st = std::process::Command::new("asciinema")
                    .arg("play")
                    .arg(&path)
                    .status()
                    .context("cannot run asciinema")?;
                return Ok(if st.success() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            if tty {
                eprintln!("recording: {path} (install asciinema to replay it with timing)");
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read recording {path}"))?;
            print!("{}", cast_output(&text));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether an event records something the guard stopped.
fn is_blocked(e: &EventRow) -> bool {
    e.decision.as_deref() == Some("deny") || e.kind.contains("blocked")
}

/// Everything `sessions show` prints, built once and printed as JSON or
/// as text.
#[derive(Debug, serde::Serialize)]
struct SessionView {
    session: SessionRow,
    /// The events the guard stopped (a subset of `events`).
    blocked: Vec<EventRow>,
    approvals: Vec<ApprovalRow>,
    mask_hits: Vec<MaskHit>,
    events: Vec<EventRow>,
}

impl SessionView {
    fn load(store: &crate::audit::Store, id: &str) -> anyhow::Result<Self> {
        let session = find(store, id)?;
        let events = store.session_events(&session.id)?;
        let approvals = store.session_approvals(&session.id)?;
        let mask_hits = store
            .mask_hits(&session.id)?
            .into_iter()
            .map(|(at, source, detector, offset)| MaskHit {
                at,
                source,
                detector,
                offset,
            })
            .collect();
        let blocked = events.iter().filter(|e| is_blocked(e)).cloned().collect();
        Ok(Self {
            session,
            blocked,
            approvals,
            mask_hits,
            events,
        })
    }

    fn print_text(&self) -> anyhow::Result<()> {
        let v = serde_json::to_value(&self.session)?;
        if let Some(m) = v.as_object() {
            for (k, v) in m {
                let shown = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => "-".into(),
                    other => other.to_string(),
                };
                println!("{k:>14}  {shown}");
            }
        }
        section("blocked commands", &self.blocked, event_line);
        section("approvals", &self.approvals, |r| {
            let decided = match (&r.decided_at, &r.decided_by) {
                (Some(at), Some(by)) => format!(" by {by} at {at}"),
                (Some(at), None) => format!(" at {at}"),
                _ => String::new(),
            };
            let note = r
                .decision_note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            format!(
                "{}  {}  {}  {}  {}{decided}{note}",
                r.created_at, r.id, r.kind, r.request, r.status
            )
        });
        section("masking hits", &self.mask_hits, |h| {
            format!(
                "{}  {}  {} at byte {}",
                h.at, h.source, h.detector, h.offset
            )
        });
        section("events", &self.events, event_line);
        Ok(())
    }
}

/// A titled list, one item per line, `(none)` when empty.
fn section<T>(title: &str, items: &[T], line: impl Fn(&T) -> String) {
    println!("\n{title}:");
    if items.is_empty() {
        println!("  (none)");
    }
    for i in items {
        println!("  {}", line(i));
    }
}

fn event_line(e: &EventRow) -> String {
    let reason = e
        .reason
        .as_deref()
        .map(|r| format!("  ({r})"))
        .unwrap_or_default();
    format!("{}  {}  {}{reason}", e.at, e.kind, e.detail)
}

fn show(store: &crate::audit::Store, a: &ShowArgs) -> anyhow::Result<()> {
    let view = SessionView::load(store, &a.id)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        Ok(())
    } else {
        view.print_text()
    }
}

/// One masking hit as `sessions show` prints it (never the secret).
#[derive(Debug, serde::Serialize)]
struct MaskHit {
    at: String,
    /// output | stderr | command | input
    source: String,
    detector: String,
    /// Byte offset in that stream.
    offset: i64,
}

fn find(store: &crate::audit::Store, id: &str) -> anyhow::Result<SessionRow> {
    store.get_session(id)?.ok_or_else(|| {
        anyhow::anyhow!(
            "no session {id:?} (or the prefix is ambiguous); see `sallyport sessions list`"
        )
    })
}

/// The "o" events of an asciicast v2 file concatenated (what `asciinema cat` prints).
pub fn cast_output(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines().skip(1) {
        if let Ok(serde_json::Value::Array(ev)) = serde_json::from_str::<serde_json::Value>(line)
            && ev.get(1).and_then(|k| k.as_str()) == Some("o")
            && let Some(d) = ev.get(2).and_then(|d| d.as_str())
        {
            out.push_str(d);
        }
    }
    out
}

fn duration(s: &SessionRow) -> String {
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    };
    match (parse(&s.started_at), s.ended_at.as_deref().and_then(parse)) {
        (Some(a), Some(b)) => {
            let secs = (b - a).whole_seconds().max(0) as u64;
            humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
        }
        (Some(_), None) => "running".into(),
        _ => "?".into(),
    }
}

fn print_table(rows: &[SessionRow]) {
    println!(
        "{:<36}  {:<20}  {:>8}  {:<20}  {:<5}  {:<30}  EXIT",
        "ID", "START", "DURATION", "USER/SUBJECT", "KIND", "COMMAND"
    );
    for s in rows {
        let start = s.started_at.get(..19).unwrap_or(&s.started_at);
        let who = format!("{}/{}", s.user, s.subject);
        let mut cmd = s.command.clone().unwrap_or_else(|| "-".into());
        if cmd.chars().count() > 30 {
            cmd = cmd.chars().take(29).collect::<String>() + "…";
        }
        let exit = match (&s.exit_status, &s.exit_signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(sig)) => format!("SIG{sig}"),
            _ => "-".into(),
        };
        println!(
            "{:<36}  {:<20}  {:>8}  {:<20}  {:<5}  {:<30}  {exit}",
            s.id,
            start,
            duration(s),
            who,
            s.kind,
            cmd
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_output_concatenates_o_events_only() {
        let text = "{\"version\":2}\n[0.1,\"o\",\"hel\"]\n[0.2,\"i\",\"x\"]\n[0.3,\"r\",\"80x24\"]\n[0.4,\"o\",\"lo\\r\\n\"]\n";
        assert_eq!(cast_output(text), "hello\r\n");
    }
}
