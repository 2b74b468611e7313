//! Installing a primitive driver package from its INF, as Windows Setup does, into the simulated
//! registry: the `[DefaultInstall]` section for this architecture and build, its `.Services`
//! section's `AddService` entries and their `AddReg` sections.
//!
//! The rules followed (`docs/kernel-rules.md`, "INF"): "Creating a new primitive driver" (only
//! architecture-decorated `[DefaultInstall.NTamd64...]` sections), "Combining platform extensions with
//! operating system versions" (a `NTamd64.10.0...<build>` decoration applies from that build on, and
//! the most specific section that applies wins; an INF with no section for the running build does
//! not install), "INF `AddService` directive" (the service key's values) and "INF `AddReg` directive"
//! (`HKR` is the service key in a service-install section; flags `0x00000000` write a `REG_SZ`,
//! `0x00010001` a `REG_DWORD`). Files are not copied (fltsim loads drivers from the test process).
//!
//! ```
//! let sim = fltsim::Sim::new();
//! let inf = r#"
//! [Version]
//! Signature = "$WINDOWS NT$"
//! [DefaultInstall.NTamd64.10.0...19041]
//! CopyFiles = Files
//! [DefaultInstall.NTamd64.10.0...19041.Services]
//! AddService = demo,,Demo.Service
//! [Demo.Service]
//! ServiceType = 2
//! StartType = 3
//! ErrorControl = 1
//! ServiceBinary = %12%\demo.sys
//! AddReg = Demo.AddReg
//! [Demo.AddReg]
//! HKR,"Parameters","Level",0x00010001,%Level%
//! [Strings]
//! Level = 7
//! "#;
//! let installed = fltsim::inf::install(inf).unwrap();
//! assert_eq!(installed.section, "DefaultInstall.NTamd64.10.0...19041");
//! assert_eq!(installed.services, ["demo"]);
//! let key = r"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\demo\Parameters";
//! assert_eq!(fltsim::registry::value(key, "Level"), Some(fltsim::registry::Value::Dword(7)));
//! sim.set_os_build(18363);
//! assert!(fltsim::inf::install(inf).is_err(), "no section applies before build 19041");
//! ```

use std::collections::HashMap;
use std::fmt;

use crate::registry::{self, Value};
use crate::service::{os_build, service_key};

/// Why an INF did not install.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InfError {
    /// No `[DefaultInstall.NTamd64...]` section applies to the simulated build.
    NoSectionForBuild(u32),
    /// The INF is not a primitive driver INF (an undecorated `[DefaultInstall]` or a
    /// `[Manufacturer]` section).
    NotPrimitive(String),
    /// A section that a directive names is missing.
    MissingSection(String),
    /// A line the installer does not understand or does not model.
    BadLine {
        /// The section.
        section: String,
        /// The line, as written.
        line: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for InfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSectionForBuild(build) => write!(
                f,
                "no [DefaultInstall.NTamd64...] section applies to Windows 10.0 build {build}: \
                 Setup does not install the package"
            ),
            Self::NotPrimitive(why) => write!(f, "not a primitive driver INF: {why}"),
            Self::MissingSection(name) => write!(f, "section [{name}] is named but missing"),
            Self::BadLine {
                section,
                line,
                reason,
            } => write!(f, "[{section}] {line:?}: {reason}"),
        }
    }
}

impl std::error::Error for InfError {}

/// What an INF installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installation {
    /// The install section Setup chose, e.g. `DefaultInstall.NTamd64.10.0...25952`.
    pub section: String,
    /// The services it added.
    pub services: Vec<String>,
}

/// An INF's sections (lines without comments, in order) and its `[Strings]`.
struct Inf {
    sections: Vec<(String, Vec<String>)>,
    strings: HashMap<String, String>,
}

/// Removes a `;` comment (outside double quotes) and surrounding blanks.
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (index, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => return line[..index].trim(),
            _ => {}
        }
    }
    line.trim()
}

/// Splits `key = value` at the first `=` outside quotes.
fn split_entry(line: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (index, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '=' if !quoted => return Some((line[..index].trim(), line[index + 1..].trim())),
            _ => {}
        }
    }
    None
}

/// Splits a line into comma-separated fields, commas inside quotes excepted.
fn fields(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (index, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(line[start..index].trim());
                start = index + 1;
            }
            _ => {}
        }
    }
    out.push(line[start..].trim());
    out
}

