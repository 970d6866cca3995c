//! The exec command parser: turns a shell command string into the simple
//! commands it would run ([`CommandLine`]), so that policy can match each one.
//!
//! It is a small POSIX-shell lexer (quotes, `\` escapes, `$'..'`, `$(..)`,
//! backticks, `<(..)`, subshells, `{ ..; }`, here-documents, redirections,
//! comments) plus a table of wrappers that run their arguments as a command
//! (`env`, `sudo`, `doas`, `exec`, `nohup`, `timeout`, `xargs`, `nice`,
//! `command`, `builtin`, `time`, `stdbuf`, `setsid`, `ionice`, `watch`,
//! `find -exec`) and of shells whose `-c` payload is parsed again.
//!
//! What it cannot see into goes to [`CommandLine::opaque`] with a reason:
//! `eval`, `source`/`.`, shell scripts by file, a pipe or here-document into a
//! shell reading stdin (decoded or not), a command name that is a variable or
//! substitution, unbalanced quotes, nesting deeper than [`MAX_DEPTH`]. Strict
//! roles deny those. The parser never fails: bad input is opaque input.
//!
//! Cost is linear in the input (each nesting level re-reads its own payload
//! once, at most [`MAX_DEPTH`] levels), so 1 MB commands are fine.

use super::CommandLine;

/// Deepest nesting of substitutions and `sh -c` payloads followed.
pub const MAX_DEPTH: usize = 16;

/// Longest snippet of the command quoted in an opaque reason.
const SNIPPET: usize = 80;

const SHELLS: &[&str] = &[
    "sh", "bash", "zsh", "dash", "ksh", "ash", "mksh", "yash", "busybox",
];

/// Parse a command string (as an SSH exec request or a typed line carries it).
pub fn parse(cmd: &str) -> CommandLine {
    let mut out = CommandLine {
        raw: cmd.to_string(),
        ..CommandLine::default()
    };
    let mut p = Parser::new(cmd.as_bytes(), 0);
    p.parse_list(None);
    p.finish_into(&mut out);
    out
}

/// Parse bytes that may not be UTF-8 (invalid sequences become U+FFFD).
pub fn parse_bytes(cmd: &[u8]) -> CommandLine {
    parse(&String::from_utf8_lossy(cmd))
}

fn snippet(s: &str) -> String {
    let mut end = s.len().min(SNIPPET);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.get(..end).unwrap_or_default();
    if end < s.len() {
        format!("{cut}...")
    } else {
        cut.to_string()
    }
}

/// A word after quote removal.
#[derive(Debug, Clone, Default)]
struct Word {
    text: String,
    /// Starts with an unquoted expansion (`$X`, `${X}`, `$(..)`, backticks):
    /// as a command name, the guard cannot know what runs.
    dynamic_start: bool,
    /// Any quoting or escaping in the word (then `X=1` is not an assignment).
    quoted: bool,
}

/// The simple command being collected.
#[derive(Debug, Default)]
struct Cmd {
    words: Vec<Word>,
    /// stdin comes from `|`.
    piped_in: bool,
    /// stdin from `<file`, a here-document or a here-string.
    stdin_redirected: bool,
    heredoc: bool,
}

