//! `pylon plugin new`: write a plugin project from the embedded template
//! of its language. The project builds and passes its own test cases as
//! written; the author changes it from there.

use std::path::{Path, PathBuf};

use super::{
    KitError, Lang, MANIFEST, check_name,
    templates::{self, Content},
};

/// Create the project `NAME` in `lang` at `dir` (a folder that must not
/// exist yet, or be empty). Returns the files written, relative to `dir`.
pub fn create(name: &str, lang: Lang, dir: &Path) -> Result<Vec<PathBuf>, KitError> {
    check_name(name).map_err(KitError::BadName)?;
    let occupied = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(KitError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    if occupied || (dir.exists() && !dir.is_dir()) {
        return Err(KitError::Exists {
            path: dir.to_owned(),
        });
    }

    let fill = |text: &str| text.replace("{{name}}", name);
    let notes = templates::notes(lang);
    let readme = fill(templates::README)
        .replace("{{lang_name}}", notes.lang_name)
        .replace("{{source}}", notes.source)
        .replace("{{source_notes}}", notes.source_notes)
        .replace("{{toolchain}}", notes.toolchain);
    let manifest = format!(
        "# Read by `pylon plugin build` and `pylon plugin test`.\n\
         name = \"{name}\"\nlang = \"{}\"\n",
        lang.as_str()
    );

    let mut out: Vec<(PathBuf, Vec<u8>)> = vec![
        (MANIFEST.into(), manifest.into_bytes()),
        ("README.md".into(), readme.into_bytes()),
        ("wit/plugin.wit".into(), templates::WIT.as_bytes().to_vec()),
    ];
    for file in templates::files(lang) {
        let bytes = match file.content {
            Content::Text(text) => fill(text).into_bytes(),
            Content::Bytes(bytes) => bytes.to_vec(),
        };
        out.push((file.path.into(), bytes));
    }
    for (rel, bytes) in &out {
        let path = dir.join(rel);
        let io = |source| KitError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, bytes).map_err(io)?;
    }
    Ok(out.into_iter().map(|(rel, _)| rel).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_gets_sources_wit_readme_and_cases() {
        let tmp = tempfile::tempdir().unwrap();
        for lang in [Lang::Rust, Lang::Python, Lang::Js, Lang::C] {
            let dir = tmp.path().join(lang.as_str());
            let files = create("tenant-tier", lang, &dir).unwrap();
            for must in [MANIFEST, "README.md", "wit/plugin.wit", "cases.toml"] {
                assert!(
                    files.iter().any(|f| f == Path::new(must)),
                    "{lang:?}: {must}"
                );
            }
            let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
            assert!(!readme.contains("{{"), "{lang:?}: unfilled placeholder");
            assert!(readme.contains("build/tenant-tier.wasm"));
            let manifest = super::super::Manifest::load(&dir).unwrap();
            assert_eq!(
                (manifest.name.as_str(), manifest.lang),
                ("tenant-tier", lang)
            );
        }
    }

    #[test]
    fn refuses_a_non_empty_folder_and_a_bad_name() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
        let err = create("a", Lang::Rust, tmp.path()).unwrap_err();
        assert!(matches!(err, KitError::Exists { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
            "mine"
        );
        let err = create("../evil", Lang::Rust, &tmp.path().join("x")).unwrap_err();
        assert!(matches!(err, KitError::BadName(_)), "{err}");
        assert!(!tmp.path().join("x").exists());
    }
}
