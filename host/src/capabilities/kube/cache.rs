//! A watch-backed cache of the objects a kube target's plugin reads, so a status poll costs
//! no API request: per granted kind and namespace, one watch (the reflector pattern, on
//! kube's `watcher`, which relists and resumes by itself) over the objects labelled with the
//! target (`mlgw.dev/target=<target>`, which the bundled plugins put on every object and pod).
//!
//! `get` and `list` answer from it once its first list has arrived; anything it cannot answer
//! exactly (not synced yet, an object it does not hold, a selector it cannot evaluate, a page
//! token) goes to the API server as before, so plugins see no difference but cost. An event on
//! an object wakes the record that owns it (`mlgw.dev/job-id` or `mlgw.dev/endpoint-id`), so
//! the reconciler acts on changes instead of polling for them.
//!
//! While the watch is refused (403: the grant's RBAC does not allow it, or an API server that
//! has just started and not yet loaded its RBAC refuses everyone) that kind and namespace is
//! read directly, as without a cache, and the watch is asked again at the watcher's backoff
//! (at most every 30 s): a refusal of a moment must not turn the cache off for good.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

/// The labels whose value names the gateway record an object belongs to.
pub const OWNER_LABELS: [&str; 2] = ["mlgw.dev/job-id", "mlgw.dev/endpoint-id"];
pub const TARGET_LABEL: &str = "mlgw.dev/target";

/// Record ids whose objects changed since the reconciler last looked.
#[derive(Default)]
pub struct Wakeups {
    ids: Mutex<HashSet<String>>,
    /// Every record an event has been seen for: only these can be trusted to be woken when
    /// their objects change (an object without the labels never is).
    watched: Mutex<HashSet<String>>,
    notify: tokio::sync::Notify,
}

impl Wakeups {
    pub fn wake(&self, id: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        self.notify.notify_one();
    }

    /// Whether `id`'s objects are in the watch (an event for them has arrived).
    pub fn is_watched(&self, id: &str) -> bool {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Forgets records that ended, so the set stays the size of what is live.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id| live(id));
    }

    /// Waits until some record was woken, then takes every woken id.
    pub async fn next(&self) -> Vec<String> {
        loop {
            {
                let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
                if !ids.is_empty() {
                    return ids.drain().collect();
                }
            }
            self.notify.notified().await;
        }
    }
}

#[derive(Default)]
struct Entry {
    objects: RwLock<Objects>,
    synced: AtomicBool,
    /// No watch runs (no async runtime to run it on).
    disabled: AtomicBool,
}

struct Cached {
    labels: BTreeMap<String, String>,
    json: Arc<str>,
}

/// One kind's objects in one namespace, indexed by label: a plugin lists a job's objects by
/// a label on every status poll (its owner label, or the label its controller puts on the
/// pods, such as `batch.kubernetes.io/job-name`), and a scan of every object per list made a
/// resync of n live jobs cost n² label comparisons (with 10,000 running jobs on KWOK, first
/// 65 % of the gateway's core in the scan by owner label, then 30 % in the scan by job name).
#[derive(Default)]
struct Objects {
    /// name → the object as the API server sent it, serialised once per change.
    by_name: BTreeMap<String, Cached>,
    /// `(label, value)` → the names of the objects carrying it.
    by_label: HashMap<(String, String), BTreeSet<String>>,
}

impl Objects {
    fn insert(&mut self, name: String, c: Cached) {
        self.remove(&name);
        for (l, v) in &c.labels {
            self.by_label
                .entry((l.clone(), v.clone()))
                .or_default()
                .insert(name.clone());
        }
        self.by_name.insert(name, c);
    }

    fn remove(&mut self, name: &str) {
        let Some(old) = self.by_name.remove(name) else {
            return;
        };
        for (l, v) in old.labels {
            let key = (l, v);
            if let Some(names) = self.by_label.get_mut(&key) {
                names.remove(name);
                if names.is_empty() {
                    self.by_label.remove(&key);
                }
            }
        }
    }

    fn from_map(fresh: BTreeMap<String, Cached>) -> Self {
        let mut o = Self::default();
        for (name, c) in fresh {
            o.insert(name, c);
        }
        o
    }

    /// The objects whose labels hold every term, in name order: those of the term that the
    /// fewest objects carry, checked against the others.
    fn matching<'a>(&'a self, terms: &'a [(String, String)]) -> Vec<&'a Cached> {
        let all = |c: &&Cached| terms.iter().all(|(k, v)| c.labels.get(k) == Some(v));
        if terms.is_empty() {
            return self.by_name.values().collect();
        }
        let mut fewest: Option<&BTreeSet<String>> = None;
        for (k, v) in terms {
            // No object carries this term: nothing matches.
            let Some(names) = self.by_label.get(&(k.clone(), v.clone())) else {
                return Vec::new();
            };
            if fewest.is_none_or(|f| names.len() < f.len()) {
                fewest = Some(names);
            }
        }
        fewest
            .into_iter()
            .flatten()
            .filter_map(|n| self.by_name.get(n))
            .filter(all)
            .collect()
    }
}

