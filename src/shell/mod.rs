//! Child processes for session channels: shells and exec commands under a
//! pty (portable-pty; its reads and waits block, so they run on threads and
//! a read ends with EIO once the child and its descendants closed the
//! terminal) or as a plain child with pipes (exec without a pty). The
//! environment is built from scratch ([`session_env`]) so nothing of the
//! bastion's own environment (cloud credentials, tokens) leaks into sessions.
//! When the configured account differs from the one running sallyport, the
//! child drops to it (`setpriv` for ptys, `setuid`/`setgid` for pipes).
//! An interactive bash gets sallyport's rcfile ([`RcFile`], `bash --rcfile
//! FILE -i`), which marks its prompts for the interactive line guard; other
//! shells start as login shells without marks.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};

/// Errors starting or driving a child.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured account does not exist or cannot be looked up.
    #[error("account {0:?}: {1}")]
    Account(String, String),
    /// The pty could not be opened or resized.
    #[error("pty: {0}")]
    Pty(String),
    /// The process could not be started.
    #[error("cannot start {program}: {message}")]
    Spawn { program: String, message: String },
}

/// The OS account sessions run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    pub shell: PathBuf,
}

impl Account {
    /// `name`, or the account running sallyport when `None`.
    pub fn lookup(name: Option<&str>) -> Result<Account, Error> {
        let user = match name {
            Some(n) => nix::unistd::User::from_name(n)
                .map_err(|e| Error::Account(n.to_string(), e.to_string()))?
                .ok_or_else(|| Error::Account(n.to_string(), "no such user".into()))?,
            None => {
                let uid = nix::unistd::getuid();
                nix::unistd::User::from_uid(uid)
                    .map_err(|e| Error::Account(uid.to_string(), e.to_string()))?
                    .ok_or_else(|| {
                        Error::Account(
                            uid.to_string(),
                            "the current uid has no passwd entry".into(),
                        )
                    })?
            }
        };
        Ok(Account {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell: user.shell,
        })
    }

    /// True when starting a child as this account needs a privilege change.
    pub fn is_foreign(&self) -> bool {
        self.uid != nix::unistd::getuid().as_raw()
    }

    /// Is this root?
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    pub account: Account,
    /// Login shell to use (`-c CMD` for exec, `-l` for an interactive shell).
    pub shell: PathBuf,
    /// `None`: interactive shell; `Some`: run this command line.
    pub command: Option<String>,
    pub env: Vec<(String, String)>,
    /// For an interactive bash: the rcfile to start it with instead of a
    /// login shell (it sources the user's own ~/.bashrc).
    pub rcfile: Option<PathBuf>,
}

impl Spec {
    fn argv(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if self.account.is_foreign() {
            // setpriv (util-linux) drops to the account with its groups; the
            // bastion itself keeps running as root only to do this.
            argv.extend(
                [
                    "setpriv".to_string(),
                    format!("--reuid={}", self.account.uid),
                    format!("--regid={}", self.account.gid),
                    "--init-groups".to_string(),
                    "--".to_string(),
                ]
                .map(OsString::from),
            );
        }
        argv.push(self.shell.clone().into_os_string());
        match (&self.command, &self.rcfile) {
            (Some(c), _) => {
                argv.push("-c".into());
                argv.push(c.into());
            }
            (None, Some(rc)) if is_bash(&self.shell) => {
                argv.push("--rcfile".into());
                argv.push(rc.clone().into_os_string());
                argv.push("-i".into());
            }
            (None, _) => argv.push("-l".into()),
        }
        argv
    }
}

/// Is this shell bash (by its file name), i.e. will it read [`RcFile`]?
pub fn is_bash(shell: &std::path::Path) -> bool {
    shell.file_name().is_some_and(|n| n == "bash")
}

/// A session's copy of an rcfile, in the temp dir, removed on drop. The
/// content is public (it is sallyport's shell integration); what matters is
/// that the user cannot change it before bash reads it: it is created new
/// (never through an existing name or link) and read-only for others, in a
/// sticky directory.
#[derive(Debug)]
pub struct RcFile {
    path: PathBuf,
}

