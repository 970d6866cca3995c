//! The interactive line tracker: a pure state machine, one per pty session,
//! fed with the client's input bytes and the shell's output bytes, that says
//! what line the shell is about to run when the user presses Enter — before
//! the Enter is passed on — so the session can check it with policy and
//! either release the Enter or clear the line.
//!
//! Two sources, best first:
//! 1. The screen. A terminal model (`vt100`) follows the shell's output; the
//!    rcfile sallyport installs (`shell-integration.bash`, [`BASH_RC`]) marks
//!    the prompt with OSC 133 A (prompt start), B (prompt end = input
//!    starts), C (command runs), D (command done). The line is the screen
//!    text from the B position to the end of the cursor's (wrapped) row, so
//!    history recall, Tab completion and readline editing are reflected.
//! 2. The typed input alone (printable chars, backspace, Ctrl-U/W/K/A/E,
//!    arrows left/right, Home/End, Delete), used when no marks were seen.
//!
//! When the answer cannot be trusted — history or completion without marks,
//! unknown control or escape sequences in the input, the screen cleared or
//! reset or switched to the alternate screen after the prompt, the prompt
//! scrolled away, screen and typed text disagreeing — the result says
//! [`Certainty::Unsure`] with a reason, and strict roles deny.
//!
//! Session contract: [`LineTracker::input`] splits client bytes into
//! [`Action::Forward`] (send now) and [`Action::Enter`] (hold). On `Enter`,
//! let the echo of what was forwarded arrive (until [`LineTracker::echo_pending`]
//! is false or ~100 ms pass), ask [`LineTracker::line`], then either send the
//! Enter bytes and call [`LineTracker::submitted`], or send [`CLEAR_LINE`]
//! instead and call [`LineTracker::cleared`].

/// The bash rcfile that adds OSC 133 prompt marks and turns bracketed paste on.
pub const BASH_RC: &str = include_str!("shell-integration.bash");

/// What to send to the shell instead of a refused Enter: Ctrl-E (end of
/// line) then Ctrl-U (kill to start), which empties readline's buffer
/// wherever the cursor was.
pub const CLEAR_LINE: &[u8] = b"\x05\x15";

/// The key the session sends to the shell at Enter to learn when the shell
/// has processed everything typed before it: the rcfile binds it (`bind -x`)
/// to print an OSC 133 `S` mark, so a Tab completion or history recall still
/// being redrawn is on the screen before the line is read ([`LineTracker::syncs`]).
pub const SYNC_KEY: &[u8] = b"\x1b[9999~";

/// Longest input escape sequence followed before it counts as hostile.
const MAX_PENDING_ESC: usize = 32;
/// Longest OSC 133 mark waited for across output chunks.
const MAX_OSC: usize = 256;
const OSC133: &[u8] = b"\x1b]133;";

/// How far the returned line can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certainty {
    /// Read from the screen between shell-integration marks.
    Screen,
    /// Reconstructed from typed input only (no marks), with simple editing.
    Typed,
    /// Not to be trusted; why.
    Unsure(String),
}

/// The line the shell is about to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub line: String,
    pub certainty: Certainty,
}

impl Submitted {
    pub fn is_unsure(&self) -> bool {
        matches!(self.certainty, Certainty::Unsure(_))
    }
}

/// What the session does with client input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes to the shell now.
    Forward(Vec<u8>),
    /// An Enter: hold these bytes until the line is checked.
    Enter(Vec<u8>),
}

#[derive(Default)]
struct Cb {
    scrolled: u64,
}

impl vt100::Callbacks for Cb {
    fn on_scroll(&mut self, _: vt100::capture::RowContents<'_>, _alternate: bool) {
        self.scrolled += 1;
    }
}

/// Input-only reconstruction of the line.
#[derive(Debug, Default, Clone)]
struct Typed {
    text: Vec<char>,
    cursor: usize,
    unsure: Option<String>,
    /// Input that makes the screen untrustworthy too (a quoted control
    /// character is shown as `^[` but is a raw byte in the line).
    hostile: Option<String>,
    utf8: Vec<u8>,
}

