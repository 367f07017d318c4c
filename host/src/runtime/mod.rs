//! Runs plugins: one wasmtime Engine, one `InstancePre` per plugin, a fresh Store per call.
//! Every call gets a deadline (epoch interruption, yielding every tick so a spinning plugin
//! never hogs a runtime thread, plus an outer timeout that also covers host calls), a linear
//! memory cap, and a permit from a semaphore sized to the pooling allocator.

pub mod bindings;
mod bounds;
mod budget;
mod cache;
mod state;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};
use wasmtime::component::Linker;
use wasmtime::{
    Config as EngineConfig, Enabled, Engine, PoolingAllocationConfig, Store, UpdateDeadline,
};

use crate::artifacts::ArtifactStore;
use crate::capabilities::artifacts::ArtifactsCapability;
use crate::capabilities::kube::KubeCapability;
use crate::capabilities::log::LogCapability;
use crate::capabilities::process::ProcessCapability;
use crate::capabilities::sagemaker::SagemakerCapability;
use crate::capabilities::{self, CallIdentity, Capabilities};
use crate::config::{Config, Limits};
use crate::domain::{self, Capability, Feature, PluginInfo};
use bindings::{plugin, serving, training, wit};
use bounds::Bounds;
pub use state::HostState;

/// How a plugin call went wrong, in the runtime's terms.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("target {target}: {failure}")]
    Backend {
        target: String,
        failure: BackendFailure,
    },
    #[error("target {target}: plugin trapped: {message}")]
    Trap { target: String, message: String },
    #[error("target {target}: plugin call exceeded its {limit_ms} ms deadline")]
    Deadline { target: String, limit_ms: u64 },
    /// The target's request budget had no room for the call before its deadline (it is over
    /// its rate, or paused after its backend throttled): nothing reached the backend.
    #[error(
        "target {target}: its request budget admitted no call within {limit_ms} ms (it is over its rate or paused after its backend throttled); try again later"
    )]
    OverBudget { target: String, limit_ms: u64 },
    #[error("target {target}: plugin exceeded its memory cap of {limit_mib} MiB")]
    MemoryExhausted { target: String, limit_mib: u64 },
    #[error("target {target}: {feature} is not supported by plugin {plugin}")]
    Unsupported {
        target: String,
        plugin: String,
        feature: &'static str,
    },
    #[error("plugin {plugin}: {message}")]
    Load { plugin: String, message: String },
    #[error(
        "target {target}: the plugin returned a {what} of {size} bytes, over the {limit}-byte limit (limits.{key})"
    )]
    Oversized {
        target: String,
        what: String,
        size: usize,
        limit: usize,
        key: &'static str,
    },
    /// The plugin answered something the contract rules out.
    #[error("target {target}: the plugin broke the contract: {message}")]
    Contract { target: String, message: String },
}

/// A backend's own error, as the WIT contract defines it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendFailure {
    #[error("{field}: {reason}")]
    InvalidSpec { field: String, reason: String },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("capability {capability} denied: {reason}")]
    Denied { capability: String, reason: String },
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("internal error: {0}")]
    Internal(String),
}

pub struct Plugin {
    pub name: String,
    pub digest: String,
    pub info: PluginInfo,
    pre: wasmtime::component::InstancePre<HostState>,
    exports: Exports,
}

/// Where each exported interface's functions are in a plugin, found once when it loads. A
/// call type-checks and binds only the interface it calls: binding all three on every
/// instance was about a fifth of a plugin call's cost in a Submit profile.
#[derive(Clone)]
struct Exports {
    mlgw_backend_plugin: plugin::GuestIndices,
    mlgw_backend_training: training::GuestIndices,
    mlgw_backend_serving: serving::GuestIndices,
}

impl Exports {
    fn new(pre: &wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(Self {
            mlgw_backend_plugin: plugin::GuestIndices::new(pre)?,
            mlgw_backend_training: training::GuestIndices::new(pre)?,
            mlgw_backend_serving: serving::GuestIndices::new(pre)?,
        })
    }
}