pub struct Cache {
    target: String,
    entries: Mutex<HashMap<(String, String), Arc<Entry>>>,
    wakeups: Arc<Wakeups>,
}

/// What the cache can say about a `get` or a `list`.
pub enum Answer {
    Hit(Arc<str>),
    /// Ask the API server.
    Miss,
}

impl Cache {
    pub fn new(target: &str) -> Self {
        Self {
            target: target.into(),
            entries: Mutex::new(HashMap::new()),
            wakeups: Arc::new(Wakeups::default()),
        }
    }

    pub fn wakeups(&self) -> Arc<Wakeups> {
        self.wakeups.clone()
    }

    /// The entry for a kind in a namespace, its watch started on first use.
    fn entry(
        &self,
        key: &str,
        namespace: &str,
        api: impl FnOnce() -> Api<DynamicObject>,
    ) -> Arc<Entry> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.get(&(key.to_string(), namespace.to_string())) {
            return e.clone();
        }
        let entry = Arc::new(Entry::default());
        entries.insert((key.to_string(), namespace.to_string()), entry.clone());
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(run(
                api(),
                format!("{TARGET_LABEL}={}", self.target),
                entry.clone(),
                self.wakeups.clone(),
                format!("{} {key} in {namespace}", self.target),
            ));
        } else {
            entry.disabled.store(true, Ordering::Relaxed);
        }
        entry
    }

    pub fn get(
        &self,
        key: &str,
        namespace: &str,
        name: &str,
        api: impl FnOnce() -> Api<DynamicObject>,
    ) -> Answer {
        let e = self.entry(key, namespace, api);
        if !e.usable() {
            return Answer::Miss;
        }
        match e
            .objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_name
            .get(name)
        {
            Some(c) => Answer::Hit(c.json.clone()),
            None => Answer::Miss,
        }
    }

    /// A whole list answer (`{"kind": "<Kind>List", "items": [...]}`) where the selector is
    /// equality terms naming the target or an owner: the objects such a selector can match
    /// all carry the target's label, so the cache holds every one of them.
    pub fn list(
        &self,
        key: &str,
        kind: &str,
        namespace: &str,
        selector: &str,
        api: impl FnOnce() -> Api<DynamicObject>,
    ) -> Answer {
        let Some(terms) = equality_terms(selector) else {
            return Answer::Miss;
        };
        let covered = terms.iter().any(|(k, v)| {
            (k == TARGET_LABEL && *v == self.target) || OWNER_LABELS.contains(&k.as_str())
        });
        if !covered {
            return Answer::Miss;
        }
        let e = self.entry(key, namespace, api);
        if !e.usable() {
            return Answer::Miss;
        }
        let objects = e.objects.read().unwrap_or_else(|p| p.into_inner());
        let items: Vec<&str> = objects
            .matching(&terms)
            .into_iter()
            .map(|c| &*c.json)
            .collect();
        let api_version = key.rsplit_once('/').map(|(v, _)| v).unwrap_or("v1");
        Answer::Hit(
            format!(
                r#"{{"apiVersion":"{api_version}","kind":"{kind}List","metadata":{{}},"items":[{}]}}"#,
                items.join(",")
            )
            .into(),
        )
    }
}

impl Entry {
    fn usable(&self) -> bool {
        self.synced.load(Ordering::Acquire) && !self.disabled.load(Ordering::Relaxed)
    }
}

