//! Checks `inf/iotally.inx` against the rules for a primitive minifilter INF
//! (`docs/kernel-rules.md`, "INF"; Microsoft's "Creating an INF File for a Minifilter Driver"),
//! and shows that the checker catches broken copies.
//!
//! The INF is parsed by a small section/key reader below: `[Section]` headers, `key = value` lines,
//! bare lines (file lists, `HKR,...` registry lines), `;` comments outside quotes, `%Token%`
//! substitution from `[Strings]`.

use std::collections::BTreeMap;

const INX: &str = include_str!("../inf/iotally.inx");

/// The `ActivityMonitor` class GUID (`FSFilter Activity Monitor` load order group).
const ACTIVITY_MONITOR_GUID: &str = "{b86dff51-a31e-4bac-b3cf-e8cfe75c9fc2}";
/// The altitude range of the `FSFilter Activity Monitor` group.
const ACTIVITY_MONITOR_ALTITUDES: std::ops::RangeInclusive<u32> = 360_000..=389_999;

/// One line of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// `key = value` (key as written, value with comments removed and trimmed).
    Entry(String, String),
    /// A line without `=`.
    Bare(String),
}

/// A parsed INF: sections in order, with their lines.
#[derive(Debug, Default)]
struct Inf {
    sections: Vec<(String, Vec<Line>)>,
    strings: BTreeMap<String, String>,
}

/// Removes a `;` comment, ignoring `;` inside double quotes.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Splits at the first `=` outside quotes.
fn split_entry(line: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '=' if !quoted => return Some((&line[..i], &line[i + 1..])),
            _ => {}
        }
    }
    None
}

fn unquote(value: &str) -> String {
    value.replace('"', "")
}

impl Inf {
    fn parse(text: &str) -> Self {
        let mut inf = Inf::default();
        for raw in text.lines() {
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inf.sections.push((name.trim().to_owned(), Vec::new()));
                continue;
            }
            let Some((_, lines)) = inf.sections.last_mut() else {
                continue;
            };
            lines.push(match split_entry(line) {
                Some((key, value)) => Line::Entry(key.trim().to_owned(), value.trim().to_owned()),
                None => Line::Bare(line.to_owned()),
            });
        }
        let strings: BTreeMap<String, String> = inf
            .section("Strings")
            .unwrap_or_default()
            .iter()
            .filter_map(|line| match line {
                Line::Entry(key, value) => Some((key.to_ascii_lowercase(), unquote(value))),
                Line::Bare(_) => None,
            })
            .collect();
        inf.strings = strings;
        inf
    }

    /// A section's lines; section names compare without case.
    fn section(&self, name: &str) -> Option<&[Line]> {
        self.sections
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, lines)| lines.as_slice())
    }

    /// Replaces `%Token%` with its `[Strings]` value; `%13%`-style DIRIDs stay as they are.
    fn resolve(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let token = &after[..end];
            if let Some(value) = self.strings.get(&token.to_ascii_lowercase()) {
                out.push_str(value);
            } else {
                out.push('%');
                out.push_str(token);
                out.push('%');
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// The resolved, unquoted value of `key` in `section`.
    fn value(&self, section: &str, key: &str) -> Option<String> {
        self.section(section)?.iter().find_map(|line| match line {
            Line::Entry(k, v) if k.eq_ignore_ascii_case(key) => Some(unquote(&self.resolve(v))),
            _ => None,
        })
    }

    /// The resolved bare lines of a section, each split at commas into unquoted fields.
    fn rows(&self, section: &str) -> Vec<Vec<String>> {
        self.section(section)
            .unwrap_or_default()
            .iter()
            .filter_map(|line| match line {
                Line::Bare(text) => Some(
                    self.resolve(text)
                        .split(',')
                        .map(|f| unquote(f).trim().to_owned())
                        .collect(),
                ),
                Line::Entry(..) => None,
            })
            .collect()
    }
}

/// One of the two install layouts of Microsoft's current minifilter samples.
struct Layout {
    install: &'static str,
    dirid: &'static str,
    instances_key: &'static str,
}

impl Layout {
    /// The key `SupportedFeatures` belongs under: the instances key's parent.
    fn features_key(&self) -> &'static str {
        self.instances_key
            .strip_suffix("Instances")
            .map_or("", |parent| parent.trim_end_matches('\\'))
    }
}

