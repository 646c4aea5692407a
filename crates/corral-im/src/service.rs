//! The gRPC face of a [`Supervisor`], and a function to serve it.
use std::future::Future;

use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::error::{ErrorKind, ImError, Result};
use crate::pb::instance_manager_server::{InstanceManager, InstanceManagerServer};
use crate::pb::{
    InfoRequest, InfoResponse, Instance, ListRequest, ListResponse, LogsRequest, LogsResponse, NameRequest,
    StartRequest, WatchRequest,
};
use crate::Supervisor;

struct Service {
    supervisor: Supervisor,
}

#[tonic::async_trait]
impl InstanceManager for Service {
    async fn start(&self, req: Request<StartRequest>) -> Result<Response<Instance>, Status> {
        Ok(Response::new(self.supervisor.start(req.into_inner()).await?))
    }

    async fn stop(&self, req: Request<NameRequest>) -> Result<Response<Instance>, Status> {
        Ok(Response::new(self.supervisor.stop(&req.into_inner().name).await?))
    }

    async fn delete(&self, req: Request<NameRequest>) -> Result<Response<Instance>, Status> {
        Ok(Response::new(self.supervisor.delete(&req.into_inner().name).await?))
    }

    async fn get(&self, req: Request<NameRequest>) -> Result<Response<Instance>, Status> {
        Ok(Response::new(self.supervisor.get(&req.into_inner().name)?))
    }

    async fn list(&self, _req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Ok(Response::new(ListResponse { instances: self.supervisor.list() }))
    }

    type WatchStream = futures::stream::BoxStream<'static, Result<Instance, Status>>;

    async fn watch(&self, _req: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        // Subscribe before taking the snapshot so no change falls between the two.
        let rx = self.supervisor.subscribe();
        let current = futures::stream::iter(self.supervisor.list().into_iter().map(Ok));
        let changes = futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(instance) => Some((Ok(instance), Some(rx))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(Status::data_loss(format!("watcher fell {n} events behind; list again"))),
                    None,
                )),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(Response::new(current.chain(changes).boxed()))
    }

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<LogsResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(LogsResponse { lines: self.supervisor.logs(&req.name, req.lines as usize)? }))
    }

    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let cfg = self.supervisor.config();
        Ok(Response::new(InfoResponse {
            node: cfg.node.clone(),
            port_range_start: u32::from(*cfg.port_range.start()),
            port_range_end: u32::from(*cfg.port_range.end()),
        }))
    }
}

/// Serve the instance manager's gRPC API on `listener` until `shutdown` resolves. Stopping the
/// children is the caller's decision ([`Supervisor::shutdown`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    supervisor: Supervisor,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(InstanceManagerServer::new(Service { supervisor }))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ImError::new(ErrorKind::Io, "serve", "", e.to_string()).with_source(e))
}
