//! What a plugin's Store holds: its WASI context (no ambient authority: no env, no args, the
//! granted process root preopened at /work and nothing else), its memory limiter and the
//! per-call state of each capability.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::capabilities::{CallCapabilities, CallIdentity, Capabilities, HasCapabilities};

/// The guest path the process root is preopened at.
pub const WORK_DIR: &str = "/work";
const STDERR_CAPTURE: usize = 16 * 1024;

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    stderr: MemoryOutputPipe,
    caps: CallCapabilities,
}

impl HasCapabilities for HostState {
    fn capabilities(&mut self) -> &mut CallCapabilities {
        &mut self.caps
    }
}

impl HostState {
    pub fn new(
        target: &Arc<str>,
        caps: &Capabilities,
        memory_cap: usize,
        id: CallIdentity,
        scope: Arc<[String]>,
        deadline: std::time::Instant,
    ) -> wasmtime::Result<Self> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let mut b = WasiCtx::builder();
        b.stderr(stderr.clone());
        // File operations go to the blocking pool (WASI's default): a plugin that opens a
        // FIFO or reads a slow file must never stall one of the async runtime's threads.
        if let Some(p) = &caps.process {
            b.preopened_dir(p.root(), WORK_DIR, FsPerms::ReadWrite)?;
        }
        Ok(Self {
            wasi: b.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap: memory_cap,
                exceeded: false,
            },
            stderr,
            caps: caps.for_call(target, id, scope, Some(deadline)),
        })
    }

    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limiter
    }

    pub fn memory_exceeded(&self) -> bool {
        self.limiter.exceeded
    }

    /// What the plugin wrote to stderr (panic messages), for error reports.
    pub fn stderr_tail(&self) -> String {
        let bytes = self.stderr.contents();
        let text = String::from_utf8_lossy(&bytes);
        text.trim()
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers that it refused, so the failure is reported as
/// RESOURCE_EXHAUSTED rather than as a generic trap.
struct MemoryLimiter {
    cap: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            wasmtime::bail!("memory cap of {} MiB reached", self.cap >> 20);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
