//! Shared by the FileService tests: a controller with a FileService, local
//! child contexts, and setting a file's times.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use ferrogen::connect::{self, ConnectSpec, ContextInfo, Method};
use ferrogen::files::window::Sizing;
use ferrogen::files::{FileService, FileServiceConfig};
use ferrogen::router::{Router, RouterConfig};
use ferrogen::service::Services;

/// An in-process controller serving files.
pub struct Ctl {
    pub router: Router,
    pub services: Services,
    pub fs: FileService,
}

/// A controller whose FileService uses a fixed `window` and `ack_timeout`.
pub fn ctl(window: u64, ack_timeout: Duration) -> Ctl {
    ctl_with(FileServiceConfig {
        sizing: Sizing::Fixed(window),
        ack_timeout,
        ..Default::default()
    })
}

/// A controller whose FileService uses `config`.
pub fn ctl_with(config: FileServiceConfig) -> Ctl {
    connect::local::set_child_program(env!("CARGO_BIN_EXE_ferrogen"));
    let router = Router::new(RouterConfig::controller());
    let services = Services::start(&router);
    let fs = FileService::start(&router, &services, config);
    Ctl {
        router,
        services,
        fs,
    }
}

/// Starts a local child context (through context `via`, if given).
pub async fn child(c: &Ctl, via: Option<u32>) -> ContextInfo {
    connect::connect(&c.router, &ConnectSpec::new(Method::Local), via)
        .await
        .expect("local child starts")
}

/// Sets both times of `p` (not following a symlink).
pub fn set_times(p: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}