impl Inf {
    fn parse(text: &str) -> Self {
        let mut sections: Vec<(String, Vec<String>)> = Vec::new();
        for raw in text.lines() {
            let line = strip_comment(raw);
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push((name.trim().to_owned(), Vec::new()));
            } else if let Some((_, lines)) = sections.last_mut() {
                lines.push(line.to_owned());
            }
        }
        let strings = sections
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("Strings"))
            .flat_map(|(_, lines)| lines.iter())
            .filter_map(|line| split_entry(line))
            .map(|(key, value)| (key.to_ascii_lowercase(), value.replace('"', "")))
            .collect();
        Self { sections, strings }
    }

    /// A section's lines; names compare without case.
    fn section(&self, name: &str) -> Option<&[String]> {
        self.sections
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, lines)| lines.as_slice())
    }

    /// `%token%` replaced from `[Strings]` (a `%n%` DIRID stays), quotes removed.
    fn resolve(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            out.push_str(&rest[..start]);
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
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
        out.replace('"', "")
    }

    /// The resolved values of every `key = ...` entry of `section`.
    fn entries<'a>(&'a self, section: &'a str, key: &'a str) -> impl Iterator<Item = String> + 'a {
        self.section(section)
            .unwrap_or_default()
            .iter()
            .filter_map(move |line| {
                split_entry(line)
                    .filter(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, value)| value)
            })
            .map(|value| self.resolve(value))
    }
}

/// The build from which a `DefaultInstall` section name applies on x64 Windows 10.0, or `None` if
/// it is not an x64 install section (or targets another OS version).
fn applies_from(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    let decoration = lower.strip_prefix("defaultinstall.ntamd64")?;
    if decoration.is_empty() {
        return Some(0);
    }
    let parts: Vec<&str> = decoration.strip_prefix('.')?.split('.').collect();
    // nt[Architecture][.[OSMajorVersion][.[OSMinorVersion][.[ProductType][.[SuiteMask]][.[BuildNumber]]]]]
    let number = |index: usize| -> Option<u32> {
        match parts.get(index) {
            None | Some(&"") => Some(0),
            Some(text) => text.parse().ok(),
        }
    };
    let (major, minor) = (number(0)?, number(1)?);
    if parts.len() > 5 || (major, minor) > (10, 0) || !matches!(parts.get(2), None | Some(&"")) {
        return None;
    }
    if parts.get(3).is_some_and(|mask| !mask.is_empty()) {
        return None;
    }
    number(4)
}

/// Installs the driver package `inf` for the simulated build ([`crate::service::os_build`]):
/// chooses the install section, adds its services with their values, and applies their `AddReg`
/// sections with `HKR` = the service key.
///
/// # Errors
/// [`InfError`] if no install section applies to the build, the INF is not a primitive driver
/// INF, a named section is missing, or a line is not understood. Nothing is written to the
/// registry unless the whole INF is understood.
pub fn install(inf: &str) -> Result<Installation, InfError> {
    let inf = Inf::parse(inf);
    for forbidden in ["DefaultInstall", "Manufacturer"] {
        if inf.section(forbidden).is_some() {
            return Err(InfError::NotPrimitive(format!(
                "it has a [{forbidden}] section"
            )));
        }
    }
    let build = os_build();
    let section = inf
        .sections
        .iter()
        .filter(|(name, _)| !name.to_ascii_lowercase().ends_with(".services"))
        .filter_map(|(name, _)| applies_from(name).map(|from| (from, name)))
        .filter(|&(from, _)| from <= build)
        .max_by_key(|&(from, _)| from)
        .map(|(_, name)| name.clone())
        .ok_or(InfError::NoSectionForBuild(build))?;
    let mut writes: Vec<(String, String, Value)> = Vec::new();
    let mut services = Vec::new();
    let services_section = format!("{section}.Services");
    for add_service in inf.entries(&services_section, "AddService") {
        let parts: Vec<&str> = fields(&add_service);
        let (Some(name), Some(install)) = (parts.first(), parts.get(2)) else {
            return Err(InfError::BadLine {
                section: services_section.clone(),
                line: add_service.clone(),
                reason: "AddService needs a name, flags and a service-install section".into(),
            });
        };
        let key = service_key(name);
        service_values(&inf, install, &key, &mut writes)?;
        services.push((*name).to_owned());
    }
    for (key, name, value) in writes {
        if name.is_empty() {
            registry::create_key(&key);
        } else {
            registry::set_value(&key, &name, value);
        }
    }
    Ok(Installation { section, services })
}

