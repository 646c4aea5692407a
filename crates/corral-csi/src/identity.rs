//! The Identity service: the driver's name and version, its capabilities, and `Probe`, which is
//! ready only while the manager answers.
use tonic::{Request, Response, Status};

use crate::proto::identity_server::Identity;
use crate::proto::plugin_capability::{service, volume_expansion, Service, Type, VolumeExpansion};
use crate::proto::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse,
    PluginCapability, ProbeRequest, ProbeResponse,
};
use crate::{Driver, DRIVER_NAME};

#[tonic::async_trait]
impl Identity for Driver {
    async fn get_plugin_info(
        &self,
        _req: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: [("manager".to_string(), self.config.manager_url.clone())].into(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        let service =
            |t: service::Type| PluginCapability { r#type: Some(Type::Service(Service { r#type: t as i32 })) };
        // Offline expansion: the node's block device (a loop device over nbdfuse's file) keeps
        // the size the export had when it was staged, so a filesystem grows at its next stage.
        let capabilities = vec![
            service(service::Type::ControllerService),
            service(service::Type::VolumeAccessibilityConstraints),
            PluginCapability {
                r#type: Some(Type::VolumeExpansion(VolumeExpansion {
                    r#type: volume_expansion::Type::Offline as i32,
                })),
            },
        ];
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities }))
    }

    async fn probe(&self, _req: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        // Not ready (rather than an error) while the manager does not answer: the plugin itself is
        // healthy and needs no restart, it waits for its manager.
        let ready = self.api.health().await.is_ok();
        Ok(Response::new(ProbeResponse { ready: Some(ready) }))
    }
}