/// A configured target: a plugin, the operator's settings for it and its grants.
pub struct Target {
    pub name: String,
    /// The same name, shared cheaply with every call's capabilities.
    label: Arc<str>,
    pub is_default: bool,
    pub plugin: Arc<Plugin>,
    /// The `[targets.X.settings]` table as a JSON object.
    pub settings: String,
    pub grants: Vec<String>,
    pub caps: Capabilities,
    /// This target's share of plugin calls: a slow or hostile target waits on itself, never
    /// holding every instance slot the other targets need.
    calls: Semaphore,
    /// Its calls per second, and its pause after the backend throttled it.
    budget: Option<budget::Budget>,
}

impl Target {
    /// Tells the budget how a call went: a throttling answer pauses the target's calls.
    fn note_outcome(&self, error: Option<&PluginError>) {
        let Some(b) = &self.budget else { return };
        match error {
            Some(PluginError::Backend {
                failure: BackendFailure::Throttled(_),
                ..
            }) => b.throttled(),
            None | Some(PluginError::Backend { .. }) => b.answered(),
            // Refused before it went out: the budget knows already.
            Some(PluginError::OverBudget { .. }) => {}
            Some(_) => b.unanswered(),
        }
    }

    pub fn supports(&self, f: Feature) -> bool {
        self.plugin.info.features.contains(&f)
    }

    /// Whether its work runs somewhere else (a cluster, a cloud), where the gateway's own
    /// files cannot be read: its plugin needs a remote capability rather than local processes.
    pub fn is_remote(&self) -> bool {
        self.plugin.info.needs.iter().any(|c| {
            matches!(
                c,
                Capability::Kube | Capability::Sagemaker | Capability::Http
            )
        })
    }

    pub fn require(&self, f: Feature) -> Result<(), PluginError> {
        if self.supports(f) {
            Ok(())
        } else {
            Err(PluginError::Unsupported {
                target: self.name.clone(),
                plugin: self.plugin.name.clone(),
                feature: f.as_str(),
            })
        }
    }
}

pub struct Runtime {
    engine: Engine,
    limits: Limits,
    permits: Semaphore,
    targets: BTreeMap<String, Arc<Target>>,
    default_target: Option<String>,
}

/// One plugin call in flight: its Store, its instance and the permit that admitted it.
struct Call<'r> {
    store: Store<HostState>,
    instance: wasmtime::component::Instance,
    ctx: wit::CallContext,
    deadline: Instant,
    target: &'r Target,
    limits: &'r Limits,
    _permits: (SemaphorePermit<'r>, SemaphorePermit<'r>),
}

/// Every call's tenant until authentication lands (`gateway::DEFAULT_TENANT`).
const TENANT: &str = crate::gateway::DEFAULT_TENANT;

/// Bytes of each memory and table slot kept resident between calls (see `engine`).
const KEEP_RESIDENT: usize = 1 << 20;

fn engine(limits: &Limits) -> wasmtime::Result<Engine> {
    let mut cfg = EngineConfig::new();
    cfg.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    let n = limits.max_concurrent_calls;
    // Each call is one component instance; a wasm32-wasip2 component carries a handful of
    // core instances (the program, the WASI adapter, shims).
    pool.total_component_instances(n)
        .total_core_instances(n * 16)
        .max_core_instances_per_component(16)
        .total_memories(n * 2)
        .max_memories_per_component(2)
        .total_tables(n * 8)
        .max_tables_per_component(8)
        .total_stacks(n)
        // Headroom over the cap so the limiter, not the pool, refuses growth and the
        // failure is reported as the cap.
        .max_memory_size(((limits.memory_mib + 16) << 20) as usize)
        // A fresh instance per call makes slot reuse the hot path. By default a freed slot is
        // madvise'd away and every page the next call touches faults back in (a third of a
        // status call's time, measured). Instead, keep slots resident and reset only the pages
        // the last call dirtied, found with the PAGEMAP_SCAN ioctl where the kernel has it
        // (Linux 6.7+; elsewhere the low addresses are memset).
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);
    cfg.allocation_strategy(pool);
    cfg.memory_reservation(1 << 32);
    Engine::new(&cfg)
}

