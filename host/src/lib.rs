//! mlgw: an ML platform gateway. One gRPC API for training jobs and model endpoints; every
//! execution target is a sandboxed WebAssembly component implementing the `mlgw:backend` WIT
//! contract, so teams swap targets by configuration while client code stays the same.

pub mod allocator;
pub mod api;
pub mod artifacts;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod contract;
pub mod dataplane;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod observability;
pub mod reconciler;
pub mod runtime;
pub mod server;
pub mod store;