/// The service key's values from service-install section `install`, and its `AddReg` sections.
fn service_values(
    inf: &Inf,
    install: &str,
    key: &str,
    writes: &mut Vec<(String, String, Value)>,
) -> Result<(), InfError> {
    let lines = inf
        .section(install)
        .ok_or_else(|| InfError::MissingSection(install.to_owned()))?;
    writes.push((key.to_owned(), String::new(), Value::Dword(0)));
    for line in lines {
        let Some((entry, value)) = split_entry(line) else {
            continue;
        };
        let value = inf.resolve(value);
        let bad = |reason: &str| InfError::BadLine {
            section: install.to_owned(),
            line: line.clone(),
            reason: reason.to_owned(),
        };
        let (name, value) = match entry.to_ascii_lowercase().as_str() {
            "servicetype" => ("Type", dword(&value).ok_or_else(|| bad("not a number"))?),
            "starttype" => ("Start", dword(&value).ok_or_else(|| bad("not a number"))?),
            "errorcontrol" => (
                "ErrorControl",
                dword(&value).ok_or_else(|| bad("not a number"))?,
            ),
            "servicebinary" => ("ImagePath", Value::String(image_path(&value))),
            "loadordergroup" => ("Group", Value::String(value)),
            "dependencies" => ("DependOnService", Value::String(value)),
            "displayname" => ("DisplayName", Value::String(value)),
            "description" => ("Description", Value::String(value)),
            "addreg" => {
                for section in value.split(',').map(str::trim) {
                    add_registry(inf, section, key, writes)?;
                }
                continue;
            }
            _ => continue,
        };
        writes.push((key.to_owned(), name.to_owned(), value));
    }
    Ok(())
}

/// Applies `HKR,subkey,name,flags,value` lines of an add-registry section, `HKR` being `key`.
fn add_registry(
    inf: &Inf,
    section: &str,
    key: &str,
    writes: &mut Vec<(String, String, Value)>,
) -> Result<(), InfError> {
    let lines = inf
        .section(section)
        .ok_or_else(|| InfError::MissingSection(section.to_owned()))?;
    for line in lines {
        let parts: Vec<String> = fields(line).iter().map(|f| inf.resolve(f)).collect();
        let bad = |reason: &str| InfError::BadLine {
            section: section.to_owned(),
            line: line.clone(),
            reason: reason.to_owned(),
        };
        let [root, subkey, name, flags, value] = parts.as_slice() else {
            return Err(bad("expected reg-root,subkey,value-name,flags,value"));
        };
        if !root.eq_ignore_ascii_case("HKR") {
            return Err(bad("not modeled: only HKR (the service key) is"));
        }
        let target = if subkey.is_empty() {
            key.to_owned()
        } else {
            format!(r"{key}\{subkey}")
        };
        let flags = parse_number(flags).ok_or_else(|| bad("flags are not a number"))?;
        let value = match flags {
            0x0000_0000 => Value::String(value.clone()),
            0x0001_0001 => dword(value).ok_or_else(|| bad("a REG_DWORD value is not a number"))?,
            _ => {
                return Err(bad(
                    "not modeled: flags other than REG_SZ (0) or REG_DWORD (0x10001)",
                ));
            }
        };
        writes.push((target, name.clone(), value));
    }
    Ok(())
}

/// A decimal or `0x` hexadecimal number.
fn parse_number(text: &str) -> Option<u32> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn dword(text: &str) -> Option<Value> {
    parse_number(text).map(Value::Dword)
}

/// `ServiceBinary` as the `ImagePath` Setup writes: DIRID 12 is `%windir%\System32\drivers`, DIRID
/// 13 the driver store.
fn image_path(binary: &str) -> String {
    if let Some(file) = binary.strip_prefix(r"%12%\") {
        format!(r"\SystemRoot\System32\drivers\{file}")
    } else if let Some(file) = binary.strip_prefix(r"%13%\") {
        format!(r"\SystemRoot\System32\DriverStore\FileRepository\{file}")
    } else {
        binary.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::{applies_from, fields, parse_number};

    #[test]
    fn decorations_say_from_which_build_a_section_applies() {
        assert_eq!(applies_from("DefaultInstall.NTamd64"), Some(0));
        assert_eq!(
            applies_from("defaultinstall.ntamd64.10.0...25952"),
            Some(25_952)
        );
        assert_eq!(applies_from("DefaultInstall.NTamd64.10.0"), Some(0));
        assert_eq!(applies_from("DefaultInstall.NTx86.10.0...19041"), None);
        assert_eq!(
            applies_from("DefaultInstall.NTamd64.10.0.1..19041"),
            None,
            "product type"
        );
        assert_eq!(
            applies_from("DefaultInstall.NTamd64.11.0...19041"),
            None,
            "later OS"
        );
        assert_eq!(applies_from("DefaultInstall.NTamd64.10.0...x"), None);
    }

    #[test]
    fn fields_keep_quoted_commas() {
        assert_eq!(
            fields(r#"HKR,"a,b",c, 0x1 ,"#),
            ["HKR", r#""a,b""#, "c", "0x1", ""]
        );
        assert_eq!(parse_number("0x00010001"), Some(0x1_0001));
        assert_eq!(parse_number("12"), Some(12));
        assert_eq!(parse_number("x"), None);
    }
}
