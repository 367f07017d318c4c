//! The S3 store: `<prefix>/<tenant>/sha256/<hex>` objects carrying their record as user
//! metadata. A PUT is atomic in S3 (an object appears whole or not at all), so an upload cut
//! off on its way to the bucket leaves nothing there.

use std::collections::HashMap;
use std::io::Read;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::MetadataDirective;
use aws_smithy_http_client::tls;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::outputs::{self, OutputFile};
use super::{
    Artifact, ArtifactError, ArtifactKind, CHUNK_BYTES, Content, Meta, Spooled, pct_decode,
    pct_encode, storage,
};
use crate::config::S3StoreConfig;
use crate::domain::Millis;

const META_NAME: &str = "mlgw-name";
const META_KIND: &str = "mlgw-kind";
const META_SHA256: &str = "mlgw-sha256";

pub struct S3Store {
    client: Client,
    bucket: String,
    /// The configured prefix, with a '/' after it when it is not empty.
    prefix: String,
}

/// An S3 call's failure in the store's terms: unreachable is Unavailable (a retry may do),
/// anything S3 answered is the store's own failure, with S3's code and message.
fn s3_error<E, R>(what: &str, e: SdkError<E, R>) -> ArtifactError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let text = format!("{what}: {}", DisplayErrorContext(&e));
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            ArtifactError::Unavailable(text)
        }
        _ => ArtifactError::Storage(text),
    }
}

fn is_not_found<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 404)
}

