//! The interactive line guard of a pty shell session: it owns the channel's
//! client input once the session runs, feeds it through the session's
//! [`LineTracker`] (which the output side feeds with the shell's output via
//! [`LineShared`]), and at each Enter checks the line the shell is about to
//! run with policy — exactly like an exec command — before the Enter reaches
//! the shell: allow releases it (audited `command-allowed`), deny clears the
//! line instead (`command-blocked`, an "m" marker, a message on the screen),
//! approve holds it until an approver decides (Ctrl-C withdraws).
//!
//! Bracketed pastes are taken apart here: each pasted line is inserted and
//! checked on its own, the next one only once the shell shows its prompt
//! again, and the first refused line drops the rest of the paste.
//!
//! Before reading the line, the guard sends [`SYNC_KEY`] to the shell and
//! waits for its answer (an OSC 133 `S` mark, see `shell-integration.bash`),
//! so keys the shell was still handling (Tab completion, history recall)
//! are on the screen first. Without marks (not bash) the typed input is all
//! there is ([`Certainty::Typed`]).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::masking::SessionMask;
use super::session::{
    Input, InputSeam, MAX_SHOWN, Queued, clip, event, not_approved, with_recorder,
};
use crate::audit::events::Event;
use crate::guard::approval;
use crate::guard::line::{Action, CLEAR_LINE, Certainty, LineTracker, SYNC_KEY, Submitted};
use crate::guard::parse;
use crate::identity::Identity;
use crate::policy::Verdict;
use crate::record::Recorder;
use crate::shell::RcFile;

/// How long the shell may take to answer the sync key (it answers after
/// the keys before it, so a slow completion delays it) before the line
/// counts as unsure.
const SYNC_WAIT: Duration = Duration::from_secs(5);
/// How long an Enter typed while a command runs waits for the shell's next
/// prompt when the typed keys alone cannot say what the line is (or the
/// role is strict); after it, the keys are taken as input to the program.
const PROMPT_WAIT: Duration = Duration::from_secs(1);
/// How long to wait for the echo of typed keys (no marks).
const ECHO_WAIT: Duration = Duration::from_millis(100);
/// How long to let the shell redraw after [`CLEAR_LINE`].
const CLEAR_WAIT: Duration = Duration::from_millis(300);
/// Client input kept while a line waits for approval or a pasted command
/// runs; beyond it the channel's input queue pushes back.
const MAX_HELD: usize = 1 << 20;
/// Longest line quoted in the message on the user's screen.
const MAX_ON_SCREEN: usize = 200;

const PASTE_START: &[u8] = b"\x1b[200~";
const PASTE_END: &[u8] = b"\x1b[201~";

/// The session's line tracker, shared by the output side (which feeds it)
/// and the input side (which asks it). Output feeds bump a counter so the
/// input side can wait for "something new on the screen".
pub struct LineShared {
    tracker: Mutex<LineTracker>,
    fed: watch::Sender<u64>,
    /// The shell's pid: tells whether the shell itself holds the terminal.
    shell_pid: Option<u32>,
    /// The terminal's echo setting (keys typed with echo off are secrets).
    echo: Option<crate::shell::EchoProbe>,
}

impl std::fmt::Debug for LineShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineShared").finish_non_exhaustive()
    }
}

impl LineShared {
    pub fn new(
        rows: u16,
        cols: u16,
        shell_pid: Option<u32>,
        echo: Option<crate::shell::EchoProbe>,
    ) -> Arc<Self> {
        Arc::new(Self {
            tracker: Mutex::new(LineTracker::new(rows, cols)),
            fed: watch::channel(0).0,
            shell_pid,
            echo,
        })
    }

    /// Whether the terminal echoes typed keys; unknown counts as no (the
    /// careful answer when deciding whether typed text may be logged).
    fn echo_on(&self) -> bool {
        self.echo
            .as_ref()
            .and_then(|e| e.echo_on())
            .unwrap_or(false)
    }