impl RcFile {
    /// Write `content` to a new file named after `session_id`.
    pub fn write(content: &str, session_id: &str) -> Result<RcFile, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let safe: String = session_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let path = std::env::temp_dir().join(format!(
            "sallyport-rc-{safe}-{:08x}.bash",
            rand::random::<u32>()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|e| Error::Spawn {
                program: path.display().to_string(),
                message: format!("cannot write the rcfile: {e}"),
            })?;
        let file = RcFile { path };
        f.write_all(content.as_bytes()).map_err(|e| Error::Spawn {
            program: file.path.display().to_string(),
            message: format!("cannot write the rcfile: {e}"),
        })?;
        Ok(file)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for RcFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The session environment, from scratch: TERM, LANG, USER, LOGNAME, HOME,
/// SHELL, PATH, SALLYPORT_SESSION_ID, SSH_ORIGINAL_COMMAND (when a
/// force-command replaced the request), then the client's allowed `env`
/// requests (which cannot override the identity variables).
pub fn session_env(
    account: &Account,
    shell: &std::path::Path,
    term: Option<&str>,
    session_id: &str,
    original_command: Option<&str>,
    client_env: &[(String, String)],
) -> Vec<(String, String)> {
    let path = if account.is_root() {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    } else {
        "/usr/local/bin:/usr/bin:/bin"
    };
    let mut env = vec![
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("USER".to_string(), account.name.clone()),
        ("LOGNAME".to_string(), account.name.clone()),
        ("HOME".to_string(), account.home.display().to_string()),
        ("SHELL".to_string(), shell.display().to_string()),
        ("PATH".to_string(), path.to_string()),
        ("SALLYPORT_SESSION_ID".to_string(), session_id.to_string()),
    ];
    if let Some(t) = term {
        env.push(("TERM".into(), t.into()));
    }
    if let Some(c) = original_command {
        env.push(("SSH_ORIGINAL_COMMAND".into(), c.into()));
    }
    const FIXED: &[&str] = &[
        "USER",
        "LOGNAME",
        "HOME",
        "SHELL",
        "PATH",
        "SALLYPORT_SESSION_ID",
        "SSH_ORIGINAL_COMMAND",
        "TERM",
    ];
    for (k, v) in client_env {
        if FIXED.contains(&k.as_str()) {
            continue;
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(u32),
    /// Signal name without `SIG` (RFC 4254 §6.10), and whether it dumped core.
    Signal(String, bool),
}

impl Exit {
    fn from_std(st: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        if let Some(code) = st.code() {
            return Exit::Code(code as u32);
        }
        let sig = st.signal().unwrap_or(0);
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str().trim_start_matches("SIG").to_string())
            .unwrap_or_else(|_| format!("{sig}"));
        Exit::Signal(name, st.core_dumped())
    }
}

/// A child under a pty.
pub struct PtyChild {
    master: Arc<Mutex<Box<dyn MasterPty + Send>>>,
    pid: Option<u32>,
}

/// Reads whether the pty echoes typed keys (its termios `ECHO` flag), from
/// any task: a program that switched echo off (`read -s`, a password
/// prompt) is being typed a secret.
#[derive(Clone)]
pub struct EchoProbe(Arc<Mutex<Box<dyn MasterPty + Send>>>);

impl std::fmt::Debug for EchoProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoProbe").finish_non_exhaustive()
    }
}

impl EchoProbe {
    /// `Some(true)` when typed keys are echoed; `None` when the terminal
    /// settings cannot be read (the pty is gone).
    pub fn echo_on(&self) -> Option<bool> {
        let m = match self.0.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.get_termios()
            // portable-pty's nix is another version: compare the raw bits.
            .map(|t| t.local_flags.bits() & nix::sys::termios::LocalFlags::ECHO.bits() != 0)
    }
}

impl std::fmt::Debug for PtyChild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtyChild").field("pid", &self.pid).finish()
    }
}

/// The blocking ends of a pty child: output reader, input writer, and a
/// waiter that returns the exit status.
pub struct PtyIo {
    pub reader: Box<dyn Read + Send>,
    pub writer: Box<dyn Write + Send>,
    pub wait: Box<dyn FnOnce() -> Exit + Send>,
}

fn pty_size(cols: u32, rows: u32) -> PtySize {
    PtySize {
        rows: rows.clamp(1, u16::MAX as u32) as u16,
        cols: cols.clamp(1, u16::MAX as u32) as u16,
        pixel_width: 0,
        pixel_height: 0,
    }
}

