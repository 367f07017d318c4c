//! How a job record and its events are laid out on disk: protobuf messages of the store's own
//! (not the API's, so the API can change what it shows without touching what is kept), each
//! behind a one-byte format tag. Records and events written as JSON before (which begin with
//! `{`) are still read, and take this format the next time they are written.
//!
//! Why not JSON: a record is decoded on every GetJob, update and listed row, and a running
//! job's took 1.9 µs as 666 B of JSON against 0.5 µs as 150 B of protobuf (1M decodes in a
//! loop, release, idle); sled's cost per insert grows with the bytes it copies into its log and
//! nodes.
//! Endpoints, few and rarely written, stay JSON.

use prost::Message;

use super::{Result, StoreError};
use crate::domain::{BackendRef, InputChannel, Job, JobState, Resources, TrainingSpec};

/// The tag of a protobuf record. JSON ones begin with `{`.
const PROTOBUF: u8 = 1;

#[derive(Clone, PartialEq, Message)]
struct JobRecord {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    tenant: String,
    #[prost(string, tag = "3")]
    target: String,
    #[prost(message, optional, tag = "4")]
    spec: Option<SpecRecord>,
    #[prost(uint32, tag = "5")]
    state: u32,
    #[prost(string, tag = "6")]
    message: String,
    #[prost(string, tag = "7")]
    backend_state: String,
    #[prost(message, optional, tag = "8")]
    backend_ref: Option<BackendRefRecord>,
    #[prost(string, optional, tag = "9")]
    output_uri: Option<String>,
    #[prost(uint64, tag = "10")]
    created_at: u64,
    #[prost(uint64, tag = "11")]
    updated_at: u64,
    #[prost(uint64, optional, tag = "12")]
    finished_at: Option<u64>,
    #[prost(bool, tag = "13")]
    cancel_requested: bool,
    #[prost(uint64, optional, tag = "14")]
    cancel_sent_at: Option<u64>,
    #[prost(uint64, tag = "15")]
    sequence: u64,
    #[prost(uint64, tag = "16")]
    feed_sequence: u64,
}

#[derive(Clone, PartialEq, Message)]
struct SpecRecord {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, optional, tag = "2")]
    image: Option<String>,
    #[prost(string, repeated, tag = "3")]
    command: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    args: Vec<String>,
    #[prost(btree_map = "string, string", tag = "5")]
    env: std::collections::BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "6")]
    hyperparameters: std::collections::BTreeMap<String, String>,
    #[prost(message, repeated, tag = "7")]
    inputs: Vec<InputRecord>,
    #[prost(string, optional, tag = "8")]
    output_uri: Option<String>,
    #[prost(message, optional, tag = "9")]
    resources: Option<ResourcesRecord>,
    #[prost(uint64, optional, tag = "10")]
    max_runtime_seconds: Option<u64>,
    #[prost(string, optional, tag = "11")]
    framework: Option<String>,
    #[prost(string, optional, tag = "12")]
    code_uri: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct InputRecord {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    uri: String,
}

#[derive(Clone, PartialEq, Message)]
struct ResourcesRecord {
    #[prost(string, optional, tag = "1")]
    cpu: Option<String>,
    #[prost(string, optional, tag = "2")]
    memory: Option<String>,
    #[prost(uint32, tag = "3")]
    gpus: u32,
    #[prost(string, optional, tag = "4")]
    gpu_type: Option<String>,
    #[prost(string, optional, tag = "5")]
    instance_type: Option<String>,
    #[prost(uint32, tag = "6")]
    nodes: u32,
}

#[derive(Clone, PartialEq, Message, serde::Deserialize)]
struct BackendRefRecord {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    data: String,
}

