//! The `process` capability: local processes under a granted root directory.
//!
//! Each process runs under `mlgw supervise` in its own process group, detached from the
//! gateway, so a restarted gateway finds it again by pid + start time; the supervisor
//! timestamps its output into a log file and leaves the exit status in a file. The host keeps
//! a registry of what each target started, so a plugin can only look at or signal its own
//! processes, never an arbitrary pid.
//!
//! The grant bounds everything a plugin hands in: the program (`programs`), its environment
//! (`environment`), every path under the root (`root`: never through a link out of it), and
//! how many processes may live at once. Every file-system touch runs on the blocking pool, so a
//! slow or hostile file system never stalls the async runtime's threads.

mod environment;
mod programs;
mod root;
mod supervisor;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::ProcessGrant;
use crate::contract::mlgw::backend::process::{
    self, ProcessError, ProcessHandle, ProcessState, SpawnRequest,
};
use crate::contract::types::Denial;
pub use environment::is_protected as is_protected_env;
pub use root::{Root, RootError};
pub use supervisor::{ExitRecord, Supervised, supervise};

const MAX_ARGS: usize = 4096;
const MAX_ARG_BYTES: usize = 1 << 20;
const MAX_GRACE_MS: u32 = 60_000;
const MAX_PIDFDS: usize = 4096;
/// An exit record is a few dozen bytes; anything bigger was not written by the supervisor.
const MAX_EXIT_RECORD: usize = 4096;

pub struct ProcessCapability {
    target: String,
    root: Arc<Root>,
    programs: programs::ProgramPolicy,
    env: environment::EnvPolicy,
    inherited_env: Vec<(String, String)>,
    max_processes: usize,
    supervisor: PathBuf,
    registry: sled::Tree,
    /// Processes of this target believed alive, for the `max_processes` bound. Spawns take
    /// the lock across the count and the start, so concurrent calls cannot both squeeze in.
    live: tokio::sync::Mutex<HashSet<(u32, u64)>>,
    /// A pidfd per live process, opened on the first liveness check that found it alive.
    /// Later checks poll it (one syscall) instead of reading and parsing /proc/<pid>/stat,
    /// which was a sixth of a status call. A pidfd pins the process it was opened for, so a
    /// recycled pid can never be mistaken for it; it is dropped once the process has ended.
    pidfds: Mutex<HashMap<(u32, u64), OwnedFd>>,
}

/// Whether the process behind a pidfd has ended (it is readable from then on).
fn pidfd_exited(fd: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&now)) {
        Ok(n) => n > 0,
        // Cannot tell: let the caller fall back to /proc.
        Err(_) => true,
    }
}

fn denied(reason: String) -> ProcessError {
    ProcessError::Denied(Denial {
        capability: "process".into(),
        reason,
    })
}

fn from_root(e: RootError) -> ProcessError {
    match e {
        RootError::BadPath { .. } | RootError::Escapes { .. } => denied(e.to_string()),
        RootError::NotRegular { .. } | RootError::TooLarge { .. } => {
            ProcessError::Invalid(e.to_string())
        }
        RootError::Io { .. } => ProcessError::Io(e.to_string()),
    }
}

/// Runs file-system work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProcessError> + Send + 'static,
) -> Result<T, ProcessError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ProcessError::Io(format!("file-system task failed: {e}"))))
}

/// Start time of a process in clock ticks since boot, and whether it is a zombie.
/// How long a supervisor has to say whether it claimed its exit file.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

fn proc_stat(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    Some((fields.get(19)?.parse().ok()?, zombie))
}

fn registry_key(h: &ProcessHandle) -> String {
    format!("{}:{}", h.pid, h.start_ticks)
}

fn parse_registry_key(k: &[u8]) -> Option<(u32, u64)> {
    let (pid, start) = std::str::from_utf8(k).ok()?.split_once(':')?;
    Some((pid.parse().ok()?, start.parse().ok()?))
}

fn exit_state(bytes: &[u8]) -> Option<ProcessState> {
    let rec: ExitRecord = serde_json::from_slice(bytes).ok()?;
    Some(match (rec.code, rec.signal) {
        (Some(c), _) => ProcessState::Exited(c),
        (None, Some(s)) => ProcessState::Signalled(s),
        (None, None) => ProcessState::Vanished,
    })
}