impl Typed {
    fn insert(&mut self, c: char) {
        let at = self.cursor.min(self.text.len());
        self.text.insert(at, c);
        self.cursor = at + 1;
    }
    fn unsure(&mut self, why: &str) {
        if self.unsure.is_none() {
            self.unsure = Some(why.to_string());
        }
    }
    fn string(&self) -> String {
        self.text.iter().collect()
    }
}

/// Per-session line tracking state. `Send`, no global state.
pub struct LineTracker {
    vt: vt100::Parser<Cb>,
    /// Partial OSC 133 sequence at the end of the last output chunk.
    carry: Vec<u8>,
    marks_seen: bool,
    /// Cursor position at the last B mark, and the scroll count then.
    prompt_end: Option<(u16, u16, u64)>,
    /// Between B and C: the user is editing a command line.
    editing: bool,
    screen_unsure: Option<String>,
    typed: Typed,
    /// Inside a client bracketed paste.
    in_paste: bool,
    /// The last key was Ctrl-V/Ctrl-Q (quoted insert): the next byte goes
    /// into the line literally, whatever it is.
    quoted: bool,
    /// Partial escape sequence in the input.
    esc: Vec<u8>,
    /// The terminal model follows the output: from a prompt start (`A`)
    /// until a command runs (`C`). What commands print is not modelled (it
    /// cannot change the next command line, and the model is reset at the
    /// next prompt), which keeps big outputs cheap.
    feeding: bool,
    /// Bracketed paste as the shell last set it (followed in all output).
    paste_mode: bool,
    /// The last bytes of output, for mode switches split across chunks.
    mode_tail: Vec<u8>,
    /// `S` marks seen (answers to [`SYNC_KEY`]).
    syncs: u64,
    /// Keys typed before the current prompt appeared (typed ahead while the
    /// last command finished, or eaten by a program): the line on the
    /// screen may start with them, or not.
    ahead: Option<Typed>,
    /// An `S` mark was seen: the `A`/`B` that follow are readline redrawing
    /// the same line after the sync, not a new prompt.
    resync: bool,
}

impl std::fmt::Debug for LineTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineTracker")
            .field("marks_seen", &self.marks_seen)
            .field("editing", &self.editing)
            .finish_non_exhaustive()
    }
}

fn nz(n: u16) -> std::num::NonZeroU16 {
    std::num::NonZeroU16::new(n.max(1)).unwrap_or(std::num::NonZeroU16::MIN)
}

/// Position of the next ESC in `hay`. Every sequence looked for in the
/// output starts with ESC, which is rare in terminal text, so the scan
/// jumps between ESCs (aho-corasick's memchr prefilter; a plain loop if the
/// automaton cannot be built).
fn next_esc(hay: &[u8]) -> Option<usize> {
    static ESC: std::sync::OnceLock<Option<aho_corasick::AhoCorasick>> = std::sync::OnceLock::new();
    match ESC.get_or_init(|| aho_corasick::AhoCorasick::new([[0x1b_u8]]).ok()) {
        Some(ac) => ac.find(hay).map(|m| m.start()),
        None => hay.iter().position(|&b| b == 0x1b),
    }
}