/// A job's status at one version: what an event keeps (the record keeps the rest once). JSON
/// events decode into it too; one of those may be a whole job (written before events held
/// only the status), whose immutable fields are ignored as the record's.
#[derive(Clone, PartialEq, Message, serde::Deserialize)]
struct EventRecord {
    #[prost(uint32, tag = "1")]
    #[serde(deserialize_with = "state_by_name")]
    state: u32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(string, tag = "3")]
    backend_state: String,
    #[prost(message, optional, tag = "4")]
    backend_ref: Option<BackendRefRecord>,
    #[prost(string, optional, tag = "5")]
    output_uri: Option<String>,
    #[prost(uint64, tag = "6")]
    updated_at: u64,
    #[prost(uint64, optional, tag = "7")]
    finished_at: Option<u64>,
    #[prost(bool, tag = "8")]
    cancel_requested: bool,
    #[prost(uint64, optional, tag = "9")]
    #[serde(default)]
    cancel_sent_at: Option<u64>,
    #[prost(uint64, tag = "10")]
    sequence: u64,
    #[prost(uint64, tag = "11")]
    #[serde(default)]
    feed_sequence: u64,
}

/// Only an event's place in the feed, from either format: the other fields are skipped.
#[derive(Clone, PartialEq, Message, serde::Deserialize)]
struct EventFeedSequenceRecord {
    #[prost(uint64, tag = "11")]
    #[serde(default)]
    feed_sequence: u64,
}

/// A JSON event names its state; the record numbers it.
fn state_by_name<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<u32, D::Error> {
    <JobState as serde::Deserialize>::deserialize(d).map(state_number)
}

/// Numbers fixed on disk: never reuse one.
fn state_number(s: JobState) -> u32 {
    match s {
        JobState::Pending => 1,
        JobState::Running => 2,
        JobState::Succeeded => 3,
        JobState::Failed => 4,
        JobState::Cancelled => 5,
    }
}

fn state_from(key: &[u8], n: u32) -> Result<JobState> {
    Ok(match n {
        1 => JobState::Pending,
        2 => JobState::Running,
        3 => JobState::Succeeded,
        4 => JobState::Failed,
        5 => JobState::Cancelled,
        _ => {
            return Err(corrupt(
                key,
                format!("job state {n} is none the store writes"),
            ));
        }
    })
}

fn corrupt(key: &[u8], message: String) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        message,
    }
}

fn tagged(m: &impl Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + m.encoded_len());
    out.push(PROTOBUF);
    m.encode(&mut out)
        .expect("a Vec grows to hold what it is given");
    out
}

/// Which format `bytes` are in, and the protobuf part when it is that.
enum Format<'a> {
    Protobuf(&'a [u8]),
    Json,
}

fn format_of<'a>(key: &[u8], bytes: &'a [u8]) -> Result<Format<'a>> {
    match bytes.split_first() {
        Some((&PROTOBUF, rest)) => Ok(Format::Protobuf(rest)),
        Some((b'{', _)) => Ok(Format::Json),
        Some((b, _)) => Err(corrupt(
            key,
            format!("a record of no known format (tag {b})"),
        )),
        None => Err(corrupt(key, "an empty record".into())),
    }
}

fn from_protobuf<M: Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| corrupt(key, e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(key, e.to_string()))
}

fn backend_ref_record(r: &BackendRef) -> BackendRefRecord {
    BackendRefRecord {
        name: r.name.clone(),
        data: r.data.clone(),
    }
}

fn backend_ref_from(r: BackendRefRecord) -> BackendRef {
    BackendRef {
        name: r.name,
        data: r.data,
    }
}

fn spec_record(s: &TrainingSpec) -> SpecRecord {
    let r = &s.resources;
    SpecRecord {
        name: s.name.clone(),
        image: s.image.clone(),
        command: s.command.clone(),
        args: s.args.clone(),
        env: s.env.clone(),
        hyperparameters: s.hyperparameters.clone(),
        inputs: s
            .inputs
            .iter()
            .map(|i| InputRecord {
                name: i.name.clone(),
                uri: i.uri.clone(),
            })
            .collect(),
        output_uri: s.output_uri.clone(),
        resources: Some(ResourcesRecord {
            cpu: r.cpu.clone(),
            memory: r.memory.clone(),
            gpus: r.gpus,
            gpu_type: r.gpu_type.clone(),
            instance_type: r.instance_type.clone(),
            nodes: r.nodes,
        }),
        max_runtime_seconds: s.max_runtime_seconds,
        framework: s.framework.clone(),
        code_uri: s.code_uri.clone(),
    }
}

