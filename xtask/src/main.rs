//! `cargo xtask`: project tasks that need more than cargo.
//!
//! - `cargo xtask package`: installs Debian's toolchain if missing, cross-builds `iotally.sys` for
//!   64-bit Windows, writes `target/package/iotally.sys` and `iotally.inf`, verifies the image and
//!   prints a report; then cross-builds `target/package/iotallyctl.exe` and checks it. Exits
//!   non-zero if anything fails.
//! - `cargo xtask package --debug-assertions`: the same for the image with debug assertions and
//!   overflow checks, in `target/package-debug-assertions/` (for Driver Verifier runs).
//! - `cargo xtask broken-image`: the release image with deliberate bugs, in `target/broken-image/`,
//!   for the test that shows the end-to-end suite catching them.
//! - `cargo xtask clippy`: clippy (`-D warnings`) over the cross build, which lints the Windows-only
//!   code that host clippy never compiles.
//! - `cargo xtask verify <image.sys>`: verifies and reports on any x64 kernel driver image.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use xtask::cross::{self, Invocation, Task};
use xtask::image::Image;
use xtask::pe_check::{self, Policy};
use xtask::stamp::{self, Date};
use xtask::toolchain;

/// An error message for the user; the task fails with it.
type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "usage: cargo xtask package [--debug-assertions] | cargo xtask broken-image | \
                     cargo xtask clippy | cargo xtask verify <image.sys>";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let outcome = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["package"] => package(Image::Release),
        ["package", "--debug-assertions"] => package(Image::DebugAssertions),
        ["broken-image"] => package(Image::Broken),
        ["clippy"] => clippy(),
        ["verify", path] => verify_file(Path::new(path), &Policy::KERNEL_DRIVER),
        _ => Err(USAGE.to_owned()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// Builds `image`, writes its package (`.sys` and `.inf`) and verifies the `.sys`.
fn package(image: Image) -> Result<()> {
    let root = workspace_root();
    ensure_toolchain()?;

    let cross_dir = image.target_dir(&root);
    let invocation = cross::invocation(
        Task::Build,
        image,
        &root,
        &cross_dir,
        env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
        env::var_os("PATH"),
    );
    let started = Instant::now();
    run(&invocation)?;
    println!(
        "xtask: cross build took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let package_dir = image.package_dir(&root);
    fs::create_dir_all(&package_dir).map_err(|e| format!("{}: {e}", package_dir.display()))?;
    let sys = image.sys(&root);
    let dll = image.built_dll(&cross_dir);
    fs::copy(&dll, &sys)
        .map_err(|e| format!("copy {} to {}: {e}", dll.display(), sys.display()))?;

    let inf = package_dir.join(format!("{}.inf", cross::PACKAGE));
    write_inf(&root, &inf)?;
    println!("xtask: wrote {} and {}", sys.display(), inf.display());

    verify_file(&sys, &Policy::IOTALLY)?;
    if image == Image::Release {
        package_tool(&root, &package_dir)?;
    }
    Ok(())
}

/// Cross-builds `iotallyctl.exe` into `package_dir` and checks that it is a 64-bit Windows console
/// program talking to Filter Manager through `fltlib.dll`.
fn package_tool(root: &Path, package_dir: &Path) -> Result<()> {
    let tool_dir = root.join("target").join("cross-tool");
    let started = Instant::now();
    run(&cross::tool_invocation(
        root,
        &tool_dir,
        env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
        env::var_os("PATH"),
    ))?;
    println!(
        "xtask: cross build of {}.exe took {:.1} s",
        cross::TOOL,
        started.elapsed().as_secs_f64()
    );
    let built = cross::built_tool(&tool_dir);
    let exe = package_dir.join(format!("{}.exe", cross::TOOL));
    fs::copy(&built, &exe)
        .map_err(|e| format!("copy {} to {}: {e}", built.display(), exe.display()))?;
    let image = fs::read(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let imports = pe_check::tool_imports(&image).map_err(|e| format!("{}: {e}", exe.display()))?;
    if !imports
        .iter()
        .any(|(dll, name)| dll.eq_ignore_ascii_case("fltlib.dll") && name == "FilterSendMessage")
    {
        return Err(format!(
            "{} does not import FilterSendMessage from fltlib.dll",
            exe.display()
        ));
    }
    println!(
        "xtask: wrote {} ({} bytes, a console program importing FilterSendMessage from fltlib.dll)",
        exe.display(),
        image.len()
    );
    Ok(())
}

/// Clippy over the cross build, so that Windows-only code (`cfg(windows)`, the runtime) is linted
/// as the host build's clippy lints the rest.
fn clippy() -> Result<()> {
    let root = workspace_root();
    ensure_toolchain()?;
    run(&cross::invocation(
        Task::Clippy,
        Image::Release,
        &root,
        &root.join("target").join("cross-clippy"),
        env::vars_os().filter_map(|(name, _)| name.into_string().ok()),
        env::var_os("PATH"),
    ))
}

/// The Debian packages the cross build needs that are not installed (or too old).
fn missing_packages() -> Vec<&'static str> {
    toolchain::missing_packages(Path::exists, |program| {
        let output = Command::new(program).arg("--version").output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    })
}

/// Installs the Debian packages the cross build needs, or explains how to.
fn ensure_toolchain() -> Result<()> {
    let missing = missing_packages();
    if missing.is_empty() {
        return Ok(());
    }
    let line = toolchain::apt_command(&missing);
    if !is_root() {
        return Err(format!(
            "the cross build needs Debian packages that are not installed; as root, run:\n    {line}"
        ));
    }
    println!("xtask: installing {}", missing.join(" "));
    let apt = |args: &[&str]| Invocation {
        program: PathBuf::from("apt-get"),
        args: args.iter().map(OsString::from).collect(),
        set: vec![("DEBIAN_FRONTEND".into(), "noninteractive".into())],
        remove: Vec::new(),
    };
    run(&apt(&["update"]))?;
    let mut install = vec!["install", "-y"];
    install.extend(&missing);
    run(&apt(&install))?;
    let still = missing_packages();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "still missing or too old after apt-get install: {}",
            still.join(" ")
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn run(invocation: &Invocation) -> Result<()> {
    let mut command = Command::new(&invocation.program);
    command.args(&invocation.args);
    for name in &invocation.remove {
        command.env_remove(name);
    }
    for (name, value) in &invocation.set {
        command.env(name, value);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", invocation.program.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed ({status})",
            invocation.program.display()
        ))
    }
}

/// Writes the `.inf` from `inf/iotally.inx` with `DriverVer` stamped as `stampinf` would: today's
/// date (UTC, or `SOURCE_DATE_EPOCH` if set) and the crate version.
fn write_inf(root: &Path, inf: &Path) -> Result<()> {
    let inx_path = root.join("inf").join(format!("{}.inx", cross::PACKAGE));
    let inx = fs::read_to_string(&inx_path).map_err(|e| format!("{}: {e}", inx_path.display()))?;
    let manifest = fs::read_to_string(root.join("Cargo.toml")).map_err(|e| e.to_string())?;
    let version = cross::package_version(&manifest).ok_or("no version in [package]")?;
    let seconds = if let Ok(value) = env::var("SOURCE_DATE_EPOCH") {
        value
            .parse()
            .map_err(|_| format!("bad SOURCE_DATE_EPOCH {value:?}"))?
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?;
        i64::try_from(now.as_secs()).map_err(|e| e.to_string())?
    };
    let stamped = stamp::stamp_driver_ver(&inx, Date::from_unix_seconds(seconds), &version)
        .map_err(|e| format!("{}: {e}", inx_path.display()))?;
    fs::write(inf, stamped).map_err(|e| format!("{}: {e}", inf.display()))
}

fn verify_file(path: &Path, policy: &Policy<'_>) -> Result<()> {
    let image = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let verification = pe_check::verify(&image, policy);
    println!("{}", path.display());
    if let Some(report) = &verification.report {
        println!("{report}");
    }
    if verification.passed() {
        println!("PE check: all checks passed");
        return Ok(());
    }
    for failure in &verification.failures {
        println!("FAILED: {failure}");
    }
    Err(format!(
        "{} failed {} check(s)",
        path.display(),
        verification.failures.len()
    ))
}