impl ProcessCapability {
    pub fn new(
        target: &str,
        root: &Path,
        grant: &ProcessGrant,
        registry: sled::Tree,
    ) -> anyhow::Result<Self> {
        let root = Arc::new(Root::open(root)?);
        let supervisor = match std::env::var_os("MLGW_SUPERVISOR") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()?,
        };
        let mut cap = Self {
            target: target.into(),
            programs: programs::ProgramPolicy::new(target, grant, root.path()),
            env: environment::EnvPolicy::new(target, &grant.allow_env),
            root,
            inherited_env: grant
                .inherit_env
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
                .collect(),
            max_processes: grant.max_processes as usize,
            supervisor,
            registry,
            live: Default::default(),
            pidfds: Mutex::default(),
        };
        // What a previous gateway started and is still running counts against the bound.
        let mut live = HashSet::new();
        for (k, _) in cap.registry.iter().flatten() {
            if let Some((pid, start_ticks)) = parse_registry_key(&k)
                && cap.alive(&ProcessHandle { pid, start_ticks })
            {
                live.insert((pid, start_ticks));
            }
        }
        cap.live = tokio::sync::Mutex::new(live);
        Ok(cap)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The root itself, for capabilities that write beneath it too (unpacking artifacts).
    pub fn root_handle(&self) -> Arc<Root> {
        self.root.clone()
    }

