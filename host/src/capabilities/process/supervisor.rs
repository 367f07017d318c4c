//! `mlgw supervise`: runs one program for the process capability, timestamps its output into
//! the log file and records how it ended. It outlives the gateway (its own session), so a
//! restarted gateway finds the job again.
//!
//! The supervisor starts with an empty environment and reads what to run from its stdin, so
//! neither the plugin's environment nor its arguments ever steer the supervisor itself. It
//! opens the log, the working directory and the exit file's directory beneath the root
//! (`Root`), as the host does, so a link the plugin planted cannot redirect its writes.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::root::Root;

/// What to run, as the host hands it over on stdin.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Supervised {
    /// Already resolved and checked against the grant.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment of the program (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Relative to the root, like the two files.
    pub cwd: String,
    pub log: String,
    pub exit: String,
}

/// More than any real spawn request (the capability bounds arguments and environment).
const MAX_REQUEST: u64 = 8 << 20;
/// One line of output is cut into records of at most this many bytes.
const MAX_RECORD: u64 = 64 * 1024;

/// What the supervisor leaves behind when its process ends.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// What the supervisor tells the host on stdout, one line, before it runs anything.
pub const CLAIMED: &str = "claimed";
/// Another supervisor claimed this exit file (it is running the program, or did): the host
/// adopts that one, whose pid and start time are in the claim file.
pub const CLAIMED_BEFORE: &str = "claimed-before";

/// The claim file beside an exit file: `<pid> <start ticks>` of the supervisor that owns it.
pub fn claim_file(exit: &str) -> String {
    format!("{exit}.claim")
}

enum Claim {
    Ours(std::fs::File),
    Theirs,
}

/// One program per exit file, ever: a spawn the host repeats (a gateway killed between
/// starting a job and recording it, then asked again) finds the first supervisor instead of
/// running the program twice. A live owner holds the file's lock; an owner that ended left its
/// pid in it.
fn claim(root: &Root, exit: &str) -> Result<Claim, String> {
    let rel = claim_file(exit);
    let file = root
        .open_append("exit-file", &rel)
        .map_err(|e| e.to_string())?;
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(Claim::Theirs);
    }
    let owned = root
        .read_regular("exit-file", &rel, 256)
        .map_err(|e| e.to_string())?
        .is_some_and(|b| !b.is_empty());
    if owned {
        return Ok(Claim::Theirs);
    }
    let pid = std::process::id();
    let ticks = super::proc_stat(pid).map(|(t, _)| t).unwrap_or_default();
    (&file)
        .write_all(format!("{pid} {ticks}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(Claim::Ours(file))
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn supervise(root: &Path) -> i32 {
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        // A handler, not SIG_IGN: handlers reset on exec, so the child still gets the signal.
        let _ =
            signal_hook::flag::register(sig, Arc::new(std::sync::atomic::AtomicBool::new(false)));
    }
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_REQUEST).read_to_end(&mut input) {
        eprintln!("mlgw supervise: reading the request: {e}");
        return 125;
    }
    let req: Supervised = match serde_json::from_slice(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mlgw supervise: the request is not valid: {e}");
            return 125;
        }
    };
    let root = match Root::open(root) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mlgw supervise: opening the root {}: {e}", root.display());
            return 125;
        }
    };
    match claim(&root, &req.exit) {
        Ok(Claim::Ours(lock)) => {
            // Held (not inherited: opened close-on-exec) until this supervisor ends.
            std::mem::forget(lock);
            say(CLAIMED);
        }
        Ok(Claim::Theirs) => {
            say(CLAIMED_BEFORE);
            return 0;
        }
        Err(e) => {
            eprintln!("mlgw supervise: claiming {}: {e}", req.exit);
            return 125;
        }
    }
    let file = match root.open_append("log-file", &req.log) {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!("mlgw supervise: {e}");
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
        let bytes = serde_json::to_vec(&rec).unwrap_or_default();
        if let Err(e) = root.write_atomic("exit-file", &req.exit, &bytes) {
            write_line(&file, "stderr", format!("mlgw: {e}").as_bytes());
        }
    };
    let started = root
        .open_dir("cwd", &req.cwd)
        .map_err(|e| e.to_string())
        .and_then(|dir| {
            // The child inherits the directory itself, not a path that could be swapped.
            rustix::process::fchdir(&dir).map_err(|e| format!("entering cwd {:?}: {e}", req.cwd))
        })
        .and_then(|()| {
            Command::new(&req.program)
                .args(&req.args)
                .env_clear()
                .envs(req.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", req.program.display()))
        });
    let mut child = match started {
        Ok(c) => c,
        Err(e) => {
            write_line(&file, "stderr", format!("mlgw: {e}").as_bytes());
            record(ExitRecord {
                code: Some(127),
                signal: None,
            });
            return 127;
        }
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let pumps: Vec<(&'static str, Box<dyn Read + Send>)> = vec![
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
            while let Ok(n) = Read::take(&mut reader, MAX_RECORD).read_until(b'\n', &mut line) {
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
                format!("mlgw: waiting for {}: {e}", req.program.display()).as_bytes(),
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