const LAYOUTS: [Layout; 2] = [
    Layout {
        install: "DefaultInstall.NTamd64.10.0...25952",
        dirid: "13",
        instances_key: "Parameters\\Instances",
    },
    Layout {
        install: "DefaultInstall.NTamd64.10.0...19041",
        dirid: "12",
        instances_key: "Instances",
    },
];

/// The OS floor: `ExAllocatePool2` exists from Windows 10 version 2004, build 19041.
const FLOOR_BUILD: u32 = 19_041;

/// The volume features iotally declares: offloaded read and write, BypassIO.
const SUPPORTED_FEATURES: &str = "0xB";

/// Collects the rules an INF breaks.
struct Checker<'a> {
    inf: &'a Inf,
    problems: Vec<String>,
}

impl Checker<'_> {
    /// `[section] key` must resolve to `wanted` (compared without case).
    fn expect(&mut self, section: &str, key: &str, wanted: &str) {
        match self.inf.value(section, key) {
            Some(found) if found.eq_ignore_ascii_case(wanted) => {}
            Some(found) => self.problems.push(format!(
                "[{section}] {key} is {found:?}, expected {wanted:?}"
            )),
            None => self.problems.push(format!("[{section}] has no {key}")),
        }
    }

    fn problem(&mut self, message: String) {
        self.problems.push(message);
    }

    fn version(&mut self) {
        self.expect("Version", "Signature", "$WINDOWS NT$");
        self.expect("Version", "Class", "ActivityMonitor");
        self.expect("Version", "ClassGuid", ACTIVITY_MONITOR_GUID);
        self.expect("Version", "CatalogFile", "iotally.cat");
        self.expect("Version", "PnpLockdown", "1");
        if self
            .inf
            .value("Version", "Provider")
            .is_none_or(|p| p.is_empty() || p.contains('%'))
        {
            self.problem("[Version] Provider is missing or not in [Strings]".into());
        }
        self.expect("SourceDisksFiles", "iotally.sys", "1,,");
    }

    /// Primitive drivers: no `[Manufacturer]`, no undecorated `[DefaultInstall]`, and
    /// `[DefaultUninstall]` only with `LegacyUninstall=1`.
    fn primitive(&mut self) {
        for forbidden in ["Manufacturer", "DefaultInstall", "DefaultInstall.Services"] {
            if self.inf.section(forbidden).is_some() {
                self.problem(format!(
                    "[{forbidden}] must not be in a primitive driver INF"
                ));
            }
        }
        for (name, _) in &self.inf.sections {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("defaultuninstall")
                && !lower.ends_with(".services")
                && self.inf.value(name, "LegacyUninstall").as_deref() != Some("1")
            {
                self.problems
                    .push(format!("[{name}] is only allowed with LegacyUninstall=1"));
            }
        }
    }

    /// The OS floor: every install section is decorated `NTamd64.10.0...<build>` with a build of at
    /// least [`FLOOR_BUILD`], so Setup installs nothing on older Windows ("Combining platform
    /// extensions with operating system versions").
    fn floor(&mut self) {
        for (name, _) in &self.inf.sections {
            let lower = name.to_ascii_lowercase();
            if !lower.starts_with("defaultinstall.") || lower.ends_with(".services") {
                continue;
            }
            let build = lower
                .strip_prefix("defaultinstall.ntamd64.10.0...")
                .and_then(|build| build.parse::<u32>().ok());
            match build {
                Some(build) if build >= FLOOR_BUILD => {}
                _ => self.problems.push(format!(
                    "[{name}] would install before build {FLOOR_BUILD} (Windows 10 2004), where \
                     the image cannot load: decorate it NTamd64.10.0...<build>"
                )),
            }
        }
    }

    /// The install section, its `.Services` section and the service section of one layout;
    /// returns the service section's name.
    fn service(&mut self, layout: &Layout) -> Option<String> {
        let services = format!("{}.Services", layout.install);
        let Some(copy) = self.inf.value(layout.install, "CopyFiles") else {
            self.problem(format!("[{}] has no CopyFiles", layout.install));
            return None;
        };
        self.expect("DestinationDirs", &copy, layout.dirid);
        if !self
            .inf
            .rows(&copy)
            .iter()
            .any(|row| row == &["iotally.sys"])
        {
            self.problem(format!("[{copy}] does not list iotally.sys"));
        }
        let Some(add_service) = self.inf.value(&services, "AddService") else {
            self.problem(format!("[{services}] has no AddService"));
            return None;
        };
        let fields: Vec<&str> = add_service.split(',').map(str::trim).collect();
        if fields.len() != 3 || fields[0] != "iotally" || !fields[1].is_empty() {
            self.problem(format!("[{services}] AddService is {add_service:?}"));
            return None;
        }
        let service = fields[2].to_owned();
        self.expect(&service, "ServiceType", "2");
        self.expect(&service, "StartType", "3");
        self.expect(&service, "ErrorControl", "1");
        self.expect(&service, "LoadOrderGroup", "FSFilter Activity Monitor");
        self.expect(&service, "Dependencies", "FltMgr");
        self.expect(
            &service,
            "ServiceBinary",
            &format!("%{}%\\iotally.sys", layout.dirid),
        );
        Some(service)
    }

    /// `DefaultInstance`, `Altitude` and `Flags` under the layout's instances key.
    fn registry(&mut self, layout: &Layout, service: &str) {
        let Some(add_reg) = self.inf.value(service, "AddReg") else {
            self.problem(format!("[{service}] has no AddReg"));
            return;
        };
        if self.inf.section(&add_reg).is_none() {
            self.problem(format!(
                "[{service}] AddReg names missing section [{add_reg}]"
            ));
            return;
        }
        let rows = self.inf.rows(&add_reg);
        let find = |subkey: &str, name: &str| {
            rows.iter().find(|row| {
                row.len() == 5
                    && row[0] == "HKR"
                    && row[1].eq_ignore_ascii_case(subkey)
                    && row[2] == name
            })
        };
        match find(layout.features_key(), "SupportedFeatures") {
            Some(row) if row[3] == "0x00010001" && row[4].eq_ignore_ascii_case(SUPPORTED_FEATURES) => {}
            Some(row) => self.problem(format!(
                "[{add_reg}] SupportedFeatures is {} {}, expected a DWORD (0x00010001) {SUPPORTED_FEATURES}",
                row[3], row[4]
            )),
            None => self.problem(format!(
                "[{add_reg}] has no SupportedFeatures under {:?} (without it every volume iotally \
                 attaches to loses ODX and BypassIO)",
                layout.features_key()
            )),
        }
        let Some(default) = find(layout.instances_key, "DefaultInstance") else {
            self.problem(format!(
                "[{add_reg}] has no {}\\DefaultInstance",
                layout.instances_key
            ));
            return;
        };
        let instance = format!("{}\\{}", layout.instances_key, default[4]);
        match find(&instance, "Altitude") {
            Some(row) if row[3] != "0x00000000" => {
                self.problem(format!(
                    "[{add_reg}] Altitude must be a string (0x00000000)"
                ));
            }
            Some(row) => match row[4].parse::<u32>() {
                Ok(altitude) if ACTIVITY_MONITOR_ALTITUDES.contains(&altitude) => {}
                _ => self.problem(format!(
                    "[{add_reg}] Altitude {} is not in FSFilter Activity Monitor's 360000-389999",
                    row[4]
                )),
            },
            None => self.problem(format!("[{add_reg}] has no {instance}\\Altitude")),
        }
        match find(&instance, "Flags") {
            Some(row) if row[3] == "0x00010001" => {}
            Some(_) => self.problem(format!("[{add_reg}] Flags must be a DWORD (0x00010001)")),
            None => self.problem(format!("[{add_reg}] has no {instance}\\Flags")),
        }
    }
}

