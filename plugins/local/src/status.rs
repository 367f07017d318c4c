//! Process states as the gateway's job and endpoint states.

use mlgw_plugin_sdk::{EndpointState, EndpointStatus, JobState, JobStatus, process::ProcessState};

/// Why the gateway itself ended a job, recorded in the job directory before it acts so that
/// later status calls explain the ending instead of reporting a bare signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// the process ended on its own (or we do not know otherwise)
    Natural,
    Cancelled,
    TimedOut {
        max_runtime_s: u64,
    },
}

pub fn raw_job_state(state: ProcessState, pid: u32) -> String {
    match state {
        ProcessState::Running => format!("running pid {pid}"),
        ProcessState::Exited(code) => format!("exit {code}"),
        ProcessState::Signalled(sig) => format!("signal {sig}"),
        ProcessState::Vanished => "vanished".to_string(),
    }
}

pub fn job_state(state: ProcessState, ending: Ending) -> JobState {
    match (state, ending) {
        (ProcessState::Running, _) => JobState::Running,
        (_, Ending::TimedOut { max_runtime_s }) => {
            JobState::Failed(format!("max runtime of {max_runtime_s}s exceeded"))
        }
        (_, Ending::Cancelled) => JobState::Cancelled,
        (ProcessState::Exited(0), Ending::Natural) => JobState::Succeeded,
        (ProcessState::Exited(code), Ending::Natural) => {
            JobState::Failed(format!("exit code {code}"))
        }
        (ProcessState::Signalled(sig), Ending::Natural) => {
            JobState::Failed(format!("terminated by signal {sig}"))
        }
        (ProcessState::Vanished, Ending::Natural) => {
            JobState::Failed("process vanished without an exit status".to_string())
        }
    }
}

pub fn job_status(state: ProcessState, ending: Ending, pid: u32, output_dir: &str) -> JobStatus {
    JobStatus {
        state: job_state(state, ending),
        raw_state: raw_job_state(state, pid),
        message: None,
        output_uri: Some(format!("file://{output_dir}")),
        updated_ref: None,
    }
}

pub fn runtime_exceeded(started_ms: u64, max_runtime_s: Option<u64>, now_ms: u64) -> bool {
    match max_runtime_s {
        Some(max) => now_ms.saturating_sub(started_ms) > max.saturating_mul(1000),
        None => false,
    }
}

/// Readiness of the model itself is the host's to check; a running server is as far as the
/// process view can see.
pub fn endpoint_status(state: ProcessState, pid: u32, port: u16, log_path: &str) -> EndpointStatus {
    let (state, raw_state) = match state {
        ProcessState::Running => (
            EndpointState::Ready,
            format!("running pid {pid} port {port}"),
        ),
        ProcessState::Exited(code) => (
            EndpointState::Failed(format!("mlserver exited with code {code}; see {log_path}")),
            format!("exit {code}"),
        ),
        ProcessState::Signalled(sig) => (
            EndpointState::Failed(format!(
                "mlserver terminated by signal {sig}; see {log_path}"
            )),
            format!("signal {sig}"),
        ),
        ProcessState::Vanished => (
            EndpointState::Failed(format!(
                "mlserver vanished without an exit status; see {log_path}"
            )),
            "vanished".to_string(),
        ),
    };
    EndpointStatus {
        state,
        raw_state,
        message: None,
        updated_ref: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_endings() {
        let s = job_status(ProcessState::Running, Ending::Natural, 12, "/o");
        assert_eq!(s.state, JobState::Running);
        assert_eq!(s.raw_state, "running pid 12");
        assert_eq!(s.output_uri.as_deref(), Some("file:///o"));

        assert_eq!(
            job_state(ProcessState::Exited(0), Ending::Natural),
            JobState::Succeeded
        );
        assert_eq!(
            job_state(ProcessState::Exited(3), Ending::Natural),
            JobState::Failed("exit code 3".into())
        );
        assert_eq!(raw_job_state(ProcessState::Exited(3), 1), "exit 3");
        assert_eq!(
            job_state(ProcessState::Signalled(9), Ending::Natural),
            JobState::Failed("terminated by signal 9".into())
        );
        assert_eq!(
            job_state(ProcessState::Vanished, Ending::Natural),
            JobState::Failed("process vanished without an exit status".into())
        );
    }

    #[test]
    fn endings_the_gateway_caused() {
        let timed_out = Ending::TimedOut { max_runtime_s: 60 };
        assert_eq!(
            job_state(ProcessState::Signalled(15), timed_out),
            JobState::Failed("max runtime of 60s exceeded".into())
        );
        assert_eq!(
            job_state(ProcessState::Signalled(15), Ending::Cancelled),
            JobState::Cancelled
        );
        // Still in its grace period: it is running until it is not.
        assert_eq!(
            job_state(ProcessState::Running, Ending::Cancelled),
            JobState::Running
        );
    }

    #[test]
    fn runtime_limits() {
        assert!(!runtime_exceeded(1_000, None, u64::MAX));
        assert!(!runtime_exceeded(1_000, Some(60), 61_000));
        assert!(runtime_exceeded(1_000, Some(60), 61_001));
        assert!(
            !runtime_exceeded(5_000, Some(1), 1_000),
            "a clock step back is not a timeout"
        );
    }

    #[test]
    fn endpoint_states() {
        let s = endpoint_status(ProcessState::Running, 5, 8080, "/l");
        assert_eq!(s.state, EndpointState::Ready);
        assert_eq!(s.raw_state, "running pid 5 port 8080");
        let s = endpoint_status(ProcessState::Exited(1), 5, 8080, "/r/logs.txt");
        assert_eq!(
            s.state,
            EndpointState::Failed("mlserver exited with code 1; see /r/logs.txt".into())
        );
        assert!(matches!(
            endpoint_status(ProcessState::Vanished, 5, 1, "/l").state,
            EndpointState::Failed(_)
        ));
    }
}
