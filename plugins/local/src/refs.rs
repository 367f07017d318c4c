//! What goes into BackendRef.data. Plugins are stateless: everything later calls need to find
//! a process again travels in the ref the host stores.

use mlgw_plugin_sdk::{BackendError, BackendRef, internal, process::ProcessHandle};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobData {
    pub pid: u32,
    pub start_ticks: u64,
    /// job directory, relative to the granted root
    pub dir: String,
    pub started_ms: u64,
    pub max_runtime_s: Option<u64>,
    /// host path of the output directory
    pub output: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointData {
    pub pid: u32,
    pub start_ticks: u64,
    /// revision directory, relative to the granted root
    pub dir: String,
    /// MLServer's HTTP port on 127.0.0.1
    pub port: u16,
    /// the model name MLServer serves
    pub model: String,
}

impl JobData {
    pub fn handle(&self) -> ProcessHandle {
        ProcessHandle {
            pid: self.pid,
            start_ticks: self.start_ticks,
        }
    }

    pub fn to_ref(&self) -> BackendRef {
        BackendRef {
            name: format!("pid {}", self.pid),
            data: serde_json::to_string(self).expect("JobData serializes"),
        }
    }

    pub fn from_ref(r: &BackendRef) -> Result<Self, BackendError> {
        parse(r, "job")
    }
}

impl EndpointData {
    pub fn handle(&self) -> ProcessHandle {
        ProcessHandle {
            pid: self.pid,
            start_ticks: self.start_ticks,
        }
    }

    pub fn to_ref(&self) -> BackendRef {
        BackendRef {
            name: format!("mlserver pid {} port {}", self.pid, self.port),
            data: serde_json::to_string(self).expect("EndpointData serializes"),
        }
    }

    pub fn from_ref(r: &BackendRef) -> Result<Self, BackendError> {
        parse(r, "endpoint")
    }
}

fn parse<T: serde::de::DeserializeOwned>(r: &BackendRef, what: &str) -> Result<T, BackendError> {
    // The host hands back what this plugin returned, so a ref that does not parse is a
    // corrupt record or a ref from another target: not something the caller can fix.
    serde_json::from_str(&r.data).map_err(|e| {
        internal(format!(
            "{:?} is not a local-target {what} reference: {e}",
            r.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_refs_round_trip() {
        let d = JobData {
            pid: 42,
            start_ticks: 9,
            dir: "jobs/j".into(),
            started_ms: 1,
            max_runtime_s: Some(60),
            output: "/root/jobs/j/output".into(),
        };
        let r = d.to_ref();
        assert_eq!(r.name, "pid 42");
        assert_eq!(JobData::from_ref(&r).unwrap(), d);
        let v: serde_json::Value = serde_json::from_str(&r.data).unwrap();
        for key in [
            "pid",
            "start_ticks",
            "dir",
            "started_ms",
            "max_runtime_s",
            "output",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn endpoint_refs_round_trip() {
        let d = EndpointData {
            pid: 7,
            start_ticks: 3,
            dir: "endpoints/e/1".into(),
            port: 8080,
            model: "m".into(),
        };
        let r = d.to_ref();
        assert_eq!(r.name, "mlserver pid 7 port 8080");
        assert_eq!(EndpointData::from_ref(&r).unwrap(), d);
    }

    #[test]
    fn foreign_refs_are_refused() {
        let r = BackendRef {
            name: "ns/job".into(),
            data: "{}".into(),
        };
        assert!(matches!(
            JobData::from_ref(&r),
            Err(BackendError::Internal(_))
        ));
        assert!(matches!(
            EndpointData::from_ref(&r),
            Err(BackendError::Internal(_))
        ));
    }
}