fn spec_from(s: SpecRecord) -> TrainingSpec {
    let r = s.resources.unwrap_or_default();
    TrainingSpec {
        name: s.name,
        image: s.image,
        command: s.command,
        args: s.args,
        env: s.env,
        hyperparameters: s.hyperparameters,
        inputs: s
            .inputs
            .into_iter()
            .map(|i| InputChannel {
                name: i.name,
                uri: i.uri,
            })
            .collect(),
        output_uri: s.output_uri,
        resources: Resources {
            cpu: r.cpu,
            memory: r.memory,
            gpus: r.gpus,
            gpu_type: r.gpu_type,
            instance_type: r.instance_type,
            nodes: r.nodes,
        },
        max_runtime_seconds: s.max_runtime_seconds,
        framework: s.framework,
        code_uri: s.code_uri,
    }
}

pub(super) fn encode_job(j: &Job) -> Vec<u8> {
    tagged(&JobRecord {
        id: j.id.clone(),
        tenant: j.tenant.clone(),
        target: j.target.clone(),
        spec: Some(spec_record(&j.spec)),
        state: state_number(j.state),
        message: j.message.clone(),
        backend_state: j.backend_state.clone(),
        backend_ref: j.backend_ref.as_ref().map(backend_ref_record),
        output_uri: j.output_uri.clone(),
        created_at: j.created_at,
        updated_at: j.updated_at,
        finished_at: j.finished_at,
        cancel_requested: j.cancel_requested,
        cancel_sent_at: j.cancel_sent_at,
        sequence: j.sequence,
        feed_sequence: j.feed_sequence,
    })
}

pub(super) fn decode_job(key: &[u8], bytes: &[u8]) -> Result<Job> {
    let r: JobRecord = match format_of(key, bytes)? {
        Format::Json => return from_json(key, bytes),
        Format::Protobuf(b) => from_protobuf(key, b)?,
    };
    Ok(Job {
        state: state_from(key, r.state)?,
        id: r.id,
        tenant: r.tenant,
        target: r.target,
        spec: spec_from(r.spec.unwrap_or_default()),
        message: r.message,
        backend_state: r.backend_state,
        backend_ref: r.backend_ref.map(backend_ref_from),
        output_uri: r.output_uri,
        created_at: r.created_at,
        updated_at: r.updated_at,
        finished_at: r.finished_at,
        cancel_requested: r.cancel_requested,
        cancel_sent_at: r.cancel_sent_at,
        sequence: r.sequence,
        feed_sequence: r.feed_sequence,
    })
}

pub(super) fn encode_event(j: &Job) -> Vec<u8> {
    tagged(&EventRecord {
        state: state_number(j.state),
        message: j.message.clone(),
        backend_state: j.backend_state.clone(),
        backend_ref: j.backend_ref.as_ref().map(backend_ref_record),
        output_uri: j.output_uri.clone(),
        updated_at: j.updated_at,
        finished_at: j.finished_at,
        cancel_requested: j.cancel_requested,
        cancel_sent_at: j.cancel_sent_at,
        sequence: j.sequence,
        feed_sequence: j.feed_sequence,
    })
}

/// The job as it was at the event `key`: the record's immutable part with the event's status.
pub(super) fn decode_event(key: &[u8], bytes: &[u8], record: &Job) -> Result<Job> {
    let e: EventRecord = match format_of(key, bytes)? {
        Format::Json => from_json(key, bytes)?,
        Format::Protobuf(b) => from_protobuf(key, b)?,
    };
    Ok(Job {
        id: record.id.clone(),
        tenant: record.tenant.clone(),
        target: record.target.clone(),
        spec: record.spec.clone(),
        created_at: record.created_at,
        state: state_from(key, e.state)?,
        message: e.message,
        backend_state: e.backend_state,
        backend_ref: e.backend_ref.map(backend_ref_from),
        output_uri: e.output_uri,
        updated_at: e.updated_at,
        finished_at: e.finished_at,
        cancel_requested: e.cancel_requested,
        cancel_sent_at: e.cancel_sent_at,
        sequence: e.sequence,
        feed_sequence: e.feed_sequence,
    })
}