    /// Whether the shell itself is the terminal's foreground process group
    /// (so typed keys are a command line for its next prompt, not input to
    /// a running program): a builtin is running, or a command just ended
    /// and the prompt is not drawn yet. Interactive bash runs each job in
    /// its own process group, so a running program holds the terminal
    /// instead. Read from /proc/PID/stat (pgrp, tpgid); `false` when that
    /// cannot be read.
    fn shell_in_front(&self) -> bool {
        let Some(pid) = self.shell_pid else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // After "pid (comm)": state ppid pgrp session tty_nr tpgid ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        match (f.get(2), f.get(5)) {
            (Some(pgrp), Some(tpgid)) => pgrp == tpgid,
            _ => false,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut LineTracker) -> R) -> R {
        let mut g = match self.tracker.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Shell output (raw: the tracker only models the screen).
    pub fn output(&self, bytes: &[u8]) {
        self.with(|t| t.output(bytes));
        self.fed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        self.with(|t| t.resize(rows, cols));
    }
}

/// One piece of client input, as the guard handles it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Typed keys (outside a paste).
    Keys(Vec<u8>),
    /// Pasted text without line ends.
    Paste(Vec<u8>),
    /// A line end inside a paste: the pasted line is submitted here.
    PasteLine,
    /// The paste ended.
    PasteEnd,
}

/// Splits client input into [`Piece`]s, following bracketed paste marks
/// across chunks.
#[derive(Debug, Default)]
struct Splitter {
    carry: Vec<u8>,
    in_paste: bool,
    /// The last pasted byte was `\r` (a following `\n` is the same line end).
    cr: bool,
}

/// Length of the longest suffix of `hay` that is a proper prefix of `mark`,
/// at least `min` long.
fn partial_suffix(hay: &[u8], mark: &[u8], min: usize) -> usize {
    (min..mark.len())
        .rev()
        .find(|&l| {
            hay.len() >= l
                && hay
                    .get(hay.len() - l..)
                    .is_some_and(|t| mark.starts_with(t))
        })
        .unwrap_or(0)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Splitter {
    fn split(&mut self, data: &[u8]) -> Vec<Piece> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut rest: &[u8] = &buf;
        while !rest.is_empty() {
            if !self.in_paste {
                match find(rest, PASTE_START) {
                    Some(p) => {
                        let (keys, tail) = rest.split_at(p);
                        if !keys.is_empty() {
                            out.push(Piece::Keys(keys.to_vec()));
                        }
                        self.in_paste = true;
                        self.cr = false;
                        rest = tail.get(PASTE_START.len()..).unwrap_or_default();
                    }
                    None => {
                        // Hold a started `ESC [ 2 0 0` for the next chunk;
                        // a lone ESC goes on (it may be a key of its own).
                        let keep = partial_suffix(rest, PASTE_START, 2);
                        let (keys, tail) = rest.split_at(rest.len() - keep);
                        if !keys.is_empty() {
                            out.push(Piece::Keys(keys.to_vec()));
                        }
                        self.carry = tail.to_vec();
                        break;
                    }
                }
            } else {
                let (text, after, ended) = match find(rest, PASTE_END) {
                    Some(p) => {
                        let (t, a) = rest.split_at(p);
                        (t, a.get(PASTE_END.len()..).unwrap_or_default(), true)
                    }
                    None => {
                        let keep = partial_suffix(rest, PASTE_END, 1);
                        let (t, a) = rest.split_at(rest.len() - keep);
                        self.carry = a.to_vec();
                        (t, &[][..], false)
                    }
                };
                self.paste_text(text, &mut out);
                if ended {
                    out.push(Piece::PasteEnd);
                    self.in_paste = false;
                }
                rest = after;
                if !ended {
                    break;
                }
            }
        }
        out
    }

    fn paste_text(&mut self, text: &[u8], out: &mut Vec<Piece>) {
        let mut line = Vec::new();
        for &b in text {
            match b {
                b'\n' if self.cr => self.cr = false,
                b'\r' | b'\n' => {
                    if !line.is_empty() {
                        out.push(Piece::Paste(std::mem::take(&mut line)));
                    }
                    out.push(Piece::PasteLine);
                    self.cr = b == b'\r';
                }
                _ => {
                    line.push(b);
                    self.cr = false;
                }
            }
        }
        if !line.is_empty() {
            out.push(Piece::Paste(line));
        }
    }
}