impl Runtime {
    /// Compiles (or loads from the cache) every plugin the config names, asks each to
    /// describe itself, and binds targets to their grants.
    pub async fn load(
        config: &Config,
        store: &crate::store::Store,
        artifacts: Arc<ArtifactStore>,
    ) -> anyhow::Result<Self> {
        let artifacts = Arc::new(ArtifactsCapability::new(
            artifacts,
            Duration::from_secs(config.artifacts.presign_max_seconds),
            config.artifacts.max_unpacked_bytes,
        ));
        let engine = engine(&config.limits).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        start_epoch_ticker(&engine);
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        capabilities::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e:?}"))?;

        let cache_dir = config.data_dir.join("compiled");
        std::fs::create_dir_all(&cache_dir)?;
        let mut runtime = Runtime {
            permits: Semaphore::new(config.limits.max_concurrent_calls as usize),
            limits: config.limits.clone(),
            engine: engine.clone(),
            targets: BTreeMap::new(),
            default_target: config.default_target().map(String::from),
        };

        // Each plugin once, in the order the targets first name it.
        let mut names: Vec<&str> = Vec::new();
        for t in config.targets.values() {
            if !names.contains(&t.plugin.as_str()) {
                names.push(&t.plugin);
            }
        }
        // Readying one plugin (compiling it, or mapping its cached artifact, then asking it to
        // describe itself) and connecting one target's capabilities need nothing from each
        // other; done one after another they added up to most of the start. Compiles run on
        // blocking threads, so the capabilities connect meanwhile.
        let (loaded, connected) = tokio::join!(
            futures::future::join_all(names.iter().map(|n| runtime.load_plugin(
                &linker,
                &cache_dir,
                n,
                plugin_source(config, n)
            ))),
            futures::future::join_all(
                config
                    .targets
                    .iter()
                    .map(|(name, t)| connect_grants(config, store, name, t))
            ),
        );
        // Errors in the order a sequential start met them: plugins first, then each target's
        // grants and capabilities.
        let mut plugins: BTreeMap<&str, Arc<Plugin>> = BTreeMap::new();
        for (name, plugin) in names.iter().zip(loaded) {
            plugins.insert(name, Arc::new(plugin?));
        }