/// `a=b,c==d` as pairs; None for anything else (set-based terms, `!=`, existence).
fn equality_terms(selector: &str) -> Option<Vec<(String, String)>> {
    if selector.trim().is_empty() {
        return None;
    }
    selector
        .split(',')
        .map(|t| {
            let t = t.trim();
            if t.contains("!=") || t.contains(' ') {
                return None;
            }
            let (k, v) = t.split_once("==").or_else(|| t.split_once('='))?;
            (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn owner(labels: &BTreeMap<String, String>) -> Option<&String> {
    OWNER_LABELS.iter().find_map(|l| labels.get(*l))
}

fn cached(o: &DynamicObject) -> Option<(String, Cached)> {
    let name = o.metadata.name.clone()?;
    let json = serde_json::to_string(o).ok()?;
    Some((
        name,
        Cached {
            labels: o.metadata.labels.clone().unwrap_or_default(),
            json: json.into(),
        },
    ))
}

async fn run(
    api: Api<DynamicObject>,
    selector: String,
    entry: Arc<Entry>,
    wakeups: Arc<Wakeups>,
    what: String,
) {
    let config = watcher::Config::default().labels(&selector);
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut relist: BTreeMap<String, Cached> = BTreeMap::new();
    let mut refused = false;
    while let Some(ev) = events.next().await {
        match ev {
            Ok(Event::Init) => relist.clear(),
            Ok(Event::InitApply(o)) => {
                if let Some((name, c)) = cached(&o) {
                    relist.insert(name, c);
                }
            }
            Ok(Event::InitDone) => {
                let fresh = std::mem::take(&mut relist);
                // After a (re)list every owner is woken: whatever changed while the watch was
                // down — a job that finished, an object deleted — is looked at now.
                let mut objects = entry.objects.write().unwrap_or_else(|p| p.into_inner());
                for c in objects.by_name.values().chain(fresh.values()) {
                    if let Some(id) = owner(&c.labels) {
                        wakeups.wake(id);
                    }
                }
                *objects = Objects::from_map(fresh);
                drop(objects);
                entry.synced.store(true, Ordering::Release);
                if std::mem::take(&mut refused) {
                    tracing::info!(cache = %what, "watch allowed again, synced");
                } else {
                    tracing::debug!(cache = %what, "synced");
                }
            }
            Ok(Event::Apply(o)) => {
                if let Some((name, c)) = cached(&o) {
                    let id = owner(&c.labels).cloned();
                    entry
                        .objects
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name, c);
                    if let Some(id) = id {
                        wakeups.wake(&id);
                    }
                }
            }
            Ok(Event::Delete(o)) => {
                if let Some(name) = &o.metadata.name {
                    entry
                        .objects
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(name);
                }
                if let Some(id) = o.metadata.labels.as_ref().and_then(owner) {
                    wakeups.wake(id);
                }
            }
            Err(e) => {
                // Until the watch recovers (kube relists or resumes by itself) the cache may
                // lag: answer from the API server meanwhile.
                entry.synced.store(false, Ordering::Release);
                if forbidden(&e) {
                    if !std::mem::replace(&mut refused, true) {
                        tracing::warn!(
                            cache = %what,
                            "watch not allowed, reading directly and asking again: {e}"
                        );
                    }
                    continue;
                }
                tracing::debug!(cache = %what, "watch interrupted: {e}");
            }
        }
    }
}

fn forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403 || s.code == 401,
        watcher::Error::WatchError(s) => s.code == 403 || s.code == 401,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object whose JSON is its name, so a list answer's order is easy to read.
    fn obj(name: &str, job: Option<&str>, extra: &[(&str, &str)]) -> (String, Cached) {
        let mut labels: BTreeMap<String, String> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert(TARGET_LABEL.into(), "t".into());
        if let Some(j) = job {
            labels.insert(OWNER_LABELS[0].into(), j.into());
        }
        let json = name.into();
        (name.to_string(), Cached { labels, json })
    }

    fn names(o: &Objects, selector: &str) -> Vec<String> {
        let terms = equality_terms(selector).unwrap();
        o.matching(&terms)
            .iter()
            .map(|c| c.json.to_string())
            .collect()
    }

    #[test]
    fn a_label_selector_is_answered_from_the_label_index_exactly() {
        let mut o = Objects::from_map(BTreeMap::from([
            obj("a", Some("j-1"), &[("role", "worker")]),
            obj("b", Some("j-1"), &[("role", "master")]),
            obj("c", Some("j-2"), &[]),
            obj("d", None, &[]),
        ]));
        assert_eq!(names(&o, "mlgw.dev/job-id=j-1"), ["a", "b"]);
        assert_eq!(names(&o, "mlgw.dev/job-id=j-1,role=master"), ["b"]);
        assert_eq!(names(&o, "mlgw.dev/job-id=j-3"), Vec::<String>::new());
        assert_eq!(names(&o, "mlgw.dev/target=t"), ["a", "b", "c", "d"]);
        assert_eq!(names(&o, "role=worker,mlgw.dev/target=t"), ["a"]);
        assert_eq!(
            names(&o, "role=worker,mlgw.dev/job-id=j-2"),
            Vec::<String>::new()
        );
        assert_eq!(names(&o, "role=none"), Vec::<String>::new());
        // An object relabelled to another owner moves; a deleted one leaves the index.
        let (name, c) = obj("a", Some("j-2"), &[]);
        o.insert(name, c);
        o.remove("c");
        assert_eq!(names(&o, "mlgw.dev/job-id=j-1"), ["b"]);
        assert_eq!(names(&o, "mlgw.dev/job-id=j-2"), ["a"]);
        o.remove("b");
        assert!(
            !o.by_label
                .contains_key(&(OWNER_LABELS[0].to_string(), "j-1".to_string()))
        );
        assert!(
            !o.by_label
                .contains_key(&("role".to_string(), "master".to_string()))
        );
    }

    #[test]
    fn only_equality_selectors_are_evaluated() {
        assert_eq!(
            equality_terms("mlgw.dev/job-id=j-1, a==b").unwrap(),
            vec![
                ("mlgw.dev/job-id".to_string(), "j-1".to_string()),
                ("a".to_string(), "b".to_string())
            ]
        );
        for other in ["", "a!=b", "a in (b)", "!a", "a"] {
            assert!(equality_terms(other).is_none(), "{other:?}");
        }
    }
}
