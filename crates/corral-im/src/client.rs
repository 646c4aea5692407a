//! A typed client of the instance manager's gRPC API (used by the manager).
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};

use crate::error::{from_status, ErrorKind, ImError, Result};
use crate::pb::instance_manager_client::InstanceManagerClient;
use crate::pb::{
    InfoRequest, InfoResponse, Instance, ListRequest, LogsRequest, NameRequest, StartRequest, WatchRequest,
};

/// Client of one instance manager. Cheap to clone; connects lazily and reconnects by itself.
#[derive(Clone)]
pub struct ImClient {
    url: String,
    inner: InstanceManagerClient<Channel>,
}

impl ImClient {
    /// A client for `http://host:port`. Does not connect yet.
    pub fn new(url: &str) -> Result<ImClient> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| {
                ImError::new(ErrorKind::InvalidArgument, "connect", "", format!("bad url {url}: {e}"))
            })?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        Ok(ImClient { url: url.to_string(), inner: InstanceManagerClient::new(endpoint.connect_lazy()) })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn start(&self, req: StartRequest) -> Result<Instance> {
        let name = req.name.clone();
        self.inner
            .clone()
            .start(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| from_status("start", &name, s))
    }

    pub async fn stop(&self, name: &str) -> Result<Instance> {
        let req = NameRequest { name: name.to_string() };
        self.inner.clone().stop(req).await.map(|r| r.into_inner()).map_err(|s| from_status("stop", name, s))
    }

    pub async fn delete(&self, name: &str) -> Result<Instance> {
        let req = NameRequest { name: name.to_string() };
        self.inner
            .clone()
            .delete(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| from_status("delete", name, s))
    }

    pub async fn get(&self, name: &str) -> Result<Instance> {
        let req = NameRequest { name: name.to_string() };
        self.inner.clone().get(req).await.map(|r| r.into_inner()).map_err(|s| from_status("get", name, s))
    }

    pub async fn list(&self) -> Result<Vec<Instance>> {
        self.inner
            .clone()
            .list(ListRequest {})
            .await
            .map(|r| r.into_inner().instances)
            .map_err(|s| from_status("list", "", s))
    }

    /// Current state of every instance, then each change.
    pub async fn watch(&self) -> Result<BoxStream<'static, Result<Instance>>> {
        let stream = self
            .inner
            .clone()
            .watch(WatchRequest {})
            .await
            .map_err(|s| from_status("watch", "", s))?
            .into_inner();
        Ok(stream.map(|r| r.map_err(|s| from_status("watch", "", s))).boxed())
    }

    pub async fn logs(&self, name: &str, lines: u32) -> Result<Vec<String>> {
        let req = LogsRequest { name: name.to_string(), lines };
        self.inner
            .clone()
            .logs(req)
            .await
            .map(|r| r.into_inner().lines)
            .map_err(|s| from_status("logs", name, s))
    }

    pub async fn info(&self) -> Result<InfoResponse> {
        self.inner
            .clone()
            .info(InfoRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| from_status("info", "", s))
    }
}
