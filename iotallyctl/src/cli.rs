//! The command line: parsing (clap) and running a command against a [`Client`].

use std::io::Write;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use iotally_protocol::{MAX_TOP, SortKey};

use crate::client::{Client, Error};
use crate::render::{self, MetricsFormat};
use crate::transport::Transport;

/// Reads the per-file I/O tallies of the iotally minifilter.
#[derive(Parser, Debug)]
#[command(name = "iotallyctl", version)]
pub struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses `iotallyctl`'s arguments (without the program name).
    ///
    /// # Errors
    /// clap's message for arguments that do not parse.
    pub fn from_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        Self::try_parse_from(std::iter::once("iotallyctl").chain(args)).map_err(|e| e.to_string())
    }
}

/// The counter `top` ranks by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum By {
    /// Opens.
    Opens,
    /// Read requests.
    Reads,
    /// Write requests.
    Writes,
    /// Bytes read.
    BytesRead,
    /// Bytes written.
    BytesWritten,
    /// Bytes read and written.
    Bytes,
    /// Latest activity.
    LastSeen,
}

impl From<By> for SortKey {
    fn from(by: By) -> Self {
        match by {
            By::Opens => Self::Opens,
            By::Reads => Self::Reads,
            By::Writes => Self::Writes,
            By::BytesRead => Self::BytesRead,
            By::BytesWritten => Self::BytesWritten,
            By::Bytes => Self::Bytes,
            By::LastSeen => Self::LastSeen,
        }
    }
}

