//! One shell or exec channel: policy check, recording, child start, and the
//! task that pumps bytes until the child exits, then sends exit-status (or
//! exit-signal), EOF and close and closes the audit row.
//!
//! Two seams are kept explicit because masking and command guarding plug in
//! there:
//! - [`OutputSeam::deliver`]: every chunk of child output passes through it
//!   on its way to the recorder and the client (the masker transforms it).
//! - [`InputSeam::admit`]: every chunk of client input passes through it
//!   before it reaches the child (the interactive line guard holds and
//!   inspects it). It is `async` and runs in its own task, so waiting there
//!   (e.g. for an approval) stalls only this channel's input — not its
//!   output, not other channels, not the connection.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::ChannelId;
use russh::server::Handle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::handler::Authed;
use super::limits::SessionSlot;
use super::lineguard::{Intake, LineGuard, LineShared};
use super::masking::{OutputMask, Passed, SessionMask};
use super::reload::{self, Held};
use crate::audit::Store;
use crate::audit::events::Event;
use crate::audit::sessions::{SessionEnd, SessionStart};
use crate::guard::{approval, parse};
use crate::policy::Verdict;
use crate::record::{self, Header, Recorder};
use crate::shell::{self, Exit, PtyChild, Spec};

/// Exit status for a command policy refused (like a shell's "cannot execute").
pub const EXIT_DENIED: u32 = 126;

/// After the child exited, how long to keep reading output that
/// descendants still write to the pty/pipes before closing anyway.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Client input buffered per channel before the connection waits. The
/// handler must not block while the child is busy writing output (russh
/// delivers our output through the same loop that calls the handler, so a
/// blocked handler and a child blocked on a full stdout pipe would wait on
/// each other); only a child that ignores this much pending stdin while
/// still producing output can make it wait.
const INPUT_HIGH_WATER: usize = 16 * 1024 * 1024;

/// A `pty-req` as received.
#[derive(Debug, Clone)]
pub struct PtyReq {
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

/// A shell/exec request with everything collected before it.
#[derive(Debug)]
pub struct Request {
    /// The connection's span; the session's span is its child.
    pub span: tracing::Span,
    pub conn_id: String,
    pub channel: ChannelId,
    pub authed: Authed,
    /// The command the client asked for; `None` = shell.
    pub requested: Option<String>,
    pub pty: Option<PtyReq>,
    pub env: Vec<(String, String)>,
}

/// Why a request did not start.
#[derive(Debug)]
pub enum Refused {
    /// Reply channel-failure (recording or child could not be created).
    Failure,
    /// Accept the request, tell the user why on stderr, exit 126, close.
    Denied(String),
}

/// Client input for the child.
#[derive(Debug)]
pub enum Input {
    Data(Bytes),
    Eof,
}

/// Out-of-band requests for a running channel.
#[derive(Debug)]
pub enum Ctl {
    Resize(u32, u32),
    Signal(String),
    /// The client closed the channel or the connection dropped.
    ClientClosed,
}

/// The handler's grip on a running channel.
#[derive(Debug)]
pub struct Control {
    input: mpsc::UnboundedSender<Input>,
    queued: Arc<Queued>,
    ctl: mpsc::UnboundedSender<Ctl>,
}

impl Control {
    /// Queue client input. Waits only past [`INPUT_HIGH_WATER`] bytes
    /// pending, which pushes back on this connection.
    pub async fn input(&self, i: Input) {
        if let Input::Data(d) = &i {
            self.queued.bytes.fetch_add(d.len(), Ordering::AcqRel);
            self.queued.activity.touch();
        }
        if self.input.send(i).is_err() {
            return;
        }
        while self.queued.bytes.load(Ordering::Acquire) > INPUT_HIGH_WATER {
            let notified = self.queued.drained.notified();
            if self.input.is_closed()
                || self.queued.bytes.load(Ordering::Acquire) <= INPUT_HIGH_WATER
            {
                break;
            }
            notified.await;
        }
    }
    pub fn ctl(&self, c: Ctl) {
        let _ = self.ctl.send(c);
    }
}

/// Bytes of client input queued for a channel's input task.
#[derive(Debug, Default)]
pub(super) struct Queued {
    bytes: std::sync::atomic::AtomicUsize,
    drained: tokio::sync::Notify,
    /// Last client input, for the idle timeout.
    activity: reload::Activity,
}

impl Queued {
    pub(super) fn take(&self, n: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some(b.saturating_sub(n))
            });
        self.drained.notify_waiters();
    }
}

/// Seam (a): child output on its way to the recorder and the client.
pub struct OutputSeam {
    recorder: Arc<Mutex<Option<Recorder>>>,
    bytes_out: u64,
    /// The channel's output masker (see [`super::masking`]).
    mask: OutputMask,
    /// Where mask hits are audited.
    store: Store,
    session_id: String,
    /// Secrets masked outside the output (the exec command).
    other_hits: u64,
    /// The interactive line guard's view of the screen (pty shells).
    line: Option<Arc<LineShared>>,
}

impl OutputSeam {
    /// Record `data` and return what the client gets now (possibly empty).
    /// `stderr` marks extended data of a non-pty exec (recorded as output
    /// too, so the recording shows what the user saw). The recording always
    /// gets masked bytes; the client gets them when the grant says
    /// `mask_live`, else `data` itself, at once. Bytes the masker holds back
    /// come out of [`Self::flush`], which the output loop calls once
    /// [`Self::flush_at`] has passed and at the end of the output.
    pub fn deliver(&mut self, data: Bytes, stderr: bool) -> Result<Bytes, record::Error> {
        self.bytes_out += data.len() as u64;
        if let Some(l) = &self.line {
            l.output(&data);
        }
        let p = self.mask.push(data, stderr);
        self.pass(&p, stderr)?;
        Ok(p.client)
    }

    /// Release what the masker holds back: the recording gets it, and the
    /// returned `(bytes, stderr)` are for the client (only when live).
    pub fn flush(&mut self) -> Result<Vec<(Bytes, bool)>, record::Error> {
        let mut client = Vec::new();
        for (stderr, p) in self.mask.flush() {
            self.pass(&p, stderr)?;
            if !p.client.is_empty() {
                client.push((p.client, stderr));
            }
        }
        Ok(client)
    }

    /// When held-back output is due for [`Self::flush`].
    pub fn flush_at(&self) -> Option<tokio::time::Instant> {
        self.mask.flush_at()
    }

