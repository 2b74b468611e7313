//! fltsim calls driver code only through `src/abi.rs`, which knows whether the code is a host-built
//! driver (`extern "system"`) or a mapped image (`extern "win64"`). This test reads fltsim's sources
//! and fails on any place that could call driver code another way:
//!
//! - a function pointer *type* (`extern "system" fn(` / `extern "win64" fn(`) or a windows-sys callback
//!   type (`PFLT_*_CALLBACK`, `PFLT_*_NOTIFY`, `DRIVER_INITIALIZE`, ...) outside `abi.rs`, except in
//!   `use` lines, in the parameter lists of fltsim's own exports, and in their compile-time signature
//!   checks (`const _: [...] = [...];`);
//! - a callback-typed parameter of an export used for anything but `abi::…::from_driver(parameter)`;
//! - `transmute` outside `abi.rs`.
//!
//! One more form is allowed: a callback-typed parameter declared (`name: PFLT_…,` on its own line)
//! in the list of the image loader's `shims! { … }` invocation. A shim is a win64 wrapper of one of
//! fltsim's exports that passes its arguments on unchanged, so such a parameter reaches the export,
//! which wraps it with `from_driver` like any other.

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
    files.sort();
    files
}

/// Whether `word` names a windows-sys callback type.
fn is_callback_type(word: &str) -> bool {
    let flt_callback = word.starts_with("PFLT_")
        && (word.ends_with("_CALLBACK")
            || word.ends_with("_NOTIFY")
            || word.ends_with("_ROUTINE")
            || word == "PFLT_GENERATE_FILE_NAME"
            || word.starts_with("PFLT_NORMALIZE_"));
    flt_callback
        || matches!(word, "DRIVER_INITIALIZE" | "DRIVER_UNLOAD")
        || word.starts_with("PDRIVER_")
}

/// The identifiers of a line.
fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
}

/// Finds the rule violations in one source file's text.
fn violations(name: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_check = false;
    let mut in_export_signature = false;
    let mut in_shim_list = false;
    let mut callback_parameters: Vec<String> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = format!("{name}:{}", number + 1);
        if line.starts_with("//") {
            continue;
        }
        if line.starts_with("const _:") {
            in_check = true;
        }
        if in_check {
            if line.ends_with("];") {
                in_check = false;
            }
            continue;
        }
        if line.starts_with("pub unsafe extern \"system\" fn ") {
            in_export_signature = true;
        }
        if raw.starts_with("shims! {") {
            in_shim_list = true;
        } else if raw == "}" {
            in_shim_list = false;
        }
        if line.contains("transmute") {
            found.push(format!("{at}: transmute outside abi.rs: {line}"));
        }
        if line.contains("extern \"system\" fn(") || line.contains("extern \"win64\" fn(") {
            found.push(format!(
                "{at}: a function pointer type outside abi.rs: {line}"
            ));
        }
        let in_use =
            line.starts_with("use ") || line.starts_with("pub use ") || in_use_list(text, number);
        if words(line).any(is_callback_type) && !in_use && !(in_shim_list && is_declaration(line)) {
            match line.split_once(':') {
                Some((parameter, _)) if in_export_signature => {
                    callback_parameters.push(parameter.trim().to_owned());
                }
                _ => found.push(format!("{at}: a callback type outside abi.rs: {line}")),
            }
        }
        if line.ends_with('{') {
            in_export_signature = false;
        }
    }
    for parameter in &callback_parameters {
        for (number, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let uses = words(line).filter(|w| w == parameter).count();
            let wrapped = line.matches(&format!("from_driver({parameter})")).count();
            let declared = line.starts_with(&format!("{parameter}:"));
            if uses > wrapped && !declared {
                found.push(format!(
                    "{name}:{}: callback parameter `{parameter}` used other than through \
                     abi::…::from_driver: {line}",
                    number + 1
                ));
            }
        }
    }
    found
}

