//! Choosing an instance type from the target's table by a spec's resources.
//!
//! An explicit `instance_type` must be in the table (the operator's table is also what users
//! may ask for) and must offer what the other resources ask; otherwise the smallest row that
//! offers every resource asked for wins, ordered by GPUs, then vCPUs, then memory, then table
//! order. A spec that asks for nothing gets the table's default. Jobs that ask for no GPUs only
//! get types without GPUs, unless the table has none.

use mlgw_plugin_sdk::{BackendError, Resources, invalid};

use crate::names::{listed, shown};
use crate::settings::{InstanceType, Settings};

/// A Kubernetes quantity ("2", "500m", "1.5", "4Gi", "4G", "1e9") in its base unit.
pub fn quantity(q: &str) -> Option<f64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let n: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * scale).filter(|v| v.is_finite() && *v >= 0.0)
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// "nvidia-tesla-t4" and "NVIDIA-A10G" name the table's "t4" and "a10g": a GPU type matches a
/// row when one of its words is the row's type.
fn gpu_type_matches(asked: &str, row: &InstanceType) -> bool {
    let Some(have) = &row.gpu_type else {
        return false;
    };
    let have = have.to_ascii_lowercase();
    asked
        .to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word == have)
}

struct Asked<'a> {
    prefix: &'a str,
    cpu: Option<f64>,
    memory_gib: Option<f64>,
    gpus: u32,
    gpu_type: Option<&'a str>,
}

impl Asked<'_> {
    fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }
}

fn asked<'a>(r: &'a Resources, prefix: &'a str) -> Result<Asked<'a>, BackendError> {
    let parse =
        |name: &str, q: &Option<String>, example: &str| -> Result<Option<f64>, BackendError> {
            match q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
                None => Ok(None),
                Some(q) => quantity(q).map(Some).ok_or_else(|| {
                    invalid(
                        format!("{prefix}.{name}"),
                        format!("{} is not a quantity (e.g. {example})", shown(q)),
                    )
                }),
            }
        };
    let cpu = parse("cpu", &r.cpu, "\"2\" or \"500m\"")?;
    let memory_gib = parse("memory", &r.memory, "\"16Gi\"")?.map(|bytes| bytes / GIB);
    let gpu_type = r
        .gpu_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if gpu_type.is_some() && r.gpus == 0 {
        return Err(invalid(
            format!("{prefix}.gpu_type"),
            "names a GPU type but gpus is 0: ask for at least one GPU",
        ));
    }
    Ok(Asked {
        prefix,
        cpu,
        memory_gib,
        gpus: r.gpus,
        gpu_type,
    })
}