    /// Secrets masked in this session so far (output and command).
    pub fn hits(&self) -> u64 {
        self.mask.hits() + self.other_hits
    }

    /// Mask output from now on with `mask` (new rules after a policy
    /// reload). Call [`Self::flush`] first: what the old masker holds back
    /// is masked by the old rules.
    fn replace_mask(&mut self, mask: OutputMask) {
        self.other_hits += self.mask.hits();
        self.mask = mask;
    }

    fn pass(&self, p: &Passed, stderr: bool) -> Result<(), record::Error> {
        if !p.hits.is_empty() {
            let source = if stderr { "stderr" } else { "output" };
            // The masking itself happened; a lost audit row is logged, not
            // fatal (the secret is not shown either way).
            if let Err(e) = self
                .store
                .record_mask_hits(Some(&self.session_id), source, &p.hits)
            {
                tracing::error!(error = %e, "audit: cannot record mask hits");
            }
            tracing::debug!(hits = p.hits.len(), source, "masked secrets");
        }
        if p.record.is_empty() {
            return Ok(());
        }
        with_recorder(&self.recorder, |r| r.output(&p.record))
    }
}

/// Seam (b): client input on its way to the child.
pub struct InputSeam {
    recorder: Arc<Mutex<Option<Recorder>>>,
    record_input: bool,
    bytes_in: Arc<AtomicU64>,
    /// Whether the child reads from a pty (typed lines) or a pipe.
    pub pty: bool,
    /// The session's masking: `mask.mask_text(line)` before a typed line
    /// goes into the audit log.
    pub mask: SessionMask,
    /// The interactive line guard (pty shells): takes over the channel's
    /// input once the session runs (see [`super::lineguard`]).
    guard: Option<LineGuard>,
}

impl InputSeam {
    /// Decide what of `data` reaches the child now; `Ok(None)` holds it
    /// back. The interactive line guard hooks in here: it may await (an
    /// approval) without blocking anything but this channel's input.
    pub async fn admit(&mut self, data: Bytes) -> Result<Option<Bytes>, record::Error> {
        self.bytes_in
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        if self.record_input {
            with_recorder(&self.recorder, |r| r.input(&data))?;
        }
        Ok(Some(data))
    }
}

pub(super) fn with_recorder(
    rec: &Arc<Mutex<Option<Recorder>>>,
    f: impl FnOnce(&mut Recorder) -> Result<(), record::Error>,
) -> Result<(), record::Error> {
    let mut g = match rec.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match g.as_mut() {
        Some(r) => f(r),
        None => Ok(()),
    }
}

pub(super) fn event(shared: &Shared, e: Event<'_>) {
    if let Err(err) = shared.store.record_event(&e) {
        tracing::error!(error = %err, "audit: cannot record event");
    }
}

/// What policy said about an exec command, decided before anything runs.
struct ExecDecision {
    verdict: Verdict,
    /// Policy reason, masked (strict reasons may quote the command).
    reason: String,
    /// The command as it may be stored and shown: masked, clipped.
    shown: String,
}

/// Check policy, create the recording, start the child and its task. An
/// exec that policy denies is recorded (a session row, an "m" marker) and
/// refused; one that needs approval is accepted and waits in its own task
/// before anything is spawned.
pub fn start(
    shared: &Arc<Shared>,
    req: Request,
    handle: Handle,
    running: watch::Sender<usize>,
) -> Result<Control, Refused> {
    let _conn = req.span.clone().entered();
    let identity = &req.authed.identity;
    // Generation first: a reload in between makes the session re-check
    // once more, never miss one.
    let generation = shared.policy.generation();
    let policy = shared.policy.current();
    let grant = policy.session(identity);
    let mask = match SessionMask::new(&grant) {
        Ok(m) => m,
        Err(e) => return Err(mask_refused(shared, &req, &e)),
    };
    // A force-command in the certificate replaces whatever was asked
    // (sshd's ForceCommand); the request survives in SSH_ORIGINAL_COMMAND.
    let (command, original) = match req.authed.force_command() {
        Some(fc) => (Some(fc.to_string()), req.requested.clone()),
        None => (req.requested.clone(), None),
    };
    let kind = if command.is_some() { "exec" } else { "shell" };
    let subject = identity.subject.as_str();
    if command.is_none() && !grant.shell {
        tracing::info!(subject, "shell denied: {}", grant.reason);
        event(
            shared,
            Event {
                connection_id: Some(&req.conn_id),
                kind: "command-blocked",
                subject: Some(subject),
                detail: "shell",
                decision: Some("deny"),
                reason: Some(&grant.reason),
                ..Default::default()
            },
        );
        return Err(Refused::Denied(format!(
            "sallyport: interactive shells are not allowed for {} ({})\r\n",
            identity.display(),
            grant.reason
        )));
    }
    // Concurrent sessions per identity (grant.max_sessions): the slot lives
    // in the launch, then the running task, and is given back on drop.
    let slot_key = format!("{}:{}", identity.issuer, identity.subject);
    let slot = match shared.sessions.try_acquire(&slot_key, grant.max_sessions) {
        Ok(s) => s,
        Err(open) => {
            let max = grant.max_sessions.unwrap_or(0);
            let why = format!(
                "{open} sessions open, max_sessions = {max} ({})",
                grant.reason
            );
            tracing::info!(subject, "session refused: {why}");
            event(
                shared,
                Event {
                    connection_id: Some(&req.conn_id),
                    kind: "session-limit",
                    subject: Some(subject),
                    detail: command.as_deref().map_or("shell", |_| "exec"),
                    decision: Some("deny"),
                    reason: Some(&why),
                    ..Default::default()
                },
            );
            return Err(Refused::Denied(format!(
                "sallyport: too many open sessions for {}: {why}\r\n",
                identity.display()
            )));
        }
    };
    // The session's masker (built above; a grant whose masking cannot be
    // compiled never gets here) also masks the command text we keep.
    let decision = command.as_deref().map(|c| {
        let shown = clip(&mask.mask_text(c), MAX_SHOWN);
        if !grant.exec {
            return ExecDecision {
                verdict: Verdict::Deny,
                reason: format!(
                    "{}: commands are not allowed for {}",
                    grant.reason,
                    identity.display()
                ),
                shown,
            };
        }
        let d = policy.exec(identity, &parse::parse(c));
        ExecDecision {
            verdict: d.verdict,
            reason: mask.mask_text(&d.reason),
            shown,
        }
    });

    let session_id = uuid::Uuid::now_v7().to_string();
    let span = tracing::info_span!("session", id = %session_id, subject, kind);
    let _enter = span.enter();
    let path = record::recording_path(&shared.config.recording.dir, &session_id);
    let (cols, rows) = req
        .pty
        .as_ref()
        .map(|p| (p.cols, p.rows))
        .unwrap_or((80, 24));
    let term = req.pty.as_ref().map(|p| p.term.clone());
    let mut env_hdr = BTreeMap::new();
    env_hdr.insert("SHELL".to_string(), shared.shell.display().to_string());
    if let Some(t) = &term {
        env_hdr.insert("TERM".to_string(), t.clone());
    }
    let header = Header {
        width: cols.clamp(1, u16::MAX as u32) as u16,
        height: rows.clamp(1, u16::MAX as u32) as u16,
        timestamp: time::OffsetDateTime::now_utc().unix_timestamp(),
        title: format!(
            "{} — {} as {} — session {session_id}",
            identity.display(),
            kind,
            req.authed.user
        ),
        env: env_hdr,
        // The header is stored as is: only the masked, clipped form.
        command: decision.as_ref().map(|d| d.shown.clone()),
    };
    let recorder = match Recorder::create(&path, &header) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "refusing the session: recording cannot be created");
            event(
                shared,
                Event {
                    connection_id: Some(&req.conn_id),
                    session_id: Some(&session_id),
                    kind: "recording-failed",
                    subject: Some(subject),
                    detail: &e.to_string(),
                    decision: Some("deny"),
                    reason: Some("a session that cannot be recorded does not run"),
                },
            );
            return Err(Refused::Failure);
        }
    };
    let held = Held::new(
        &policy,
        generation,
        identity,
        &req.authed.user,
        command.clone(),
        grant.clone(),
    );
    let launch = Launch {
        shared: Arc::clone(shared),
        span: span.clone(),
        session_id,
        conn_id: req.conn_id.clone(),
        channel: req.channel,
        authed: req.authed.clone(),
        kind,
        command,
        shown: decision.as_ref().map(|d| d.shown.clone()),
        original,
        pty: req.pty.clone(),
        env: req.env.clone(),
        path,
        recorder,
        record_input: shared.config.recording.input || grant.record_input,
        handle,
        running,
        mask: mask.clone(),
        held,
        slot,
    };
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let queued = Arc::new(Queued::default());
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let control = Control {
        input: in_tx,
        queued: Arc::clone(&queued),
        ctl: ctl_tx,
    };
    match decision {
        None => {}
        Some(ExecDecision {
            verdict: Verdict::Allow,
            ..
        }) => {}
        Some(ExecDecision {
            verdict: Verdict::Deny,
            reason,
            shown,
        }) => {
            tracing::info!(subject, "exec blocked: {reason}");
            let message = format!("sallyport: blocked by {reason}\n");
            launch.refused(&shown, &reason, "command-blocked", "blocked");
            return Err(Refused::Denied(message));
        }
        Some(ExecDecision {
            verdict: Verdict::Approve,
            reason,
            shown,
        }) => {
            let timeout = grant.approval_timeout;
            let waiting = tracing::Instrument::instrument(
                launch.after_approval(shown, reason, timeout, in_rx, queued, ctl_rx),
                span.clone(),
            );
            tokio::spawn(waiting);
            return Ok(control);
        }
    }
    launch.launch(in_rx, queued, ctl_rx)?;
    Ok(control)
}

