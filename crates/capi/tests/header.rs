//! The committed header `include/domsync.h` is what cbindgen makes of the crate now: a stale
//! header fails here (and so in CI).

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut generated);
    let path = crate_dir.join("include/domsync.h");
    if std::env::var("DOMSYNC_BLESS").is_ok_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, &generated).expect("include/domsync.h written");
        return;
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "crates/capi/include/domsync.h is stale: run `DOMSYNC_BLESS=1 cargo test -p domsync-capi --test header` to update"
    );
}