        for ((name, t), granted) in config.targets.iter().zip(connected) {
            let plugin = &plugins[t.plugin.as_str()];
            // Refused here rather than at the first call, where the plugin would fail with
            // whatever error its first denied call produced.
            for need in &plugin.info.needs {
                let granted = match need {
                    Capability::Process => t.grants.process.is_some(),
                    Capability::Kube => t.grants.kube.is_some(),
                    Capability::Sagemaker => t.grants.sagemaker.is_some(),
                    Capability::Http => false,
                };
                if !granted {
                    anyhow::bail!(
                        "target {name}: plugin {} needs the {} capability, which the target is \
                         not granted; grant it with [targets.{name}.grants.{}]",
                        plugin.name,
                        need.as_str(),
                        need.as_str()
                    );
                }
            }
            let Granted {
                process,
                kube,
                sagemaker,
            } = granted?;
            if let Some(cap) = &sagemaker {
                // Credentials are looked at only now, in the background: missing or refused
                // ones never stop the gateway, they show in the target's health.
                let (c, target) = (cap.clone(), name.clone());
                tokio::spawn(async move {
                    if let Err(why) = c.health().await {
                        tracing::warn!(target = %target, reason = %why, "target unhealthy");
                    }
                });
            }
            let settings = serde_json::to_string(&t.settings)?;
            runtime.targets.insert(
                name.clone(),
                Arc::new(Target {
                    name: name.clone(),
                    label: name.as_str().into(),
                    is_default: runtime.default_target.as_deref() == Some(name),
                    plugin: plugin.clone(),
                    settings,
                    grants: t.grants.names(),
                    caps: Capabilities {
                        log: Arc::new(LogCapability::new(name, &t.grants.log)),
                        process,
                        kube,
                        sagemaker,
                        artifacts: Some(artifacts.clone()),
                    },
                    calls: Semaphore::new(config.limits.target_concurrent_calls as usize),
                    budget: t.budget().as_ref().map(budget::Budget::new),
                }),
            );
        }
        Ok(runtime)
    }

    async fn load_plugin(
        &self,
        linker: &Linker<HostState>,
        cache_dir: &Path,
        name: &str,
        source: PluginSource,
    ) -> anyhow::Result<Plugin> {
        // Reading, hashing and compiling are blocking work; on a blocking thread each plugin
        // compiles while the others do.
        let (engine, dir, plugin) = (
            self.engine.clone(),
            cache_dir.to_path_buf(),
            name.to_string(),
        );
        let (component, digest) = tokio::task::spawn_blocking(move || {
            let bytes = match source {
                PluginSource::File(path) => {
                    std::borrow::Cow::Owned(std::fs::read(&path).map_err(|e| {
                        anyhow::anyhow!("plugin {plugin}: reading {}: {e}", path.display())
                    })?)
                }
                PluginSource::Bundled(b) => std::borrow::Cow::Borrowed(b),
                PluginSource::Missing => anyhow::bail!("plugin {plugin} is not bundled"),
            };
            cache::load_component(&engine, &dir, &bytes)
                .map_err(|e| anyhow::anyhow!("plugin {plugin}: {e:?}"))
        })
        .await
        .map_err(|e| anyhow::anyhow!("plugin {name}: loading: {e}"))??;
        let pre = linker.instantiate_pre(&component).map_err(|e| {
            anyhow::anyhow!("plugin {name} does not fit the mlgw:backend world: {e:?}")
        })?;
        let exports = Exports::new(&pre).map_err(|e| {
            anyhow::anyhow!("plugin {name} does not fit the mlgw:backend world: {e:?}")
        })?;
        let label = format!("<{name}>");
        let probe = Target {
            label: label.as_str().into(),
            caps: Capabilities::none(&label),
            name: label,
            is_default: false,
            plugin: Arc::new(Plugin {
                name: name.into(),
                digest: digest.clone(),
                info: PluginInfo {
                    name: name.into(),
                    version: String::new(),
                    description: String::new(),
                    features: vec![],
                    needs: vec![],
                },
                pre: pre.clone(),
                exports: exports.clone(),
            }),
            settings: "{}".into(),
            grants: vec![],
            calls: Semaphore::new(1),
            budget: None,
        };
        let mut call = self.start(&probe, "", no_artifacts(), 0, false).await?;
        // Every interface is type-checked here, once, so a plugin that does not fit the
        // world fails to load rather than on its first call of that interface.
        let fit = (|| {
            exports
                .mlgw_backend_training
                .load(&mut call.store, &call.instance)?;
            exports
                .mlgw_backend_serving
                .load(&mut call.store, &call.instance)?;
            exports
                .mlgw_backend_plugin
                .load(&mut call.store, &call.instance)
        })()
        .map_err(|e| anyhow::anyhow!("plugin {name} does not fit the mlgw:backend world: {e:?}"))?;
        let res = tokio::time::timeout(call.remaining(), fit.call_describe(&mut call.store)).await;
        let info = bindings::info_from_wit(
            call.finish(res)?,
            Bounds {
                target: name,
                limits: &self.limits,
            },
        )
        .map_err(|e| anyhow::anyhow!("plugin {name}: describe: {e}"))?;
        tracing::info!(plugin = name, version = %info.version, digest = %&digest[..12], "loaded plugin");
        Ok(Plugin {
            name: name.into(),
            digest,
            info,
            pre,
            exports,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.targets.values()
    }

    pub fn target(&self, name: &str) -> Option<&Arc<Target>> {
        self.targets.get(name)
    }

    pub fn default_target(&self) -> Option<&str> {
        self.default_target.as_deref()
    }

    /// Admits a call, builds its Store and instantiates the plugin in it.
    async fn start<'r>(
        &'r self,
        target: &'r Target,
        resource_id: &str,
        scope: Arc<[String]>,
        revision: u32,
        budgeted: bool,
    ) -> Result<Call<'r>, PluginError> {
        let deadline = Instant::now() + Duration::from_millis(self.limits.call_timeout_ms);
        let exceeded = || PluginError::Deadline {
            target: target.name.clone(),
            limit_ms: self.limits.call_timeout_ms,
        };
        // The budget first: a target over its rate (or paused after throttling) waits here
        // holding nothing, so the calls waiting out a pause do not fill the target's permits
        // and turn the next caller's wait into a deadline instead of an over-budget answer.
        // It waits at most half its time there: a call let go with its deadline all but spent
        // would only run out of it at the backend, an answer that says less than this one.
        let admit_by = Instant::now() + Duration::from_millis(self.limits.call_timeout_ms / 2);
        if let Some(b) = target.budget.as_ref().filter(|_| budgeted)
            && !b.admit(admit_by.into(), deadline.into()).await
        {
            return Err(PluginError::OverBudget {
                target: target.name.clone(),
                limit_ms: self.limits.call_timeout_ms,
            });
        }
        // Then the target's own permit: while its share is used up, its calls queue without
        // taking an instance slot from anyone else.
        let own = tokio::time::timeout_at(deadline.into(), target.calls.acquire())
            .await
            .map_err(|_| exceeded())?
            .expect("a target's semaphore is never closed");
        let slot = tokio::time::timeout_at(deadline.into(), self.permits.acquire())
            .await
            .map_err(|_| exceeded())?
            .expect("the permit semaphore is never closed");
        let backend_name = domain::backend_name(resource_id);
        let state = HostState::new(
            &target.label,
            &target.caps,
            (self.limits.memory_mib as usize) << 20,
            CallIdentity {
                tenant: TENANT.into(),
                resource_id: resource_id.into(),
                backend_name: backend_name.clone(),
            },
            scope,
            deadline,
        )
        .map_err(|e| PluginError::Trap {
            target: target.name.clone(),
            message: format!("setting up the sandbox: {e:?}"),
        })?;
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s.limiter());
        // Yield to the executor every tick so a spinning plugin shares the thread; interrupt
        // at the deadline.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let ctx = wit::CallContext {
            tenant: TENANT.into(),
            target: target.name.clone(),
            resource_id: resource_id.into(),
            backend_name,
            revision,
            settings: target.settings.clone(),
        };
        let inst = tokio::time::timeout_at(
            deadline.into(),
            target.plugin.pre.instantiate_async(&mut store),
        )
        .await;
        let instance = classify(&store, target, &self.limits, inst)?;
        Ok(Call {
            store,
            instance,
            ctx,
            deadline,
            target,
            limits: &self.limits,
            _permits: (own, slot),
        })
    }
}

