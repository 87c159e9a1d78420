//! The fuzz targets' seed corpora, replayed on stable: every file of
//! `fuzz/corpus/<target>/` goes through the same harness function the
//! fuzzer calls (`drawbridge::fuzzing`), which panics on a crash or a
//! violated property. Each corpus must hold at least one input.

use std::path::{Path, PathBuf};

/// A harness: panics on a crash or a violated property.
type Harness = fn(&[u8]);

/// Every target, its corpus folder and its harness.
const TARGETS: [(&str, Harness); 6] = [
    ("sticky_cookie", drawbridge::fuzzing::sticky_cookie),
    ("forwarded_for", drawbridge::fuzzing::forwarded_for),
    ("bypass_token", drawbridge::fuzzing::bypass_token),
    ("admin_body", drawbridge::fuzzing::admin_body),
    ("state_file", drawbridge::fuzzing::state_file),
    ("config", drawbridge::fuzzing::config),
];

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
}

/// Run every file of `target`'s corpus; report all that fail, by name.
fn replay(target: &str) {
    let (_, harness) = TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    let mut failed = Vec::new();
    let files = corpus(target);
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus inputs failed (the panic of each is printed above): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn every_target_has_a_corpus_folder_and_only_those() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|(t, _)| t.to_string()).collect();
    targets.sort();
    assert_eq!(dirs, targets, "corpus folders and targets differ");
    for (t, _) in TARGETS {
        corpus(t);
        let source = root.join(format!("../fuzz_targets/{t}.rs"));
        assert!(source.is_file(), "no fuzz target {}", source.display());
    }
}

#[test]
fn sticky_cookie_corpus() {
    replay("sticky_cookie");
}

#[test]
fn forwarded_for_corpus() {
    replay("forwarded_for");
}

#[test]
fn bypass_token_corpus() {
    replay("bypass_token");
}

#[test]
fn admin_body_corpus() {
    replay("admin_body");
}

#[test]
fn state_file_corpus() {
    replay("state_file");
}

#[test]
fn config_corpus() {
    replay("config");
}