    fn known(&self, h: &ProcessHandle) -> Result<(), ProcessError> {
        match self.registry.get(registry_key(h)) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(ProcessError::NotFound(format!(
                "no process pid {} was started by target {}",
                h.pid, self.target
            ))),
            Err(e) => Err(ProcessError::Io(format!("process registry: {e}"))),
        }
    }

    fn alive(&self, h: &ProcessHandle) -> bool {
        let key = (h.pid, h.start_ticks);
        {
            let mut pidfds = self.pidfds.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fd) = pidfds.get(&key) {
                if !pidfd_exited(fd) {
                    return true;
                }
                pidfds.remove(&key);
            }
        }
        // Opened before /proc is read: if /proc then shows the expected start time, the
        // process was alive at both moments, so the pidfd is for this very process.
        let fd = rustix::process::Pid::from_raw(h.pid as i32).and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
        let alive = matches!(proc_stat(h.pid), Some((start, false)) if start == h.start_ticks);
        if let (true, Some(fd)) = (alive, fd) {
            let mut pidfds = self.pidfds.lock().unwrap_or_else(|e| e.into_inner());
            // A cache, not a registry: processes nobody asks about again are forgotten.
            if pidfds.len() >= MAX_PIDFDS {
                pidfds.clear();
            }
            pidfds.insert(key, fd);
        }
        alive
    }

    fn check_request(&self, req: &SpawnRequest) -> Result<PathBuf, ProcessError> {
        let program = self.programs.resolve(&req.program).map_err(|r| match r {
            programs::Refusal::Denied(m) => denied(m),
            programs::Refusal::NotFound(m) => ProcessError::NotFound(m),
            programs::Refusal::Invalid(m) => ProcessError::Invalid(m),
        })?;
        let arg_bytes: usize = req.args.iter().map(String::len).sum::<usize>()
            + req
                .env
                .iter()
                .map(|kv| kv.key.len() + kv.value.len())
                .sum::<usize>();
        if req.args.len() + req.env.len() > MAX_ARGS || arg_bytes > MAX_ARG_BYTES {
            return Err(ProcessError::Invalid(format!(
                "arguments and environment exceed {MAX_ARGS} entries or {MAX_ARG_BYTES} bytes"
            )));
        }
        if let Some(i) = req.args.iter().position(|a| a.contains('\0')) {
            return Err(ProcessError::Invalid(format!(
                "argument {i} contains a NUL byte"
            )));
        }
        self.env
            .check(
                req.env
                    .iter()
                    .map(|kv| (kv.key.as_str(), kv.value.as_str())),
            )
            .map_err(|r| match r {
                environment::Refusal::Denied(m) => denied(m),
                environment::Refusal::Invalid(m) => ProcessError::Invalid(m),
            })?;
        Ok(program)
    }

    #[tracing::instrument(name = "capability.process", skip_all, fields(mlgw.target = %self.target, program = %req.program))]
    pub async fn spawn(&self, req: SpawnRequest) -> Result<ProcessHandle, ProcessError> {
        let program = self.check_request(&req)?;
        {
            let root = self.root.clone();
            let (cwd, log, exit) = (req.cwd.clone(), req.log_file.clone(), req.exit_file.clone());
            blocking(move || {
                root.create_dir_all("cwd", &cwd).map_err(from_root)?;
                for (what, file) in [("log-file", &log), ("exit-file", &exit)] {
                    let parent = Path::new(file.as_str())
                        .parent()
                        .and_then(|p| p.to_str())
                        .unwrap_or("");
                    // The file's own name is checked too, not only its directory.
                    root.host_path(what, file).map_err(from_root)?;
                    root.create_dir_all(what, parent).map_err(from_root)?;
                }
                Ok(())
            })
            .await?;
        }

        let mut live = self.live.lock().await;
        live.retain(|&(pid, start_ticks)| self.alive(&ProcessHandle { pid, start_ticks }));
        if live.len() >= self.max_processes {
            return Err(ProcessError::Exhausted(format!(
                "target {} already has {} live processes, its limit \
                 (targets.{}.grants.process.max_processes)",
                self.target,
                live.len(),
                self.target
            )));
        }
        let supervised = Supervised {
            program,
            args: req.args.clone(),
            env: self
                .inherited_env
                .iter()
                .cloned()
                .chain(req.env.iter().map(|kv| (kv.key.clone(), kv.value.clone())))
                .collect(),
            cwd: req.cwd.clone(),
            log: req.log_file.clone(),
            exit: req.exit_file.clone(),
        };
        let input = serde_json::to_vec(&supervised)
            .map_err(|e| ProcessError::Io(format!("encoding the request: {e}")))?;
        let mut child = tokio::process::Command::new(&self.supervisor)
            .arg("supervise")
            .arg("--root")
            .arg(self.root.path())
            // The supervisor runs with nothing of the gateway's or the plugin's environment.
            .env_clear()
            .stdin(std::process::Stdio::piped())
            // One line: whether it claimed the exit file (see `supervisor::claim`).
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            // Its own group: cancel signals the whole tree, and the gateway's own signals
            // (Ctrl-C, a restart) do not reach jobs.
            .process_group(0)
            .spawn()
            .map_err(|e| ProcessError::Io(format!("starting the process supervisor: {e}")))?;
        let pid = child
            .id()
            .ok_or_else(|| ProcessError::Io("the supervisor exited at once".into()))?;
        let start_ticks = proc_stat(pid).map(|(s, _)| s).unwrap_or_default();
        let handle = ProcessHandle { pid, start_ticks };
        // Recorded before anything else can fail, so the process is always this target's to
        // look at and stop.
        self.registry
            .insert(registry_key(&handle), req.program.as_bytes())
            .map_err(|e| ProcessError::Io(format!("process registry: {e}")))?;
        live.insert((pid, start_ticks));
        drop(live);
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let sent = async {
            stdin.write_all(&input).await?;
            stdin.shutdown().await
        }
        .await;
        drop(stdin);
        // Reap it when it ends; the supervisor itself records the exit status.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        if let Err(e) = sent {
            // Without its request the supervisor exits at once; it is recorded and gone.
            return Err(ProcessError::Io(format!(
                "handing the request to the supervisor: {e}"
            )));
        }
        let mut said = String::new();
        let read = tokio::time::timeout(
            CLAIM_TIMEOUT,
            tokio::io::AsyncBufReadExt::read_line(
                &mut tokio::io::BufReader::new(stdout).take(256),
                &mut said,
            ),
        )
        .await;
        let handle = match (read, said.trim()) {
            (Ok(Ok(_)), supervisor::CLAIMED) => handle,
            (Ok(Ok(_)), supervisor::CLAIMED_BEFORE) => {
                // Asked again for a program that already runs (or ran): that one is the job.
                let first = self.claimed_before(&req.exit_file).await?;
                self.registry
                    .insert(registry_key(&first), req.program.as_bytes())
                    .map_err(|e| ProcessError::Io(format!("process registry: {e}")))?;
                tracing::info!(target = %self.target, pid = first.pid, program = %req.program,
                    "adopted the process started earlier for this exit file");
                first
            }
            (Ok(Ok(_)), _) | (Ok(Err(_)), _) => {
                return Err(ProcessError::Io(format!(
                    "the supervisor did not start (its answer: {:?})",
                    said.trim()
                )));
            }
            (Err(_), _) => {
                return Err(ProcessError::Io(format!(
                    "the supervisor did not answer within {CLAIM_TIMEOUT:?}"
                )));
            }
        };
        crate::store::flush_tree(&self.registry)
            .await
            .map_err(|e| ProcessError::Io(format!("process registry: {e}")))?;
        tracing::info!(target = %self.target, pid, program = %req.program, "started process");
        Ok(handle)
    }

    /// The handle of the supervisor that claimed `exit_file` first, from its claim file. It
    /// writes the file right after taking the lock, so an empty file is waited on briefly.
    async fn claimed_before(&self, exit_file: &str) -> Result<ProcessHandle, ProcessError> {
        let rel = supervisor::claim_file(exit_file);
        let deadline = tokio::time::Instant::now() + CLAIM_TIMEOUT;
        loop {
            let root = self.root.clone();
            let r = rel.clone();
            let text = blocking(move || root.read_regular("exit-file", &r, 256).map_err(from_root))
                .await?
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let mut fields = text.split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(pid)), Some(Ok(start_ticks))) = (fields.next(), fields.next()) {
                return Ok(ProcessHandle {
                    pid: pid as u32,
                    start_ticks,
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::Io(format!(
                    "{rel} names no supervisor (it reads {text:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn state(
        &self,
        h: &ProcessHandle,
        exit_file: &str,
    ) -> Result<ProcessState, ProcessError> {
        self.known(h)?;
        self.root
            .host_path("exit-file", exit_file)
            .map_err(from_root)?;
        // The hot path (a running job polled every tick) needs no file at all: a supervisor
        // writes its exit file just before it ends, so while it lives there is nothing to read.
        if self.alive(h) {
            return Ok(ProcessState::Running);
        }
        let root = self.root.clone();
        let rel = exit_file.to_string();
        let bytes = blocking(move || {
            root.read_regular("exit-file", &rel, MAX_EXIT_RECORD)
                .map_err(from_root)
        })
        .await?;
        Ok(bytes
            .as_deref()
            .and_then(exit_state)
            .unwrap_or(ProcessState::Vanished))
    }

    pub fn terminate_group(&self, h: &ProcessHandle, grace_ms: u32) -> Result<(), ProcessError> {
        self.known(h)?;
        if !self.alive(h) {
            return Ok(());
        }
        let Some(pgid) = rustix::process::Pid::from_raw(h.pid as i32) else {
            return Err(ProcessError::Invalid("pid 0".into()));
        };
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::TERM);
        let grace = Duration::from_millis(grace_ms.min(MAX_GRACE_MS) as u64);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if rustix::process::test_kill_process_group(pgid).is_ok() {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
        });
        Ok(())
    }

    /// The absolute host path of `rel`, once it is known not to lead out of the root.
    pub async fn host_path(&self, rel: &str) -> Result<String, ProcessError> {
        let root = self.root.clone();
        let rel = rel.to_string();
        blocking(move || {
            root.check_beneath("path", &rel).map_err(from_root)?;
            root.host_path("path", &rel)
                .map_err(from_root)?
                .into_os_string()
                .into_string()
                .map_err(|_| ProcessError::Invalid("path is not UTF-8".into()))
        })
        .await
    }
}

/// The capability as one call's Store sees it: granted or not.
pub struct ProcessCall {
    target: Arc<str>,
    cap: Option<Arc<ProcessCapability>>,
}

impl ProcessCall {
    pub fn new(target: Arc<str>, cap: Option<Arc<ProcessCapability>>) -> Self {
        Self { target, cap }
    }

    fn granted(&self) -> Result<&ProcessCapability, ProcessError> {
        self.cap.as_deref().ok_or_else(|| {
            denied(format!(
                "target {} is not granted the process capability",
                self.target
            ))
        })
    }
}

impl process::Host for ProcessCall {
    async fn spawn(
        &mut self,
        req: SpawnRequest,
    ) -> wasmtime::Result<Result<ProcessHandle, ProcessError>> {
        Ok(match self.granted() {
            Ok(p) => p.spawn(req).await,
            Err(e) => Err(e),
        })
    }

    async fn state(
        &mut self,
        handle: ProcessHandle,
        exit_file: String,
    ) -> wasmtime::Result<Result<ProcessState, ProcessError>> {
        Ok(match self.granted() {
            Ok(p) => p.state(&handle, &exit_file).await,
            Err(e) => Err(e),
        })
    }

    async fn terminate_group(
        &mut self,
        handle: ProcessHandle,
        grace_ms: u32,
    ) -> wasmtime::Result<Result<(), ProcessError>> {
        Ok(self
            .granted()
            .and_then(|p| p.terminate_group(&handle, grace_ms)))
    }

    async fn free_port(&mut self) -> wasmtime::Result<Result<u16, ProcessError>> {
        Ok(self.granted().and_then(|_| {
            std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| ProcessError::Io(format!("finding a free port: {e}")))
        }))
    }

    async fn host_path(&mut self, path: String) -> wasmtime::Result<Result<String, ProcessError>> {
        Ok(match self.granted() {
            Ok(p) => p.host_path(&path).await,
            Err(e) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A capability for target "t" rooted in a fresh directory, with a throwaway registry.
    fn capability(grant: &ProcessGrant) -> (tempfile::TempDir, ProcessCapability) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let cap =
            ProcessCapability::new("t", dir.path(), grant, db.open_tree("p").unwrap()).unwrap();
        (dir, cap)
    }

    #[test]
    fn reads_own_start_time() {
        let (start, zombie) = proc_stat(std::process::id()).unwrap();
        assert!(start > 0);
        assert!(!zombie);
    }

    #[test]
    fn liveness_follows_the_process_and_never_a_recycled_pid() {
        let (_dir, cap) = capability(&ProcessGrant::default());
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id();
        let h = ProcessHandle {
            pid,
            start_ticks: proc_stat(pid).unwrap().0,
        };
        assert!(cap.alive(&h), "first check, through /proc");
        assert!(cap.alive(&h), "second check, through the cached pidfd");
        assert_eq!(cap.pidfds.lock().unwrap().len(), 1);
        // Same pid, another start time: what a recycled pid looks like.
        let stranger = ProcessHandle {
            pid,
            start_ticks: h.start_ticks + 1,
        };
        assert!(!cap.alive(&stranger));

        child.kill().unwrap();
        // Not yet reaped (a zombie): ended all the same.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cap.alive(&h) {
            assert!(
                std::time::Instant::now() < deadline,
                "still alive after kill"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(!cap.alive(&h), "ended, seen through the pidfd");
        assert!(
            cap.pidfds.lock().unwrap().is_empty(),
            "its pidfd is dropped"
        );
        assert!(!cap.alive(&h));
    }

    #[test]
    fn unknown_handles_are_refused() {
        let (_dir, cap) = capability(&ProcessGrant::default());
        // Our own pid is alive, but this target never started it: it must not be signalled.
        let me = ProcessHandle {
            pid: std::process::id(),
            start_ticks: proc_stat(std::process::id()).unwrap().0,
        };
        assert!(matches!(
            cap.terminate_group(&me, 0),
            Err(ProcessError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn host_paths_never_lead_out_of_the_root() {
        let (_dir, cap) = capability(&ProcessGrant::default());
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), cap.root().join("out")).unwrap();
        assert!(matches!(
            cap.host_path("out/x").await,
            Err(ProcessError::Denied(_))
        ));
        assert_eq!(
            cap.host_path("jobs/a").await.unwrap(),
            cap.root().join("jobs/a").display().to_string()
        );
    }
}
