//! Golden tests: each `tests/ui/*.toml` is an invalid configuration and the
//! `.stderr` beside it the exact report. `BLESS=1` rewrites the expectations.

use std::path::Path;

use crate::harness::root;

#[test]
fn invalid_configs_report_every_problem_with_location() {
    let dir = root().join("tests/ui");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 5,
        "expected golden cases in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for case in cases {
        let text = std::fs::read_to_string(&case).unwrap();
        let name = Path::new("tests/ui").join(case.file_name().unwrap());
        let actual = match pylon::config::parse(&text, &name, &dir) {
            Ok(_) => "(valid)\n".to_string(),
            Err(e) => e.to_string(),
        };
        let expected_path = case.with_extension("stderr");
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