/// Longest command text kept in audit rows, markers and messages.
pub(super) const MAX_SHOWN: usize = 4096;

/// At most `max` bytes of `s`, cut at a char boundary, "…" when cut.
pub(super) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", s.get(..end).unwrap_or(""))
}

/// Everything needed to spawn a session's child once it may run.
struct Launch {
    shared: Arc<Shared>,
    span: tracing::Span,
    session_id: String,
    conn_id: String,
    channel: ChannelId,
    authed: Authed,
    kind: &'static str,
    command: Option<String>,
    /// The command masked and clipped (what audit rows hold).
    shown: Option<String>,
    original: Option<String>,
    pty: Option<PtyReq>,
    env: Vec<(String, String)>,
    path: std::path::PathBuf,
    recorder: Recorder,
    record_input: bool,
    handle: Handle,
    running: watch::Sender<usize>,
    /// The session's masking (output streams, typed lines, audit text).
    mask: SessionMask,
    /// What policy granted, re-checked on reload.
    held: Held,
    /// This session's place under `max_sessions`.
    slot: SessionSlot,
}

impl Launch {
    /// A session that never ran: an "m" marker, the recording finished,
    /// a session row closed with [`EXIT_DENIED`], an audit event.
    fn refused(mut self, shown: &str, reason: &str, event_kind: &str, label: &str) {
        if let Err(e) = self.recorder.marker(&format!("{label}: {reason}")) {
            tracing::error!(error = %e, "cannot write the marker");
        }
        if let Err(e) = self.recorder.finish() {
            tracing::error!(error = %e, "recording could not be finished");
        }
        let path_s = self.path.display().to_string();
        let store = &self.shared.store;
        let started = store.session_started(&SessionStart {
            id: &self.session_id,
            connection_id: &self.conn_id,
            channel: channel_num(self.channel),
            user: &self.authed.user,
            identity: &self.authed.identity,
            kind: self.kind,
            command: Some(shown),
            pty: self.pty.is_some(),
            term: self.pty.as_ref().map(|p| p.term.as_str()),
            cols: self.pty.as_ref().map(|p| p.cols),
            rows: self.pty.as_ref().map(|p| p.rows),
            recording: Some(&path_s),
        });
        let ended = started.and_then(|()| {
            store.session_ended(
                &self.session_id,
                &SessionEnd {
                    exit_status: Some(EXIT_DENIED),
                    exit_signal: None,
                    bytes_in: 0,
                    bytes_out: 0,
                    reason: &format!("{label}: {reason}"),
                    mask_hits: 0,
                },
            )
        });
        if let Err(e) = ended {
            tracing::error!(error = %e, "audit: cannot record the refused session");
        }
        event(
            &self.shared,
            Event {
                connection_id: Some(&self.conn_id),
                session_id: Some(&self.session_id),
                kind: event_kind,
                subject: Some(&self.authed.identity.subject),
                detail: shown,
                decision: Some("deny"),
                reason: Some(reason),
            },
        );
    }

