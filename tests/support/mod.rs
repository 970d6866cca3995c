//! Test harness shared by every e2e test: temp dirs, free ports, child
//! processes killed on drop, the sallyport server, real OpenSSH clients and
//! servers. When a check fails it prints the command, its stdout/stderr and
//! the server log, so a red CI run explains itself.
#![allow(dead_code)]

pub mod kubeapi;
pub mod kubeapi_http;
pub mod policies;
pub mod targets;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Path of the sallyport binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sallyport"))
}

/// Path of the test OpenID provider binary.
pub fn idp_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sallyport-test-idp"))
}

/// A free TCP port on 127.0.0.1 (bound then released; races are retried by
/// the callers that wait for the port).
pub fn free_port() -> u16 {
    // The kernel may hand the same free port to two binds in a row once the
    // first socket is closed (seen: a server's API and SSH ports equal), so
    // never give out a port twice in this process.
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Wait until something listens on `port` (or panic after `timeout`).
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Poll `f` until it returns `Some`, or give up after `timeout`.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process, killed (SIGKILL) and reaped on drop; output to files.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Proc {
    /// Spawn `cmd` with stdout/stderr going to files in `dir`.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e} ({cmd:?})"));
        Proc {
            name: name.to_string(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{out}--- {} stderr ---\n{err}",
            self.name, self.name
        )
    }

    /// Send a signal (e.g. "TERM", "INT", "HUP", "KILL").
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Wait for exit up to `timeout`; returns the exit status if it exited.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Result of running a client command, with context for failure messages.
pub struct Run {
    pub cmd: String,
    pub output: Output,
    pub context: String,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }
    /// Everything known about this run, for assertion messages.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "command: {}", self.cmd);
        let _ = writeln!(s, "status: {:?}", self.output.status);
        let _ = writeln!(s, "--- stdout ---\n{}", self.stdout());
        let _ = writeln!(s, "--- stderr ---\n{}", self.stderr());
        s.push_str(&self.context);
        s
    }
    /// Panic with the whole story unless the command succeeded.
    #[track_caller]
    pub fn success(self) -> Self {
        assert!(
            self.output.status.success(),
            "command failed\n{}",
            self.explain()
        );
        self
    }
    /// Panic unless the command failed.
    #[track_caller]
    pub fn failure(self) -> Self {
        assert!(
            !self.output.status.success(),
            "command unexpectedly succeeded\n{}",
            self.explain()
        );
        self
    }
}

/// Run `cmd` with optional stdin, capturing output, killing it after `timeout`.
pub fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration, context: String) -> Run {
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = w.write_all(&data);
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let end = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let stdout = t_out.join().unwrap_or_default();
            let stderr = t_err.join().unwrap_or_default();
            let r = Run {
                cmd: shown,
                output: Output {
                    status: st,
                    stdout,
                    stderr,
                },
                context,
            };
            panic!("command timed out after {timeout:?}\n{}", r.explain());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    Run {
        cmd: shown,
        output: Output {
            status,
            stdout,
            stderr,
        },
        context,
    }
}

/// Options for [`Server::start`].
#[derive(Default, Clone)]
pub struct ServerOpts {
    /// Extra TOML appended to the generated config (may add sections).
    pub config_extra: String,
    /// Extra TOML for the `[ssh]` section.
    pub ssh_extra: String,
    /// Policy files to write into the policy dir: (file name, contents).
    pub policies: Vec<(String, String)>,
    /// Extra environment variables for the server.
    pub env: Vec<(String, String)>,
}

/// A running `sallyport serve` in its own temp dir.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub ssh_port: u16,
    pub api_port: u16,
    pub proc: Proc,
    pub known_hosts: PathBuf,
}

impl Server {
    pub fn start() -> Server {
        Self::start_with(ServerOpts::default())
    }

