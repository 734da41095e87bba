//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) and every
//! crash the fuzzers found and that was fixed (`fuzz/regressions/<target>/`)
//! through the targets' checks: what the nightly fuzzers explored stays
//! checked by every `cargo test` on stable.

use std::path::{Path, PathBuf};

/// Every file of `fuzz/<kind>/<target>/`.
fn files(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Replays the corpus and the kept crashes of `target`; at least one
/// corpus file must exist (an empty corpus would pass for nothing).
///
/// On a thread with a 16 MiB stack: the fuzzers run optimised builds on
/// the main thread (8 MiB), and some corpus inputs are deeply nested (a
/// session record of arrays ~400 deep, which serde decodes recursively); an
/// unoptimised build's frames are several times larger, and a test
/// thread's stack is 2 MiB. (Optimised, the deepest record the store's
/// codec accepts, 1024 levels, decodes within 1 MiB: tokio's 2 MiB worker
/// threads hold it.)
fn replay(target: &'static str) {
    let (_, check) = *selfheal_fuzzing::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of that name");
    let corpus = files("corpus", target);
    assert!(!corpus.is_empty(), "fuzz/corpus/{target} is empty");
    let inputs: Vec<PathBuf> = corpus
        .into_iter()
        .chain(files("regressions", target))
        .collect();
    let replayer = std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            for path in &inputs {
                let data = std::fs::read(path).unwrap();
                let outcome = std::panic::catch_unwind(|| check(&data));
                assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            }
            inputs.len()
        })
        .unwrap();
    let replayed = replayer.join().expect("every input passes");
    eprintln!("{target}: {replayed} inputs replayed");
}

macro_rules! replays {
    ($($target:ident),* $(,)?) => {
        $(#[test]
        fn $target() {
            replay(stringify!($target));
        })*

        /// Every target has its replay test here.
        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($target)),*];
            for (name, _) in selfheal_fuzzing::TARGETS {
                assert!(replayed.contains(name), "{name} is not replayed");
            }
        }
    };
}

replays!(
    session_bytes,
    session_json,
    http_hints,
    form,
    config,
    chaos_plan
);