/// The instance type for `r`; `prefix` is the resources' field path ("resources").
pub fn choose<'s>(
    settings: &'s Settings,
    r: &Resources,
    prefix: &str,
) -> Result<&'s InstanceType, BackendError> {
    let a = asked(r, prefix)?;
    let table = &settings.instance_types;
    if let Some(t) = r
        .instance_type
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let row = settings.instance(t).ok_or_else(|| {
            invalid(
                a.field("instance_type"),
                format!(
                    "{} is not an instance type this target offers; it offers {}",
                    shown(t),
                    listed(table.iter().map(|r| r.instance_type.as_str()), 24)
                ),
            )
        })?;
        return fits(&a, row).map(|()| row);
    }
    if a.cpu.is_none() && a.memory_gib.is_none() && a.gpus == 0 {
        return Ok(settings.default_instance());
    }

    let mut rows: Vec<&InstanceType> = if a.gpus > 0 {
        let typed: Vec<&InstanceType> = match a.gpu_type {
            Some(t) => table.iter().filter(|r| gpu_type_matches(t, r)).collect(),
            None => table.iter().filter(|r| r.gpus > 0).collect(),
        };
        if typed.is_empty() {
            let mut types: Vec<&str> = Vec::new();
            for t in table.iter().filter_map(|r| r.gpu_type.as_deref()) {
                if !types.contains(&t) {
                    types.push(t);
                }
            }
            return Err(match a.gpu_type {
                Some(t) => invalid(
                    a.field("gpu_type"),
                    format!(
                        "no instance type of this target has {} GPUs; it has {}",
                        shown(t),
                        listed(types, 24)
                    ),
                ),
                None => invalid(
                    a.field("gpus"),
                    "this target offers no instance type with GPUs",
                ),
            });
        }
        let enough: Vec<&InstanceType> =
            typed.iter().copied().filter(|r| r.gpus >= a.gpus).collect();
        if enough.is_empty() {
            let most = typed.iter().map(|r| r.gpus).max().unwrap_or(0);
            return Err(invalid(
                a.field("gpus"),
                format!(
                    "no instance type of this target has {} GPUs{}; the most on one instance is {most} (use nodes for more)",
                    a.gpus,
                    a.gpu_type
                        .map(|t| format!(" of type {}", shown(t)))
                        .unwrap_or_default()
                ),
            ));
        }
        enough
    } else {
        let cpu_only: Vec<&InstanceType> = table.iter().filter(|r| r.gpus == 0).collect();
        if cpu_only.is_empty() {
            table.iter().collect()
        } else {
            cpu_only
        }
    };
    if let Some(cpu) = a.cpu {
        let most = rows.iter().map(|r| r.vcpu).max().unwrap_or(0);
        rows.retain(|r| f64::from(r.vcpu) >= cpu);
        if rows.is_empty() {
            return Err(invalid(
                a.field("cpu"),
                format!(
                    "no instance type of this target has {cpu} vCPUs{}; the most is {most}",
                    with_gpus(&a)
                ),
            ));
        }
    }
    if let Some(mem) = a.memory_gib {
        let most = rows.iter().map(|r| r.memory_gib).fold(0.0, f64::max);
        rows.retain(|r| r.memory_gib >= mem);
        if rows.is_empty() {
            return Err(invalid(
                a.field("memory"),
                format!(
                    "no instance type of this target has {} GiB of memory{}{}; the most is {most} GiB",
                    round2(mem),
                    a.cpu
                        .map(|c| format!(" with {c} vCPUs"))
                        .unwrap_or_default(),
                    with_gpus(&a)
                ),
            ));
        }
    }
    // min_by keeps the first of equals: table order breaks ties.
    Ok(rows
        .into_iter()
        .min_by(|x, y| {
            (x.gpus, x.vcpu)
                .cmp(&(y.gpus, y.vcpu))
                .then(x.memory_gib.total_cmp(&y.memory_gib))
        })
        .expect("rows is not empty"))
}