/// Start `spec` under a new pty of `cols`×`rows`.
pub fn spawn_pty(spec: &Spec, cols: u32, rows: u32) -> Result<(PtyChild, PtyIo), Error> {
    let pair = native_pty_system()
        .openpty(pty_size(cols, rows))
        .map_err(|e| Error::Pty(e.to_string()))?;
    let mut cmd = CommandBuilder::from_argv(spec.argv());
    cmd.env_clear();
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd.cwd(if spec.account.home.is_dir() {
        spec.account.home.clone()
    } else {
        PathBuf::from("/")
    });
    let child = pair.slave.spawn_command(cmd).map_err(|e| Error::Spawn {
        program: spec.shell.display().to_string(),
        message: e.to_string(),
    })?;
    // Our copy of the slave must go, or reads never see EIO when the child exits.
    drop(pair.slave);
    let pid = child.process_id();
    let reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| Error::Pty(e.to_string()))?;
    let writer = pair
        .master
        .take_writer()
        .map_err(|e| Error::Pty(e.to_string()))?;
    // portable-pty reports signals as strsignal() text ("Terminated"); reap
    // with waitpid ourselves to get the number, hence the RFC 4254 name.
    let mut child = child;
    let wait: Box<dyn FnOnce() -> Exit + Send> = Box::new(move || {
        let Some(raw) = pid.and_then(|p| i32::try_from(p).ok()) else {
            return match child.wait() {
                Ok(st) => Exit::Code(st.exit_code()),
                Err(_) => Exit::Code(255),
            };
        };
        use nix::sys::wait::{WaitStatus, waitpid};
        loop {
            match waitpid(nix::unistd::Pid::from_raw(raw), None) {
                Ok(WaitStatus::Exited(_, code)) => return Exit::Code(code as u32),
                Ok(WaitStatus::Signaled(_, sig, core)) => {
                    return Exit::Signal(sig.as_str().trim_start_matches("SIG").to_string(), core);
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return Exit::Code(255),
            }
        }
    });
    Ok((
        PtyChild {
            master: Arc::new(Mutex::new(pair.master)),
            pid,
        },
        PtyIo {
            reader,
            writer,
            wait,
        },
    ))
}

impl PtyChild {
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// A probe of the terminal's echo setting, usable from other tasks.
    pub fn echo_probe(&self) -> EchoProbe {
        EchoProbe(Arc::clone(&self.master))
    }

    /// Resize the terminal (the child gets SIGWINCH).
    pub fn resize(&self, cols: u32, rows: u32) -> Result<(), Error> {
        let m = match self.master.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.resize(pty_size(cols, rows))
            .map_err(|e| Error::Pty(e.to_string()))
    }
}

/// Start `spec` with piped stdin/stdout/stderr (exec without a pty), in its
/// own process group so signals reach the whole command.
pub fn spawn_pipes(spec: &Spec) -> Result<tokio::process::Child, Error> {
    let argv = Spec {
        account: Account {
            // Privileges are dropped with uid()/gid() below, not setpriv.
            uid: nix::unistd::getuid().as_raw(),
            ..spec.account.clone()
        },
        ..spec.clone()
    }
    .argv();
    let (program, args) = argv.split_first().ok_or_else(|| Error::Spawn {
        program: String::new(),
        message: "empty command".into(),
    })?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(if spec.account.home.is_dir() {
            spec.account.home.clone()
        } else {
            PathBuf::from("/")
        })
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if spec.account.is_foreign() {
        // std drops supplementary groups (setgroups(0)) when root sets a uid.
        cmd.uid(spec.account.uid).gid(spec.account.gid);
    }
    match cmd.spawn() {
        // std changes directory after dropping privileges: a home the account
        // cannot enter fails the spawn. Like sshd ("Could not chdir to home
        // directory"), run from / instead.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && spec.account.is_foreign() => {
            tracing::warn!(home = %spec.account.home.display(), "cannot enter the home directory as {}; starting in /", spec.account.name);
            cmd.current_dir("/").spawn()
        }
        other => other,
    }
    .map_err(|e| Error::Spawn {
        program: spec.shell.display().to_string(),
        message: e.to_string(),
    })
}

/// How much a child's output pipe holds before its writes block. Linux's
/// default is 64 KiB; a larger pipe lets a child that prints in bulk run
/// ahead while the session reads bigger chunks (fewer wake-ups on both
/// sides; bench/masking.sh).
const PIPE_SIZE: i32 = 1024 * 1024;

/// Grow the pipe `fd` to [`PIPE_SIZE`]. Best effort: the kernel may refuse
/// (an unprivileged user past `pipe-user-pages-soft`), and the default
/// pipe works, just with more wake-ups.
pub fn widen_pipe(fd: impl std::os::fd::AsFd) {
    if let Err(e) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE)) {
        tracing::debug!(error = %e, "cannot grow the output pipe");
    }
}