/// Where the guard's input comes from: the channel's queue, through the
/// input seam (which records "i" events and counts bytes).
pub(super) struct Intake<'a> {
    pub(super) seam: &'a mut InputSeam,
    pub(super) rx: &'a mut mpsc::UnboundedReceiver<Input>,
    pub(super) queued: &'a Queued,
    pub(super) failed: &'a CancellationToken,
}

impl Intake<'_> {
    /// The next chunk of client input; `None` when the channel is done.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            match self.rx.recv().await? {
                Input::Eof => continue,
                Input::Data(d) => {
                    let len = d.len();
                    let admitted = self.seam.admit(d).await;
                    self.queued.take(len);
                    match admitted {
                        Ok(Some(d)) => return Some(d),
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "recording input failed: ending the session");
                            self.failed.cancel();
                            return None;
                        }
                    }
                }
            }
        }
    }
}

/// Client input split into pieces, waiting to be handled.
struct Inbox<'a> {
    intake: Intake<'a>,
    split: Splitter,
    queue: VecDeque<Piece>,
    held: usize,
}

impl Inbox<'_> {
    /// Read one more chunk into the queue. `None`: the channel is done;
    /// `Some(true)`: the chunk has a Ctrl-C typed outside a paste.
    async fn pull(&mut self) -> Option<bool> {
        let d = self.intake.next().await?;
        self.held += d.len();
        let pieces = self.split.split(&d);
        let ctrl_c = pieces
            .iter()
            .any(|p| matches!(p, Piece::Keys(k) if k.contains(&0x03)));
        self.queue.extend(pieces);
        Some(ctrl_c)
    }

    fn pop(&mut self) -> Option<Piece> {
        let p = self.queue.pop_front()?;
        let n = match &p {
            Piece::Keys(b) | Piece::Paste(b) => b.len(),
            _ => 1,
        };
        self.held = self.held.saturating_sub(n);
        if self.queue.is_empty() {
            self.held = 0;
        }
        Some(p)
    }

    /// Forget the pasted lines still queued (a refused line or Ctrl-C
    /// stopped the paste).
    fn drop_paste(&mut self) {
        self.queue
            .retain(|p| !matches!(p, Piece::Paste(_) | Piece::PasteLine));
    }
}

/// What became of a held Enter.
enum Fate {
    Released,
    Refused,
    /// The channel is gone.
    Gone,
}

/// The guard of one pty shell channel.
pub struct LineGuard {
    pub line: Arc<LineShared>,
    pub shared: Arc<Shared>,
    pub identity: Identity,
    pub session_id: String,
    pub conn_id: String,
    pub mask: SessionMask,
    pub recorder: Arc<Mutex<Option<Recorder>>>,
    pub handle: Handle,
    pub channel: ChannelId,
    /// The rcfile bash was started with; removed when the guard ends.
    pub rcfile: Option<RcFile>,
}

impl LineGuard {
    /// Handle the channel's input until it ends, writing what may reach the
    /// shell to `pty`.
    pub(super) async fn run(self, intake: Intake<'_>, pty: std::sync::mpsc::Sender<Bytes>) {
        let mut run = Run {
            g: &self,
            pty,
            fed: self.line.fed.subscribe(),
            inbox: Inbox {
                intake,
                split: Splitter::default(),
                queue: VecDeque::new(),
                held: 0,
            },
            dropping_paste: false,
        };
        run.run().await;
    }
}