struct Heredoc {
    delim: Vec<u8>,
    strip_tabs: bool,
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    depth: usize,
    simple: Vec<Vec<String>>,
    opaque: Vec<String>,
    /// argv of the previous pipeline stage, for "decoded pipe into a shell".
    prev_stage: Option<Vec<String>>,
    pending_heredocs: Vec<Heredoc>,
    heredoc_into_shell: bool,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8], depth: usize) -> Self {
        Self {
            s,
            i: 0,
            depth,
            simple: Vec::new(),
            opaque: Vec::new(),
            prev_stage: None,
            pending_heredocs: Vec::new(),
            heredoc_into_shell: false,
        }
    }

    fn finish_into(self, out: &mut CommandLine) {
        out.simple.extend(self.simple);
        for o in self.opaque {
            if !out.opaque.contains(&o) {
                out.opaque.push(o);
            }
        }
    }

    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Parse a nested string (payload of `sh -c`, backticks, `eval`).
    fn nested(&mut self, text: &str) {
        if self.depth + 1 > MAX_DEPTH {
            self.opaque_push(format!("nesting deeper than {MAX_DEPTH} levels"));
            return;
        }
        let mut p = Parser::new(text.as_bytes(), self.depth + 1);
        p.parse_list(None);
        self.simple.extend(p.simple);
        for o in p.opaque {
            self.opaque_push(o);
        }
    }

    fn opaque_push(&mut self, reason: String) {
        if !self.opaque.contains(&reason) {
            self.opaque.push(reason);
        }
    }

    /// Parse commands until `end` (`)` of a substitution or subshell) or the
    /// end of input. Returns true when `end` was found.
    fn parse_list(&mut self, end: Option<u8>) -> bool {
        let mut cmd = Cmd::default();
        loop {
            let Some(c) = self.peek() else {
                self.finish(&mut cmd, false);
                if end.is_some() {
                    self.opaque_push("unbalanced parenthesis".into());
                }
                return false;
            };
            match c {
                b' ' | b'\t' => self.i += 1,
                b'\n' => {
                    self.i += 1;
                    self.finish(&mut cmd, false);
                    self.read_heredoc_bodies();
                }
                b';' => {
                    self.i += 1;
                    self.finish(&mut cmd, false);
                }
                b'&' => {
                    self.i += 1;
                    if self.peek() == Some(b'>') {
                        // `&>file`: redirection of stdout and stderr.
                        self.i += 1;
                        if self.peek() == Some(b'>') {
                            self.i += 1;
                        }
                        self.skip_blanks();
                        let _ = self.read_word(&mut cmd);
                    } else {
                        if self.peek() == Some(b'&') {
                            self.i += 1;
                        }
                        self.finish(&mut cmd, false);
                    }
                }
                b'|' => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'|') => {
                            self.i += 1;
                            self.finish(&mut cmd, false);
                        }
                        Some(b'&') => {
                            self.i += 1;
                            self.finish(&mut cmd, true);
                        }
                        _ => self.finish(&mut cmd, true),
                    }
                }
                b'(' => {
                    self.i += 1;
                    if self.peek() == Some(b')') && !cmd.words.is_empty() {
                        // `name() { ...; }`: a function definition; its body
                        // is parsed like any other commands.
                        self.i += 1;
                        cmd.words.clear();
                        continue;
                    }
                    if self.peek() == Some(b'(') {
                        // `(( arithmetic ))`
                        self.skip_balanced(b'(', b')');
                        continue;
                    }
                    self.finish(&mut cmd, false);
                    self.sub_list(b')');
                }
                b')' => {
                    self.i += 1;
                    self.finish(&mut cmd, false);
                    if end == Some(b')') {
                        return true;
                    }
                    // A stray `)` (e.g. a `case` pattern): a separator.
                }
                b'<' | b'>' => self.redirect(&mut cmd),
                b'#' => {
                    while let Some(c) = self.peek() {
                        if c == b'\n' {
                            break;
                        }
                        self.i += 1;
                    }
                }
                _ => {
                    if let Some(w) = self.read_word(&mut cmd) {
                        cmd.words.push(w);
                    }
                }
            }
        }
    }

    fn sub_list(&mut self, end: u8) {
        if self.depth + 1 > MAX_DEPTH {
            self.opaque_push(format!("nesting deeper than {MAX_DEPTH} levels"));
            self.skip_balanced(b'(', end);
            return;
        }
        self.depth += 1;
        let saved = self.prev_stage.take();
        self.parse_list(Some(end));
        self.prev_stage = saved;
        self.depth -= 1;
    }

    /// Skip to the matching close bracket (the opening one is consumed).
    fn skip_balanced(&mut self, open: u8, close: u8) {
        let mut level = 1usize;
        while let Some(c) = self.peek() {
            self.i += 1;
            if c == b'\\' {
                self.i += 1;
            } else if c == open {
                level += 1;
            } else if c == close {
                level -= 1;
                if level == 0 {
                    return;
                }
            }
        }
        self.opaque_push("unbalanced parenthesis".into());
    }

    fn redirect(&mut self, cmd: &mut Cmd) {
        let Some(c) = self.peek() else { return };
        // An all-digit word just before is the fd number, not an argument.
        if let Some(last) = cmd.words.last()
            && !last.quoted
            && !last.text.is_empty()
            && last.text.bytes().all(|b| b.is_ascii_digit())
            && self.i > 0
            && self.s.get(self.i - 1).is_some_and(|b| b.is_ascii_digit())
        {
            cmd.words.pop();
        }
        self.i += 1;
        if self.peek() == Some(b'(') {
            // `<(cmd)` / `>(cmd)`: process substitution.
            self.i += 1;
            self.sub_list(b')');
            return;
        }
        if c == b'<' && self.peek() == Some(b'<') {
            self.i += 1;
            cmd.stdin_redirected = true;
            cmd.heredoc = true;
            if self.peek() == Some(b'<') {
                // `<<< word`: here-string.
                self.i += 1;
                self.skip_blanks();
                if let Some(w) = self.read_word(cmd) {
                    self.heredoc_word(cmd, w.text);
                }
                return;
            }
            let strip_tabs = if self.peek() == Some(b'-') {
                self.i += 1;
                true
            } else {
                false
            };
            while matches!(self.peek(), Some(b' ' | b'\t')) {
                self.i += 1;
            }
            if let Some(w) = self.read_word(cmd) {
                self.pending_heredocs.push(Heredoc {
                    delim: w.text.into_bytes(),
                    strip_tabs,
                });
            }
            return;
        }
        if c == b'<' {
            cmd.stdin_redirected = true;
        }
        // `>>`, `>&`, `<>`, `>|`, `<&`
        if matches!(self.peek(), Some(b'>' | b'&' | b'|')) {
            self.i += 1;
        }
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
        let _ = self.read_word(cmd);
    }

    /// A here-string's text: parsed as commands when it feeds a shell.
    fn heredoc_word(&mut self, cmd: &Cmd, text: String) {
        if cmd
            .words
            .first()
            .is_some_and(|w| SHELLS.contains(&basename(&w.text)))
        {
            self.nested(&text);
        }
    }

    fn read_heredoc_bodies(&mut self) {
        let docs = std::mem::take(&mut self.pending_heredocs);
        let into_shell = std::mem::take(&mut self.heredoc_into_shell);
        for d in docs {
            let mut body = String::new();
            loop {
                if self.i >= self.s.len() {
                    break;
                }
                let start = self.i;
                let end = self
                    .s
                    .get(start..)
                    .unwrap_or_default()
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(self.s.len(), |p| start + p);
                let line = self.s.get(start..end).unwrap_or_default();
                self.i = (end + 1).min(self.s.len());
                let cmp: &[u8] = if d.strip_tabs {
                    let n = line.iter().take_while(|&&b| b == b'\t').count();
                    line.get(n..).unwrap_or_default()
                } else {
                    line
                };
                if cmp == d.delim.as_slice() {
                    break;
                }
                body.push_str(&String::from_utf8_lossy(line));
                body.push('\n');
            }
            if into_shell {
                self.nested(&body);
            }
        }
    }

    /// Read one word (quote removal, substitutions parsed on the way).
    /// `None` at a separator.
    fn read_word(&mut self, cmd: &mut Cmd) -> Option<Word> {
        let mut w = Word::default();
        let mut any = false;
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'(' | b')' | b'<' | b'>' => break,
                b'\'' => {
                    any = true;
                    w.quoted = true;
                    self.i += 1;
                    let start = self.i;
                    match self
                        .s
                        .get(start..)
                        .and_then(|r| r.iter().position(|&b| b == b'\''))
                    {
                        Some(n) => {
                            w.text.push_str(&String::from_utf8_lossy(
                                self.s.get(start..start + n).unwrap_or_default(),
                            ));
                            self.i = start + n + 1;
                        }
                        None => {
                            self.opaque_push("unbalanced single quote".into());
                            w.text.push_str(&String::from_utf8_lossy(
                                self.s.get(start..).unwrap_or_default(),
                            ));
                            self.i = self.s.len();
                        }
                    }
                }
                b'"' => {
                    any = true;
                    w.quoted = true;
                    self.i += 1;
                    self.read_double_quoted(&mut w);
                }
                b'\\' => {
                    any = true;
                    w.quoted = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'\n') => self.i += 1, // line continuation
                        Some(_) => self.push_char(&mut w),
                        None => {}
                    }
                }
                b'$' => {
                    let at_start = !any;
                    any = true;
                    self.dollar(&mut w, at_start, false);
                }
                b'`' => {
                    if !any {
                        w.dynamic_start = true;
                    }
                    any = true;
                    self.i += 1;
                    self.backtick(&mut w);
                }
                _ => {
                    any = true;
                    self.push_char(&mut w);
                }
            }
        }
        let _ = cmd;
        any.then_some(w)
    }

    /// Push the (possibly multi-byte) char at `i` onto the word.
    fn push_char(&mut self, w: &mut Word) {
        let start = self.i;
        let mut end = start + 1;
        while self.s.get(end).is_some_and(|b| (b & 0xC0) == 0x80) && end - start < 4 {
            end += 1;
        }
        w.text.push_str(&String::from_utf8_lossy(
            self.s.get(start..end).unwrap_or_default(),
        ));
        self.i = end;
    }

    fn read_double_quoted(&mut self, w: &mut Word) {
        loop {
            match self.peek() {
                None => {
                    self.opaque_push("unbalanced double quote".into());
                    return;
                }
                Some(b'"') => {
                    self.i += 1;
                    return;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'$' | b'`') => self.push_char(w),
                        Some(b'\n') => self.i += 1,
                        Some(_) => w.text.push('\\'),
                        None => {}
                    }
                }
                Some(b'$') => self.dollar(w, false, true),
                Some(b'`') => {
                    self.i += 1;
                    self.backtick(w);
                }
                Some(_) => self.push_char(w),
            }
        }
    }

    /// `$...` at `i`.
    fn dollar(&mut self, w: &mut Word, at_start: bool, in_quotes: bool) {
        self.i += 1;
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                if at_start {
                    w.dynamic_start = true;
                }
                if self.peek() == Some(b'(') {
                    self.i += 1;
                    self.skip_balanced(b'(', b')');
                    if self.peek() == Some(b')') {
                        self.i += 1;
                    }
                    w.text.push_str("$((..))");
                    return;
                }
                self.sub_list(b')');
                w.text.push_str("$(..)");
            }
            Some(b'{') => {
                if at_start {
                    w.dynamic_start = true;
                }
                self.i += 1;
                let start = self.i;
                self.skip_balanced(b'{', b'}');
                w.text.push_str("${");
                w.text.push_str(&String::from_utf8_lossy(
                    self.s
                        .get(start..self.i.saturating_sub(1).max(start))
                        .unwrap_or_default(),
                ));
                w.text.push('}');
            }
            Some(b'\'') if !in_quotes => {
                // `$'...'`: ANSI-C quoting, decoded so `$'\x72m'` reads `rm`.
                self.i += 1;
                w.quoted = true;
                self.ansi_c(w);
            }
            Some(c)
                if c.is_ascii_alphanumeric()
                    || matches!(c, b'_' | b'@' | b'*' | b'#' | b'?' | b'$' | b'!' | b'-') =>
            {
                if at_start {
                    w.dynamic_start = true;
                }
                w.text.push('$');
                if c.is_ascii_alphabetic() || c == b'_' {
                    while self
                        .peek()
                        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        self.push_char(w);
                    }
                } else {
                    self.push_char(w);
                }
            }
            _ => w.text.push('$'),
        }
    }

    fn ansi_c(&mut self, w: &mut Word) {
        let mut bytes = Vec::new();
        loop {
            let Some(c) = self.peek() else {
                self.opaque_push("unbalanced $'...' quote".into());
                break;
            };
            self.i += 1;
            match c {
                b'\'' => break,
                b'\\' => {
                    let Some(e) = self.peek() else { break };
                    self.i += 1;
                    match e {
                        b'n' => bytes.push(b'\n'),
                        b't' => bytes.push(b'\t'),
                        b'r' => bytes.push(b'\r'),
                        b'a' => bytes.push(7),
                        b'b' => bytes.push(8),
                        b'e' | b'E' => bytes.push(0x1b),
                        b'x' => {
                            let mut v = 0u32;
                            let mut n = 0;
                            while n < 2
                                && let Some(d) = self.peek().and_then(|b| (b as char).to_digit(16))
                            {
                                v = v * 16 + d;
                                self.i += 1;
                                n += 1;
                            }
                            bytes.push(v as u8);
                        }
                        b'0'..=b'7' => {
                            let mut v = u32::from(e - b'0');
                            let mut n = 1;
                            while n < 3
                                && let Some(d) = self.peek().filter(|b| (b'0'..=b'7').contains(b))
                            {
                                v = v * 8 + u32::from(d - b'0');
                                self.i += 1;
                                n += 1;
                            }
                            bytes.push(v as u8);
                        }
                        other => bytes.push(other),
                    }
                }
                other => bytes.push(other),
            }
        }
        w.text.push_str(&String::from_utf8_lossy(&bytes));
    }

    fn backtick(&mut self, w: &mut Word) {
        let mut inner = Vec::new();
        loop {
            match self.peek() {
                None => {
                    self.opaque_push("unbalanced backtick".into());
                    break;
                }
                Some(b'`') => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    self.i += 1;
                    if let Some(n) = self.peek() {
                        if !matches!(n, b'`' | b'\\' | b'$') {
                            inner.push(b'\\');
                        }
                        inner.push(n);
                        self.i += 1;
                    }
                }
                Some(c) => {
                    inner.push(c);
                    self.i += 1;
                }
            }
        }
        self.nested(&String::from_utf8_lossy(&inner));
        w.text.push_str("`..`");
    }

    /// End of a simple command. `pipe`: the next one reads this one's output.
    fn finish(&mut self, cmd: &mut Cmd, pipe: bool) {
        let words = std::mem::take(&mut cmd.words);
        let mut c = Cmd {
            words,
            piped_in: cmd.piped_in,
            stdin_redirected: cmd.stdin_redirected,
            heredoc: cmd.heredoc,
        };
        *cmd = Cmd {
            piped_in: pipe,
            ..Cmd::default()
        };
        let argv = self.unwrap(&mut c, 0);
        if !pipe {
            self.prev_stage = None;
        } else {
            self.prev_stage = argv;
        }
    }

    /// Resolve wrappers and record the simple command(s). Returns the argv
    /// recorded for this command (for pipeline context).
    fn unwrap(&mut self, c: &mut Cmd, level: usize) -> Option<Vec<String>> {
        if level > MAX_DEPTH {
            self.opaque_push(format!("nesting deeper than {MAX_DEPTH} levels"));
            return None;
        }
        // Shell keywords that introduce a command.
        while let Some(first) = c.words.first()
            && !first.quoted
            && matches!(
                first.text.as_str(),
                "{" | "}"
                    | "if"
                    | "then"
                    | "else"
                    | "elif"
                    | "fi"
                    | "do"
                    | "done"
                    | "while"
                    | "until"
                    | "!"
                    | "esac"
                    | "[["
                    | "]]"
            )
        {
            if first.text == "[[" {
                break;
            }
            c.words.remove(0);
        }
        if let Some(first) = c.words.first()
            && !first.quoted
            && matches!(
                first.text.as_str(),
                "for" | "select" | "case" | "function" | "in"
            )
        {
            return None;
        }
        // Leading assignments.
        while c.words.first().is_some_and(is_assignment) {
            c.words.remove(0);
        }
        let first = c.words.first()?.clone();
        if first.dynamic_start {
            self.opaque_push(format!(
                "command name comes from a variable or substitution: `{}`",
                snippet(&first.text)
            ));
        }
        let name = basename(&first.text).to_string();
        let args: Vec<String> = c.words.iter().skip(1).map(|w| w.text.clone()).collect();
        let rest_from =
            |n: usize, c: &Cmd| -> Vec<Word> { c.words.iter().skip(n).cloned().collect() };

        let wrapped_at: Option<usize> = match name.as_str() {
            "env" => Some(skip_opts(
                &args,
                &[
                    "-u",
                    "--unset",
                    "-C",
                    "--chdir",
                    "-S",
                    "--split-string",
                    "-P",
                ],
                true,
            )),
            "sudo" => {
                let n = skip_opts(
                    &args,
                    &[
                        "-u",
                        "-g",
                        "-h",
                        "-p",
                        "-C",
                        "-D",
                        "-r",
                        "-t",
                        "-T",
                        "-U",
                        "--user",
                        "--group",
                        "--host",
                        "--prompt",
                        "--chdir",
                        "--role",
                        "--type",
                        "--other-user",
                        "--close-from",
                        "--command-timeout",
                    ],
                    false,
                );
                (n < args.len()).then_some(n)
            }
            "doas" => {
                let n = skip_opts(&args, &["-u", "-C"], false);
                (n < args.len()).then_some(n)
            }
            "exec" => Some(skip_opts(&args, &["-a"], false)),
            "nohup" | "builtin" | "unbuffer" => {
                Some(usize::from(args.first().is_some_and(|a| a == "--")))
            }
            "time" => Some(skip_opts(
                &args,
                &["-f", "-o", "--format", "--output"],
                false,
            )),
            "command" => {
                if args
                    .iter()
                    .take_while(|a| a.starts_with('-'))
                    .any(|a| a.contains('v') || a.contains('V'))
                {
                    None
                } else {
                    Some(skip_opts(&args, &[], false))
                }
            }
            "nice" => Some(skip_opts(&args, &["-n", "--adjustment"], false)),
            "ionice" => Some(skip_opts(
                &args,
                &["-c", "-n", "--class", "--classdata"],
                false,
            )),
            "setsid" => Some(skip_opts(&args, &[], false)),
            "stdbuf" => Some(skip_opts(
                &args,
                &["-i", "-o", "-e", "--input", "--output", "--error"],
                false,
            )),
            "timeout" => {
                let n = skip_opts(&args, &["-s", "-k", "--signal", "--kill-after"], false);
                // Then the duration.
                Some(if n < args.len() { n + 1 } else { n })
            }
            "xargs" => Some(skip_opts(
                &args,
                &[
                    "-n",
                    "-I",
                    "-L",
                    "-P",
                    "-d",
                    "-E",
                    "-s",
                    "-a",
                    "--max-args",
                    "--max-lines",
                    "--max-procs",
                    "--delimiter",
                    "--eof",
                    "--max-chars",
                    "--arg-file",
                    "--replace",
                ],
                false,
            )),
            _ => None,
        };
        if let Some(n) = wrapped_at {
            let mut inner = Cmd {
                words: rest_from(n + 1, c),
                piped_in: c.piped_in,
                stdin_redirected: c.stdin_redirected,
                heredoc: c.heredoc,
            };
            if name == "env" {
                // `env -S 'cmd args'` splits its argument like a shell.
                if let Some(pos) = args.iter().position(|a| a == "-S" || a == "--split-string")
                    && let Some(s) = args.get(pos + 1)
                {
                    self.nested(s);
                }
                while inner
                    .words
                    .first()
                    .is_some_and(|w| w.text.contains('=') && !w.text.starts_with('='))
                {
                    inner.words.remove(0);
                }
            }
            if inner.words.is_empty() {
                if name == "xargs" {
                    let argv = vec!["echo".to_string()];
                    self.simple.push(argv.clone());
                    return Some(argv);
                }
                let argv: Vec<String> = std::iter::once(name).chain(args).collect();
                if argv
                    .first()
                    .is_some_and(|n| n != "exec" && n != "time" && n != "command")
                {
                    self.simple.push(argv.clone());
                    return Some(argv);
                }
                return None;
            }
            return self.unwrap(&mut inner, level + 1);
        }

        let mut argv: Vec<String> = Vec::with_capacity(args.len() + 1);
        argv.push(name.clone());
        argv.extend(args.iter().cloned());

        if SHELLS.contains(&name.as_str()) {
            if self.shell(c, &name, &args, &argv) {
                // `sh -c PAYLOAD` is replaced by the payload's commands.
                return Some(argv);
            }
        } else if name == "eval" {
            self.opaque_push(format!("eval: `{}`", snippet(&args.join(" "))));
            self.nested(&args.join(" "));
        } else if name == "source" || name == "." {
            self.opaque_push(format!("sources a file: `{}`", snippet(&args.join(" "))));
        } else if name == "find" || name == "fd" {
            self.find_exec(&args, level);
        } else if name == "watch" {
            let n = skip_opts(&args, &["-n", "-d", "--interval", "--differences"], false);
            let payload = args.iter().skip(n).cloned().collect::<Vec<_>>().join(" ");
            if !payload.is_empty() {
                self.nested(&payload);
            }
        }
        self.simple.push(argv.clone());
        Some(argv)
    }

    /// Look into a shell invocation. True when it ran a `-c` payload.
    fn shell(&mut self, c: &Cmd, name: &str, args: &[String], argv: &[String]) -> bool {
        let mut i = 0;
        if name == "busybox" {
            // `busybox sh -c ...`
            if !args.first().is_some_and(|a| SHELLS.contains(&a.as_str())) {
                return false;
            }
            i = 1;
        }
        let mut payload_next = false;
        let mut reads_stdin_flag = false;
        while let Some(a) = args.get(i) {
            if payload_next {
                self.nested(a);
                return true;
            }
            if a == "--" || a == "-" {
                i += 1;
                break;
            }
            if (a.starts_with('-') || a.starts_with('+')) && a.len() > 1 {
                if a.starts_with("--") {
                    i += 1;
                    continue;
                }
                let flags = a.get(1..).unwrap_or_default();
                if flags.contains('c') {
                    payload_next = true;
                }
                if flags.contains('s') {
                    reads_stdin_flag = true;
                }
                if flags.contains('o') || flags.contains('O') {
                    i += 1; // option name argument
                }
                i += 1;
                continue;
            }
            break;
        }
        if payload_next {
            self.opaque_push(format!("`{name} -c` without a command"));
            return false;
        }
        let script = args.get(i).filter(|_| !reads_stdin_flag);
        if let Some(file) = script {
            self.opaque_push(format!(
                "runs a shell script file: `{name} {}`",
                snippet(file)
            ));
            return false;
        }
        if c.piped_in || c.stdin_redirected || c.heredoc {
            let decoded = self.prev_stage.as_ref().is_some_and(|p| is_decoder(p));
            let how = if c.heredoc {
                "here-document into a shell"
            } else if decoded {
                "decoded data piped into a shell"
            } else if c.piped_in {
                "pipe into a shell reading stdin"
            } else {
                "shell reading commands from a redirected file"
            };
            self.opaque_push(format!("{how}: `{}`", snippet(&argv.join(" "))));
            if c.heredoc {
                self.heredoc_into_shell = true;
            }
        }
        false
    }

    fn find_exec(&mut self, args: &[String], level: usize) {
        let mut i = 0;
        while let Some(a) = args.get(i) {
            i += 1;
            if matches!(
                a.as_str(),
                "-exec" | "-execdir" | "-ok" | "-okdir" | "-x" | "--exec"
            ) {
                let mut words = Vec::new();
                while let Some(w) = args.get(i) {
                    i += 1;
                    if w == ";" || w == "+" || w == "\\;" {
                        break;
                    }
                    words.push(Word {
                        text: w.clone(),
                        ..Word::default()
                    });
                }
                let mut inner = Cmd {
                    words,
                    ..Cmd::default()
                };
                let _ = self.unwrap(&mut inner, level + 1);
            }
        }
    }
}

