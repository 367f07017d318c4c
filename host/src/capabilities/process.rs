//! The `process` capability: local processes under a granted root directory.
//!
//! Each process runs under `mlgw supervise` in its own process group, detached from the
//! gateway, so a restarted gateway finds it again by pid + start time; the supervisor
//! timestamps its output into a log file and leaves the exit status in a file. The host keeps
//! a registry of what each target started, so a plugin can only look at or signal its own
//! processes, never an arbitrary pid.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::ProcessGrant;
use crate::runtime::HostState;
use crate::runtime::bindings::mlgw::backend::process::{
    self, ProcessError, ProcessHandle, ProcessState, SpawnRequest,
};
use crate::runtime::bindings::mlgw::backend::types::Denial;

const MAX_ARGS: usize = 4096;
const MAX_ARG_BYTES: usize = 1 << 20;
const MAX_GRACE_MS: u32 = 60_000;
const MAX_PIDFDS: usize = 4096;

pub struct ProcessCapability {
    target: String,
    root: PathBuf,
    any_program: bool,
    programs: Vec<String>,
    inherited_env: Vec<(String, String)>,
    supervisor: PathBuf,
    registry: sled::Tree,
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

/// What the supervisor leaves behind when its process ends.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

fn denied(reason: String) -> ProcessError {
    ProcessError::Denied(Denial {
        capability: "process".into(),
        reason,
    })
}

fn io(context: &str, e: std::io::Error) -> ProcessError {
    ProcessError::Io(format!("{context}: {e}"))
}

/// Start time of a process in clock ticks since boot, and whether it is a zombie.
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

impl ProcessCapability {
    pub fn new(
        target: &str,
        root: &Path,
        grant: &ProcessGrant,
        registry: sled::Tree,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let supervisor = match std::env::var_os("MLGW_SUPERVISOR") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()?,
        };
        Ok(Self {
            target: target.into(),
            root,
            any_program: grant.programs.iter().any(|p| p == "*"),
            programs: grant.programs.clone(),
            inherited_env: grant
                .inherit_env
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
                .collect(),
            supervisor,
            registry,
            pidfds: Mutex::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A path under the root; absolute paths and `..` are refused, not normalised.
    fn resolve(&self, rel: &str, what: &str) -> Result<PathBuf, ProcessError> {
        let p = Path::new(rel);
        if p.is_absolute() {
            return Err(denied(format!(
                "{what} {rel:?} is absolute; paths are relative to the target's root"
            )));
        }
        if p.components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(denied(format!("{what} {rel:?} leaves the target's root")));
        }
        Ok(self.root.join(p))
    }

    fn program_allowed(&self, program: &str) -> bool {
        if self.any_program {
            return true;
        }
        let base = Path::new(program)
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or(program);
        self.programs.iter().any(|p| p == program || p == base)
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

    pub async fn spawn(&self, req: SpawnRequest) -> Result<ProcessHandle, ProcessError> {
        if req.program.is_empty() {
            return Err(ProcessError::Invalid("program is empty".into()));
        }
        if !self.program_allowed(&req.program) {
            return Err(denied(format!(
                "program {:?} is not in target {}'s allowed programs",
                req.program, self.target
            )));
        }
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
        let cwd = self.resolve(&req.cwd, "cwd")?;
        let log = self.resolve(&req.log_file, "log-file")?;
        let exit = self.resolve(&req.exit_file, "exit-file")?;
        for dir in [Some(cwd.as_path()), log.parent(), exit.parent()]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|e| io("creating directories", e))?;
        }
        let mut cmd = tokio::process::Command::new(&self.supervisor);
        cmd.arg("supervise")
            .arg("--log")
            .arg(&log)
            .arg("--exit")
            .arg(&exit)
            .arg("--")
            .arg(&req.program)
            .args(&req.args)
            .env_clear()
            .envs(self.inherited_env.iter().map(|(k, v)| (k, v)))
            .envs(req.env.iter().map(|kv| (&kv.key, &kv.value)))
            .current_dir(&cwd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own group: cancel signals the whole tree, and the gateway's own signals
            // (Ctrl-C, a restart) do not reach jobs.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(|e| io(&format!("starting {}", self.supervisor.display()), e))?;
        let pid = child
            .id()
            .ok_or_else(|| ProcessError::Io("child exited at once".into()))?;
        let start_ticks = proc_stat(pid).map(|(s, _)| s).unwrap_or_default();
        // Reap it when it ends; the supervisor itself records the exit status.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let handle = ProcessHandle { pid, start_ticks };
        self.registry
            .insert(registry_key(&handle), req.program.as_bytes())
            .map_err(|e| ProcessError::Io(format!("process registry: {e}")))?;
        crate::store::flush_tree(&self.registry)
            .await
            .map_err(|e| ProcessError::Io(format!("process registry: {e}")))?;
        tracing::info!(target = %self.target, pid, program = %req.program, "started process");
        Ok(handle)
    }

    fn read_exit(path: &Path) -> Option<ProcessState> {
        let bytes = std::fs::read(path).ok()?;
        let rec: ExitRecord = serde_json::from_slice(&bytes).ok()?;
        Some(match (rec.code, rec.signal) {
            (Some(c), _) => ProcessState::Exited(c),
            (None, Some(s)) => ProcessState::Signalled(s),
            (None, None) => ProcessState::Vanished,
        })
    }

    pub fn state(&self, h: &ProcessHandle, exit_file: &str) -> Result<ProcessState, ProcessError> {
        self.known(h)?;
        let exit = self.resolve(exit_file, "exit-file")?;
        if let Some(s) = Self::read_exit(&exit) {
            return Ok(s);
        }
        if self.alive(h) {
            return Ok(ProcessState::Running);
        }
        // The supervisor writes the file before it exits; look once more to close the race.
        Ok(Self::read_exit(&exit).unwrap_or(ProcessState::Vanished))
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

    pub fn host_path(&self, rel: &str) -> Result<String, ProcessError> {
        let p = self.resolve(rel, "path")?;
        p.into_os_string()
            .into_string()
            .map_err(|_| ProcessError::Invalid("path is not UTF-8".into()))
    }
}

fn not_granted(state: &HostState) -> ProcessError {
    denied(format!(
        "target {} is not granted the process capability",
        state.target
    ))
}

impl process::Host for HostState {
    async fn spawn(
        &mut self,
        req: SpawnRequest,
    ) -> wasmtime::Result<Result<ProcessHandle, ProcessError>> {
        let Some(p) = self.process.clone() else {
            return Ok(Err(not_granted(self)));
        };
        Ok(p.spawn(req).await)
    }

    async fn state(
        &mut self,
        handle: ProcessHandle,
        exit_file: String,
    ) -> wasmtime::Result<Result<ProcessState, ProcessError>> {
        Ok(match &self.process {
            Some(p) => p.state(&handle, &exit_file),
            None => Err(not_granted(self)),
        })
    }

    async fn terminate_group(
        &mut self,
        handle: ProcessHandle,
        grace_ms: u32,
    ) -> wasmtime::Result<Result<(), ProcessError>> {
        Ok(match &self.process {
            Some(p) => p.terminate_group(&handle, grace_ms),
            None => Err(not_granted(self)),
        })
    }

    async fn free_port(&mut self) -> wasmtime::Result<Result<u16, ProcessError>> {
        if self.process.is_none() {
            return Ok(Err(not_granted(self)));
        }
        Ok(std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| io("finding a free port", e)))
    }

    async fn host_path(&mut self, path: String) -> wasmtime::Result<Result<String, ProcessError>> {
        Ok(match &self.process {
            Some(p) => p.host_path(&path),
            None => Err(not_granted(self)),
        })
    }
}

/// `mlgw supervise`: runs one program, timestamps its output into the log file, and records
/// how it ended. It survives the SIGTERM sent to its group so the child's fate is recorded.
pub fn supervise(log: &Path, exit: &Path, program: &str, args: &[String]) -> i32 {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    use std::sync::Mutex;

    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        // A handler, not SIG_IGN: handlers reset on exec, so the child still gets the signal.
        let _ =
            signal_hook::flag::register(sig, Arc::new(std::sync::atomic::AtomicBool::new(false)));
    }
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!("mlgw supervise: opening {}: {e}", log.display());
            return 125;
        }
    };
    let write_line = |file: &Mutex<std::fs::File>, source: &str, text: &[u8]| {
        let ms = crate::domain::now_ms();
        let text = String::from_utf8_lossy(text);
        let text = text.trim_end_matches(['\n', '\r']);
        let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{ms} {source} {text}");
    };
    let record = |rec: ExitRecord| {
        let tmp = exit.with_extension("tmp");
        let ok = std::fs::write(&tmp, serde_json::to_vec(&rec).unwrap_or_default())
            .and_then(|_| std::fs::rename(&tmp, exit));
        if let Err(e) = ok {
            eprintln!("mlgw supervise: writing {}: {e}", exit.display());
        }
    };
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            write_line(
                &file,
                "stderr",
                format!("mlgw: cannot start {program}: {e}").as_bytes(),
            );
            record(ExitRecord {
                code: Some(127),
                signal: None,
            });
            return 127;
        }
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let pumps: Vec<(&'static str, Box<dyn std::io::Read + Send>)> = vec![
        ("stdout", Box::new(child.stdout.take().expect("piped"))),
        ("stderr", Box::new(child.stderr.take().expect("piped"))),
    ];
    for (source, pipe) in pumps {
        let file = file.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::new(pipe);
            let mut line = Vec::new();
            // Bounded reads so one endless line cannot exhaust memory.
            while let Ok(n) =
                std::io::Read::take(&mut reader, 64 * 1024).read_until(b'\n', &mut line)
            {
                if n == 0 {
                    break;
                }
                write_line(&file, source, &line);
                line.clear();
            }
            let _ = done.send(());
        });
    }
    drop(done_tx);
    let status = child.wait();
    // Grandchildren may hold the pipes open; do not wait on them for long.
    for _ in 0..2 {
        if done_rx.recv_timeout(Duration::from_secs(2)).is_err() {
            break;
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let rec = match status {
        Ok(s) => ExitRecord {
            code: s.code(),
            signal: s.signal(),
        },
        Err(e) => {
            write_line(
                &file,
                "stderr",
                format!("mlgw: waiting for {program}: {e}").as_bytes(),
            );
            ExitRecord {
                code: None,
                signal: None,
            }
        }
    };
    let code = rec.code.unwrap_or(128 + rec.signal.unwrap_or(0));
    record(rec);
    code
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
    fn paths_stay_under_the_root() {
        let (_dir, cap) = capability(&ProcessGrant::default());
        assert!(cap.resolve("jobs/a/logs.txt", "x").is_ok());
        for bad in ["/etc/passwd", "../x", "jobs/../../x"] {
            assert!(
                matches!(cap.resolve(bad, "x"), Err(ProcessError::Denied(_))),
                "{bad}"
            );
        }
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

    #[test]
    fn program_allow_list() {
        let (_dir, cap) = capability(&ProcessGrant {
            programs: vec!["python3".into()],
            ..Default::default()
        });
        assert!(cap.program_allowed("python3"));
        assert!(cap.program_allowed("/usr/bin/python3"));
        assert!(!cap.program_allowed("bash"));
    }
}