/// First position of `needle` (which starts with ESC) in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = hay.get(from..).and_then(next_esc) {
        let at = from + p;
        if hay.get(at..at + needle.len()) == Some(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

const PASTE_ON: &[u8] = b"\x1b[?2004h";
const PASTE_OFF: &[u8] = b"\x1b[?2004l";

/// The bracketed paste mode after `hay`, if `hay` switches it.
fn paste_toggle(hay: &[u8]) -> Option<bool> {
    let mut last = None;
    let mut from = 0;
    while let Some(p) = hay.get(from..).and_then(next_esc) {
        let at = from + p;
        match hay.get(at..at + PASTE_ON.len()) {
            Some(w) if w == PASTE_ON => last = Some(true),
            Some(w) if w == PASTE_OFF => last = Some(false),
            _ => {}
        }
        from = at + 1;
    }
    last
}

/// Output sequences after which the screen no longer shows the line.
const SUSPICIOUS: &[(&[u8], &str)] = &[
    (b"\x1bc", "terminal reset (ESC c) after the prompt"),
    (b"\x1b[2J", "screen cleared after the prompt"),
    (b"\x1b[3J", "screen cleared after the prompt"),
    (b"\x1b[?1049h", "alternate screen after the prompt"),
    (b"\x1b[?1047h", "alternate screen after the prompt"),
    (b"\x1b[?47h", "alternate screen after the prompt"),
    (b"\x1b[r", "scroll region changed after the prompt"),
];

impl LineTracker {
    /// A tracker for a terminal of `rows` x `cols`.
    pub fn new(rows: u16, cols: u16) -> Self {
        Self {
            vt: vt100::Parser::new_with_callbacks(nz(rows), nz(cols), 0, Cb::default()),
            carry: Vec::new(),
            marks_seen: false,
            prompt_end: None,
            editing: false,
            screen_unsure: None,
            typed: Typed::default(),
            in_paste: false,
            quoted: false,
            esc: Vec::new(),
            syncs: 0,
            ahead: None,
            feeding: false,
            paste_mode: false,
            mode_tail: Vec::new(),
            resync: false,
        }
    }

    /// The shell is showing a prompt and reading a command line (marks say
    /// so): keys go to readline, not to a running program.
    pub fn at_prompt(&self) -> bool {
        self.marks_seen && self.editing
    }

    /// The typed keys alone cannot say what the line is (history recall,
    /// completion, escape sequences since the last prompt).
    pub fn typed_unsure(&self) -> bool {
        self.typed.unsure.is_some()
    }

    /// The shell has answered `n` sync keys and redrawn the line after the
    /// last one (its `S` mark comes before readline clears and redraws the
    /// line; the redraw ends with the prompt's `B` mark and the line text).
    pub fn synced(&self, n: u64) -> bool {
        self.syncs >= n && !self.resync
    }

    /// The line as rebuilt from the typed keys alone.
    pub fn typed_line(&self) -> String {
        self.typed.string()
    }

    /// How many sync answers (`S` marks) the shell has printed.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// The shell asked for bracketed paste (`ESC[?2004h`).
    pub fn shell_paste(&self) -> bool {
        self.paste_mode
    }

    /// The client resized the window. Readline redraws; until the next
    /// prompt mark the old positions are unreliable.
    pub fn resize(&mut self, rows: u16, cols: u16) {
        self.vt.set_size(nz(rows), nz(cols));
        if self.editing {
            self.screen_unsure = Some("window resized while editing".into());
        }
    }

    /// Shell integration marks have been seen in this session.
    pub fn has_marks(&self) -> bool {
        self.marks_seen
    }

    /// Feed shell output (as sent to the client).
    pub fn output(&mut self, bytes: &[u8]) {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(bytes);
        let mut i = 0;
        while i < data.len() {
            let rest = data.get(i..).unwrap_or_default();
            match find(rest, OSC133) {
                Some(p) => {
                    self.feed(rest.get(..p).unwrap_or_default());
                    let seq = rest.get(p..).unwrap_or_default();
                    let body = seq.get(OSC133.len()..).unwrap_or_default();
                    let term = body.iter().enumerate().find(|&(j, &b)| {
                        b == 0x07 || (b == b'\\' && j > 0 && body.get(j - 1) == Some(&0x1b))
                    });
                    match term {
                        Some((j, _)) => {
                            self.mark(body.first().copied());
                            i += p + OSC133.len() + j + 1;
                        }
                        None if seq.len() < MAX_OSC => {
                            self.carry = seq.to_vec();
                            return;
                        }
                        None => {
                            self.feed(seq);
                            return;
                        }
                    }
                }
                None => {
                    // Keep a possible start of a mark for the next chunk.
                    let keep = (1..OSC133.len())
                        .rev()
                        .find(|&l| {
                            rest.len() >= l
                                && rest
                                    .get(rest.len() - l..)
                                    .is_some_and(|t| OSC133.starts_with(t))
                        })
                        .unwrap_or(0);
                    let (now, later) = rest.split_at(rest.len() - keep);
                    self.feed(now);
                    self.carry = later.to_vec();
                    return;
                }
            }
        }
    }

    fn feed(&mut self, piece: &[u8]) {
        if piece.is_empty() {
            return;
        }
        self.follow_paste_mode(piece);
        if !self.feeding {
            return;
        }
        if self.editing {
            for (seq, why) in SUSPICIOUS {
                if contains(piece, seq) {
                    self.screen_unsure = Some((*why).to_string());
                }
            }
        }
        self.vt.process(piece);
    }

    fn follow_paste_mode(&mut self, piece: &[u8]) {
        let keep = PASTE_ON.len() - 1;
        let mut edge = std::mem::take(&mut self.mode_tail);
        edge.extend_from_slice(piece.get(..piece.len().min(keep)).unwrap_or_default());
        for hay in [&edge[..], piece] {
            if let Some(on) = paste_toggle(hay) {
                self.paste_mode = on;
            }
        }
        // Keep the last bytes seen: of the piece, or (short piece) of
        // the old tail followed by the piece, which is what `edge` holds.
        let last = if piece.len() >= keep {
            piece
        } else {
            &edge[..]
        };
        self.mode_tail = last
            .get(last.len().saturating_sub(keep)..)
            .unwrap_or_default()
            .to_vec();
    }

    /// A new prompt starts: model a fresh screen from here (readline
    /// assumes the prompt starts in column 0).
    fn fresh_screen(&mut self) {
        let (rows, cols) = self.vt.screen().size();
        self.vt = vt100::Parser::new_with_callbacks(rows, cols, 0, Cb::default());
        self.feeding = true;
    }

    fn mark(&mut self, kind: Option<u8>) {
        self.marks_seen = true;
        match kind {
            Some(b'B') if self.resync => {
                // Readline redrew the line being edited after a sync: the
                // input starts here now; what was typed still holds.
                self.resync = false;
                let (r, c) = self.vt.screen().cursor_position();
                let scrolled = self.vt.callbacks().scrolled;
                self.prompt_end = Some((r, c, scrolled));
                self.editing = true;
            }
            Some(b'B') => {
                let (r, c) = self.vt.screen().cursor_position();
                let scrolled = self.vt.callbacks().scrolled;
                self.prompt_end = Some((r, c, scrolled));
                self.editing = true;
                self.screen_unsure = None;
                let before = std::mem::take(&mut self.typed);
                self.ahead = (!before.text.is_empty()
                    || before.unsure.is_some()
                    || before.hostile.is_some())
                .then_some(before);
            }
            Some(b'A') if self.resync => {}
            Some(b'S') => {
                self.syncs += 1;
                self.resync = self.editing;
            }
            Some(b'A') => {
                self.editing = false;
                self.prompt_end = None;
                self.resync = false;
                self.fresh_screen();
            }
            Some(b'C') => {
                self.editing = false;
                self.prompt_end = None;
                self.resync = false;
                self.feeding = false;
            }
            Some(b'D') => {
                self.editing = false;
                self.prompt_end = None;
                self.resync = false;
            }
            _ => {}
        }
    }

    /// Feed client input; returns what to forward and where Enters are.
    pub fn input(&mut self, bytes: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut fwd = Vec::new();
        let shell_paste = self.paste_mode;
        for &b in bytes {
            if self.quoted {
                // Readline inserts it as is (an Enter too, as ^M).
                self.quoted = false;
                let c = if b.is_ascii() {
                    char::from(b)
                } else {
                    char::REPLACEMENT_CHARACTER
                };
                self.typed.insert(c);
                fwd.push(b);
                continue;
            }
            // An Enter never disappears into an escape sequence: whatever
            // the shell makes of `ESC CR`, the line is checked first.
            if !self.esc.is_empty() && !matches!(b, b'\r' | b'\n' | 0x0f) {
                self.esc.push(b);
                fwd.push(b);
                self.escape_step();
                continue;
            }
            if !self.esc.is_empty() {
                self.esc.clear();
                self.typed.unsure("escape sequence cut by an Enter");
            }
            match b {
                // Ctrl-O is readline's operate-and-get-next: it runs the line.
                b'\r' | b'\n' | 0x0f if !(self.in_paste && shell_paste) => {
                    if !fwd.is_empty() {
                        actions.push(Action::Forward(std::mem::take(&mut fwd)));
                    }
                    actions.push(Action::Enter(vec![b]));
                }
                b'\r' | b'\n' => {
                    // Inside a bracketed paste the shell inserts the newline
                    // into the line; the whole paste is checked at Enter.
                    self.typed.insert('\n');
                    fwd.push(b);
                }
                0x1b => {
                    self.esc.push(b);
                    fwd.push(b);
                }
                _ => {
                    self.key(b);
                    fwd.push(b);
                }
            }
        }
        if !fwd.is_empty() {
            actions.push(Action::Forward(fwd));
        }
        actions
    }

    fn key(&mut self, b: u8) {
        let t = &mut self.typed;
        match b {
            0x20..=0x7e => t.insert(char::from(b)),
            0x80..=0xff => {
                t.utf8.push(b);
                if let Ok(s) = std::str::from_utf8(&t.utf8) {
                    let chars: Vec<char> = s.chars().collect();
                    t.utf8.clear();
                    for c in chars {
                        t.insert(c);
                    }
                } else if t.utf8.len() >= 4 {
                    t.utf8.clear();
                    t.insert(char::REPLACEMENT_CHARACTER);
                }
            }
            0x7f | 0x08 => {
                if t.cursor > 0 && t.cursor <= t.text.len() {
                    t.text.remove(t.cursor - 1);
                    t.cursor -= 1;
                }
            }
            0x15 => {
                let at = t.cursor.min(t.text.len());
                t.text.drain(..at);
                t.cursor = 0;
            }
            0x0b => t.text.truncate(t.cursor),
            0x17 => {
                let end = t.cursor.min(t.text.len());
                let mut start = end;
                while start > 0 && t.text.get(start - 1) == Some(&' ') {
                    start -= 1;
                }
                while start > 0 && t.text.get(start - 1).is_some_and(|c| *c != ' ') {
                    start -= 1;
                }
                t.text.drain(start..end);
                t.cursor = start;
            }
            0x01 => t.cursor = 0,
            0x05 => t.cursor = t.text.len(),
            0x02 => t.cursor = t.cursor.saturating_sub(1),
            0x06 => t.cursor = (t.cursor + 1).min(t.text.len()),
            0x03 => {
                *t = Typed::default();
                self.ahead = None;
            }
            0x09 => t.unsure("Tab completion changed the line"),
            0x10 | 0x0e => t.unsure("history recall changed the line"),
            0x12 | 0x13 => t.unsure("history search changed the line"),
            0x19 => t.unsure("yank inserted killed text"),
            0x16 | 0x11 => {
                self.quoted = true;
                t.unsure("quoted insert of a control character");
                t.hostile = Some("quoted insert of a control character into the line".into());
            }
            _ => t.unsure("control character in the line"),
        }
    }

    /// Advance a partial input escape sequence; act when complete.
    fn escape_step(&mut self) {
        let seq = self.esc.clone();
        let complete = match seq.get(1) {
            None => false,
            Some(b'[') => seq.len() > 2 && seq.last().is_some_and(|b| (0x40..=0x7e).contains(b)),
            Some(b'O') => seq.len() > 2,
            Some(_) => true,
        };
        if !complete {
            if seq.len() > MAX_PENDING_ESC {
                self.typed.unsure("overlong escape sequence in input");
                self.esc.clear();
            }
            return;
        }
        self.esc.clear();
        let t = &mut self.typed;
        match seq.get(1..).unwrap_or_default() {
            b"[C" | b"OC" => t.cursor = (t.cursor + 1).min(t.text.len()),
            b"[D" | b"OD" => t.cursor = t.cursor.saturating_sub(1),
            b"[H" | b"OH" | b"[1~" => t.cursor = 0,
            b"[F" | b"OF" | b"[4~" => t.cursor = t.text.len(),
            b"[3~" => {
                if t.cursor < t.text.len() {
                    t.text.remove(t.cursor);
                }
            }
            b"[A" | b"OA" | b"[B" | b"OB" => t.unsure("history recall changed the line"),
            seq if Some(seq) == SYNC_KEY.get(1..) => {
                t.unsure("the bastion's sync key in the input");
                t.hostile = Some("the bastion's sync key in the input".into());
            }
            b"[200~" => self.in_paste = true,
            b"[201~" => self.in_paste = false,
            _ => t.unsure("escape sequence in the typed input"),
        }
    }

    /// The screen text of the line being edited, if marks make it readable.
    fn screen_line(&self) -> Option<Result<String, String>> {
        if !self.marks_seen || !self.editing {
            return None;
        }
        let (r0, c0, scrolled_then) = self.prompt_end?;
        let screen = self.vt.screen();
        let scrolled = self.vt.callbacks().scrolled.saturating_sub(scrolled_then);
        let Some(r0) = u64::from(r0).checked_sub(scrolled) else {
            return Some(Err("the prompt scrolled off the screen".into()));
        };
        let r0 = u16::try_from(r0).unwrap_or(0);
        let (rows, cols) = screen.size();
        let (cur_row, _) = screen.cursor_position();
        let mut end = cur_row.max(r0);
        while end + 1 < rows.get() && screen.row_wrapped(end) {
            end += 1;
        }
        if screen.alternate_screen() {
            return Some(Err("alternate screen while editing".into()));
        }
        let text = screen.contents_between(r0, c0, end, cols.get());
        Some(Ok(text.trim_end().to_string()))
    }

    /// True while the typed text (when certain) is not yet on the screen:
    /// the echo has not arrived; wait a little before [`Self::line`].
    pub fn echo_pending(&self) -> bool {
        match self.screen_line() {
            Some(Ok(s)) => self.typed.unsure.is_none() && !self.agrees(&s),
            _ => false,
        }
    }

    /// Does the screen line match the typed keys (with or without those
    /// typed ahead of the prompt)? Keys typed ahead that recalled history
    /// or completed cannot be compared: the screen (after the sync) rules.
    fn agrees(&self, screen: &str) -> bool {
        let typed = self.typed.string();
        if screen == typed {
            return true;
        }
        match &self.ahead {
            Some(a) if a.unsure.is_some() => true,
            Some(a) => screen == format!("{}{typed}", a.string()),
            None => false,
        }
    }

    /// The line the shell would run if the held Enter were released.
    pub fn line(&self) -> Submitted {
        let typed = self.typed.string();
        match self.screen_line() {
            Some(Ok(line)) => {
                let ahead_hostile = self.ahead.as_ref().and_then(|a| a.hostile.as_ref());
                let certainty = if let Some(why) = self
                    .screen_unsure
                    .as_ref()
                    .or(self.typed.hostile.as_ref())
                    .or(ahead_hostile)
                {
                    Certainty::Unsure(why.clone())
                } else if self.typed.unsure.is_none() && !self.agrees(&line) {
                    Certainty::Unsure("the screen and the typed input disagree".into())
                } else {
                    Certainty::Screen
                };
                Submitted { line, certainty }
            }
            Some(Err(why)) => Submitted {
                line: typed,
                certainty: Certainty::Unsure(why),
            },
            None => Submitted {
                certainty: match (&self.typed.unsure, self.marks_seen) {
                    (Some(why), _) => Certainty::Unsure(why.clone()),
                    (None, true) => {
                        Certainty::Unsure("Enter outside a shell prompt (no prompt mark)".into())
                    }
                    (None, false) => Certainty::Typed,
                },
                line: typed,
            },
        }
    }

    /// The held Enter was released to the shell.
    pub fn submitted(&mut self) {
        self.typed = Typed::default();
        self.ahead = None;
        if self.marks_seen {
            // C arrives with the command; until then this is not a prompt.
            self.editing = false;
        }
    }

    /// The line was refused and [`CLEAR_LINE`] sent instead.
    pub fn cleared(&mut self) {
        self.typed = Typed::default();
        self.ahead = None;
    }
}

#[cfg(test)]
mod tests;