/// The feed sequence the event `key` was numbered with.
pub(super) fn event_feed_sequence(key: &[u8], bytes: &[u8]) -> Result<u64> {
    let e: EventFeedSequenceRecord = match format_of(key, bytes)? {
        Format::Json => from_json(key, bytes)?,
        Format::Protobuf(b) => from_protobuf(key, b)?,
    };
    Ok(e.feed_sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::now_ms;

    /// A job with every optional field set, so each one's round trip is checked.
    fn full_job() -> Job {
        Job {
            id: "j-0190a5b2c3d4e5f60718293a4b5c6d7e".into(),
            tenant: "team-a".into(),
            target: "kubeflow".into(),
            spec: TrainingSpec {
                name: "resnet".into(),
                image: Some("ghcr.io/acme/train:1".into()),
                command: vec!["torchrun".into(), "train.py".into()],
                args: vec!["--epochs".into(), "3".into()],
                env: [("A".to_string(), "1".to_string())].into(),
                hyperparameters: [("lr".to_string(), "0.1".to_string())].into(),
                inputs: vec![InputChannel {
                    name: "train".into(),
                    uri: "s3://b/train".into(),
                }],
                output_uri: Some("s3://b/out".into()),
                resources: Resources {
                    cpu: Some("4".into()),
                    memory: Some("16Gi".into()),
                    gpus: 2,
                    gpu_type: Some("nvidia-a100".into()),
                    instance_type: Some("ml.p4d.24xlarge".into()),
                    nodes: 2,
                },
                max_runtime_seconds: Some(3600),
                framework: Some("pytorch".into()),
                code_uri: Some("mlgw://artifacts/sha256:ab".into()),
            },
            state: JobState::Cancelled,
            message: "cancelled".into(),
            backend_state: "Suspended".into(),
            backend_ref: Some(BackendRef {
                name: "mlgw-0190a5b2".into(),
                data: "{\"uid\":\"u\"}".into(),
            }),
            output_uri: Some("s3://b/out/j".into()),
            created_at: now_ms(),
            updated_at: now_ms() + 1,
            finished_at: Some(now_ms() + 2),
            cancel_requested: true,
            cancel_sent_at: Some(now_ms() + 3),
            sequence: 7,
            feed_sequence: 42,
        }
    }

    #[test]
    fn a_job_and_its_event_read_back_as_written_and_smaller_than_json() {
        let job = full_job();
        let bytes = encode_job(&job);
        assert_eq!(bytes[0], PROTOBUF);
        assert_eq!(decode_job(b"k", &bytes).unwrap(), job);
        let json = serde_json::to_vec(&job).unwrap();
        assert!(
            bytes.len() * 2 < json.len(),
            "{} B against {} B of JSON",
            bytes.len(),
            json.len()
        );
        let bare = Job {
            spec: TrainingSpec::default(),
            ..job.clone()
        };
        let event = encode_event(&job);
        assert_eq!(decode_event(b"e", &event, &bare).unwrap(), bare);
        assert_eq!(event_feed_sequence(b"e", &event).unwrap(), 42);
    }

    #[test]
    fn records_and_events_written_as_json_still_read() {
        let job = full_job();
        let json = serde_json::to_vec(&job).unwrap();
        assert_eq!(decode_job(b"k", &json).unwrap(), job);
        // An event as JSON stores wrote it: the whole job, read with the record's spec.
        let record = Job {
            state: JobState::Pending,
            ..job.clone()
        };
        assert_eq!(decode_event(b"e", &json, &record).unwrap(), job);
        assert_eq!(event_feed_sequence(b"e", &json).unwrap(), 42);
    }

    #[test]
    fn bytes_of_no_known_format_are_reported_as_corrupt_with_their_key() {
        for (bytes, says) in [
            (&b""[..], "empty"),
            (&[9u8, 1, 2][..], "tag 9"),
            // A protobuf record cut short.
            (&encode_job(&full_job())[..20], "buffer"),
        ] {
            match decode_job(b"j-1", bytes) {
                Err(StoreError::Corrupt { key, message }) => {
                    assert_eq!(key, "j-1");
                    assert!(message.contains(says), "{message:?} should say {says:?}");
                }
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
        let unknown_state = tagged(&JobRecord {
            state: 99,
            ..JobRecord::default()
        });
        let err = decode_job(b"j-2", &unknown_state).unwrap_err().to_string();
        assert!(err.contains("job state 99"), "{err}");
    }
}
