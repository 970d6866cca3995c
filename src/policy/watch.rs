//! Live reload: a task that reloads the policy dir on SIGHUP and when a file
//! in it changes (the `notify` crate, debounced so an editor's
//! write-rename-chmod burst is one reload). A bad file keeps the policy in
//! force and logs every diagnostic with file:line; a good reload swaps the
//! [`PolicyHandle`] and logs the roles now loaded. File events that leave
//! the `*.toml` contents unchanged (reads, touches) are ignored; SIGHUP
//! always reloads.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Error, PolicyHandle, load};

/// Quiet time after the last file event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Start the reload task; it ends when `shutdown` completes. Pass e.g.
/// `async move { let _ = stop_rx.recv().await; }` or a cancellation token's
/// `cancelled_owned()`. The directory is watched (and SIGHUP handled) by the
/// time this returns, so no change made afterwards is missed. Must be called
/// inside a tokio runtime.
pub fn spawn<F>(handle: PolicyHandle, dir: PathBuf, shutdown: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<()>();
    let watcher = start_watcher(&dir, tx);
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}); policy reloads on file change only");
            None
        }
    };
    let last = fingerprint(&dir);
    tokio::spawn(run(
        handle,
        dir,
        shutdown,
        Inputs {
            watcher,
            rx,
            hup,
            last,
        },
    ))
}

/// What the reload task listens to.
struct Inputs {
    /// Kept alive for the task's lifetime: dropping it stops the watch.
    watcher: Option<notify::RecommendedWatcher>,
    rx: mpsc::UnboundedReceiver<()>,
    hup: Option<tokio::signal::unix::Signal>,
    last: Option<Vec<u8>>,
}

fn start_watcher(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            // Our own reads show up as Access events: ignore them, or every
            // reload would trigger the next.
            Ok(ev)
                if matches!(
                    ev.kind,
                    EventKind::Create(_)
                        | EventKind::Modify(_)
                        | EventKind::Remove(_)
                        | EventKind::Any
                ) =>
            {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("policy file watcher: {e}"),
        }
    });
    match watcher {
        Ok(mut w) => match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot watch the policy dir ({e}); reload with SIGHUP");
                None
            }
        },
        Err(e) => {
            tracing::warn!("file watching unavailable ({e}); reload the policy with SIGHUP");
            None
        }
    }
}

/// Reload `dir` into `handle` now. On error the policy in force stays and
/// the error (every diagnostic) is returned and recorded in the status.
pub fn reload_now(handle: &PolicyHandle, dir: &Path) -> Result<(), Error> {
    match load::load_dir(dir) {
        Ok(policy) => {
            for w in policy.warnings() {
                tracing::warn!("policy: {w}");
            }
            let roles = policy.role_names();
            handle.replace(policy);
            tracing::info!(
                dir = %dir.display(),
                generation = handle.generation(),
                ?roles,
                "policy reloaded"
            );
            Ok(())
        }
        Err(e) => {
            for line in e.to_string().lines() {
                tracing::warn!(dir = %dir.display(), "policy reload refused, previous policy stays in force: {line}");
            }
            handle.reject(e.to_string());
            Err(e)
        }
    }
}

