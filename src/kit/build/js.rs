//! JavaScript projects: componentize-js (pinned, installed with npm into
//! the kit's tool folder on first use) on `plugin.js` and `wit/`, without
//! `wasi:http`.

use std::{path::Path, process::Command};

use super::{
    COMPONENTIZE_JS_VERSION,
    tools::{lock_tools, missing, mkdir, run, which},
};
use crate::kit::{KitError, Lang, tools_dir};

pub(super) fn build(dir: &Path, tmp: &Path) -> Result<(), KitError> {
    let prefix = tools_dir().join(format!("componentize-js-{COMPONENTIZE_JS_VERSION}"));
    let tool = prefix.join("node_modules/.bin/componentize-js");
    let _installing = lock_tools()?;
    if !tool.is_file() {
        if which("node").is_none() || which("npm").is_none() {
            return Err(missing(
                "node and npm",
                Lang::Js,
                "install Node.js 18 or newer with npm (Debian: `apt-get install nodejs npm`)",
            ));
        }
        mkdir(&prefix)?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg(format!(
                "@bytecodealliance/componentize-js@{COMPONENTIZE_JS_VERSION}"
            )))?;
    }
    drop(_installing);
    run(Command::new(tool)
        .args([
            "plugin.js",
            "--wit",
            "wit",
            "--world-name",
            "plugin",
            // Without this the component imports wasi:http, which pylon
            // does not provide (outbound HTTP is pylon:plugin/http-client).
            "--disable",
            "http",
            "fetch-event",
            "-o",
        ])
        .arg(tmp)
        .current_dir(dir))
}
