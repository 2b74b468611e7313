//! What the WDK's `stampinf` does to an `.inx` to make the `.inf`, for the part the Linux package
//! needs: set `DriverVer = mm/dd/yyyy,w.x.y.z` in `[Version]`, replacing an existing `DriverVer`
//! line or adding one at the end of the section. Every other line is kept byte for byte.

use std::fmt;

/// A calendar date (proleptic Gregorian, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    /// Year, e.g. 2026.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
}

impl Date {
    /// The UTC date `seconds` after the Unix epoch.
    #[must_use]
    pub fn from_unix_seconds(seconds: i64) -> Self {
        // Days to civil date, after Howard Hinnant's public-domain `civil_from_days`.
        let days = seconds.div_euclid(86_400) + 719_468;
        let era = days.div_euclid(146_097);
        let day_of_era = days.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Date {
            year,
            month: u32::try_from(month).expect("month is 1..=12"),
            day: u32::try_from(day).expect("day is 1..=31"),
        }
    }
}

impl fmt::Display for Date {
    /// The INF `DriverVer` date form, `mm/dd/yyyy`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}/{:02}/{:04}", self.month, self.day, self.year)
    }
}

/// Why an `.inx` could not be stamped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StampError {
    /// The file has no `[Version]` section.
    NoVersionSection,
    /// The crate version cannot be written as `w.x.y.z` with parts up to 65535.
    BadVersion(String),
}

impl fmt::Display for StampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVersionSection => write!(f, "the INX has no [Version] section"),
            Self::BadVersion(v) => {
                write!(
                    f,
                    "version {v} does not fit DriverVer's w.x.y.z (each 0-65535)"
                )
            }
        }
    }
}

impl std::error::Error for StampError {}

/// `0.1.0` (or `0.1.0-rc.1`) as `DriverVer`'s four-part `0.1.0.0`.
///
/// # Errors
/// [`StampError::BadVersion`] if a part is not a number up to 65535 or there are more than four.
pub fn driver_version(crate_version: &str) -> Result<String, StampError> {
    let core = crate_version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    let bad = || StampError::BadVersion(crate_version.to_owned());
    if parts.is_empty() || parts.len() > 4 || parts.iter().any(|p| p.parse::<u16>().is_err()) {
        return Err(bad());
    }
    let mut numbers: Vec<&str> = parts;
    numbers.resize(4, "0");
    Ok(numbers.join("."))
}

/// Name of the section a line opens, if it is a section header (`[Name]`, comments allowed after).
fn section_name(line: &str) -> Option<&str> {
    let line = line.trim();
    let rest = line.strip_prefix('[')?;
    let end = rest.find(']')?;
    Some(rest[..end].trim())
}

/// Key of an `key = value` line (comments and blank lines have none).
fn line_key(line: &str) -> Option<&str> {
    let code = line.split(';').next().unwrap_or_default();
    let (key, _) = code.split_once('=')?;
    Some(key.trim())
}

/// Stamps `DriverVer = <date>,<version>` into the `[Version]` section of `inx`.
///
/// # Errors
/// [`StampError`] if there is no `[Version]` section or the version does not fit.
pub fn stamp_driver_ver(inx: &str, date: Date, crate_version: &str) -> Result<String, StampError> {
    let value = format!("{date},{}", driver_version(crate_version)?);
    let newline = if inx.contains("\r\n") { "\r\n" } else { "\n" };
    let lines: Vec<&str> = inx.split_inclusive('\n').collect();

    let start = lines
        .iter()
        .position(|l| section_name(l).is_some_and(|n| n.eq_ignore_ascii_case("Version")))
        .ok_or(StampError::NoVersionSection)?;
    let end = lines[start + 1..]
        .iter()
        .position(|l| section_name(l).is_some())
        .map_or(lines.len(), |i| start + 1 + i);

    let existing = (start + 1..end)
        .find(|&i| line_key(lines[i]).is_some_and(|k| k.eq_ignore_ascii_case("DriverVer")));
    let driver_ver_line = |ending: &str| format!("DriverVer   = {value}{ending}");
    let mut out = String::with_capacity(inx.len() + 40);
    if let Some(index) = existing {
        for (i, line) in lines.iter().enumerate() {
            if i == index {
                out.push_str(&driver_ver_line(if line.ends_with('\n') {
                    newline
                } else {
                    ""
                }));
            } else {
                out.push_str(line);
            }
        }
    } else {
        // After the last `key = value` line of the section.
        let after = (start + 1..end)
            .rev()
            .find(|&i| line_key(lines[i]).is_some())
            .unwrap_or(start);
        for (i, line) in lines.iter().enumerate() {
            out.push_str(line);
            if i == after {
                if !line.ends_with('\n') {
                    out.push_str(newline);
                }
                out.push_str(&driver_ver_line(newline));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{Date, StampError, driver_version, stamp_driver_ver};

    const DAY: Date = Date {
        year: 2026,
        month: 11,
        day: 22,
    };

    #[test]
    fn unix_seconds_become_utc_dates() {
        assert_eq!(
            Date::from_unix_seconds(0),
            Date {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        // 2026-11-22T03:00:00Z
        assert_eq!(Date::from_unix_seconds(1_795_316_400), DAY);
        // 2024-02-29T23:59:59Z, a leap day
        assert_eq!(
            Date::from_unix_seconds(1_709_251_199),
            Date {
                year: 2024,
                month: 2,
                day: 29
            }
        );
        assert_eq!(DAY.to_string(), "11/22/2026");
    }

    #[test]
    fn crate_versions_become_four_parts() {
        assert_eq!(driver_version("0.1.0").unwrap(), "0.1.0.0");
        assert_eq!(driver_version("1.2.3-rc.1").unwrap(), "1.2.3.0");
        assert_eq!(driver_version("1.2.3.4").unwrap(), "1.2.3.4");
        assert!(matches!(
            driver_version("70000.0.0"),
            Err(StampError::BadVersion(_))
        ));
        assert!(matches!(
            driver_version("1.x.0"),
            Err(StampError::BadVersion(_))
        ));
    }

    #[test]
    fn adds_driver_ver_at_the_end_of_version_and_keeps_the_rest() {
        let inx = "; c\n[Version]\nSignature = \"$WINDOWS NT$\"\nPnpLockdown = 1 ; x\n\n[Strings]\nA = \"b\"\n";
        let inf = stamp_driver_ver(inx, DAY, "0.1.0").unwrap();
        assert_eq!(
            inf,
            "; c\n[Version]\nSignature = \"$WINDOWS NT$\"\nPnpLockdown = 1 ; x\nDriverVer   = 11/22/2026,0.1.0.0\n\n[Strings]\nA = \"b\"\n"
        );
    }

    #[test]
    fn replaces_an_existing_driver_ver_and_keeps_crlf() {
        let inx = "[version]\r\ndriverver = 01/01/2000,9.9.9.9\r\nClass = X\r\n";
        let inf = stamp_driver_ver(inx, DAY, "0.2.0").unwrap();
        assert_eq!(
            inf,
            "[version]\r\nDriverVer   = 11/22/2026,0.2.0.0\r\nClass = X\r\n"
        );
    }

    #[test]
    fn needs_a_version_section() {
        assert_eq!(
            stamp_driver_ver("[Strings]\n", DAY, "0.1.0"),
            Err(StampError::NoVersionSection)
        );
    }
}
