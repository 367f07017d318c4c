//! The real Kubernetes control plane the kube tests run against (tests/cluster/up): etcd,
//! kube-apiserver with token auth and RBAC, controller-manager, scheduler, KWOK nodes and the
//! Training Operator. Started once per test binary, or taken from `$MLGW_TEST_KUBECONFIG` when
//! the test runner already started it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Cluster {
    /// Cluster admin: for test setup and for checking what really happened.
    pub admin: PathBuf,
    /// The gateway's identity: the Role an in-cluster deployment grants in team-a.
    pub gateway: PathBuf,
    /// Read-only in team-a.
    pub readonly: PathBuf,
}

pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let admin = match std::env::var_os("MLGW_TEST_KUBECONFIG") {
            Some(p) => PathBuf::from(p),
            None => start(),
        };
        let dir = admin.parent().expect("kubeconfig directory").to_path_buf();
        let c = Cluster {
            gateway: dir.join("mlgw-gateway.kubeconfig"),
            readonly: dir.join("mlgw-readonly.kubeconfig"),
            admin,
        };
        for p in [&c.admin, &c.gateway, &c.readonly] {
            assert!(p.exists(), "{} is missing", p.display());
        }
        c
    })
}

fn start() -> PathBuf {
    let up = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/up");
    let out = Command::new(&up)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", up.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); see its output above",
        up.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().expect("up printed nothing").trim())
}

/// A client acting as `kubeconfig`'s identity.
pub async fn client(kubeconfig: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("reading kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("kube client")
}

/// A name no earlier run against the same (reused) cluster has taken.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{:x}{:x}-{}",
        std::process::id(),
        nanos >> 12,
        N.fetch_add(1, Ordering::Relaxed)
    )
}