    /// Ask for an approval, wait for it (this task only), then run or
    /// refuse. The client closing the channel or sending a signal while
    /// waiting withdraws the request.
    async fn after_approval(
        mut self,
        shown: String,
        reason: String,
        timeout: Duration,
        in_rx: mpsc::UnboundedReceiver<Input>,
        queued: Arc<Queued>,
        mut ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    ) {
        let handle = self.handle.clone();
        let ch = self.channel;
        let store = self.shared.store.clone();
        let created = approval::create(
            &store,
            &approval::Request {
                requester: self.authed.identity.clone(),
                kind: approval::Kind::Exec,
                text: shown.clone(),
                session_id: Some(self.session_id.clone()),
                reason: reason.clone(),
                timeout,
            },
        );
        let row = match created {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the approval request");
                let why = format!("{reason} (the approval request could not be stored)");
                refuse_on_channel(&handle, ch, &format!("sallyport: blocked by {why}\n")).await;
                self.refused(&shown, &why, "command-blocked", "blocked");
                return;
            }
        };
        let id = row.id.clone();
        tracing::info!(approval = %id, "exec waits for approval: {reason}");
        let _ = with_marker(
            &mut self.recorder,
            &format!("waiting for approval {id}: {reason}"),
        );
        let _ = handle
            .extended_data(
                ch,
                1,
                Bytes::from(format!(
                    "sallyport: waiting for approval {id} (ask an approver: sallyport approvals approve {id})\n"
                )),
            )
            .await;
        let shutdown = self.shared.shutdown.clone();
        let mut size: Option<(u32, u32)> = None;
        let cancel = async {
            loop {
                tokio::select! {
                    c = ctl_rx.recv() => match c {
                        Some(Ctl::Resize(c, r)) => size = Some((c, r)),
                        // A signal (Ctrl-C through `ssh -t`, `kill`) or a
                        // closed channel: the user gave up.
                        Some(Ctl::Signal(_)) | Some(Ctl::ClientClosed) | None => return,
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
        };
        let outcome = approval::wait(&store, &id, timeout, cancel).await;
        if let (Some(p), Some((c, r))) = (self.pty.as_mut(), size) {
            p.cols = c;
            p.rows = r;
        }
        let why = match not_approved(&id, &reason, outcome) {
            Ok(by) => {
                let _ = with_marker(&mut self.recorder, &format!("approved by {by} ({id})"));
                event(
                    &self.shared,
                    Event {
                        connection_id: Some(&self.conn_id),
                        session_id: Some(&self.session_id),
                        kind: "command-approved",
                        subject: Some(&self.authed.identity.subject),
                        detail: &shown,
                        decision: Some("allow"),
                        reason: Some(&format!("{id} approved by {by}")),
                    },
                );
                // The policy may have been reloaded while we waited: an
                // approval does not outrank a rule that now denies the
                // command, and it must not run even for a moment.
                if let Some(why) = self.denied_since_start() {
                    tracing::info!("approved exec refused: {why}");
                    refuse_on_channel(&handle, ch, &format!("sallyport: blocked: {why}\n")).await;
                    self.refused(&shown, &why, "command-blocked", "blocked");
                    return;
                }
                if self.launch(in_rx, queued, ctl_rx).is_err() {
                    refuse_on_channel(&handle, ch, "sallyport: the command could not be started\n")
                        .await;
                }
                return;
            }
            Err(why) => why,
        };
        tracing::info!("exec not approved: {why}");
        refuse_on_channel(&handle, ch, &format!("sallyport: blocked: {why}\n")).await;
        self.refused(&shown, &why, "command-blocked", "blocked");
    }

    /// `Some(why)` when a policy reload since the session was requested
    /// took its grant away (see [`reload::recheck`]). A reload that keeps
    /// it is left to the session task, which re-checks (limits, masking)
    /// as soon as it runs.
    fn denied_since_start(&self) -> Option<String> {
        if self.shared.policy.generation() == self.held.generation {
            return None;
        }
        let policy = self.shared.policy.current();
        reload::recheck(&policy, &self.held, |t| self.mask.mask_text(t))
            .err()
            .map(|r| format!("policy reloaded: {} ({})", r.why, r.rule))
    }

    /// Spawn the child, open the session row and start the session task.
    fn launch(
        self,
        in_rx: mpsc::UnboundedReceiver<Input>,
        queued: Arc<Queued>,
        ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    ) -> Result<(), Refused> {
        let _enter = self.span.enter();
        let shared = &self.shared;
        let identity = &self.authed.identity;
        let recorder = self.recorder;
        let (cols, rows) = self
            .pty
            .as_ref()
            .map(|p| (p.cols, p.rows))
            .unwrap_or((80, 24));
        let term = self.pty.as_ref().map(|p| p.term.clone());
        let env = shell::session_env(
            &shared.account,
            &shared.shell,
            term.as_deref(),
            &self.session_id,
            self.original.as_deref(),
            &self.env,
        );
        // A pty shell is guarded line by line; bash gets the rcfile that
        // marks its prompts (other shells: typed input only).
        let guarded = self.pty.is_some() && self.command.is_none();
        let rcfile = if guarded && shell::is_bash(&shared.shell) {
            match shell::RcFile::write(crate::guard::line::BASH_RC, &self.session_id) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(error = %e, "starting bash without prompt marks");
                    None
                }
            }
        } else {
            None
        };
        let spec = Spec {
            account: shared.account.clone(),
            shell: shared.shell.clone(),
            command: self.command.clone(),
            env,
            rcfile: rcfile.as_ref().map(|f| f.path().to_path_buf()),
        };
        let child = if self.pty.is_some() {
            shell::spawn_pty(&spec, cols, rows).map(Child::Pty)
        } else {
            shell::spawn_pipes(&spec).map(Child::Pipes)
        };
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the session child");
                let _ = recorder.finish();
                event(
                    shared,
                    Event {
                        connection_id: Some(&self.conn_id),
                        session_id: Some(&self.session_id),
                        kind: "spawn-failed",
                        subject: Some(&identity.subject),
                        detail: &e.to_string(),
                        ..Default::default()
                    },
                );
                return Err(Refused::Failure);
            }
        };
        let path_s = self.path.display().to_string();
        if let Err(e) = shared.store.session_started(&SessionStart {
            id: &self.session_id,
            connection_id: &self.conn_id,
            channel: channel_num(self.channel),
            user: &self.authed.user,
            identity,
            kind: self.kind,
            command: self.shown.as_deref(),
            pty: self.pty.is_some(),
            term: term.as_deref(),
            cols: self.pty.as_ref().map(|p| p.cols),
            rows: self.pty.as_ref().map(|p| p.rows),
            recording: Some(&path_s),
        }) {
            // Fail closed: an unaudited session does not run.
            tracing::error!(error = %e, "audit: cannot record session; refusing it");
            child.kill();
            let _ = recorder.finish();
            return Err(Refused::Failure);
        }
        let command_hits = self
            .command
            .as_deref()
            .map(|c| self.mask.mask_text_hits(c).1)
            .unwrap_or_default();
        if let Err(e) =
            shared
                .store
                .record_mask_hits(Some(&self.session_id), "command", &command_hits)
        {
            tracing::error!(error = %e, "audit: cannot record mask hits");
        }
        tracing::info!(command = self.shown.as_deref().unwrap_or(""), pty = self.pty.is_some(), recording = %path_s, "session started");

        let recorder = Arc::new(Mutex::new(Some(recorder)));
        let failed = CancellationToken::new();
        let bytes_in = Arc::new(AtomicU64::new(0));
        let shell_pid = match &child {
            Child::Pty((master, _)) => master.pid(),
            Child::Pipes(_) => None,
        };
        let echo = match &child {
            Child::Pty((master, _)) => Some(master.echo_probe()),
            Child::Pipes(_) => None,
        };
        let line = guarded.then(|| {
            LineShared::new(
                rows.clamp(1, u16::MAX as u32) as u16,
                cols.clamp(1, u16::MAX as u32) as u16,
                shell_pid,
                echo,
            )
        });
        let guard = line.as_ref().map(|l| LineGuard {
            line: Arc::clone(l),
            shared: Arc::clone(shared),
            identity: identity.clone(),
            session_id: self.session_id.clone(),
            conn_id: self.conn_id.clone(),
            mask: self.mask.clone(),
            recorder: Arc::clone(&recorder),
            handle: self.handle.clone(),
            channel: self.channel,
            rcfile,
        });
        let input = InputSeam {
            recorder: Arc::clone(&recorder),
            record_input: self.record_input,
            bytes_in: Arc::clone(&bytes_in),
            pty: self.pty.is_some(),
            mask: self.mask.clone(),
            guard,
        };
        self.running.send_modify(|n| *n += 1);
        let task = Task {
            shared: Arc::clone(shared),
            session_id: self.session_id.clone(),
            conn_id: self.conn_id,
            subject: identity.subject.clone(),
            channel: self.channel,
            handle: self.handle,
            output: OutputSeam {
                recorder,
                bytes_out: 0,
                mask: self.mask.output(),
                store: shared.store.clone(),
                session_id: self.session_id.clone(),
                other_hits: command_hits.len() as u64,
                line,
            },
            bytes_in,
            failed,
            running: self.running,
            // Max duration counts from now, not from a wait for approval.
            held: Held {
                started: tokio::time::Instant::now(),
                ..self.held
            },
            mask: self.mask,
            _slot: self.slot,
        };
        tokio::spawn(tracing::Instrument::instrument(
            task.run(child, input, in_rx, queued, ctl_rx),
            self.span.clone(),
        ));
        Ok(())
    }
}