struct Run<'g, 'a> {
    g: &'g LineGuard,
    pty: std::sync::mpsc::Sender<Bytes>,
    fed: watch::Receiver<u64>,
    inbox: Inbox<'a>,
    /// A refused pasted line: the rest of this paste goes nowhere.
    dropping_paste: bool,
}

impl Run<'_, '_> {
    async fn run(&mut self) {
        loop {
            let piece = match self.inbox.pop() {
                Some(p) => p,
                None => match self.inbox.pull().await {
                    Some(_) => continue,
                    None => return,
                },
            };
            let go_on = match piece {
                Piece::Keys(k) => self.keys(&k).await,
                Piece::Paste(text) => self.paste(&text).await,
                Piece::PasteLine if self.dropping_paste => true,
                Piece::PasteLine => self.paste_line().await,
                Piece::PasteEnd => {
                    self.dropping_paste = false;
                    true
                }
            };
            if !go_on {
                return;
            }
        }
    }

    fn write(&self, b: &[u8]) -> bool {
        b.is_empty() || self.pty.send(Bytes::copy_from_slice(b)).is_ok()
    }

    /// Typed keys: forward, and check each Enter. The tracker is fed one
    /// Enter at a time, so each line is checked before any key after its
    /// Enter reaches the tracker or the shell: several lines in one chunk
    /// (a paste the shell has not asked to bracket yet, e.g. before its
    /// first prompt; keys typed ahead) are checked line by line, not as one
    /// line with everything after the first Enter run unchecked. A refused
    /// line drops the rest of its chunk, as a refused pasted line drops the
    /// rest of the paste: what follows may depend on it.
    async fn keys(&mut self, k: &[u8]) -> bool {
        let mut parts = k
            .split_inclusive(|b| matches!(b, b'\r' | b'\n' | 0x0f))
            .peekable();
        while let Some(part) = parts.next() {
            let actions = self.g.line.with(|t| t.input(part));
            for a in actions {
                match a {
                    Action::Forward(b) => {
                        if !self.write(&b) {
                            return false;
                        }
                    }
                    Action::Enter(b) => match self.enter(&b).await {
                        Fate::Gone => return false,
                        Fate::Released => {}
                        Fate::Refused => {
                            if parts.peek().is_some() {
                                self.notice("the input after the blocked line was dropped")
                                    .await;
                            }
                            return true;
                        }
                    },
                }
            }
        }
        true
    }

    /// Pasted text (no line ends): inserted as a paste when the shell does
    /// bracketed paste, so readline takes it literally.
    async fn paste(&mut self, text: &[u8]) -> bool {
        if self.dropping_paste {
            return true;
        }
        let bracketed = self.g.line.with(|t| t.shell_paste());
        let mut bytes = Vec::with_capacity(text.len() + 12);
        if bracketed {
            bytes.extend_from_slice(PASTE_START);
        }
        bytes.extend_from_slice(text);
        if bracketed {
            bytes.extend_from_slice(PASTE_END);
        }
        let actions = self.g.line.with(|t| t.input(&bytes));
        for a in actions {
            let ok = match a {
                Action::Forward(b) => self.write(&b),
                Action::Enter(b) => match self.enter(&b).await {
                    Fate::Gone => false,
                    Fate::Refused => {
                        self.stop_paste();
                        true
                    }
                    Fate::Released => true,
                },
            };
            if !ok {
                return false;
            }
        }
        true
    }

    fn stop_paste(&mut self) {
        self.dropping_paste = self.inbox.split.in_paste
            || self
                .inbox
                .queue
                .iter()
                .any(|p| matches!(p, Piece::PasteEnd));
        self.inbox.drop_paste();
    }

