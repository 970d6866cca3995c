//! Real forwarding targets for the e2e tests: an OpenSSH `sshd` that trusts
//! sallyport's user CA (for `ssh -J`), a PostgreSQL cluster made with
//! `initdb` (for `psql` through `ssh -L`), a TCP echo server, and targets
//! that refuse or hang. Each runs on a free loopback port and dies with its
//! value.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port, wait_port};

/// `sshd` on 127.0.0.1, trusting `user_ca` (one OpenSSH public key line) for
/// certificate logins whose principal is the login name.
pub struct Sshd {
    pub port: u16,
    pub proc: Proc,
    /// `ssh-ed25519 AAAA...` host key, for a known_hosts line.
    pub host_key: String,
}

impl Sshd {
    pub fn start(dir: &Path, user_ca: &str) -> Sshd {
        Self::start_on(dir, user_ca, free_port())
    }

    /// Start on a port chosen beforehand (e.g. already named in a config).
    pub fn start_on(dir: &Path, user_ca: &str, port: u16) -> Sshd {
        let d = dir.join(format!("sshd-{}", free_port()));
        std::fs::create_dir_all(&d).unwrap();
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let host_key = d.join("host_ed25519");
        super::keygen(&host_key);
        let ca = d.join("user_ca.pub");
        std::fs::write(&ca, format!("{}\n", user_ca.trim())).unwrap();
        let cfg = d.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nTrustedUserCAKeys {}\n\
                 AuthorizedKeysFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\n\
                 StrictModes no\nPidFile {}\nLogLevel VERBOSE\n",
                host_key.display(),
                ca.display(),
                d.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.arg("-D").arg("-e").arg("-f").arg(&cfg);
        let proc = Proc::spawn("sshd", cmd, &d);
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "sshd did not listen\n{}",
            proc.log()
        );
        let pubkey = std::fs::read_to_string(format!("{}.pub", host_key.display())).unwrap();
        let mut parts = pubkey.split_whitespace();
        let key = format!("{} {}", parts.next().unwrap(), parts.next().unwrap());
        Sshd {
            port,
            proc,
            host_key: key,
        }
    }

    /// known_hosts line for this sshd under the name the client uses.
    pub fn known_hosts_line(&self, host: &str) -> String {
        format!("[{host}]:{} {}", self.port, self.host_key)
    }
}

fn pg_bin(name: &str) -> PathBuf {
    for dir in ["/usr/local/bin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let p = e.path().join("bin").join(name);
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

/// A PostgreSQL cluster (`initdb` in a temp dir, trust auth on loopback),
/// run as the unprivileged `postgres` account (initdb/postgres refuse root).
pub struct Postgres {
    pub port: u16,
    pub proc: Proc,
    pub dir: PathBuf,
}

impl Postgres {
    pub fn start(dir: &Path) -> Postgres {
        let base = dir.join(format!("pg-{}", free_port()));
        std::fs::create_dir_all(&base).unwrap();
        // The account must be able to walk into the test's temp dir.
        let mut p = base.clone();
        while p != Path::new("/") && p.starts_with(std::env::temp_dir()) {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
            if !p.pop() {
                break;
            }
        }
        let st = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&base)
            .status()
            .unwrap();
        assert!(st.success(), "chown postgres failed");
        let data = base.join("data");
        let as_pg = |bin: &str| {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--reset-env",
            ])
            .arg(pg_bin(bin));
            c
        };
        let mut init = as_pg("initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let out = init.output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut cmd = as_pg("postgres");
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&base)
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]);
        let proc = Proc::spawn("postgres", cmd, &base);
        assert!(
            wait_port(port, Duration::from_secs(30)),
            "postgres did not listen\n{}",
            proc.log()
        );
        Postgres {
            port,
            proc,
            dir: base,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGKILL leaves shared memory and children behind; ask politely.
        self.proc.signal("INT");
        let _ = self.proc.wait_timeout(Duration::from_secs(10));
    }
}

/// A TCP echo server on a thread: echoes each connection until EOF.
pub fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

/// A loopback port where nothing listens (connections are refused).
pub fn refused_port() -> u16 {
    free_port()
}

/// A listener whose accept queue is full, so new connections hang in SYN
/// (what a firewalled or wedged target looks like). Keep the value alive.
pub struct Hanging {
    pub addr: SocketAddr,
    _listener: std::os::fd::OwnedFd,
    _fill: Vec<TcpStream>,
}

impl Hanging {
    pub fn start() -> Hanging {
        use std::os::fd::OwnedFd;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (fd, addr) = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let l = sock.listen(0).unwrap();
            let addr = l.local_addr().unwrap();
            let std_l = l.into_std().unwrap();
            (OwnedFd::from(std_l), addr)
        });
        let mut fill = Vec::new();
        for _ in 0..64 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => fill.push(s),
                Err(_) => break,
            }
        }
        Hanging {
            addr,
            _listener: fd,
            _fill: fill,
        }
    }
}
