//! Python projects: componentize-py (pinned, installed into the kit's
//! venv on first use) on `app.py` and `wit/`.

use std::{path::Path, process::Command};

use super::{
    COMPONENTIZE_PY_VERSION,
    tools::{ensure_pip_tool, ensure_venv, lock_tools, run},
};
use crate::kit::{KitError, Lang};

pub(super) fn build(dir: &Path, tmp: &Path) -> Result<(), KitError> {
    let tool = {
        let _installing = lock_tools()?;
        let venv = ensure_venv(Lang::Python)?;
        ensure_pip_tool(
            &venv,
            "componentize-py",
            COMPONENTIZE_PY_VERSION,
            "componentize-py",
        )?
    };
    run(Command::new(tool)
        .args([
            "-d",
            "wit",
            "-w",
            "plugin",
            "componentize",
            "-p",
            ".",
            "app",
            "-o",
        ])
        .arg(tmp)
        .current_dir(dir)
        // Keep bytecode caches out of the project.
        .env("PYTHONDONTWRITEBYTECODE", "1"))
}