    /// A line end in a paste: check the pasted line like a typed Enter;
    /// once released, wait for the next prompt before the next line.
    async fn paste_line(&mut self) -> bool {
        match self.enter(b"\r").await {
            Fate::Gone => false,
            Fate::Refused => {
                self.stop_paste();
                true
            }
            Fate::Released => self.wait_prompt().await,
        }
    }

    /// After a released pasted line, hold the rest of the paste until the
    /// shell prompts again (marks only). Ctrl-C typed meanwhile stops the
    /// paste and goes to the running command.
    async fn wait_prompt(&mut self) -> bool {
        let more_paste = self
            .inbox
            .queue
            .iter()
            .any(|p| matches!(p, Piece::Paste(_) | Piece::PasteLine));
        if !more_paste && !self.inbox.split.in_paste {
            return true;
        }
        loop {
            let (marks, at_prompt) = self.g.line.with(|t| (t.has_marks(), t.at_prompt()));
            if !marks || at_prompt {
                return true;
            }
            let room = self.inbox.held < MAX_HELD;
            tokio::select! {
                r = self.fed.changed() => {
                    if r.is_err() {
                        return false;
                    }
                }
                p = self.inbox.pull(), if room => match p {
                    None => return false,
                    Some(true) => {
                        self.notice("the rest of the paste was dropped (Ctrl-C)").await;
                        self.stop_paste();
                        return true;
                    }
                    Some(false) => {}
                },
            }
        }
    }

    /// Wait until the tracker has seen everything the shell did with the
    /// keys so far; false when the shell did not answer the sync key.
    async fn settle(&mut self) -> bool {
        let at_prompt = self.g.line.with(|t| t.at_prompt());
        let mut synced = true;
        if at_prompt {
            let n0 = self.g.line.with(|t| t.syncs());
            if !self.write(SYNC_KEY) {
                return false;
            }
            synced = self.wait_screen(SYNC_WAIT, |t| t.synced(n0 + 1)).await;
        }
        self.wait_screen(ECHO_WAIT, |t| !t.echo_pending()).await;
        synced
    }

