//! The image loader's shim list (`src/image/shims.rs`) covers every routine fltsim exports: a driver
//! image can import anything a host-built driver can call. Reads fltsim's sources for the
//! `#[unsafe(no_mangle)]` functions.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("fltsim/src is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The names of the `#[unsafe(no_mangle)]` functions in `text`.
fn exports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut marked = false;
    for line in text.lines().map(str::trim) {
        if line == "#[unsafe(no_mangle)]" || line == "#[no_mangle]" {
            marked = true;
            continue;
        }
        if marked && let Some((_, rest)) = line.split_once("fn ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
            marked = false;
        } else if marked && !line.starts_with("#[") && !line.starts_with("//") {
            marked = false;
        }
    }
    found
}

#[test]
fn every_export_of_fltsim_has_a_shim() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut exported = BTreeSet::new();
    for path in sources(&src) {
        exported.extend(exports(
            &fs::read_to_string(&path).expect("readable source"),
        ));
    }
    assert!(
        exported.len() > 40,
        "only {} exports found under {}",
        exported.len(),
        src.display()
    );
    let routines = fltsim::image::importable_routines();
    let shimmed: BTreeSet<String> = routines.iter().map(|&(_, name)| name.to_owned()).collect();
    assert_eq!(shimmed.len(), routines.len(), "a routine is listed twice");
    let missing: Vec<_> = exported.difference(&shimmed).collect();
    assert!(
        missing.is_empty(),
        "exports without a shim in fltsim/src/image/shims.rs: {missing:?}"
    );
    let extra: Vec<_> = shimmed.difference(&exported).collect();
    assert!(
        extra.is_empty(),
        "shims of routines fltsim does not export: {extra:?}"
    );
}

#[test]
fn filter_manager_routines_come_from_fltmgr_and_the_rest_from_the_kernel() {
    for (module, name) in fltsim::image::importable_routines() {
        let expected = if name.starts_with("Flt") {
            "FLTMGR.SYS"
        } else {
            "ntoskrnl.exe"
        };
        assert_eq!(module, expected, "{name}");
    }
}

#[test]
fn the_scan_finds_marked_functions_only() {
    let text = "#[unsafe(no_mangle)]\npub unsafe extern \"system\" fn FltA(x: u32) {}\n\
                pub fn helper() {}\n#[unsafe(no_mangle)]\n/// doc\npub extern \"system\" fn KeB() {}\n";
    assert_eq!(exports(text), ["FltA", "KeB"]);
}