fn with_gpus(a: &Asked) -> String {
    if a.gpus == 0 {
        String::new()
    } else {
        format!(" and {} GPUs", a.gpus)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// An explicit instance type must offer what the rest of the resources ask for.
fn fits(a: &Asked, row: &InstanceType) -> Result<(), BackendError> {
    let t = &row.instance_type;
    if a.gpus > row.gpus {
        return Err(invalid(
            a.field("gpus"),
            format!("{t} has {} GPUs, not {}", row.gpus, a.gpus),
        ));
    }
    if let Some(g) = a.gpu_type
        && !gpu_type_matches(g, row)
    {
        return Err(invalid(
            a.field("gpu_type"),
            format!(
                "{t} has {} GPUs, not {}",
                row.gpu_type.as_deref().unwrap_or("no"),
                shown(g)
            ),
        ));
    }
    if let Some(cpu) = a.cpu
        && f64::from(row.vcpu) < cpu
    {
        return Err(invalid(
            a.field("cpu"),
            format!("{t} has {} vCPUs, not {cpu}", row.vcpu),
        ));
    }
    if let Some(mem) = a.memory_gib
        && row.memory_gib < mem
    {
        return Err(invalid(
            a.field("memory"),
            format!(
                "{t} has {} GiB of memory, not {}",
                row.memory_gib,
                round2(mem)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlgw_plugin_sdk::FieldError;

    fn res() -> Resources {
        Resources {
            cpu: None,
            memory: None,
            gpus: 0,
            gpu_type: None,
            instance_type: None,
            nodes: 1,
        }
    }

    fn pick(r: Resources) -> String {
        choose(&Settings::default(), &r, "resources")
            .unwrap()
            .instance_type
            .clone()
    }

    fn refused(settings: &Settings, r: Resources) -> FieldError {
        match choose(settings, &r, "resources") {
            Err(BackendError::InvalidSpec(f)) => f,
            other => panic!("expected invalid-spec, got {other:?}"),
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("1.5"), Some(1.5));
        assert_eq!(quantity("4Gi"), Some(4.0 * GIB));
        assert_eq!(quantity("4096Mi"), Some(4.0 * GIB));
        assert_eq!(quantity("4G"), Some(4e9));
        assert_eq!(quantity("1e3"), Some(1000.0));
        for bad in ["", "Gi", "4GB", "x", "1..2", "-1"] {
            assert_eq!(quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn nothing_asked_is_the_default() {
        assert_eq!(pick(res()), "ml.m5.large");
        let s = Settings {
            default_instance_type: "ml.c5.xlarge".into(),
            ..Settings::default()
        };
        assert_eq!(
            choose(&s, &res(), "resources").unwrap().instance_type,
            "ml.c5.xlarge"
        );
    }

    #[test]
    fn the_smallest_type_that_fits() {
        let with = |cpu: Option<&str>, mem: Option<&str>| Resources {
            cpu: cpu.map(Into::into),
            memory: mem.map(Into::into),
            ..res()
        };
        assert_eq!(pick(with(Some("500m"), None)), "ml.m5.large");
        assert_eq!(pick(with(Some("2"), None)), "ml.m5.large");
        assert_eq!(
            pick(with(Some("3"), None)),
            "ml.c5.xlarge",
            "4 vCPUs, and less memory"
        );
        // Same vCPUs: less memory is smaller.
        assert_eq!(pick(with(Some("4"), Some("8Gi"))), "ml.c5.xlarge");
        assert_eq!(pick(with(Some("4"), Some("9Gi"))), "ml.m5.xlarge");
        // Fewer vCPUs come first, memory decides between the rest.
        assert_eq!(pick(with(None, Some("32Gi"))), "ml.m5.2xlarge");
        assert_eq!(
            pick(with(None, Some("30G"))),
            "ml.m5.2xlarge",
            "30 GB is 27.9 GiB"
        );
        assert_eq!(pick(with(Some("40"), None)), "ml.m5.12xlarge");
        // A CPU job never lands on a GPU type, even one that would fit.
        assert_eq!(pick(with(Some("4"), Some("16Gi"))), "ml.m5.xlarge");
    }

    #[test]
    fn gpus_and_gpu_types() {
        let gpus = |n: u32, t: Option<&str>| Resources {
            gpus: n,
            gpu_type: t.map(Into::into),
            ..res()
        };
        assert_eq!(pick(gpus(1, None)), "ml.g4dn.xlarge");
        // Four GPUs on 32 vCPUs is smaller than four on 48: GPUs, then vCPUs, then memory.
        assert_eq!(pick(gpus(2, None)), "ml.p3.8xlarge");
        assert_eq!(pick(gpus(2, Some("t4"))), "ml.g4dn.12xlarge");
        assert_eq!(pick(gpus(1, Some("a10g"))), "ml.g5.xlarge");
        assert_eq!(pick(gpus(1, Some("NVIDIA-A10G"))), "ml.g5.xlarge");
        assert_eq!(pick(gpus(1, Some("nvidia-tesla-v100"))), "ml.p3.2xlarge");
        assert_eq!(pick(gpus(8, Some("a100"))), "ml.p4d.24xlarge");
        assert_eq!(
            pick(Resources {
                cpu: Some("16".into()),
                ..gpus(1, Some("a10g"))
            }),
            "ml.g5.12xlarge"
        );
    }

    #[test]
    fn explicit_instance_types() {
        let t = |t: &str| Resources {
            instance_type: Some(t.into()),
            ..res()
        };
        assert_eq!(pick(t("ml.p3.2xlarge")), "ml.p3.2xlarge");
        let s = Settings::default();

        let f = refused(&s, t("ml.x1.huge"));
        assert_eq!(f.field, "resources.instance_type");
        assert!(
            f.reason
                .contains("\"ml.x1.huge\" is not an instance type this target offers"),
            "{}",
            f.reason
        );
        assert!(f.reason.contains("ml.m5.large"), "{}", f.reason);

        let f = refused(
            &s,
            Resources {
                gpus: 1,
                ..t("ml.m5.large")
            },
        );
        assert_eq!(f.field, "resources.gpus");
        assert_eq!(f.reason, "ml.m5.large has 0 GPUs, not 1");
        let f = refused(
            &s,
            Resources {
                gpus: 1,
                gpu_type: Some("a100".into()),
                ..t("ml.g5.xlarge")
            },
        );
        assert_eq!(f.field, "resources.gpu_type");
        let f = refused(
            &s,
            Resources {
                cpu: Some("8".into()),
                ..t("ml.m5.large")
            },
        );
        assert_eq!(f.field, "resources.cpu");
        let f = refused(
            &s,
            Resources {
                memory: Some("9Gi".into()),
                ..t("ml.m5.large")
            },
        );
        assert_eq!(f.field, "resources.memory");
        assert_eq!(f.reason, "ml.m5.large has 8 GiB of memory, not 9");
    }

    #[test]
    fn what_no_type_offers_names_the_resource() {
        let s = Settings::default();
        let f = refused(&s, Resources { gpus: 16, ..res() });
        assert_eq!(f.field, "resources.gpus");
        assert!(
            f.reason.contains("the most on one instance is 8"),
            "{}",
            f.reason
        );

        let f = refused(
            &s,
            Resources {
                gpus: 1,
                gpu_type: Some("mi300x".into()),
                ..res()
            },
        );
        assert_eq!(f.field, "resources.gpu_type");
        assert!(
            f.reason.contains("t4, a10g, v100, a100, h100"),
            "{}",
            f.reason
        );

        let f = refused(
            &s,
            Resources {
                gpu_type: Some("t4".into()),
                ..res()
            },
        );
        assert_eq!(f.field, "resources.gpu_type");

        let f = refused(
            &s,
            Resources {
                cpu: Some("512".into()),
                ..res()
            },
        );
        assert_eq!(f.field, "resources.cpu");
        assert!(f.reason.contains("the most is 96"), "{}", f.reason);

        let f = refused(
            &s,
            Resources {
                memory: Some("4Ti".into()),
                ..res()
            },
        );
        assert_eq!(f.field, "resources.memory");

        let f = refused(
            &s,
            Resources {
                cpu: Some("lots".into()),
                ..res()
            },
        );
        assert_eq!(f.field, "resources.cpu");

        let cpu_only = Settings {
            instance_types: Settings::default().instance_types[..2].to_vec(),
            ..Settings::default()
        };
        let f = refused(&cpu_only, Resources { gpus: 1, ..res() });
        assert_eq!(f.field, "resources.gpus");
        assert_eq!(f.reason, "this target offers no instance type with GPUs");
    }

    #[test]
    fn a_gpu_only_table_still_runs_cpu_jobs() {
        let gpu_only = Settings {
            instance_types: Settings::default()
                .instance_types
                .into_iter()
                .filter(|r| r.gpus > 0)
                .collect(),
            default_instance_type: "ml.g4dn.xlarge".into(),
            ..Settings::default()
        };
        let r = Resources {
            cpu: Some("8".into()),
            ..res()
        };
        assert_eq!(
            choose(&gpu_only, &r, "resources").unwrap().instance_type,
            "ml.g4dn.2xlarge"
        );
    }
}