/// The text format of `metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `OpenMetrics` 1.0.
    Openmetrics,
    /// Prometheus text 0.0.4 (for textfile collectors that predate `OpenMetrics`).
    Prometheus,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Every volume iotally is attached to, with its table's statistics.
    Instances,
    /// The busiest files of a volume.
    Top {
        /// A drive letter (`C:`) or a device name (`\Device\HarddiskVolume3`).
        volume: String,
        /// What to rank by.
        #[arg(long, value_enum, default_value_t = By::Bytes)]
        by: By,
        /// How many files.
        #[arg(short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_TOP)))]
        n: u32,
    },
    /// Every file the driver tallies on a volume.
    Dump {
        /// A drive letter or a device name.
        volume: String,
        /// Entries per request (0: the driver's page size).
        #[arg(long, default_value_t = 0, hide = true)]
        page: u32,
    },
    /// The tallies of one file, by its path (`C:\dir\file.txt` or a device path).
    File {
        /// The path.
        path: String,
    },
    /// Empties a volume's table (or every table with `--all`) and zeroes its statistics.
    Reset {
        /// A drive letter or a device name.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        volume: Option<String>,
        /// Every volume.
        #[arg(long)]
        all: bool,
    },
    /// A live view: the volumes with per-second rates, and the busiest files of one, refreshed.
    Watch {
        /// Show this volume's busiest files too.
        volume: Option<String>,
        /// What to rank files by.
        #[arg(long, value_enum, default_value_t = By::Bytes)]
        by: By,
        /// How many files.
        #[arg(short = 'n', default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_TOP)))]
        n: u32,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes (default: until `q` or Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
    /// The statistics of every volume in `OpenMetrics` text, for `windows_exporter`'s textfile
    /// collector (write it to a `.prom` file) and so Prometheus.
    Metrics {
        /// The text format.
        #[arg(long, value_enum, default_value_t = Format::Openmetrics)]
        format: Format,
    },
}

/// Why a command failed: the client's error, or writing the output.
#[derive(Debug)]
pub enum Failure {
    /// The driver or the transport.
    Client(Error),
    /// The output.
    Io(std::io::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(e) => e.fmt(f),
            Self::Io(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Client(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Self::Io(e.into())
    }
}

/// How `watch` shows its frames.
pub trait Screen {
    /// Shows `frame`, replacing the previous one.
    ///
    /// # Errors
    /// Writing failed.
    fn show(&mut self, frame: &str) -> std::io::Result<()>;
    /// Waits `interval`; `false` if the user asked to quit.
    ///
    /// # Errors
    /// Reading the terminal failed.
    fn wait(&mut self, interval: Duration) -> std::io::Result<bool>;
}

/// Frames printed one after another to a writer (not a terminal, or tests).
pub struct Batch<W>(pub W);

impl<W: Write> Screen for Batch<W> {
    fn show(&mut self, frame: &str) -> std::io::Result<()> {
        writeln!(self.0, "{frame}")
    }

    fn wait(&mut self, interval: Duration) -> std::io::Result<bool> {
        std::thread::sleep(interval);
        Ok(true)
    }
}

fn json<T: serde::Serialize>(out: &mut dyn Write, value: &T) -> Result<(), Failure> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Runs `cli` against `client`, writing to `out` (and `watch` frames to `screen`).
///
/// # Errors
/// The first failure of the driver, the transport or the output.
pub fn run<T: Transport>(
    cli: &Cli,
    client: &mut Client<T>,
    out: &mut dyn Write,
    screen: &mut dyn Screen,
) -> Result<(), Failure> {
    // Every command starts with hello: a driver of another protocol version is told apart here.
    let hello = client.hello()?;
    match &cli.command {
        Command::Instances => {
            let (_, instances) = client.instances()?;
            if cli.json {
                json(
                    out,
                    &serde_json::json!({ "driver": hello, "instances": instances }),
                )?;
            } else {
                write!(out, "{}", render::instances(&instances))?;
            }
        }
        Command::Top { volume, by, n } => {
            let files = client.top(volume, (*by).into(), *n)?;
            if cli.json {
                json(out, &files)?;
            } else {
                write!(out, "{}", render::files(&files, &client.resolve(volume)))?;
            }
        }
        Command::Dump { volume, page } => {
            let files = client.dump(volume, *page)?;
            if cli.json {
                json(out, &files)?;
            } else {
                write!(out, "{}", render::files(&files, &client.resolve(volume)))?;
            }
        }
        Command::File { path } => {
            let files = client.lookup(path)?;
            if cli.json {
                json(out, &files)?;
            } else {
                write!(out, "{}", render::file_details(&files))?;
            }
        }
        Command::Reset { volume, all } => {
            let reset = client.reset(if *all { None } else { volume.as_deref() })?;
            if cli.json {
                json(out, &reset)?;
            } else {
                writeln!(
                    out,
                    "reset {} instance(s): {} entries removed",
                    reset.instances, reset.entries_removed
                )?;
            }
        }
        Command::Metrics { format } => {
            let (_, instances) = client.instances()?;
            let format = match format {
                Format::Openmetrics => MetricsFormat::OpenMetrics,
                Format::Prometheus => MetricsFormat::Prometheus,
            };
            write!(out, "{}", render::metrics(&instances, format))?;
        }
        Command::Watch {
            volume,
            by,
            n,
            interval,
            count,
        } => watch(
            cli.json,
            client,
            screen,
            volume.as_deref(),
            (*by).into(),
            *n,
            Duration::from_secs_f64(interval.max(0.0)),
            *count,
        )?,
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // the command's options
fn watch<T: Transport>(
    as_json: bool,
    client: &mut Client<T>,
    screen: &mut dyn Screen,
    volume: Option<&str>,
    by: SortKey,
    n: u32,
    interval: Duration,
    count: Option<u64>,
) -> Result<(), Failure> {
    let mut previous = None;
    let mut shown = 0_u64;
    loop {
        let (now, instances) = client.instances()?;
        let top = volume.map(|v| client.top(v, by, n)).transpose()?;
        let resolved = volume.map(|v| client.resolve(v));
        let frame = if as_json {
            serde_json::to_string(&serde_json::json!({
                "system_time": now, "instances": instances, "top": top,
            }))?
        } else {
            render::watch_frame(
                now,
                &instances,
                previous
                    .as_ref()
                    .map(|(at, list): &(i64, Vec<_>)| (*at, list.as_slice())),
                top.as_ref().zip(resolved.as_deref()),
            )
        };
        screen.show(&frame)?;
        shown += 1;
        if count.is_some_and(|c| shown >= c) || !screen.wait(interval)? {
            return Ok(());
        }
        previous = Some((now, instances));
    }
}