    pub fn start_with(opts: ServerOpts) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, opts)
    }

    /// Start in an existing dir (e.g. to restart on the same data dir).
    pub fn start_in(dir: tempfile::TempDir, opts: ServerOpts) -> Server {
        let data_dir = dir.path().join("data");
        let ssh_port = free_port();
        let api_port = free_port();
        let mut policy_section = String::new();
        if !opts.policies.is_empty() {
            let pdir = dir.path().join("policies");
            std::fs::create_dir_all(&pdir).unwrap();
            for (name, text) in &opts.policies {
                std::fs::write(pdir.join(name), text).unwrap();
            }
            policy_section = format!("[policy]\ndir = {:?}\n", pdir.display().to_string());
        }
        let config = dir.path().join("sallyport.toml");
        let text = format!(
            "data_dir = {:?}\n\n[ssh]\nlisten = \"127.0.0.1:{ssh_port}\"\n{}\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\n{policy_section}\n{}\n",
            data_dir.display().to_string(),
            opts.ssh_extra,
            opts.config_extra
        );
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config)
            .arg("--log")
            .arg("sallyport=debug,info")
            .arg("serve");
        cmd.env_remove("SALLYPORT_DATA_DIR")
            .env_remove("SALLYPORT_CONFIG");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("sallyport", cmd, dir.path());
        let known_hosts = dir.path().join("known_hosts");
        let s = Server {
            dir,
            data_dir,
            config,
            ssh_port,
            api_port,
            proc,
            known_hosts,
        };
        if !wait_port(ssh_port, Duration::from_secs(30)) {
            panic!("sallyport did not listen on {ssh_port}\n{}", s.proc.log());
        }
        // Trust the host CA the way users are told to.
        let show = s.cli(&["ca", "show", "--json"]).success();
        let v: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
        let line = v["known_hosts"].as_str().unwrap();
        std::fs::write(&s.known_hosts, format!("{line}\n")).unwrap();
        s
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Run a `sallyport` CLI subcommand against this server's config.
    pub fn cli(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("SALLYPORT_DATA_DIR")
            .env_remove("SALLYPORT_CONFIG");
        run_cmd(cmd, None, Duration::from_secs(60), self.log())
    }

    /// A user with a fresh Ed25519 key and a certificate signed by `ca sign`
    /// with the given extra arguments (e.g. `--ttl 1m`).
    pub fn user(&self, name: &str, extra: &[&str]) -> User {
        let key = self.dir.path().join(format!("id_{name}_{}", free_port()));
        keygen(&key);
        let pubkey = format!("{}.pub", key.display());
        let mut args = vec![
            "ca",
            "sign",
            "--public-key",
            &pubkey,
            "--principal",
            name,
            "--identity",
            name,
        ];
        args.extend_from_slice(extra);
        self.cli(&args).success();
        let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
        User {
            name: name.to_string(),
            key,
            cert,
        }
    }

    /// `ssh` to the bastion as `user` with `args` (remote command etc.).
    pub fn ssh(&self, user: &User, args: &[&str]) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(ssh_base_args(&self.known_hosts, user))
            .arg("-p")
            .arg(self.ssh_port.to_string())
            .arg(format!("{}@127.0.0.1", user.name))
            .args(args);
        cmd
    }

    /// Run `ssh` with optional stdin and return its captured result.
    pub fn run_ssh(&self, user: &User, args: &[&str], stdin: Option<&[u8]>) -> Run {
        run_cmd(
            self.ssh(user, args),
            stdin,
            Duration::from_secs(60),
            self.log(),
        )
    }

    /// Query the audit database with the sqlite3-free path: `sessions list --json`.
    pub fn sessions_json(&self) -> serde_json::Value {
        let r = self.cli(&["sessions", "list", "--json"]).success();
        serde_json::from_str(&r.stdout())
            .unwrap_or_else(|e| panic!("bad JSON: {e}\n{}", r.explain()))
    }

    /// Path of the audit database.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("audit.db")
    }
}

/// Common `ssh` options: no user config, strict host checking against the
/// host CA, only this key and certificate, batch mode.
pub fn ssh_base_args(known_hosts: &Path, user: &User) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "ConnectTimeout=15".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-i".into(),
        user.key.display().to_string(),
        "-o".into(),
        format!("CertificateFile={}", user.cert.display()),
    ]
}

/// An SSH identity: key pair and certificate files.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub key: PathBuf,
    pub cert: PathBuf,
}

/// `ssh-keygen -t ed25519` into `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen failed for {}", path.display());
}