/// Every rule the INF breaks, as readable messages; empty if it is correct.
fn check(inf: &Inf) -> Vec<String> {
    let mut checker = Checker {
        inf,
        problems: Vec::new(),
    };
    checker.version();
    checker.primitive();
    checker.floor();
    for layout in &LAYOUTS {
        if let Some(service) = checker.service(layout) {
            checker.registry(layout, &service);
        }
    }
    checker.problems
}

/// The INX with the first occurrence of `from` replaced by `to` (which must exist).
fn mutated(from: &str, to: &str) -> Vec<String> {
    assert!(INX.contains(from), "{from:?} is not in the INX");
    check(&Inf::parse(&INX.replacen(from, to, 1)))
}

fn assert_caught(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {problems:#?}"
    );
}

#[test]
fn the_inx_is_a_valid_primitive_minifilter_inf() {
    assert_eq!(check(&Inf::parse(INX)), Vec::<String>::new());
}

#[test]
fn the_parser_reads_entries_rows_and_strings() {
    let inf = Inf::parse(INX);
    assert_eq!(
        inf.value("version", "classguid").as_deref(),
        Some(ACTIVITY_MONITOR_GUID)
    );
    assert_eq!(
        inf.value("Iotally.Service", "ServiceBinary").as_deref(),
        Some("%13%\\iotally.sys")
    );
    assert_eq!(
        inf.rows("Iotally.AddRegistry")[2],
        [
            "HKR",
            "Parameters\\Instances\\iotally Instance",
            "Altitude",
            "0x00000000",
            "377730"
        ]
    );
    assert_eq!(
        inf.value("Strings", "Instance1.Flags").as_deref(),
        Some("0x0")
    );
}