/// Turns a call's outcome into a `PluginError` that says what went wrong and where.
fn classify<R>(
    store: &Store<HostState>,
    target: &Target,
    limits: &Limits,
    res: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
) -> Result<R, PluginError> {
    let target = target.name.clone();
    let err = match res {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => e,
        Err(_) => {
            return Err(PluginError::Deadline {
                target,
                limit_ms: limits.call_timeout_ms,
            });
        }
    };
    if store.data().memory_exceeded() {
        return Err(PluginError::MemoryExhausted {
            target,
            limit_mib: limits.memory_mib,
        });
    }
    if matches!(
        err.downcast_ref::<wasmtime::Trap>(),
        Some(wasmtime::Trap::Interrupt)
    ) {
        return Err(PluginError::Deadline {
            target,
            limit_ms: limits.call_timeout_ms,
        });
    }
    let mut message = format!("{err}");
    for cause in err.chain().skip(1) {
        message = format!("{message}: {cause}");
    }
    let stderr = store.data().stderr_tail();
    if !stderr.is_empty() {
        message = format!("{message}; plugin stderr: {stderr}");
    }
    Err(PluginError::Trap { target, message })
}

impl Call<'_> {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn finish<R>(
        self,
        res: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    ) -> Result<R, PluginError> {
        classify(&self.store, self.target, self.limits, res)
    }

    fn finish_backend<R>(
        self,
        res: Result<wasmtime::Result<Result<R, wit::BackendError>>, tokio::time::error::Elapsed>,
    ) -> Result<R, PluginError> {
        let target = self.target.name.clone();
        let limits = self.limits;
        self.finish(res)?.map_err(|e| PluginError::Backend {
            failure: bindings::failure_from_wit(
                e,
                Bounds {
                    target: &target,
                    limits,
                },
            ),
            target,
        })
    }
}

