use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::pb::{self, artifact_service_server::ArtifactService, upload_request::Part};
use super::status::{field_status, to_status};
use crate::artifacts::ArtifactError;
use crate::domain::FieldError;
use crate::domain::validate::page_size;
use crate::gateway::{DEFAULT_TENANT, Gateway};

pub struct ArtifactApi {
    gw: Arc<Gateway>,
}

impl ArtifactApi {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn artifact_status(e: ArtifactError) -> Status {
    to_status(e.into())
}

#[tonic::async_trait]
impl ArtifactService for ArtifactApi {
    async fn upload(
        &self,
        req: Request<Streaming<pb::UploadRequest>>,
    ) -> Result<Response<pb::Artifact>, Status> {
        let mut messages = req.into_inner();
        let header = match messages.message().await? {
            Some(pb::UploadRequest {
                part: Some(Part::Header(h)),
            }) => h,
            _ => {
                return Err(field_status(FieldError::new(
                    "header",
                    "required: the first message of an upload is its header",
                )));
            }
        };
        let header = convert::upload_header(header).map_err(to_status)?;
        let chunks = messages.map(|m| match m {
            Ok(pb::UploadRequest {
                part: Some(Part::Chunk(c)),
            }) => Ok(Bytes::from(c)),
            Ok(pb::UploadRequest {
                part: Some(Part::Header(_)),
            }) => Err(ArtifactError::Invalid {
                field: "header".into(),
                reason: "sent again after the content began; an upload has one header".into(),
            }),
            Ok(pb::UploadRequest { part: None }) => Err(ArtifactError::Invalid {
                field: "part".into(),
                reason: "a message with neither a header nor a chunk".into(),
            }),
            Err(s) => Err(ArtifactError::Cancelled(s.message().to_string())),
        });
        let artifact = self
            .gw
            .artifacts
            .upload(DEFAULT_TENANT, header, Box::pin(chunks))
            .await
            .map_err(artifact_status)?;
        Ok(Response::new(convert::artifact(&artifact)))
    }

    async fn stat(
        &self,
        req: Request<pb::StatArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        let uri = req.into_inner().uri;
        let artifact = self
            .gw
            .artifacts
            .stat(DEFAULT_TENANT, &uri)
            .await
            .map_err(artifact_status)?;
        Ok(Response::new(convert::artifact(&artifact)))
    }

    type DownloadStream = Streamed<pb::ArtifactChunk>;

    async fn download(
        &self,
        req: Request<pb::DownloadArtifactRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let uri = req.into_inner().uri;
        let (_, content) = self
            .gw
            .artifacts
            .download(DEFAULT_TENANT, &uri)
            .await
            .map_err(artifact_status)?;
        Ok(Response::new(Box::pin(content.map(|c| {
            c.map(|data| pb::ArtifactChunk {
                data: data.to_vec(),
            })
            .map_err(artifact_status)
        }))))
    }

    async fn list(
        &self,
        req: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        let r = req.into_inner();
        let page_size = page_size(r.page_size).map_err(field_status)?;
        let token = (!r.page_token.is_empty()).then_some(r.page_token);
        let page = self
            .gw
            .artifacts
            .list(DEFAULT_TENANT, token.as_deref(), page_size)
            .await
            .map_err(artifact_status)?;
        Ok(Response::new(pb::ListArtifactsResponse {
            artifacts: page.artifacts.iter().map(convert::artifact).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
