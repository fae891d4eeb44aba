//! The `pylon plugin` subcommands: argument parsing and what each prints.
//! Results go to stdout, tool output and errors to stderr; the exit status
//! is 0 only when the command did everything it was asked (for `test`:
//! every case passed), so the commands fit in any build or test runner.

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use super::{KitError, Lang, build, cases, new};
use crate::error::ErrorChain;

/// `pylon plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Start a plugin project: sources, the contract (wit/), a README and
    /// test cases that pass as written.
    New {
        /// The plugin's name (lowercase letters, digits, dashes).
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: Lang,
        /// Where to create it (default: ./NAME). Must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a project into build/NAME.wasm and check it against the
    /// contract this pylon serves.
    Build {
        /// The project folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run test cases against a built plugin with pylon's plugin runtime,
    /// without a gateway. Exits non-zero if any case fails.
    Test {
        /// A project folder (its build/NAME.wasm and cases.toml), or a
        /// component file (then CASES is required).
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The case file (default: the project's cases.toml).
        cases: Option<PathBuf>,
    },
}

/// Run one `pylon plugin` command.
pub async fn run(command: PluginCommand) -> ExitCode {
    let result = match command {
        PluginCommand::New { name, lang, dir } => run_new(&name, lang, dir),
        PluginCommand::Build { dir } => run_build(dir).await,
        PluginCommand::Test { path, cases } => run_test(path, cases).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", ErrorChain(&err));
            ExitCode::FAILURE
        }
    }
}

fn run_new(name: &str, lang: Lang, dir: Option<PathBuf>) -> Result<ExitCode, KitError> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    let files = new::create(name, lang, &dir)?;
    println!(
        "created {} plugin `{name}` in {}:",
        lang.as_str(),
        dir.display()
    );
    for file in files {
        println!("  {}", file.display());
    }
    println!(
        "next: cd {} && pylon plugin build && pylon plugin test",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_build(dir: PathBuf) -> Result<ExitCode, KitError> {
    let built = tokio::task::spawn_blocking(move || build::build(&dir))
        .await
        .map_err(|e| KitError::Runtime(e.to_string()))??;
    println!(
        "built {} ({} bytes) in {:.1} s; loads as pylon:plugin@{}{} (compiled in {:.1} s)",
        built.component.display(),
        built.size,
        built.build_time.as_secs_f64(),
        built.contract,
        if built.uses_wasi {
            ", imports WASI"
        } else {
            ""
        },
        built.compile_time.as_secs_f64(),
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_test(path: PathBuf, case_file: Option<PathBuf>) -> Result<ExitCode, KitError> {
    let (name, component, case_file, cache) = if path.is_dir() {
        let (name, component, default_cases) = cases::project_paths(&path)?;
        let cache = path.join("build").join("cache");
        (name, component, case_file.unwrap_or(default_cases), cache)
    } else {
        let Some(case_file) = case_file else {
            return Err(KitError::Cases {
                path,
                message: "a component needs a case file: pylon plugin test COMPONENT CASES"
                    .to_owned(),
            });
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| super::check_name(s).is_ok())
            .unwrap_or_else(|| "plugin".to_owned());
        let cache = super::tools_dir().join("cache");
        (name, path, case_file, cache)
    };
    if !component.is_file() {
        return Err(KitError::Io {
            path: component,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no component: run `pylon plugin build` first",
            ),
        });
    }
    let report = cases::run(&name, &component, &case_file, &cache).await?;
    print!("{report}");
    Ok(if report.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