/// One WIT call on a fresh instance: admit, instantiate, call under the deadline, classify.
macro_rules! call {
    ($rt:ident, $t:expr, $id:expr, $iface:ident . $method:ident ( $($arg:expr),* )) => {
        call!($rt, $t, $id, no_artifacts(), 0; $iface.$method($($arg),*))
    };
    ($rt:ident, $t:expr, $id:expr, $scope:expr; $iface:ident . $method:ident ( $($arg:expr),* )) => {
        call!($rt, $t, $id, $scope, 0; $iface.$method($($arg),*))
    };
    ($rt:ident, $t:expr, $id:expr, $scope:expr, $rev:expr; $iface:ident . $method:ident ( $($arg:expr),* )) => {{
        // Every plugin call is one span (a child of the RPC or sweep that made it) and one
        // observation of its latency; its failure is counted by kind.
        let operation = stringify!($method).trim_start_matches("call_");
        let span = tracing::info_span!("plugin.call", mlgw.target = %$t.name, operation, resource = %$id);
        let started = Instant::now();
        // Validation is pure by contract: it asks no backend, so it neither spends the budget
        // nor may pass for the backend's answer after a throttling pause.
        let budgeted = !operation.starts_with("validate_");
        let r = tracing::Instrument::instrument(async {
            let mut c = $rt.start($t, $id, $scope, $rev, budgeted).await?;
            // Checked against the world when the plugin loaded.
            let f = c.target.plugin.exports.$iface.load(&mut c.store, &c.instance)
                .map_err(|e| PluginError::Contract {
                    target: $t.name.clone(),
                    message: format!("{}: {e:?}", stringify!($iface)),
                })?;
            let res = tokio::time::timeout(c.remaining(), f.$method(&mut c.store, &c.ctx, $($arg),*)).await;
            c.finish_backend(res)
        }, span).await;
        crate::observability::metrics().plugin_call(&$t.name, operation, started.elapsed(), r.as_ref().err());
        if budgeted {
            $t.note_outcome(r.as_ref().err());
        }
        r
    }};
}

/// A call that concerns no artifact (status, logs, cancel, delete).
fn no_artifacts() -> Arc<[String]> {
    Arc::from(Vec::new())
}

/// The artifacts a job's calls may name: its code, its inputs and its output location.
fn job_artifacts(s: &domain::TrainingSpec) -> Arc<[String]> {
    s.code_uri
        .iter()
        .chain(s.output_uri.iter())
        .cloned()
        .chain(s.inputs.iter().map(|i| i.uri.clone()))
        .collect::<Vec<_>>()
        .into()
}

/// The artifacts an endpoint's calls may name: its model.
fn endpoint_artifacts(s: &domain::EndpointSpec) -> Arc<[String]> {
    vec![s.model_uri.clone()].into()
}

/// Each operation is one WIT call on a fresh instance.
impl Runtime {
    fn bounds<'a>(&'a self, t: &'a Target) -> Bounds<'a> {
        Bounds {
            target: &t.name,
            limits: &self.limits,
        }
    }