fn millis(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Millis {
    t.and_then(|t| t.to_millis().ok())
        .map(|ms| ms.max(0) as Millis)
        .unwrap_or(0)
}

impl S3Store {
    pub async fn open(cfg: &S3StoreConfig) -> Result<Self, ArtifactError> {
        // rustls with ring, as kube's client already uses: no second crypto library to build.
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(r) = &cfg.region {
            loader = loader.region(Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(cfg.force_path_style)
            // The content is checked against its sha256 (sent as the object's checksum); the
            // SDK's extra trailing checksums are what S3-compatible servers most often lack.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            b = b.region(Region::from_static("us-east-1"));
        }
        if let Some(e) = &cfg.endpoint_url {
            b = b.endpoint_url(e);
        }
        let store = Self {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            prefix: if cfg.prefix.is_empty() {
                String::new()
            } else {
                format!("{}/", cfg.prefix)
            },
        };
        // A wrong bucket, endpoint or credential fails the start, not the first upload.
        store
            .client
            .head_bucket()
            .bucket(&store.bucket)
            .send()
            .await
            .map_err(|e| {
                s3_error(
                    &format!(
                        "artifacts.s3.bucket: bucket {:?} cannot be used",
                        store.bucket
                    ),
                    e,
                )
            })?;
        Ok(store)
    }

    fn key(&self, tenant: &str, hex: &str) -> String {
        format!("{}{tenant}/sha256/{hex}", self.prefix)
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The key below the prefix an `s3://` URI names, if it is in this bucket and prefix.
    pub fn key_of(&self, uri: &str) -> Option<String> {
        let rest = uri.strip_prefix("s3://")?.strip_prefix(&self.bucket)?;
        let rest = rest.strip_prefix('/')?.strip_prefix(&self.prefix)?;
        let rest = rest.trim_end_matches('/');
        (!rest.is_empty()
            && rest
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."))
        .then(|| rest.to_string())
    }

    fn artifact(&self, key: &str, meta: Meta) -> Artifact {
        Artifact {
            uri: self.uri(key),
            sha256: meta.sha256,
            size: meta.size,
            kind: meta.kind,
            name: meta.name,
            created_at: meta.created_at,
        }
    }

    fn user_metadata(meta: &Meta) -> HashMap<String, String> {
        HashMap::from([
            (META_NAME.to_string(), pct_encode(&meta.name)),
            (META_KIND.to_string(), meta.kind.as_str().to_string()),
            (META_SHA256.to_string(), meta.sha256.clone()),
        ])
    }

    async fn head(&self, key: &str, hex: &str) -> Result<Option<Meta>, ArtifactError> {
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(s3_error(&format!("reading {}", self.uri(key)), e)),
        };
        let md = out.metadata().cloned().unwrap_or_default();
        Ok(Some(Meta {
            sha256: hex.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            kind: md
                .get(META_KIND)
                .and_then(|k| ArtifactKind::parse(k))
                .unwrap_or(ArtifactKind::File),
            name: md.get(META_NAME).map(|n| pct_decode(n)).unwrap_or_default(),
            created_at: millis(out.last_modified()),
        }))
    }

    pub async fn put(
        &self,
        tenant: &str,
        spooled: Spooled,
        meta: Meta,
    ) -> Result<Artifact, ArtifactError> {
        let key = self.key(tenant, &meta.sha256);
        if let Some(existing) = self.head(&key, &meta.sha256).await? {
            if existing.kind == ArtifactKind::File && meta.kind == ArtifactKind::Directory {
                // Checked as a directory now: usable as one from now on. Same bytes, new
                // metadata: S3 only changes metadata by copying the object onto itself.
                let upgraded = Meta {
                    kind: ArtifactKind::Directory,
                    ..existing
                };
                self.client
                    .copy_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .copy_source(format!(
                        "{}/{}",
                        self.bucket,
                        key.split('/').map(pct_encode).collect::<Vec<_>>().join("/")
                    ))
                    .metadata_directive(MetadataDirective::Replace)
                    .set_metadata(Some(Self::user_metadata(&upgraded)))
                    .send()
                    .await
                    .map_err(|e| s3_error(&format!("updating {}", self.uri(&key)), e))?;
                return Ok(self.artifact(&key, upgraded));
            }
            return Ok(self.artifact(&key, existing));
        }
        let body = ByteStream::read_from()
            .path(&spooled.path)
            .length(Length::Exact(spooled.size))
            .buffer_size(CHUNK_BYTES)
            .build()
            .await
            .map_err(|e| storage("reading an upload", e))?;
        let digest = hex::decode(&spooled.sha256).map_err(|e| storage("digest", e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(body)
            .content_length(spooled.size as i64)
            // S3 checks what arrived against the digest the gateway computed.
            .checksum_sha256(base64::engine::general_purpose::STANDARD.encode(digest))
            .set_metadata(Some(Self::user_metadata(&meta)))
            .send()
            .await
            .map_err(|e| s3_error(&format!("storing {}", self.uri(&key)), e))?;
        drop(spooled);
        // The bucket's own clock says when it was created.
        let stored = self.head(&key, &meta.sha256).await?.unwrap_or(meta);
        Ok(self.artifact(&key, stored))
    }

    pub async fn stat(&self, tenant: &str, hex: &str) -> Result<Option<Artifact>, ArtifactError> {
        let key = self.key(tenant, hex);
        Ok(self.head(&key, hex).await?.map(|m| self.artifact(&key, m)))
    }

    async fn get(
        &self,
        tenant: &str,
        hex: &str,
    ) -> Result<Option<(Artifact, ByteStream)>, ArtifactError> {
        let key = self.key(tenant, hex);
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(s3_error(&format!("reading {}", self.uri(&key)), e)),
        };
        let md = out.metadata().cloned().unwrap_or_default();
        let meta = Meta {
            sha256: hex.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            kind: md
                .get(META_KIND)
                .and_then(|k| ArtifactKind::parse(k))
                .unwrap_or(ArtifactKind::File),
            name: md.get(META_NAME).map(|n| pct_decode(n)).unwrap_or_default(),
            created_at: millis(out.last_modified()),
        };
        Ok(Some((self.artifact(&key, meta), out.body)))
    }

    /// Any object the store's credentials can read, or every object under a prefix (a URI
    /// ending in '/'), as (path below the prefix, reader) pairs: a job's `s3://` inputs, a
    /// model published by another job. At most `max_objects`.
    pub async fn open_any(
        &self,
        uri: &str,
        max_objects: usize,
    ) -> Result<Vec<(String, Box<dyn Read + Send>)>, ArtifactError> {
        let (bucket, key) = uri
            .strip_prefix("s3://")
            .and_then(|r| r.split_once('/'))
            .filter(|(b, _)| !b.is_empty())
            .ok_or_else(|| super::invalid("uri", format!("{uri:?} is not s3://bucket/key")))?;
        let mut keys = Vec::new();
        if key.is_empty() || key.ends_with('/') {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(key)
                .into_paginator()
                .send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| s3_error(&format!("listing {uri}"), e))?;
                for obj in page.contents() {
                    if let Some(k) = obj.key().filter(|k| !k.ends_with('/')) {
                        keys.push(k.to_string());
                    }
                    if keys.len() > max_objects {
                        return Err(ArtifactError::Unsupported(format!(
                            "{uri} holds more than {max_objects} objects"
                        )));
                    }
                }
            }
            if keys.is_empty() {
                return Err(ArtifactError::NotFound(uri.to_string()));
            }
        } else {
            keys.push(key.to_string());
        }
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let rel = k.strip_prefix(key).unwrap_or("").trim_start_matches('/');
            // Paths below the prefix become paths below the destination: nothing that climbs.
            if rel.split('/').any(|s| s == ".." || s == ".") {
                return Err(super::invalid(
                    "uri",
                    format!("object key {k:?} is not a plain path"),
                ));
            }
            let body = match self.client.get_object().bucket(bucket).key(&k).send().await {
                Ok(o) => o.body,
                Err(e) if is_not_found(&e) => {
                    return Err(ArtifactError::NotFound(format!("s3://{bucket}/{k}")));
                }
                Err(e) => return Err(s3_error(&format!("reading s3://{bucket}/{k}"), e)),
            };
            let reader = Box::pin(body.into_async_read());
            out.push((
                rel.to_string(),
                Box::new(tokio_util::io::SyncIoBridge::new(reader)) as Box<dyn Read + Send>,
            ));
        }
        Ok(out)
    }

    pub async fn open_blocking(
        &self,
        tenant: &str,
        hex: &str,
    ) -> Result<Option<Box<dyn Read + Send>>, ArtifactError> {
        Ok(self.get(tenant, hex).await?.map(|(_, body)| {
            let reader = Box::pin(body.into_async_read());
            Box::new(tokio_util::io::SyncIoBridge::new(reader)) as Box<dyn Read + Send>
        }))
    }

    pub async fn download(
        &self,
        tenant: &str,
        hex: &str,
    ) -> Result<Option<(Artifact, Content)>, ArtifactError> {
        let Some((artifact, body)) = self.get(tenant, hex).await? else {
            return Ok(None);
        };
        let mut reader = Box::pin(body.into_async_read());
        let content = async_stream::stream! {
            loop {
                let mut buf = BytesMut::with_capacity(CHUNK_BYTES);
                match reader.read_buf(&mut buf).await {
                    Ok(0) => break,
                    Ok(_) => yield Ok::<Bytes, ArtifactError>(buf.freeze()),
                    Err(e) => {
                        yield Err(ArtifactError::Unavailable(format!("reading from the bucket: {e}")));
                        break;
                    }
                }
            }
        };
        Ok(Some((artifact, Box::pin(content))))
    }

    /// Every artifact of the tenant, as (created_at, digest).
    pub async fn list(&self, tenant: &str) -> Result<Vec<(Millis, String)>, ArtifactError> {
        let prefix = format!("{}{tenant}/sha256/", self.prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error(&format!("listing {}", self.uri(&prefix)), e))?;
            for obj in page.contents() {
                let Some(hex) = obj.key().and_then(|k| k.strip_prefix(&prefix)) else {
                    continue;
                };
                if super::parse_hex(hex).as_deref() == Some(hex) {
                    out.push((millis(obj.last_modified()), hex.to_string()));
                }
            }
        }
        Ok(out)
    }

    pub async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, ArtifactError> {
        let full = format!("{}{key}", self.prefix);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {
                return Err(ArtifactError::NotFound(self.uri(&full)));
            }
            Err(e) => return Err(s3_error(&format!("reading {}", self.uri(&full)), e)),
        }
        let cfg = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(|e| super::invalid("ttl", e.to_string()))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .presigned(cfg)
            .await
            .map_err(|e| s3_error(&format!("presigning {}", self.uri(&full)), e))?;
        Ok(req.uri().to_string())
    }

    /// Puts each file at `<prefix>/<tenant>/outputs/<name>/<rel>`.
    pub async fn publish(
        &self,
        tenant: &str,
        name: &str,
        src: &std::path::Path,
        files: Vec<OutputFile>,
    ) -> Result<String, ArtifactError> {
        let base = format!("{}{tenant}/outputs/{name}/", self.prefix);
        for f in files {
            let root = src.to_path_buf();
            let rel = f.rel.clone();
            let file = tokio::task::spawn_blocking(move || outputs::open(&root, &rel))
                .await
                .map_err(super::joined)??;
            let body = ByteStream::read_from()
                .file(tokio::fs::File::from_std(file))
                .length(Length::Exact(f.size))
                .buffer_size(CHUNK_BYTES)
                .build()
                .await
                .map_err(|e| storage(&format!("reading {}", f.rel), e))?;
            let key = format!("{base}{}", f.rel);
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .body(body)
                .content_length(f.size as i64)
                .send()
                .await
                .map_err(|e| s3_error(&format!("storing {}", self.uri(&key)), e))?;
        }
        Ok(self.uri(&base))
    }
}