    /// Wait (at most `limit`) for `done` to hold on the tracker.
    async fn wait_screen(&mut self, limit: Duration, done: impl Fn(&LineTracker) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.g.line.with(|t| done(t)) {
                return true;
            }
            tokio::select! {
                r = self.fed.changed() => {
                    if r.is_err() {
                        return false;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return self.g.line.with(|t| done(t)),
            }
        }
    }

    /// A held Enter: read the line, decide, act.
    async fn enter(&mut self, enter: &[u8]) -> Fate {
        let g = self.g;
        let policy = g.shared.policy.current();
        let grant = policy.session(&g.identity);
        let (marks, mut at_prompt, typed_unsure) = g
            .line
            .with(|t| (t.has_marks(), t.at_prompt(), t.typed_unsure()));
        let shell_in_front = marks && !at_prompt && g.line.shell_in_front();
        if marks && !at_prompt && (typed_unsure || grant.strict || shell_in_front) {
            // Keys typed ahead while the last command was finishing: the
            // shell reads them at its next prompt. Give it a moment to
            // show it, then read the line from the screen as usual. (When
            // the shell holds the terminal the keys are certainly its next
            // command line, so this also keeps them in the audit log.)
            // The shell holding the terminal will draw its prompt; wait as
            // long as for a sync (a loaded machine can take over a second).
            let limit = if shell_in_front {
                SYNC_WAIT
            } else {
                PROMPT_WAIT
            };
            at_prompt = self.wait_screen(limit, |t| t.at_prompt()).await;
        }
        // The shell held the terminal yet drew no prompt in time (a loaded
        // machine, or a builtin such as `read` reading the line): the line
        // is most likely its next command, so it is audited all the same —
        // unless echo is off, when the keys are a secret being typed.
        let front_no_prompt = shell_in_front && !at_prompt && g.line.echo_on();
        let synced = self.settle().await;
        let mut sub: Submitted = self.g.line.with(|t| t.line());
        if !synced && !sub.is_unsure() {
            sub.certainty = Certainty::Unsure("the shell did not answer the sync key".into());
        }
        let shown = clip(&g.mask.mask_text(&sub.line), MAX_SHOWN);
        let mut d = policy.exec(&g.identity, &parse::parse(&sub.line));
        let typed = g.line.with(|t| t.typed_line());
        if sub.is_unsure() && typed != sub.line && !typed.trim().is_empty() {
            // Unsure: what the keys say counts too; the stricter answer wins.
            let d2 = policy.exec(&g.identity, &parse::parse(&typed));
            if rank(d2.verdict) > rank(d.verdict) {
                d = d2;
            }
        }
        let reason = g.mask.mask_text(&d.reason);
        let mut how = match &sub.certainty {
            Certainty::Screen => "read from the screen".to_string(),
            Certainty::Typed => "reconstructed from typed keys".to_string(),
            Certainty::Unsure(why) => format!("unsure: {}", g.mask.mask_text(why)),
        };
        if front_no_prompt {
            how.push_str(&format!(
                "; typed while the shell held the terminal, no prompt within {}s",
                SYNC_WAIT.as_secs()
            ));
        }
        tracing::debug!(line = %shown, how = %how, at_prompt, verdict = ?d.verdict, "line checked");
        match d.verdict {
            Verdict::Deny => {
                self.refuse(&shown, &reason, at_prompt).await;
                Fate::Refused
            }
            _ if grant.strict && sub.is_unsure() => {
                let why = format!(
                    "grant.strict ({}): the line cannot be read reliably ({how})",
                    grant.reason
                );
                self.refuse(&shown, &why, at_prompt).await;
                Fate::Refused
            }
            Verdict::Approve => {
                self.approval(enter, &shown, &reason, grant.approval_timeout, at_prompt)
                    .await
            }
            Verdict::Allow => {
                if !self.write(enter) {
                    return Fate::Gone;
                }
                self.g.line.with(|t| t.submitted());
                // Keys typed into a running program (a password prompt,
                // `read`) are not commands: not kept in the audit log.
                if at_prompt || front_no_prompt || !self.g.line.with(|t| t.has_marks()) {
                    if !sub.line.trim().is_empty() {
                        self.audit(
                            "command-allowed",
                            &shown,
                            "allow",
                            &format!("{reason} ({how})"),
                        );
                    }
                } else {
                    tracing::debug!("input line to a running program passed");
                }
                Fate::Released
            }
        }
    }

    fn audit(&self, kind: &str, shown: &str, decision: &str, reason: &str) {
        let g = self.g;
        event(
            &g.shared,
            Event {
                connection_id: Some(&g.conn_id),
                session_id: Some(&g.session_id),
                kind,
                subject: Some(&g.identity.subject),
                detail: shown,
                decision: Some(decision),
                reason: Some(reason),
            },
        );
    }

    fn marker(&self, label: &str) {
        if let Err(e) = with_recorder(&self.g.recorder, |r| r.marker(label)) {
            tracing::error!(error = %e, "cannot write the marker");
        }
    }

    /// A message on the user's screen (and in the recording), on a line of
    /// its own.
    async fn notice(&self, text: &str) {
        let msg = format!("\r\nsallyport: {text}\r\n");
        if let Err(e) = with_recorder(&self.g.recorder, |r| r.output(msg.as_bytes())) {
            tracing::error!(error = %e, "cannot record the message");
        }
        let _ = self.g.handle.data(self.g.channel, Bytes::from(msg)).await;
    }

    /// Clear the refused line in the shell instead of the Enter, tell the
    /// user why, audit it; at a prompt, a bare Enter then draws a fresh one.
    async fn refuse(&mut self, shown: &str, reason: &str, at_prompt: bool) {
        tracing::info!("line blocked: {reason}");
        if !self.write(CLEAR_LINE) {
            return;
        }
        self.g.line.with(|t| t.cleared());
        if at_prompt {
            self.wait_screen(CLEAR_WAIT, |t| t.line().line.is_empty())
                .await;
        }
        self.marker(&format!("blocked: {shown}: {reason}"));
        self.audit("command-blocked", shown, "deny", reason);
        let on_screen = clip(shown, MAX_ON_SCREEN);
        let msg = format!("\r\nsallyport: blocked: {on_screen}: {reason}");
        if let Err(e) = with_recorder(&self.g.recorder, |r| r.output(msg.as_bytes())) {
            tracing::error!(error = %e, "cannot record the message");
        }
        let _ = self.g.handle.data(self.g.channel, Bytes::from(msg)).await;
        if at_prompt {
            // The shell answers the empty line with a newline and a prompt.
            let _ = self.write(b"\r");
            self.g.line.with(|t| t.submitted());
        } else {
            let _ = self
                .g
                .handle
                .data(self.g.channel, Bytes::from_static(b"\r\n"))
                .await;
        }
    }

    /// Ask for an approval and hold the Enter until it is decided. Ctrl-C
    /// typed meanwhile withdraws it; other keys wait their turn.
    async fn approval(
        &mut self,
        enter: &[u8],
        shown: &str,
        reason: &str,
        timeout: Duration,
        at_prompt: bool,
    ) -> Fate {
        let g = self.g;
        let store = g.shared.store.clone();
        let created = approval::create(
            &store,
            &approval::Request {
                requester: g.identity.clone(),
                kind: approval::Kind::Line,
                text: shown.to_string(),
                session_id: Some(g.session_id.clone()),
                reason: reason.to_string(),
                timeout,
            },
        );
        let row = match created {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the approval request");
                let why = format!("{reason} (the approval request could not be stored)");
                self.refuse(shown, &why, at_prompt).await;
                return Fate::Refused;
            }
        };
        let id = row.id.clone();
        // Whatever ends this wait (the session closing included), a request
        // nobody can act on any more does not stay pending.
        let pending = Withdraw {
            store: store.clone(),
            id: id.clone(),
        };
        tracing::info!(approval = %id, "line waits for approval: {reason}");
        self.marker(&format!("waiting for approval {id}: {shown}: {reason}"));
        self.notice(&format!(
            "waiting for approval {id} (ask an approver: sallyport approvals approve {id}; Ctrl-C withdraws)"
        ))
        .await;
        let shutdown = g.shared.shutdown.clone();
        let inbox = &mut self.inbox;
        let mut withdrawn_by_key = false;
        let cancel = async {
            loop {
                let room = inbox.held < MAX_HELD;
                tokio::select! {
                    p = inbox.pull(), if room => match p {
                        None => return,
                        Some(true) => {
                            withdrawn_by_key = true;
                            return;
                        }
                        Some(false) => {}
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let outcome = approval::wait(&store, &id, timeout, cancel).await;
        pending.disarm();
        if withdrawn_by_key {
            // Ctrl-C: the user gave up on this line and what was typed after.
            self.inbox.queue.clear();
            self.inbox.held = 0;
        }
        match not_approved(&id, reason, outcome) {
            Ok(by) => {
                self.marker(&format!("approved by {by} ({id})"));
                self.audit(
                    "command-approved",
                    shown,
                    "allow",
                    &format!("{id} approved by {by}"),
                );
                if !self.write(enter) {
                    return Fate::Gone;
                }
                self.g.line.with(|t| t.submitted());
                Fate::Released
            }
            Err(why) => {
                tracing::info!("line not approved: {why}");
                self.refuse(shown, &why, at_prompt).await;
                Fate::Refused
            }
        }
    }
}

fn rank(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::Approve => 1,
        Verdict::Deny => 2,
    }
}

/// Withdraws a pending approval when dropped (the wait was cut short by
/// the session ending); disarmed once the wait returns.
struct Withdraw {
    store: crate::audit::Store,
    id: String,
}

impl Withdraw {
    fn disarm(mut self) {
        self.id.clear();
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return;
        }
        if let Ok(true) = self.store.close_approval(&self.id, "withdrawn", None, None) {
            let _ = self.store.record_event_parts(
                None,
                None,
                "approval-withdrawn",
                None,
                &self.id,
                None,
                Some("the session ended while waiting"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Vec<Piece> {
        let mut s = Splitter::default();
        chunks.iter().flat_map(|c| s.split(c)).collect()
    }

    #[test]
    fn keys_pass_whole_and_pastes_are_cut_into_lines() {
        assert_eq!(
            split_all(&[b"ls -l\r"]),
            vec![Piece::Keys(b"ls -l\r".to_vec())]
        );
        assert_eq!(
            split_all(&[b"x\x1b[200~echo a\r\nrm -rf /\rtail\x1b[201~y"]),
            vec![
                Piece::Keys(b"x".to_vec()),
                Piece::Paste(b"echo a".to_vec()),
                Piece::PasteLine,
                Piece::Paste(b"rm -rf /".to_vec()),
                Piece::PasteLine,
                Piece::Paste(b"tail".to_vec()),
                Piece::PasteEnd,
                Piece::Keys(b"y".to_vec()),
            ]
        );
    }

    #[test]
    fn paste_marks_split_across_chunks_are_found() {
        let whole = b"ab\x1b[200~one\ntwo\n\x1b[201~cd".to_vec();
        let want = split_all(&[&whole]);
        // Every way of cutting the input in two gives the same lines, but
        // right after a lone ESC: that one is passed on as a key (the line
        // tracker then sees the paste and it is checked whole at Enter).
        for cut in (0..whole.len()).filter(|&c| c != 3) {
            let (a, b) = whole.split_at(cut);
            let got = split_all(&[a, b]);
            let join = |v: &[Piece]| {
                let mut keys = Vec::new();
                let mut rest = Vec::new();
                for p in v {
                    match p {
                        Piece::Keys(k) => keys.extend_from_slice(k),
                        Piece::Paste(t) => rest.extend_from_slice(t),
                        Piece::PasteLine => rest.push(b'|'),
                        Piece::PasteEnd => rest.push(b'$'),
                    }
                }
                (keys, rest)
            };
            assert_eq!(join(&got), join(&want), "cut at {cut}");
        }
        // CR LF split across chunks is one line end.
        assert_eq!(
            split_all(&[b"\x1b[200~a\r", b"\nb\x1b[201~"]),
            vec![
                Piece::Paste(b"a".to_vec()),
                Piece::PasteLine,
                Piece::Paste(b"b".to_vec()),
                Piece::PasteEnd
            ]
        );
    }

    #[test]
    fn hostile_input_does_not_break_the_splitter() {
        // A lone ESC at a chunk end is a key, not held.
        assert_eq!(split_all(&[b"a\x1b"]), vec![Piece::Keys(b"a\x1b".to_vec())]);
        // 1 MB without a line end, invalid UTF-8, nested and unterminated marks.
        let big = vec![b'x'; 1 << 20];
        let p = split_all(&[b"\x1b[200~", &big, b"\xff\xfe\x1b[200~\x1b[200~"]);
        let pasted: usize = p
            .iter()
            .map(|p| match p {
                Piece::Paste(t) => t.len(),
                _ => 0,
            })
            .sum();
        assert!(pasted >= big.len());
        assert!(
            !p.iter()
                .any(|p| matches!(p, Piece::PasteLine | Piece::PasteEnd))
        );
        let mut s = Splitter::default();
        let _ = s.split(&[0x1b; 10_000]);
        assert!(s.carry.len() < PASTE_START.len());
    }
}
