//! The front door: one [`Controller`] per process owns the router (this
//! process is context 0), the service registry and the FileService;
//! [`Controller::connect`] starts a [`Context`] from a [`Target`] parsed
//! once (`target`), and [`Context`] is the handle for calls to it
//! (`context`); push and pull go through it (`transfer`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let controller = ferrogen::Controller::start();
//! let web1: ferrogen::Target = "ssh://deploy@web1".parse()?;
//! let ctx = controller.connect(&web1).await?;
//! println!("{} answers in {:?}", ctx.name(), ctx.ping().await?);
//! # Ok(()) }
//! ```
//!
//! Everything underneath stays reachable ([`Controller::router`],
//! [`Controller::services`], [`Controller::files`]) for what the front
//! door does not cover yet.

use crate::connect::{self, ConnectError};
use crate::files::{FileService, FileServiceConfig};
use crate::router::{Router, RouterConfig};
use crate::service::Services;
use crate::wire::ContextId;

mod context;
mod target;
mod transfer;

pub use context::Context;
pub use target::{Target, TargetError};
pub use transfer::{TransferError, TransferOptions};

/// This process as context 0: the router, services and FileService.
pub struct Controller {
    router: Router,
    services: Services,
    files: FileService,
}

impl Controller {
    /// Starts the controller's router, its service dispatcher and a
    /// FileService with the default (self-sizing) window. Must be called
    /// inside a tokio runtime.
    pub fn start() -> Controller {
        Controller::with_files(FileServiceConfig::default())
    }

    /// [`Controller::start`] with a FileService configuration of your own.
    pub fn with_files(config: FileServiceConfig) -> Controller {
        let router = Router::new(RouterConfig::controller());
        let services = Services::start(&router);
        crate::ping::register_service(&services, &router);
        let files = FileService::start(&router, &services, config);
        Controller {
            router,
            services,
            files,
        }
    }

    /// Starts a context for `target`, from this process.
    pub async fn connect(&self, target: &Target) -> Result<Context, ConnectError> {
        self.start_context(target, None).await
    }

    /// Starts a context for `target` from inside `via` (a bastion, or the
    /// host a `sudo:USER` target is on).
    pub async fn connect_via(
        &self,
        target: &Target,
        via: &Context,
    ) -> Result<Context, ConnectError> {
        self.start_context(target, Some(via.id())).await
    }

    async fn start_context(
        &self,
        target: &Target,
        via: Option<ContextId>,
    ) -> Result<Context, ConnectError> {
        let info = connect::connect(&self.router, &target.spec, via).await?;
        Ok(Context {
            info,
            router: self.router.clone(),
        })
    }

    /// The router (context 0).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The service registry: register services other contexts may call here.
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The FileService: register files and directories that contexts may fetch.
    pub fn files(&self) -> &FileService {
        &self.files
    }
}
