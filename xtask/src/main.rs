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
//! - `cargo xtask perf`: the driver's costs as instruction and byte counts (callgrind and fltsim's pool
//!   accounting over the fixed workloads of `benches/workload.rs`), checked against the budgets.
//! - `cargo xtask budget`: the same, failing if a budget is exceeded (CI; run `package` first, for the
//!   image size).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use xtask::callgrind::{Function, Profile};
use xtask::cross::{self, Invocation, Task};
use xtask::image::Image;
use xtask::pe_check::{self, Policy};
use xtask::perf::{self, Figures, Scenario};
use xtask::stamp::{self, Date};
use xtask::toolchain;

/// An error message for the user; the task fails with it.
type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "usage: cargo xtask package [--debug-assertions] | cargo xtask broken-image | \
                     cargo xtask clippy | cargo xtask verify <image.sys> | cargo xtask perf | \
                     cargo xtask budget";

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
        ["perf"] => measure(false),
        ["budget"] => measure(true),
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

/// Valgrind, which `perf` and `budget` run.
const VALGRIND: &str = "valgrind";

/// `cargo xtask perf` (`enforce` false) and `cargo xtask budget` (`enforce` true).
fn measure(enforce: bool) -> Result<()> {
    let root = workspace_root();
    let workload = build_workload(&root)?;
    let mut figures = Figures::default();
    for args in perf::NATIVE {
        let output = capture(Command::new(&workload).args(args))?;
        figures.add_output(&output, args.get(1).copied())?;
    }
    ensure_valgrind()?;
    let dumps = root.join("target").join("perf");
    for scenario in &perf::SCENARIOS {
        let costs = callgrind_costs(&workload, scenario, &dumps.join(scenario.name))?;
        perf::scenario_figures(scenario, &costs, &mut figures)?;
    }
    let image = root.join("target").join("package").join("iotally.sys");
    match fs::metadata(&image) {
        #[allow(clippy::cast_precision_loss)] // a file size
        Ok(meta) => {
            figures.0.insert("image.bytes".into(), meta.len() as f64);
        }
        Err(_) if !enforce => println!("xtask: no {} (run cargo xtask package)", image.display()),
        Err(e) => {
            return Err(format!(
                "{}: {e} (run cargo xtask package first)",
                image.display()
            ));
        }
    }
    let (report, all_hold) = perf::report(&figures);
    print!("{report}");
    if enforce && !all_hold {
        return Err("a performance budget is exceeded or was not measured".into());
    }
    Ok(())
}

/// Builds `benches/workload.rs` with the `callgrind` profile and returns the executable.
fn build_workload(root: &Path) -> Result<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = capture(
        Command::new(cargo)
            .current_dir(root)
            .args([
                "build",
                "--locked",
                "--profile",
                "callgrind",
                "--bench",
                "workload",
            ])
            .args(["--message-format", "json-render-diagnostics"]),
    )?;
    output
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["name"] == "workload")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| "cargo did not report the workload executable".into())
}

/// Runs `command`, returning its standard output; fails unless it succeeds.
fn capture(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", command.get_program().display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed ({}):\n{}",
            command.get_program().display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| e.to_string())
}

/// Whether a function is fltsim's (or the workload harness's), not the driver's.
fn excluded(function: &Function) -> bool {
    function.file.contains("/fltsim/src/")
        || function.name.starts_with("fltsim::")
        || function.name.starts_with("<fltsim::")
}

/// The driver's own instructions in each dump of `scenario` under callgrind: one number for the whole
/// measured loop, or one per operation.
fn callgrind_costs(workload: &Path, scenario: &Scenario, dir: &Path) -> Result<Vec<u64>> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = dir.join("cg.out");
    let started = Instant::now();
    capture(
        Command::new(VALGRIND)
            .args([
                "--tool=callgrind",
                "--instr-atstart=no",
                "--separate-callers=4",
            ])
            .arg(format!("--toggle-collect={}*", scenario.entry))
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(workload)
            .args(scenario.args),
    )?;
    // Dumps are cg.out.1, cg.out.2, ...; per-operation workloads dump once before the loop.
    let mut costs = Vec::new();
    for part in 1.. {
        let path = dir.join(format!("cg.out.{part}"));
        let Ok(text) = fs::read_to_string(&path) else {
            break;
        };
        if scenario.per_op && part == 1 {
            continue;
        }
        let profile = Profile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let (cost, _) = profile
            .own_cost(scenario.entry, excluded)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        costs.push(cost);
    }
    println!(
        "xtask: {} under callgrind: {} dump(s) in {:.1} s",
        scenario.name,
        costs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(costs)
}

/// Checks that valgrind is installed; installs it as root (Debian's `valgrind` package).
fn ensure_valgrind() -> Result<()> {
    let installed = || {
        Command::new(VALGRIND)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if installed() {
        return Ok(());
    }
    if !is_root() {
        return Err(
            "valgrind is not installed; as root, run:\n    apt-get install -y valgrind".into(),
        );
    }
    println!("xtask: installing valgrind");
    let apt = |args: &[&str]| Invocation {
        program: PathBuf::from("apt-get"),
        args: args.iter().map(OsString::from).collect(),
        set: vec![("DEBIAN_FRONTEND".into(), "noninteractive".into())],
        remove: Vec::new(),
    };
    run(&apt(&["install", "-y", VALGRIND])).or_else(|_| {
        run(&apt(&["update"])).and_then(|()| run(&apt(&["install", "-y", VALGRIND])))
    })?;
    if installed() {
        Ok(())
    } else {
        Err("valgrind still missing after apt-get install".into())
    }
}
