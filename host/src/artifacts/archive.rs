//! Directory artifacts are tar archives, gzip-compressed or not, and are checked when they are
//! uploaded so that unpacking one on any target stays inside the directory it is unpacked in:
//! relative entry paths without "..", links that resolve inside the archive (through its own
//! links too), nothing written through a link, no devices or FIFOs, and no more than the
//! unpacked limit in all.
//!
//! Two passes over the spooled file, both with the `tar` crate an unpacker uses as well:
//! first raw headers, to bound the extension headers the crate would otherwise read whole into
//! memory and to refuse a PAX size that disagrees with its header (two parsers could then see
//! two different archives); then the entries as an unpacker sees them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use tar::EntryType;

use super::{ArtifactError, invalid};

/// Entries (extension headers included) an archive may hold.
const MAX_ENTRIES: usize = 100_000;
/// A GNU long name or PAX header larger than this is no honest archive.
const MAX_EXTENSION_BYTES: u64 = 1 << 20;
const MAX_PATH_BYTES: usize = 4096;
/// As Linux: links followed through links, at most.
const MAX_LINK_DEPTH: usize = 40;

/// The archive's tar stream: gunzipped when its bytes start as gzip does. Unpackers of
/// directory artifacts read them through this, as the check did.
pub fn decoded<R: Read + Send + 'static>(r: R) -> std::io::Result<Box<dyn Read + Send>> {
    let mut r = BufReader::new(r);
    let gzip = r.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    })
}

fn refuse(reason: impl Into<String>) -> ArtifactError {
    invalid("chunk", reason)
}

fn entry_refused(path: &str, reason: impl std::fmt::Display) -> ArtifactError {
    refuse(format!("entry {path:?}: {reason}"))
}

fn corrupt(e: std::io::Error) -> ArtifactError {
    refuse(format!("not a readable tar archive (plain or gzip): {e}"))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir,
    File,
    Link(String),
}

/// Checks the archive at `path` (see the module comment).
pub fn check_file(path: &Path, max_unpacked: u64) -> Result<(), ArtifactError> {
    let open = || -> Result<Box<dyn Read + Send>, ArtifactError> {
        let f = File::open(path).map_err(|e| super::storage("reading an upload", e))?;
        decoded(f).map_err(corrupt)
    };
    if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(refuse("empty: a directory artifact is a tar archive"));
    }
    check_headers(open()?, max_unpacked)?;
    check_entries(open()?)
}

/// The first pass: every header as it is in the stream.
fn check_headers(r: impl Read, max_unpacked: u64) -> Result<(), ArtifactError> {
    let mut ar = tar::Archive::new(r);
    let entries = ar.entries().map_err(corrupt)?.raw(true);
    let (mut total, mut count) = (0u64, 0usize);
    let mut pax_size: Option<u64> = None;
    for e in entries {
        let mut e = e.map_err(corrupt)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(refuse(format!("more than {MAX_ENTRIES} entries")));
        }
        let t = e.header().entry_type();
        let size = e.header().entry_size().map_err(corrupt)?;
        if t.is_gnu_longname()
            || t.is_gnu_longlink()
            || t.is_pax_local_extensions()
            || t.is_pax_global_extensions()
        {
            if size > MAX_EXTENSION_BYTES {
                return Err(refuse(format!(
                    "an extended header of {size} bytes (at most {MAX_EXTENSION_BYTES})"
                )));
            }
            if t.is_pax_local_extensions() {
                let mut buf = Vec::with_capacity(size as usize);
                (&mut e).take(size).read_to_end(&mut buf).map_err(corrupt)?;
                pax_size = pax_value(&buf, "size")
                    .map(|v| {
                        v.parse::<u64>()
                            .map_err(|_| refuse(format!("a PAX size of {v:?}")))
                    })
                    .transpose()?;
            }
            continue;
        }
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        if t.is_gnu_sparse() {
            return Err(entry_refused(&name, "a sparse file (not supported)"));
        }
        if let Some(p) = pax_size.take()
            && p != size
        {
            return Err(entry_refused(
                &name,
                format!("its PAX size ({p}) disagrees with its header ({size})"),
            ));
        }
        total = total.saturating_add(size);
        if total > max_unpacked {
            return Err(refuse(format!(
                "unpacks to more than the gateway's limit of {max_unpacked} bytes (artifacts.max_unpacked_bytes)"
            )));
        }
    }
    Ok(())
}