/// Index of the first non-option argument (options in `with_arg` take one).
/// `assignments`: also skip `NAME=value` words (for `env`).
fn skip_opts(args: &[String], with_arg: &[&str], assignments: bool) -> usize {
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if a == "--" {
            return i + 1;
        }
        if a.starts_with('-') && a.len() > 1 {
            let key = a.split('=').next().unwrap_or(a);
            if with_arg.contains(&key) && !a.contains('=') {
                i += 2;
            } else if !a.starts_with("--")
                && a.len() > 2
                && with_arg.iter().any(|o| o.len() == 2 && a.starts_with(o))
            {
                i += 1; // `-uroot`, `-n10`
            } else if a
                .get(1..)
                .is_some_and(|r| r.bytes().all(|b| b.is_ascii_digit()))
            {
                i += 1; // `nice -10`
            } else {
                i += 1;
            }
            continue;
        }
        if assignments && a.contains('=') && !a.starts_with('=') {
            i += 1;
            continue;
        }
        return i;
    }
    i
}

fn is_assignment(w: &Word) -> bool {
    if w.quoted && !w.text.contains('=') {
        return false;
    }
    let Some((name, _)) = w.text.split_once('=') else {
        return false;
    };
    let name = name.strip_suffix('+').unwrap_or(name);
    let name = name.split('[').next().unwrap_or(name);
    let mut b = name.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `/usr/bin/kubectl` -> `kubectl`, `./x` -> `x`.
fn basename(s: &str) -> &str {
    match s.rsplit_once('/') {
        Some((_, b)) if !b.is_empty() => b,
        _ => s,
    }
}

fn is_decoder(argv: &[String]) -> bool {
    let name = argv.first().map(String::as_str).unwrap_or_default();
    let has = |f: &str| argv.iter().skip(1).any(|a| a == f);
    let short = |c: char| {
        argv.iter()
            .skip(1)
            .any(|a| a.starts_with('-') && !a.starts_with("--") && a.contains(c))
    };
    match name {
        "base64" | "base32" | "basenc" => short('d') || has("--decode"),
        "xxd" => short('r'),
        "openssl" => has("base64") || has("enc"),
        "gunzip" | "zcat" | "uudecode" | "rev" | "tr" | "printf" | "echo" => true,
        "gzip" | "bzip2" | "xz" | "zstd" => short('d'),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