/// Exit of a tokio child.
pub fn exit_of(st: std::process::ExitStatus) -> Exit {
    Exit::from_std(st)
}

/// Send `sig` (an RFC 4254 name like `TERM`, `INT`) to `pid`; `group` sends
/// it to the process group the child leads.
pub fn signal(pid: u32, sig: &str, group: bool) -> bool {
    let Ok(sig) = format!("SIG{sig}").parse::<nix::sys::signal::Signal>() else {
        return false;
    };
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let target = if group {
        nix::unistd::Pid::from_raw(-raw)
    } else {
        nix::unistd::Pid::from_raw(raw)
    };
    nix::sys::signal::kill(target, sig).is_ok()
}

/// The shell for sessions: the configured one, else the account's, else `/bin/sh`.
pub fn pick_shell(configured: Option<&std::path::Path>, account: &Account) -> PathBuf {
    if let Some(s) = configured {
        return s.to_path_buf();
    }
    let s = &account.shell;
    if s.as_os_str().is_empty() || s.ends_with("nologin") || s.ends_with("false") || !s.exists() {
        PathBuf::from("/bin/sh")
    } else {
        s.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Account {
        Account::lookup(None).unwrap()
    }

    #[test]
    fn env_is_built_from_scratch_and_protects_identity_vars() {
        let a = me();
        let env = session_env(
            &a,
            std::path::Path::new("/bin/sh"),
            Some("xterm"),
            "sid",
            Some("orig"),
            &[
                ("LANG".into(), "de_DE.UTF-8".into()),
                ("USER".into(), "mallory".into()),
            ],
        );
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("USER"), Some(a.name.as_str()));
        assert_eq!(get("LANG"), Some("de_DE.UTF-8"));
        assert_eq!(get("SALLYPORT_SESSION_ID"), Some("sid"));
        assert_eq!(get("SSH_ORIGINAL_COMMAND"), Some("orig"));
        assert_eq!(get("TERM"), Some("xterm"));
        assert_eq!(env.iter().filter(|(k, _)| k == "LANG").count(), 1);
    }

    #[tokio::test]
    async fn pipes_exit_status_and_env() {
        let a = me();
        let spec = Spec {
            shell: PathBuf::from("/bin/sh"),
            command: Some("echo $SALLYPORT_SESSION_ID; echo err >&2; exit 3".into()),
            env: session_env(&a, std::path::Path::new("/bin/sh"), None, "s1", None, &[]),
            account: a,
            rcfile: None,
        };
        let child = spawn_pipes(&spec).unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "s1\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        assert_eq!(exit_of(out.status), Exit::Code(3));
    }

    #[test]
    fn interactive_bash_gets_the_rcfile_others_a_login_shell() {
        let rc = RcFile::write("PS1='marked$ '\n", "sess/../x").unwrap();
        assert!(rc.path().starts_with(std::env::temp_dir()));
        assert!(!rc.path().to_string_lossy().contains(".."));
        let spec = |shell: &str, command: Option<&str>| Spec {
            account: me(),
            shell: PathBuf::from(shell),
            command: command.map(str::to_string),
            env: Vec::new(),
            rcfile: Some(rc.path().to_path_buf()),
        };
        let argv = spec("/bin/bash", None).argv();
        let tail: Vec<_> = argv.iter().rev().take(3).rev().collect();
        assert_eq!(tail, ["--rcfile", &rc.path().to_string_lossy(), "-i"]);
        assert_eq!(spec("/bin/sh", None).argv().last().unwrap(), "-l");
        assert_eq!(spec("/bin/bash", Some("id")).argv().last().unwrap(), "id");
        let path = rc.path().to_path_buf();
        drop(rc);
        assert!(!path.exists(), "rcfile left behind");
    }

    #[test]
    fn pty_runs_and_reports_signal() {
        let a = me();
        let spec = Spec {
            shell: PathBuf::from("/bin/sh"),
            command: Some("stty size; kill -TERM $$".into()),
            env: session_env(
                &a,
                std::path::Path::new("/bin/sh"),
                Some("dumb"),
                "s",
                None,
                &[],
            ),
            account: a,
            rcfile: None,
        };
        let (_child, mut io) = spawn_pty(&spec, 100, 30).unwrap();
        let mut out = Vec::new();
        let _ = io.reader.read_to_end(&mut out); // ends with EIO
        assert!(String::from_utf8_lossy(&out).contains("30 100"), "{out:?}");
        assert_eq!((io.wait)(), Exit::Signal("TERM".into(), false));
    }
}