/// Digest of the `*.toml` files (names and contents), to skip reloads
/// that would change nothing.
fn fingerprint(dir: &Path) -> Option<Vec<u8>> {
    let files = load::read_dir(dir).ok()?;
    let mut h = Sha256::new();
    for (path, text) in files {
        h.update(path.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    Some(h.finalize().to_vec())
}

async fn hangup(sig: &mut Option<tokio::signal::unix::Signal>) {
    match sig {
        Some(s) => {
            if s.recv().await.is_none() {
                *sig = None;
            }
        }
        None => std::future::pending().await,
    }
}

async fn run<F>(handle: PolicyHandle, dir: PathBuf, shutdown: F, inputs: Inputs)
where
    F: Future<Output = ()> + Send + 'static,
{
    let Inputs {
        watcher: _watcher,
        mut rx,
        mut hup,
        mut last,
    } = inputs;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            ev = rx.recv() => {
                if ev.is_none() {
                    break;
                }
                // Debounce: wait until the directory has been quiet a moment.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                let now = fingerprint(&dir);
                if now.is_some() && now == last {
                    continue;
                }
                last = now;
                let _ = reload_now(&handle, &dir);
            }
            _ = hangup(&mut hup) => {
                tracing::info!(dir = %dir.display(), "SIGHUP: reloading policy");
                last = fingerprint(&dir);
                let _ = reload_now(&handle, &dir);
            }
        }
    }
    tracing::debug!("policy watcher stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::policy::Policy;

    const GOOD: &str = r#"
[[role]]
name = "ops"
[role.match]
issuer = ["local"]
[role.grant]
shell = true
"#;

    /// Wait (at most 30 s) until the reload status satisfies `ok`.
    async fn wait_until(
        h: &PolicyHandle,
        what: &str,
        ok: impl Fn(&super::super::ReloadStatus, &Policy) -> bool,
    ) -> super::super::ReloadStatus {
        let mut rx = h.subscribe();
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let s = rx.borrow_and_update().clone();
                if ok(&s, &h.current()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(r.is_ok(), "{what}: not seen within 30s: {:?}", h.status());
        h.status()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broken_file_keeps_old_policy_and_good_file_replaces_it() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::write(dir.join("a.toml"), GOOD).unwrap();
        let handle = PolicyHandle::new(Policy::load_dir(&dir).unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = spawn(handle.clone(), dir.clone(), async move {
            let _ = stop_rx.await;
        });
        let local = Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        };
        assert!(handle.current().session(&local).shell);

        // Broken: an unknown key on line 6 of b.toml.
        let broken = "[[role]]\nname = \"more\"\n[role.match]\nissuer = [\"x\"]\n[role.grant]\nshel = true\n";
        std::fs::write(dir.join("b.toml"), broken).unwrap();
        let s = wait_until(&handle, "refused reload", |s, _| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("b.toml:6:1: unknown key 'shel'"))
        })
        .await;
        assert_eq!(s.generation, 0, "{s:?}");
        assert_eq!(handle.current().role_names(), vec!["ops".to_string()]);
        assert!(handle.current().session(&local).shell);

        // Fixed, and the first role's shell taken away: the new policy goes live.
        std::fs::write(dir.join("b.toml"), broken.replace("shel =", "shell =")).unwrap();
        std::fs::write(
            dir.join("a.toml"),
            GOOD.replace("shell = true", "shell = false"),
        )
        .unwrap();
        let s = wait_until(&handle, "good reload", |s, p| {
            s.last_error.is_none() && p.role_names().len() == 2 && !p.session(&local).shell
        })
        .await;
        assert!(s.generation >= 1, "{s:?}");
        assert_eq!(
            handle.current().role_names(),
            vec!["ops".to_string(), "more".to_string()]
        );

        // SIGHUP reloads even though no file changed. (Raised here rather
        // than in a test of its own: a signal reaches every watcher in the
        // process, and this test is the only one that runs a watcher.)
        let before = handle.status();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        let s = wait_until(&handle, "SIGHUP reload", |s, _| {
            s.attempts > before.attempts
        })
        .await;
        assert_eq!(s.generation, before.generation + 1, "{s:?}");
        assert_eq!(s.last_error, None, "{s:?}");

        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn reload_now_records_refusals() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.toml"), GOOD).unwrap();
        let handle = PolicyHandle::new(Policy::load_dir(tmp.path()).unwrap());
        std::fs::write(tmp.path().join("a.toml"), "[[role]\n").unwrap();
        let e = reload_now(&handle, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("a.toml:1:"), "{e}");
        assert_eq!(handle.status().attempts, 1);
        assert_eq!(handle.generation(), 0);
        std::fs::write(tmp.path().join("a.toml"), GOOD).unwrap();
        reload_now(&handle, tmp.path()).unwrap();
        assert_eq!(handle.generation(), 1);
        assert_eq!(handle.status().last_error, None);
    }
}