/// How an approval wait ended, for exec commands and typed lines alike:
/// `Ok(approver)` or `Err(why it may not run)`.
pub(super) fn not_approved(
    id: &str,
    reason: &str,
    outcome: Result<approval::Outcome, approval::Error>,
) -> Result<String, String> {
    match outcome {
        Ok(approval::Outcome::Approved { by }) => Ok(by),
        Ok(approval::Outcome::Denied { by, reason: note }) => Err(match note {
            Some(n) => format!("approval {id} denied by {by}: {n}"),
            None => format!("approval {id} denied by {by}"),
        }),
        Ok(approval::Outcome::Expired) => Err(format!("approval {id} expired ({reason})")),
        Ok(approval::Outcome::Withdrawn) => Err(format!("approval {id} withdrawn")),
        Err(e) => Err(format!("approval {id} failed: {e}")),
    }
}

fn with_marker(r: &mut Recorder, label: &str) -> Result<(), record::Error> {
    let res = r.marker(label);
    if let Err(e) = &res {
        tracing::error!(error = %e, "cannot write the marker");
    }
    res
}

/// Tell the client why on stderr, exit 126, close (an accepted channel).
async fn refuse_on_channel(handle: &Handle, ch: ChannelId, message: &str) {
    let _ = handle
        .extended_data(ch, 1, Bytes::from(message.to_string()))
        .await;
    let _ = handle.exit_status_request(ch, EXIT_DENIED).await;
    let _ = handle.eof(ch).await;
    let _ = handle.close(ch).await;
}

/// Refuse a session whose masking cannot be built (fail closed: output
/// that cannot be masked is neither recorded nor shown), audited.
fn mask_refused(shared: &Shared, req: &Request, e: &crate::mask::Error) -> Refused {
    tracing::error!(error = %e, "refusing the session: masking rules cannot be used");
    event(
        shared,
        Event {
            connection_id: Some(&req.conn_id),
            kind: "mask-config-failed",
            subject: Some(&req.authed.identity.subject),
            detail: &e.to_string(),
            decision: Some("deny"),
            reason: Some("a session whose output cannot be masked does not run"),
            ..Default::default()
        },
    );
    Refused::Denied(format!(
        "sallyport: session refused: the masking rules of your policy cannot be used ({e}); ask an operator to fix the policy\r\n"
    ))
}

fn channel_num(c: ChannelId) -> u32 {
    // ChannelId has no public accessor for its number; Display prints it.
    c.to_string().parse().unwrap_or(0)
}

enum Child {
    Pty((PtyChild, shell::PtyIo)),
    Pipes(tokio::process::Child),
}

impl Child {
    fn kill(self) {
        match self {
            Child::Pty((c, _)) => {
                if let Some(pid) = c.pid() {
                    shell::signal(pid, "KILL", false);
                }
            }
            Child::Pipes(mut c) => {
                let _ = c.start_kill();
            }
        }
    }
}

/// Where admitted input goes.
enum Sink {
    /// A writer thread owns the blocking pty writer.
    Pty(std::sync::mpsc::Sender<Bytes>),
    Pipe(Option<tokio::process::ChildStdin>),
}

