//! Replays every committed fuzz input through the same checks the fuzz targets run
//! (`fuzz/checks.rs`), on stable, in the normal suite: the seed corpora under `fixtures/`
//! (record frames, CRLs, the example configuration) and every finding kept in
//! `fixtures/fuzz/<target>/`, including the operation sequences of the store model
//! (`fuzz/store_model.rs`) in `fixtures/fuzz/store_model/`.

#[path = "../fuzz/checks.rs"]
mod checks;
#[path = "../fuzz/store_model.rs"]
mod store_model;

use std::path::Path;

fn files(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_none_or(|e| e != "md" && e != "txt") {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn wire_messages_of_every_alpn() {
    let inputs: Vec<_> = files("fixtures/records")
        .into_iter()
        .chain(files("fixtures/fuzz/wire_decode"))
        .chain(files("fixtures/wire/app"))
        .collect();
    assert!(inputs.len() > 10);
    for (name, bytes) in inputs {
        eprintln!("{name}");
        checks::wire(&bytes);
    }
}

#[test]
fn configuration_text() {
    let mut inputs = files("fixtures/fuzz/config_parse");
    inputs.push((
        "fixtures/domsync.toml".into(),
        include_bytes!("../fixtures/domsync.toml").to_vec(),
    ));
    for (name, bytes) in inputs {
        eprintln!("{name}");
        checks::config(&bytes);
    }
}

#[test]
fn crl_der() {
    let inputs: Vec<_> = files("fixtures/crl")
        .into_iter()
        .chain(files("fixtures/fuzz/crl_ingest"))
        .collect();
    assert!(inputs.len() >= 2);
    for (name, bytes) in inputs {
        eprintln!("{name}");
        checks::crl(&bytes);
    }
}

#[test]
fn store_model_sequences() {
    let inputs = files("fixtures/fuzz/store_model");
    assert!(inputs.len() >= 5, "the seed inputs are missing");
    for (name, bytes) in inputs {
        eprintln!("{name}");
        store_model::store_model(&bytes);
    }
}