    /// Admits, builds a Store and instantiates the target's plugin, then drops it: the fixed
    /// cost of every call, and a health check that the plugin can still be instantiated.
    pub async fn check(&self, t: &Target) -> Result<(), PluginError> {
        self.start(t, "", no_artifacts(), 0, false).await.map(drop)
    }

    pub async fn validate_training(
        &self,
        t: &Target,
        id: &str,
        spec: &domain::TrainingSpec,
    ) -> Result<(), PluginError> {
        t.require(Feature::Training)?;
        let spec = bindings::training_spec_to_wit(spec);
        call!(
            self,
            t,
            id,
            mlgw_backend_training.call_validate_training(&spec)
        )
    }

    pub async fn submit_training(
        &self,
        t: &Target,
        id: &str,
        spec: &domain::TrainingSpec,
    ) -> Result<domain::BackendRef, PluginError> {
        t.require(Feature::Training)?;
        let scope = job_artifacts(spec);
        let spec = bindings::training_spec_to_wit(spec);
        call!(
            self,
            t,
            id,
            scope;
            mlgw_backend_training.call_submit_training(&spec)
        )
        .and_then(|r| bindings::ref_from_wit(r, self.bounds(t)))
    }

    pub async fn training_status(
        &self,
        t: &Target,
        id: &str,
        r: &domain::BackendRef,
    ) -> Result<domain::JobObservation, PluginError> {
        let r = bindings::ref_to_wit(r);
        call!(self, t, id, mlgw_backend_training.call_training_status(&r))
            .and_then(|s| bindings::job_status_from_wit(s, self.bounds(t)))
    }

    pub async fn cancel_training(
        &self,
        t: &Target,
        id: &str,
        r: &domain::BackendRef,
    ) -> Result<(), PluginError> {
        t.require(Feature::TrainingCancel)?;
        let r = bindings::ref_to_wit(r);
        call!(self, t, id, mlgw_backend_training.call_cancel_training(&r))
    }

    pub async fn training_logs(
        &self,
        t: &Target,
        id: &str,
        r: &domain::BackendRef,
        cursor: Option<&str>,
        max_lines: u32,
    ) -> Result<domain::LogPage, PluginError> {
        t.require(Feature::TrainingLogs)?;
        let r = bindings::ref_to_wit(r);
        call!(
            self,
            t,
            id,
            mlgw_backend_training.call_training_logs(&r, cursor, max_lines)
        )
        .and_then(|p| bindings::log_page_from_wit(p, max_lines, self.bounds(t)))
    }

    pub async fn validate_endpoint(
        &self,
        t: &Target,
        id: &str,
        rev: u32,
        spec: &domain::EndpointSpec,
    ) -> Result<(), PluginError> {
        t.require(Feature::Serving)?;
        let spec = bindings::endpoint_spec_to_wit(spec);
        call!(
            self,
            t,
            id,
            no_artifacts(),
            rev;
            mlgw_backend_serving.call_validate_endpoint(&spec)
        )
    }

    pub async fn deploy_endpoint(
        &self,
        t: &Target,
        id: &str,
        rev: u32,
        spec: &domain::EndpointSpec,
    ) -> Result<domain::BackendRef, PluginError> {
        t.require(Feature::Serving)?;
        let scope = endpoint_artifacts(spec);
        let spec = bindings::endpoint_spec_to_wit(spec);
        call!(
            self,
            t,
            id,
            scope,
            rev;
            mlgw_backend_serving.call_deploy_endpoint(&spec)
        )
        .and_then(|r| bindings::ref_from_wit(r, self.bounds(t)))
    }

    pub async fn endpoint_status(
        &self,
        t: &Target,
        id: &str,
        rev: u32,
        r: &domain::BackendRef,
    ) -> Result<bindings::EndpointObservation, PluginError> {
        let r = bindings::ref_to_wit(r);
        call!(self, t, id, no_artifacts(), rev; mlgw_backend_serving.call_describe_endpoint(&r))
            .and_then(|s| bindings::endpoint_status_from_wit(s, self.bounds(t)))
    }