#[test]
fn a_missing_section_is_caught() {
    assert_caught(
        &mutated(
            "[DefaultInstall.NTamd64.10.0...19041.Services]",
            "[Other.Services]",
        ),
        "[DefaultInstall.NTamd64.10.0...19041.Services] has no AddService",
    );
    assert_caught(
        &mutated("[Version]", "[Versions]"),
        "[Version] has no Signature",
    );
    assert_caught(
        &mutated("[Iotally.AddRegistry]", "[Nothing]"),
        "missing section [Iotally.AddRegistry]",
    );
}

#[test]
fn wrong_service_values_are_caught() {
    assert_caught(
        &mutated("ServiceType    = 2", "ServiceType    = 1"),
        "ServiceType is \"1\"",
    );
    assert_caught(
        &mutated("StartType      = 3", "StartType      = 2"),
        "StartType",
    );
    assert_caught(
        &mutated("ErrorControl   = 1", "ErrorControl   = 0"),
        "ErrorControl",
    );
    assert_caught(
        &mutated("\"FSFilter Activity Monitor\"", "\"FSFilter Anti-Virus\""),
        "LoadOrderGroup",
    );
    assert_caught(
        &mutated("Dependencies   = \"FltMgr\"", "; none"),
        "has no Dependencies",
    );
}

#[test]
fn wrong_version_values_are_caught() {
    assert_caught(&mutated("b86dff51", "b86dff52"), "ClassGuid");
    assert_caught(
        &mutated("PnpLockdown = 1", "PnpLockdown = 0"),
        "PnpLockdown",
    );
    assert_caught(
        &mutated("Class       = \"ActivityMonitor\"", "Class = \"Sample\""),
        "Class is",
    );
    assert_caught(
        &mutated("Provider    = %ProviderString%", "Provider = %Nobody%"),
        "Provider",
    );
}

#[test]
fn wrong_layouts_are_caught() {
    assert_caught(
        &mutated(
            "Iotally.DriverFiles          = 13",
            "Iotally.DriverFiles = 12",
        ),
        "[DestinationDirs] Iotally.DriverFiles is \"12\", expected \"13\"",
    );
    assert_caught(
        &mutated("HKR,\"Parameters\\Instances\",", "HKR,\"Instances\","),
        "Parameters\\Instances\\DefaultInstance",
    );
    assert_caught(
        &mutated("%13%\\%DriverName%", "%12%\\%DriverName%"),
        "ServiceBinary",
    );
}

#[test]
fn bad_instance_settings_are_caught() {
    assert_caught(
        &mutated("\"377730\"", "\"320000\""),
        "not in FSFilter Activity Monitor",
    );
    assert_caught(
        &mutated("\"Altitude\",0x00000000", "\"Altitude\",0x00010001"),
        "must be a string",
    );
    assert_caught(
        &mutated(",\"Flags\",0x00010001,", ",\"Flags\",0x00000000,"),
        "DWORD",
    );
    assert_caught(&mutated(",\"Flags\",", ",\"Flagz\","), "Flags");
}