/// Whether `line` only declares one parameter: `name: Type,`.
fn is_declaration(line: &str) -> bool {
    line.strip_suffix(',')
        .and_then(|line| line.split_once(": "))
        .is_some_and(|(name, ty)| {
            words(name).count() == 1 && words(ty).count() == 1 && !ty.contains(['(', '='])
        })
}

/// Whether line `number` of `text` is inside a multi-line `use … { … };` list.
fn in_use_list(text: &str, number: usize) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    for line in lines[..number].iter().rev() {
        let line = line.trim();
        if line.starts_with("use ") || line.starts_with("pub use ") {
            return !line.ends_with(';');
        }
        if line.ends_with(';') || line.ends_with('}') && !line.ends_with("},") {
            return false;
        }
    }
    false
}

#[test]
fn driver_code_is_called_only_through_abi() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut checked = 0;
    for path in sources(&src) {
        let name = path
            .strip_prefix(&src)
            .expect("under src")
            .display()
            .to_string();
        if name == "abi.rs" {
            continue;
        }
        let text = fs::read_to_string(&path).expect("readable source");
        found.extend(violations(&name, &text));
        checked += 1;
    }
    assert!(
        checked > 10,
        "only {checked} source files found under {}",
        src.display()
    );
    assert!(
        found.is_empty(),
        "calls of driver code must go through src/abi.rs:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_scan_catches_each_way_around_the_choke_point() {
    let stored = "pub(crate) struct Filter {\n    pub unload: PFLT_FILTER_UNLOAD_CALLBACK,\n}\n";
    assert_eq!(
        violations("a.rs", stored).len(),
        1,
        "a stored callback type"
    );
    let raw = "struct Post {\n    post: unsafe extern \"system\" fn(u32) -> i32,\n}\n";
    assert_eq!(
        violations("b.rs", raw).len(),
        1,
        "a raw function pointer type"
    );
    let called = "#[unsafe(no_mangle)]\npub unsafe extern \"system\" fn FltThing(\n    callback: PFLT_POST_OPERATION_CALLBACK,\n) -> NTSTATUS {\n    let f = callback.unwrap();\n    0\n}\n";
    assert_eq!(
        violations("c.rs", called).len(),
        1,
        "a callback parameter called directly"
    );
    let wrapped = "#[unsafe(no_mangle)]\npub unsafe extern \"system\" fn FltThing(\n    callback: PFLT_POST_OPERATION_CALLBACK,\n) -> NTSTATUS {\n    let f = PostOperation::from_driver(callback);\n    0\n}\nconst _: [unsafe extern \"system\" fn(PFLT_POST_OPERATION_CALLBACK) -> NTSTATUS; 2] = [\n    FltThing,\n    windows_sys::FltThing,\n];\n";
    assert_eq!(
        violations("d.rs", wrapped),
        Vec::<String>::new(),
        "the allowed forms"
    );
    let imports = "use windows_sys::Wdk::Storage::FileSystem::Minifilters::{\n    FLT_CALLBACK_DATA, PFLT_POST_OPERATION_CALLBACK,\n};\n";
    assert_eq!(
        violations("e.rs", imports),
        Vec::<String>::new(),
        "a use list"
    );
    assert_eq!(
        violations("f.rs", "let x = std::mem::transmute::<usize, u64>(1);\n").len(),
        1
    );
    let shim = "shims! {\n    FLTMGR FltThing(\n        callback: PFLT_POST_OPERATION_CALLBACK,\n    ) = a, b;\n}\n";
    assert_eq!(
        violations("g.rs", shim),
        Vec::<String>::new(),
        "a shim's parameter"
    );
    let outside = "fn thing() {\n    callback: PFLT_POST_OPERATION_CALLBACK,\n}\n";
    assert_eq!(
        violations("h.rs", outside).len(),
        1,
        "the same line outside a shim list"
    );
    let used = "shims! {\n    let f = callback.unwrap() as PFLT_POST_OPERATION_CALLBACK;\n}\n";
    assert_eq!(
        violations("i.rs", used).len(),
        1,
        "a shim list line that does more than declare"
    );
}