struct Task {
    shared: Arc<Shared>,
    session_id: String,
    conn_id: String,
    subject: String,
    channel: ChannelId,
    handle: Handle,
    output: OutputSeam,
    bytes_in: Arc<AtomicU64>,
    /// Cancelled when recording fails mid-session.
    failed: CancellationToken,
    running: watch::Sender<usize>,
    /// What policy granted; re-checked when the policy is reloaded.
    held: Held,
    /// The session's masking in force (replaced when a reload changes it).
    mask: SessionMask,
    /// This session's place under `max_sessions` (given back on drop).
    _slot: SessionSlot,
}

enum Out {
    Data(Bytes, bool),
}

impl Task {
    async fn run(
        mut self,
        child: Child,
        seam: InputSeam,
        in_rx: mpsc::UnboundedReceiver<Input>,
        queued: Arc<Queued>,
        mut ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    ) {
        let (out_tx, mut out_rx) = mpsc::channel::<Out>(16);
        // A pipe child's stdout and stderr are read right here, in the
        // session task: no task in between, so no wake-up and hand-off per
        // chunk (the pty's reads block, so they stay on a thread).
        let mut pipe_out: Option<Pipe<tokio::process::ChildStdout>> = None;
        let mut pipe_err: Option<Pipe<tokio::process::ChildStderr>> = None;
        let (exit_tx, mut exit_rx) = oneshot::channel::<Exit>();
        let mut pty_master: Option<PtyChild> = None;
        let pid: Option<u32>;
        let group: bool;
        let sink = match child {
            Child::Pty((master, io)) => {
                pid = master.pid();
                group = false;
                pty_master = Some(master);
                let shell::PtyIo {
                    mut reader,
                    mut writer,
                    wait,
                } = io;
                let tx = out_tx.clone();
                std::thread::spawn(move || {
                    // A pty hands out a few KiB per read at most.
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match reader.read(&mut buf) {
                            // EIO once the child and its descendants closed the pty.
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or(&[]));
                                if tx.blocking_send(Out::Data(chunk, false)).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
                std::thread::spawn(move || {
                    let _ = exit_tx.send(wait());
                });
                let (wtx, wrx) = std::sync::mpsc::channel::<Bytes>();
                std::thread::spawn(move || {
                    while let Ok(b) = wrx.recv() {
                        if writer.write_all(&b).and_then(|_| writer.flush()).is_err() {
                            break;
                        }
                    }
                });
                Sink::Pty(wtx)
            }
            Child::Pipes(mut c) => {
                pid = c.id();
                group = true;
                let stdin = c.stdin.take();
                pipe_out = c.stdout.take().map(Pipe::new);
                pipe_err = c.stderr.take().map(Pipe::new);
                tokio::spawn(async move {
                    let e = match c.wait().await {
                        Ok(st) => shell::exit_of(st),
                        Err(_) => Exit::Code(255),
                    };
                    let _ = exit_tx.send(e);
                });
                Sink::Pipe(stdin)
            }
        };
        drop(out_tx);
        let pty = pty_master.is_some();
        let activity = Arc::clone(&queued);
        let input_task = tokio::spawn(input_loop(seam, in_rx, queued, sink, self.failed.clone()));
        // One watch receiver per session: a reload wakes it, and a reload
        // that happened before the task started (e.g. while an exec waited
        // for approval) is re-checked at once.
        let mut policy_rx = self.shared.policy.subscribe();
        if policy_rx.borrow_and_update().generation != self.held.generation {
            policy_rx.mark_changed();
        }
        let mut policy_open = true;
        let mut last_output = tokio::time::Instant::now();

        let mut exit: Option<Exit> = None;
        // The pty reader's channel; pipes are read in the loop below.
        let mut rx_open = true;
        let mut end_reason: Option<String> = None;
        let mut killed = false;
        let mut ctl_open = true;
        let shutdown = self.shared.shutdown.clone();
        let failed = self.failed.clone();
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        loop {
            let out_open = rx_open || pipe_out.is_some() || pipe_err.is_some();
            if exit.is_some() && !out_open {
                break;
            }
            if exit.is_some() && drain_deadline.is_none() {
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            let flush_at = self.output.flush_at();
            let running = exit.is_none() && !killed;
            let deadline = self.held.deadline();
            let idle_at = reload::idle_deadline(
                self.held.grant.idle_timeout,
                last_output,
                activity.activity.last_input(),
            );
            // Output from whichever source: handled once, after the select.
            let mut got: Option<(Bytes, bool)> = None;
            let mut source_closed = false;
            tokio::select! {
                m = out_rx.recv(), if rx_open => match m {
                    Some(Out::Data(b, stderr)) => got = Some((b, stderr)),
                    None => {
                        rx_open = false;
                        source_closed = true;
                    }
                },
                r = read_pipe(&mut pipe_out) => match r {
                    Some(b) => got = Some((b, false)),
                    None => {
                        pipe_out = None;
                        source_closed = true;
                    }
                },
                r = read_pipe(&mut pipe_err) => match r {
                    Some(b) => got = Some((b, true)),
                    None => {
                        pipe_err = None;
                        source_closed = true;
                    }
                },
                // Output went idle: release what the masker holds back
                // (the streaming contract of `crate::mask`).
                _ = sleep_until_opt(flush_at), if flush_at.is_some() => {
                    if !self.flush_output().await && end_reason.is_none() {
                        end_reason = Some("client gone".into());
                        kill(pid, group, &mut killed);
                    }
                }
                e = &mut exit_rx, if exit.is_none() => {
                    exit = Some(e.unwrap_or(Exit::Code(255)));
                }
                c = ctl_rx.recv(), if ctl_open => match c {
                    Some(Ctl::Resize(cols, rows)) => self.resize(pty_master.as_ref(), cols, rows),
                    Some(Ctl::Signal(name)) => {
                        if let Some(p) = pid {
                            tracing::info!(signal = %name, "forwarding signal");
                            shell::signal(p, &name, group);
                        }
                    }
                    Some(Ctl::ClientClosed) | None => {
                        ctl_open = false;
                        if exit.is_none() {
                            end_reason.get_or_insert_with(|| "client closed the channel".into());
                            // Nothing outlives its (recorded) channel: hang up and kill.
                            if !killed {
                                kill(pid, group, &mut killed);
                            }
                        }
                    }
                },
                _ = shutdown.cancelled(), if !killed => {
                    end_reason.get_or_insert_with(|| "server shutdown".into());
                    kill(pid, group, &mut killed);
                }
                _ = failed.cancelled(), if !killed => {
                    end_reason.get_or_insert_with(|| "recording failed".into());
                    kill(pid, group, &mut killed);
                }
                r = policy_rx.changed(), if policy_open && running => match r {
                    Ok(()) => {
                        let generation = policy_rx.borrow_and_update().generation;
                        if let Some(why) = self.policy_reloaded(generation, pty).await {
                            end_reason.get_or_insert(why);
                            kill(pid, group, &mut killed);
                        }
                    }
                    Err(_) => policy_open = false,
                },
                _ = sleep_until_opt(deadline), if running && deadline.is_some() => {
                    let limit = self.held.grant.max_duration.map(reload::human).unwrap_or_default();
                    let why = self
                        .end_by_policy(pty, "session-limit", &format!("max duration {limit} reached"), None)
                        .await;
                    end_reason.get_or_insert(why);
                    kill(pid, group, &mut killed);
                }
                _ = sleep_until_opt(idle_at), if running && idle_at.is_some() => {
                    // Input may have come since `idle_at` was computed.
                    let now_due = reload::idle_deadline(
                        self.held.grant.idle_timeout,
                        last_output,
                        activity.activity.last_input(),
                    );
                    if now_due.is_some_and(|t| t <= tokio::time::Instant::now()) {
                        let limit = self.held.grant.idle_timeout.map(reload::human).unwrap_or_default();
                        let why = self
                            .end_by_policy(pty, "session-limit", &format!("idle for {limit}"), None)
                            .await;
                        end_reason.get_or_insert(why);
                        kill(pid, group, &mut killed);
                    }
                }
                _ = sleep_until_opt(drain_deadline), if out_open => {
                    // A background process still holds the terminal or pipes.
                    rx_open = false;
                    pipe_out = None;
                    pipe_err = None;
                }
            }
            if let Some((b, stderr)) = got {
                last_output = tokio::time::Instant::now();
                if !self.send_output(b, stderr).await && end_reason.is_none() {
                    end_reason = Some("client gone".into());
                    kill(pid, group, &mut killed);
                }
            }
            // The last output source closed: release the masker's tail.
            if source_closed && !rx_open && pipe_out.is_none() && pipe_err.is_none() {
                self.flush_output().await;
            }
        }
        input_task.abort();
        // Output cut off by the drain deadline still owes its held-back tail.
        self.flush_output().await;
        let exit = exit.unwrap_or(Exit::Code(255));
        drop(pty_master);
        let rec = match self.output.recorder.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(r) = rec
            && let Err(e) = r.finish()
        {
            tracing::error!(error = %e, "recording could not be finished");
        }
        let (status, signal) = match &exit {
            Exit::Code(c) => (Some(*c), None),
            Exit::Signal(s, _) => (None, Some(s.as_str())),
        };
        let reason = end_reason.unwrap_or_else(|| "exited".into());
        tracing::info!(exit = ?exit, reason = %reason, "session ended");
        if let Err(e) = self.shared.store.session_ended(
            &self.session_id,
            &SessionEnd {
                exit_status: status,
                exit_signal: signal,
                bytes_in: self.bytes_in.load(Ordering::Relaxed),
                bytes_out: self.output.bytes_out,
                reason: &reason,
                mask_hits: self.output.hits(),
            },
        ) {
            tracing::error!(error = %e, "audit: cannot close session row");
        }
        // The audit row and the recording are complete before the client
        // learns the session ended, so whoever sees the exit sees the record.
        let ch = self.channel;
        match &exit {
            Exit::Code(c) => {
                let _ = self.handle.exit_status_request(ch, *c).await;
            }
            Exit::Signal(name, core) => {
                let _ = self
                    .handle
                    .exit_signal_request(
                        ch,
                        super::sig_from_name(name),
                        *core,
                        String::new(),
                        String::new(),
                    )
                    .await;
            }
        }
        let _ = self.handle.eof(ch).await;
        let _ = self.handle.close(ch).await;
        self.running.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Output through seam (a) to the client. False when the client is gone.
    async fn send_output(&mut self, data: Bytes, stderr: bool) -> bool {
        let data = match self.output.deliver(data, stderr) {
            Ok(d) => d,
            Err(e) => {
                self.recording_failed(&e);
                return true;
            }
        };
        self.send_client(data, stderr).await
    }

    /// Release the masker's held-back output (idle or end of output). False
    /// when the client is gone.
    async fn flush_output(&mut self) -> bool {
        let chunks = match self.output.flush() {
            Ok(c) => c,
            Err(e) => {
                self.recording_failed(&e);
                return true;
            }
        };
        for (data, stderr) in chunks {
            if !self.send_client(data, stderr).await {
                return false;
            }
        }
        true
    }

    async fn send_client(&mut self, data: Bytes, stderr: bool) -> bool {
        if data.is_empty() {
            return true;
        }
        let r = if stderr {
            self.handle.extended_data(self.channel, 1, data).await
        } else {
            self.handle.data(self.channel, data).await
        };
        r.is_ok()
    }

    fn resize(&mut self, pty: Option<&PtyChild>, cols: u32, rows: u32) {
        let Some(p) = pty else { return };
        if let Err(e) = p.resize(cols, rows) {
            tracing::warn!(error = %e, "resize failed");
        }
        let (c, r) = (
            cols.clamp(1, u16::MAX as u32) as u16,
            rows.clamp(1, u16::MAX as u32) as u16,
        );
        if let Some(l) = &self.output.line {
            l.resize(r, c);
        }
        if let Err(e) = with_recorder(&self.output.recorder, |rec| rec.resize(c, r)) {
            self.recording_failed(&e);
        }
        let _ = self
            .shared
            .store
            .session_resized(&self.session_id, cols, rows);
    }

    /// The policy was reloaded (now at `generation`): re-check what this
    /// session holds. `Some(reason)` when it must end (the client, the
    /// recording and the audit log have been told); otherwise the new
    /// limits and masking apply from now on.
    async fn policy_reloaded(&mut self, generation: u64, pty: bool) -> Option<String> {
        if generation == self.held.generation {
            return None;
        }
        let policy = self.shared.policy.current();
        let mask = self.mask.clone();
        let grant = match reload::recheck(&policy, &self.held, |t| mask.mask_text(t)) {
            Ok(g) => g,
            Err(r) => {
                let detail = format!("policy reloaded: {}", r.why);
                return Some(
                    self.end_by_policy(pty, "session-revoked", &detail, Some(&r.rule))
                        .await,
                );
            }
        };
        if self.held.mask_changed(&grant) {
            match SessionMask::new(&grant) {
                Ok(m) => {
                    // Held-back output is released under the old rules;
                    // output from here on gets the new ones.
                    self.flush_output().await;
                    self.output.replace_mask(m.output());
                    self.mask = m;
                }
                Err(e) => {
                    let detail =
                        format!("policy reloaded: the new masking rules cannot be used ({e})");
                    return Some(
                        self.end_by_policy(pty, "session-revoked", &detail, Some(&grant.reason))
                            .await,
                    );
                }
            }
        }
        tracing::info!(
            generation,
            max_duration = ?grant.max_duration,
            idle_timeout = ?grant.idle_timeout,
            "policy reloaded: session still allowed ({})",
            grant.reason
        );
        self.held.grant = grant;
        self.held.generation = generation;
        None
    }

    /// End the session for a policy reason: a message on the client's
    /// stderr, an "m" marker in the recording, an audit event. `rule` is the
    /// new policy's reason (limits name the grant's roles). Returns the
    /// session row's end reason. The caller kills the child.
    async fn end_by_policy(
        &mut self,
        pty: bool,
        kind: &str,
        detail: &str,
        rule: Option<&str>,
    ) -> String {
        let rule = rule.unwrap_or(&self.held.grant.reason).to_string();
        let text = format!("{detail} ({rule})");
        tracing::info!("session ended: {text}");
        // A pty shows stderr on the terminal: start on a fresh line.
        let message = if pty {
            format!("\r\nsallyport: session ended: {text}\r\n")
        } else {
            format!("sallyport: session ended: {text}\n")
        };
        let _ = self
            .handle
            .extended_data(self.channel, 1, Bytes::from(message))
            .await;
        if let Err(e) = with_recorder(&self.output.recorder, |r| {
            r.marker(&format!("session ended: {text}"))
        }) {
            tracing::error!(error = %e, "cannot write the marker");
        }
        event(
            &self.shared,
            Event {
                connection_id: Some(&self.conn_id),
                session_id: Some(&self.session_id),
                kind,
                subject: Some(&self.subject),
                detail,
                decision: Some("deny"),
                reason: Some(&rule),
            },
        );
        text
    }

    fn recording_failed(&mut self, e: &record::Error) {
        if self.failed.is_cancelled() {
            return;
        }
        tracing::error!(error = %e, "recording failed mid-session: ending the session");
        event(
            &self.shared,
            Event {
                connection_id: Some(&self.conn_id),
                session_id: Some(&self.session_id),
                kind: "recording-failed",
                subject: Some(&self.subject),
                detail: &e.to_string(),
                decision: Some("deny"),
                reason: Some("a session that cannot be recorded does not run"),
            },
        );
        self.failed.cancel();
    }
}

/// End the child and its process group (a pty child leads its own session
/// and group; a pipe child was put in its own group). HUP lets programs
/// notice the hang-up; KILL follows because nothing may outlive the
/// recorded channel.
fn kill(pid: Option<u32>, _group: bool, killed: &mut bool) {
    if let Some(p) = pid {
        shell::signal(p, "HUP", true);
        shell::signal(p, "KILL", true);
        shell::signal(p, "KILL", false);
    }
    *killed = true;
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Largest chunk of child output read at once. Bulk output comes in
/// chunks this big (fewer events, syscalls and hand-offs per byte: measured
/// with bench/masking.sh); interactive output is as small as it is written.
const READ_CHUNK: usize = 256 * 1024;

/// A child's stdout or stderr pipe with its read buffer.
struct Pipe<R> {
    r: R,
    buf: bytes::BytesMut,
}

impl<R: std::os::fd::AsFd> Pipe<R> {
    fn new(r: R) -> Self {
        shell::widen_pipe(&r);
        Self {
            r,
            buf: bytes::BytesMut::new(),
        }
    }
}

/// The next chunk from `pipe` (read straight into a buffer handed on as
/// `Bytes`: no copy); `None` at EOF or on an error; never ready when there
/// is no pipe. Cancel-safe (`read_buf` reads nothing unless it completes),
/// so it can sit in the session loop's `select!`.
async fn read_pipe<R>(pipe: &mut Option<Pipe<R>>) -> Option<Bytes>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let Some(p) = pipe.as_mut() else {
        return std::future::pending().await;
    };
    // A new buffer once the rest of the last one is small: chunks handed on
    // share it until the client has them.
    if p.buf.capacity() - p.buf.len() < READ_CHUNK / 4 {
        p.buf.reserve(READ_CHUNK);
    }
    match p.r.read_buf(&mut p.buf).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(p.buf.split().freeze()),
    }
}

/// Client input through seam (b) into the child, in its own task.
async fn input_loop(
    mut seam: InputSeam,
    mut rx: mpsc::UnboundedReceiver<Input>,
    queued: Arc<Queued>,
    mut sink: Sink,
    failed: CancellationToken,
) {
    use tokio::io::AsyncWriteExt;
    // Whatever way this ends, the handler must not wait on it any more.
    struct Release(Arc<Queued>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.take(usize::MAX);
        }
    }
    let _release = Release(Arc::clone(&queued));
    if let Some(guard) = seam.guard.take()
        && let Sink::Pty(tx) = &sink
    {
        let intake = Intake {
            seam: &mut seam,
            rx: &mut rx,
            queued: &queued,
            failed: &failed,
        };
        guard.run(intake, tx.clone()).await;
        return;
    }
    while let Some(i) = rx.recv().await {
        match i {
            Input::Data(d) => {
                let len = d.len();
                let admitted = match seam.admit(d).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::error!(error = %e, "recording input failed: ending the session");
                        failed.cancel();
                        return;
                    }
                };
                let Some(d) = admitted else {
                    queued.take(len);
                    continue;
                };
                match &mut sink {
                    Sink::Pty(tx) => {
                        if tx.send(d).is_err() {
                            return;
                        }
                    }
                    Sink::Pipe(Some(w)) => {
                        if w.write_all(&d).await.is_err() {
                            sink = Sink::Pipe(None);
                        }
                    }
                    Sink::Pipe(None) => {}
                }
                queued.take(len);
            }
            Input::Eof => {
                // A pipe child sees EOF on stdin; a pty has no half-close
                // (sshd does not forward EOF to a pty either).
                if let Sink::Pipe(w) = &mut sink
                    && let Some(mut w) = w.take()
                {
                    let _ = w.shutdown().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_cuts_at_char_boundaries() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("aé", 2), "a…");
        assert_eq!(clip(&"x".repeat(10), 4), "xxxx…");
    }
}