#[test]
fn forbidden_sections_are_caught() {
    assert_caught(
        &mutated("[Strings]", "[Manufacturer]\n[Strings]"),
        "[Manufacturer]",
    );
    assert_caught(
        &mutated("[Strings]", "[DefaultInstall]\n[Strings]"),
        "[DefaultInstall] must not",
    );
    assert_caught(
        &mutated(
            "[Strings]",
            "[DefaultUninstall.NTamd64]\nDelFiles = X\n[Strings]",
        ),
        "LegacyUninstall",
    );
    let allowed = "[DefaultUninstall.NTamd64]\nLegacyUninstall = 1\n[Strings]";
    assert_eq!(mutated("[Strings]", allowed), Vec::<String>::new());
}

#[test]
fn sections_below_the_os_floor_are_caught() {
    assert_caught(
        &mutated(
            "\n[DefaultInstall.NTamd64.10.0...19041]\n",
            "\n[DefaultInstall.NTamd64]\n",
        ),
        "[DefaultInstall.NTamd64] would install before build 19041",
    );
    assert_caught(
        &mutated(
            "\n[DefaultInstall.NTamd64.10.0...19041]\n",
            "\n[DefaultInstall.NTamd64.10.0...18362]\n",
        ),
        "would install before build 19041",
    );
}

#[test]
fn missing_or_wrong_supported_features_are_caught() {
    assert_caught(
        &mutated(
            "HKR,\"Parameters\",\"SupportedFeatures\"",
            "HKR,\"Parameters\",\"Nothing\"",
        ),
        "[Iotally.AddRegistry] has no SupportedFeatures",
    );
    assert_caught(
        &mutated("SupportedFeatures  = 0xB", "SupportedFeatures  = 0x3"),
        "SupportedFeatures is 0x00010001 0x3",
    );
    assert_caught(
        &mutated(
            "HKR,,\"SupportedFeatures\"",
            "HKR,\"Parameters\",\"SupportedFeatures\"",
        ),
        "[IotallyDownlevel.AddRegistry] has no SupportedFeatures under \"\"",
    );
}

/// The INX installed the way Windows Setup does (fltsim's installer) on each build: nothing before
/// the floor, the downlevel layout up to 25951, the Parameters layout from 25952; and on every build
/// where it installs, iotally registers and attaches.
#[test]
fn setup_installs_the_right_layout_on_each_build_and_iotally_loads() {
    use fltsim::registry::{self, Value};
    use fltsim::{FileSystem, Sim, VolumeSpec};

    let service = fltsim::service::service_key("iotally");
    for (build, section) in [
        (18_363, None),
        (19_041, Some("DefaultInstall.NTamd64.10.0...19041")),
        (22_631, Some("DefaultInstall.NTamd64.10.0...19041")),
        (25_952, Some("DefaultInstall.NTamd64.10.0...25952")),
        (26_100, Some("DefaultInstall.NTamd64.10.0...25952")),
    ] {
        let sim = Sim::new();
        sim.set_os_build(build);
        let installed = fltsim::inf::install(INX);
        assert_eq!(
            installed.as_ref().ok().map(|i| i.section.as_str()),
            section,
            "build {build}: {installed:?}"
        );
        if section.is_none() {
            assert_eq!(
                sim.load("iotally", iotally::DriverEntry),
                windows_sys::Win32::Foundation::STATUS_OBJECT_NAME_NOT_FOUND
            );
            continue;
        }
        let features = if build >= 25_952 {
            format!(r"{service}\Parameters")
        } else {
            service.clone()
        };
        assert_eq!(
            registry::value(&features, "SupportedFeatures"),
            Some(Value::Dword(0xB)),
            "build {build}"
        );
        assert_eq!(
            sim.load("iotally", iotally::DriverEntry),
            0,
            "build {build}"
        );
        let c = sim.add_volume(VolumeSpec::new(
            r"\Device\HarddiskVolume2",
            FileSystem::Ntfs,
        ));
        assert!(sim.instance(c).is_some(), "build {build}");
        assert_eq!(sim.unload(false), 0);
        sim.verifier_report().assert_clean();
    }
}