/// `asciinema cat FILE` as exact bytes. asciinema 2.x `cat` opens /dev/tty
/// (to set raw mode) even when stdout is a pipe, so it runs under `script`
/// (a pty) with stdout sent to a file.
pub fn asciinema_cat(path: &Path) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out");
    let err_path = dir.path().join("err");
    let st = Command::new("script")
        .arg("-qec")
        .arg(format!(
            "asciinema cat '{}' > '{}' 2> '{}'",
            path.display(),
            out_path.display(),
            err_path.display()
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let out = std::fs::read(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    if st.success() && err.trim().is_empty() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(format!(
            "asciinema cat {} failed ({st:?}): {err}",
            path.display()
        ))
    }
}

/// Rows of an SQL query on the server's audit database, every column as
/// text (NULL as ""), for assertions on audit rows.
pub fn query_db(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c.prepare(sql).unwrap();
    let n = st.column_count();
    let rows = st
        .query_map([], |r| {
            let mut v = Vec::new();
            for i in 0..n {
                let val: rusqlite::types::Value = r.get(i)?;
                v.push(match val {
                    rusqlite::types::Value::Null => String::new(),
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Real(f) => f.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    rusqlite::types::Value::Blob(_) => "<blob>".into(),
                });
            }
            Ok(v)
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// A user whose certificate is made by the real `ssh-keygen -s CA_KEY` with
/// `args` (e.g. `-V -2h:-1h`, `-O critical:...`, `-h`), principal = `name`
/// unless `args` carries its own `-n`.
pub fn user_signed_by(dir: &Path, name: &str, ca_key: &Path, args: &[&str]) -> User {
    let key = dir.join(format!("id_{name}_{}", free_port()));
    keygen(&key);
    let mut cmd = Command::new("ssh-keygen");
    cmd.arg("-q")
        .arg("-s")
        .arg(ca_key)
        .args(["-I", &format!("test-{name}")]);
    if !args.contains(&"-n") {
        cmd.args(["-n", name]);
    }
    cmd.args(args).arg(format!("{}.pub", key.display()));
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen -s failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    User {
        name: name.to_string(),
        key: key.clone(),
        cert: PathBuf::from(format!("{}-cert.pub", key.display())),
    }
}

/// Parse an asciicast v2 file: (header, events as (time, code, data)).
pub fn parse_cast(path: &Path) -> (serde_json::Value, Vec<(f64, String, String)>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let events = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}"));
            (
                v[0].as_f64().unwrap(),
                v[1].as_str().unwrap().to_string(),
                v[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (header, events)
}

/// One `Command` as a single shell-quoted line (for tmux, which runs its
/// command through `sh -c`).
pub fn shell_line(cmd: &Command) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut parts = vec![quote(&cmd.get_program().to_string_lossy())];
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

/// A tmux server on its own socket running one session (`t`) of the given
/// size: a real terminal for interactive tests (`ssh -tt`). Killed on drop.
pub struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    /// Start `command` (a shell line, see [`shell_line`]) in a detached
    /// `cols`x`rows` session; the socket lives in `dir`.
    pub fn start(dir: &Path, cols: u16, rows: u16, command: &str) -> Tmux {
        let t = Tmux {
            sock: dir.join(format!("tmux-{}.sock", free_port())),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            command,
        ]);
        t
    }

    /// `tmux <args>`; panics when tmux fails.
    pub fn run(&self, args: &[&str]) {
        let st = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "tmux {args:?} failed");
    }

    /// `send-keys` to the session: key names (`Enter`, `C-c`) or text.
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Type `text` literally, then Enter.
    pub fn line(&self, text: &str) {
        self.run(&["send-keys", "-t", "t", "-l", text]);
        self.keys(&["Enter"]);
    }

    /// The pane's text, scrollback included, wrapped lines joined.
    pub fn capture(&self) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", "t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Poll the pane until `pred` holds; the last capture either way.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let mut last = String::new();
        wait_for(timeout, || {
            last = self.capture();
            pred(&last).then_some(())
        })
        .map(|_| last.clone())
        .ok_or(last)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .arg("kill-server")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