    pub async fn update_endpoint(
        &self,
        t: &Target,
        id: &str,
        rev: u32,
        r: &domain::BackendRef,
        spec: &domain::EndpointSpec,
    ) -> Result<domain::BackendRef, PluginError> {
        t.require(Feature::ServingUpdate)?;
        if spec.canary_percent.is_some() {
            t.require(Feature::Canary)?;
        }
        let scope = endpoint_artifacts(spec);
        let r = bindings::ref_to_wit(r);
        let spec = bindings::endpoint_spec_to_wit(spec);
        call!(
            self,
            t,
            id,
            scope,
            rev;
            mlgw_backend_serving.call_update_endpoint(&r, &spec)
        )
        .and_then(|r| bindings::ref_from_wit(r, self.bounds(t)))
    }

    pub async fn delete_endpoint(
        &self,
        t: &Target,
        id: &str,
        rev: u32,
        r: &domain::BackendRef,
    ) -> Result<(), PluginError> {
        let r = bindings::ref_to_wit(r);
        call!(self, t, id, no_artifacts(), rev; mlgw_backend_serving.call_delete_endpoint(&r))
    }

    pub async fn endpoint_route(
        &self,
        t: &Target,
        id: &str,
        rev: u32,
        r: &domain::BackendRef,
    ) -> Result<domain::Route, PluginError> {
        let r = bindings::ref_to_wit(r);
        call!(self, t, id, no_artifacts(), rev; mlgw_backend_serving.call_endpoint_route(&r))
            .and_then(|r| bindings::route_from_wit(r, self.bounds(t)))
    }
}

/// Where a plugin's component comes from.
enum PluginSource {
    File(std::path::PathBuf),
    Bundled(&'static [u8]),
    Missing,
}

/// `[plugins] name = "path"` wins over the bundled plugin of that name.
fn plugin_source(config: &Config, name: &str) -> PluginSource {
    match config.plugins.get(name) {
        Some(path) => PluginSource::File(path.clone()),
        None => mlgw_plugin_artifacts::bundled()
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(PluginSource::Missing, |(_, b)| PluginSource::Bundled(b)),
    }
}

/// The capabilities one target is granted, connected.
struct Granted {
    process: Option<Arc<ProcessCapability>>,
    kube: Option<Arc<KubeCapability>>,
    sagemaker: Option<Arc<SagemakerCapability>>,
}

async fn connect_grants(
    config: &Config,
    store: &crate::store::Store,
    name: &str,
    t: &crate::config::TargetConfig,
) -> anyhow::Result<Granted> {
    let process = match &t.grants.process {
        Some(g) => Some(Arc::new(ProcessCapability::new(
            name,
            &config.process_root(name, g),
            g,
            store.tree(&format!("processes/{name}"))?,
        )?)),
        None => None,
    };
    // Building a client reads and parses the system's root certificates: CPU work, so each
    // client is built on a task of its own and the targets' clients are built side by side.
    let kube = t.grants.kube.clone().map(|g| {
        let name = name.to_string();
        tokio::spawn(async move { KubeCapability::connect(&name, &g).await })
    });
    let sagemaker = t.grants.sagemaker.clone().map(|g| {
        let name = name.to_string();
        tokio::spawn(async move { SagemakerCapability::connect(&name, &g).await })
    });
    let joined = |e: tokio::task::JoinError| anyhow::anyhow!("target {name}: connecting: {e}");
    Ok(Granted {
        process,
        kube: match kube {
            Some(h) => Some(Arc::new(h.await.map_err(joined)??)),
            None => None,
        },
        sagemaker: match sagemaker {
            Some(h) => Some(Arc::new(h.await.map_err(joined)??)),
            None => None,
        },
    })
}

/// One ticker for the whole engine; stores measure their deadlines against it.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("mlgw-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .expect("spawning the epoch ticker thread");
}