fn pax_value<'a>(ext: &'a [u8], key: &str) -> Option<&'a str> {
    tar::PaxExtensions::new(ext)
        .filter_map(Result::ok)
        .find(|x| x.key_bytes() == key.as_bytes())
        .and_then(|x| x.value().ok())
}

/// An entry or link path as components, refusing what leaves the directory.
fn components(p: &str) -> Result<Vec<String>, &'static str> {
    if p.starts_with('/') {
        return Err("an absolute path");
    }
    let mut out = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("a \"..\" component leaves the directory"),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// The second pass: entries as an unpacker sees them (long names and PAX paths applied).
fn check_entries(r: impl Read) -> Result<(), ArtifactError> {
    let mut ar = tar::Archive::new(r);
    let mut nodes: BTreeMap<Vec<String>, Node> = BTreeMap::new();
    let mut links: BTreeSet<Vec<String>> = BTreeSet::new();
    for e in ar.entries().map_err(corrupt)? {
        let e = e.map_err(corrupt)?;
        let raw = e.path_bytes();
        let Ok(name) = std::str::from_utf8(&raw) else {
            return Err(entry_refused(
                &String::from_utf8_lossy(&raw),
                "a name that is not UTF-8",
            ));
        };
        let name = name.to_string();
        if name.len() > MAX_PATH_BYTES || name.contains('\0') {
            return Err(entry_refused(&name, "a name that is too long or holds NUL"));
        }
        let path = components(&name).map_err(|why| entry_refused(&name, why))?;
        let t = e.header().entry_type();
        let node = match t {
            EntryType::Regular | EntryType::Continuous => Node::File,
            EntryType::Directory => Node::Dir,
            EntryType::Symlink | EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(entry_refused(&name, "a link without a target"));
                }
                if target.starts_with('/') {
                    return Err(entry_refused(
                        &name,
                        format!("a link out of the directory (to the absolute path {target:?})"),
                    ));
                }
                if t == EntryType::Link {
                    // A hard link names another member by its path in the archive.
                    let to = components(&target).map_err(|why| {
                        entry_refused(&name, format!("a hard link to {target:?}: {why}"))
                    })?;
                    if nodes.get(&to) != Some(&Node::File) {
                        return Err(entry_refused(
                            &name,
                            format!(
                                "a hard link to {target:?}, which is not a file earlier in the archive"
                            ),
                        ));
                    }
                    Node::File
                } else {
                    Node::Link(target)
                }
            }
            EntryType::XGlobalHeader => continue,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(entry_refused(&name, "a device or FIFO"));
            }
            other => {
                return Err(entry_refused(
                    &name,
                    format!("an entry of type {other:?} (only files, directories and links)"),
                ));
            }
        };
        if path.is_empty() {
            // "./" itself.
            if node != Node::Dir {
                return Err(entry_refused(
                    &name,
                    "the directory itself as a non-directory",
                ));
            }
            continue;
        }
        if let Some(before) = nodes.get(&path)
            && std::mem::discriminant(before) != std::mem::discriminant(&node)
        {
            return Err(entry_refused(
                &name,
                "appears twice, as different kinds of entry",
            ));
        }
        if matches!(node, Node::Link(_)) {
            links.insert(path.clone());
        }
        nodes.insert(path, node);
    }
    for (path, node) in &nodes {
        let shown = path.join("/");
        // Unpacking below a link would write wherever the link points.
        for i in 1..path.len() {
            if links.contains(&path[..i]) {
                return Err(entry_refused(
                    &shown,
                    format!("below the link {:?}", path[..i].join("/")),
                ));
            }
        }
        if let Node::Link(target) = node {
            resolve(&nodes, &path[..path.len() - 1], target, 0).map_err(|why| {
                entry_refused(&shown, format!("a link to {target:?}, which {why}"))
            })?;
        }
    }
    Ok(())
}

/// Where `target`, seen from the directory `from`, leads once every link of the archive on the
/// way is followed; refuses a way out of the root.
fn resolve(
    nodes: &BTreeMap<Vec<String>, Node>,
    from: &[String],
    target: &str,
    depth: usize,
) -> Result<Vec<String>, &'static str> {
    if depth > MAX_LINK_DEPTH {
        return Err("goes through too many links");
    }
    if target.starts_with('/') {
        return Err("is an absolute path");
    }
    let mut at = from.to_vec();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return Err("leads out of the directory");
                }
            }
            c => {
                at.push(c.to_string());
                if let Some(Node::Link(next)) = nodes.get(&at) {
                    let parent = at[..at.len() - 1].to_vec();
                    at = resolve(nodes, &parent, next, depth + 1)?;
                }
            }
        }
    }
    Ok(at)
}
