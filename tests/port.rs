//! The communication port end to end: `iotallyctl`'s commands against the driver in fltsim, the
//! connection rules, and every class of malformed request.

mod common;

use std::collections::BTreeMap;

use common::Loaded;
use fltsim::{Caller, FileSystem, Input, OpenOptions, Output, Volume};
use iotally_protocol::request::{Request, encode, encoded_len};
use iotally_protocol::{Cursor, ErrorDetail, MAX_REQUEST_BYTES, SortKey, reply};
use iotallyctl::cli::{Batch, Cli, run};
use iotallyctl::client::{Client, Error};
use iotallyctl::sim::SimPort;
use iotallyctl::transport::ConnectError;
use windows_sys::Win32::Foundation::{
    STATUS_ACCESS_VIOLATION, STATUS_BUFFER_TOO_SMALL, STATUS_DATATYPE_MISALIGNMENT,
    STATUS_FLT_INSTANCE_NOT_FOUND, STATUS_INVALID_PARAMETER, STATUS_INVALID_USER_BUFFER,
    STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};

const C: &str = r"\Device\HarddiskVolume2";
const D: &str = r"\Device\HarddiskVolume3";
const DRIVES: [(&str, &str); 2] = [("C:", C), ("D:", D)];

/// iotally with two volumes and a small scripted workload.
fn workload() -> (Loaded, Volume, Volume) {
    let t = Loaded::new();
    let c = t.volume(2, FileSystem::Ntfs);
    let d = t.volume(3, FileSystem::Refs);
    for (i, name) in ["a.txt", "b.bin", "c.log", "d.dat", "e.rs"]
        .iter()
        .enumerate()
    {
        let path = format!(r"\{name}");
        t.sim.create_file(c, &path, 0);
        let mut h = t.sim.open(c, &path, OpenOptions::open()).unwrap();
        for k in 0..=i {
            h.read(100 * (u32::try_from(k).unwrap() + 1), 0);
        }
        h.write(7 * u32::try_from(i).unwrap(), 0);
        assert_eq!(h.close(), 0);
    }
    t.sim.create_file(d, r"\db.mdf", 0);
    let mut h = t.sim.open(d, r"\db.mdf", OpenOptions::open()).unwrap();
    h.write(65_536, 0);
    assert_eq!(h.close(), 0);
    (t, c, d)
}

/// Runs `iotallyctl <args>` against `t`'s driver; returns its output.
fn ctl(t: &Loaded, args: &[&str]) -> Result<String, String> {
    let cli = Cli::from_args(args.iter().copied())?;
    let port =
        SimPort::connect(&t.sim, Caller::Administrator, &DRIVES).map_err(|e| e.to_string())?;
    let mut client = Client::new(port);
    let mut out = Vec::new();
    let mut frames = Vec::new();
    run(&cli, &mut client, &mut out, &mut Batch(&mut frames)).map_err(|e| e.to_string())?;
    out.extend(frames);
    Ok(String::from_utf8(out).unwrap())
}

fn client(t: &Loaded) -> Client<SimPort<'_>> {
    Client::new(SimPort::connect(&t.sim, Caller::Administrator, &DRIVES).unwrap())
}

#[test]
fn top_shows_the_same_numbers_as_the_drivers_tables() {
    let (t, c, _) = workload();
    let tables = t.tallies(c).unwrap();
    let files = client(&t).top("C:", SortKey::Opens, 100).unwrap();
    assert_eq!(files.files.len(), tables.len());
    assert_eq!(files.total as usize, tables.len());
    for f in &files.files {
        let counts = tables[f.name.strip_prefix(C).unwrap()];
        assert_eq!(
            (f.opens, f.reads, f.writes, f.bytes_read, f.bytes_written),
            common::totals(&counts),
            "{}",
            f.name
        );
        assert_eq!(
            (f.first_seen, f.last_seen),
            (counts.first_seen, counts.last_seen)
        );
    }
    let by_read = client(&t).top("C:", SortKey::BytesRead, 2).unwrap();
    let names: Vec<&str> = by_read.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, [format!(r"{C}\e.rs"), format!(r"{C}\d.dat")]);
    let text = ctl(&t, &["top", "C:", "--by", "bytes-read", "-n", "2"]).unwrap();
    assert!(
        text.contains(r"\e.rs") && text.contains("1.5 KiB"),
        "{text}"
    );
    assert!(text.contains("2 of 5 files tallied"), "{text}");
    t.unload_clean();
}

#[test]
fn every_command_works_end_to_end() {
    let (t, c, _) = workload();
    let instances = ctl(&t, &["instances"]).unwrap();
    assert!(
        instances.contains(&format!("C: {C}")) && instances.contains("refs"),
        "{instances}"
    );
    for stat in iotally::stats::Stat::ALL {
        assert!(
            instances.contains(&stat.name().replace('_', " ")),
            "{instances}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&t, &["instances", "--json"]).unwrap()).unwrap();
    assert_eq!(json["instances"][0]["entries"], 5);
    assert_eq!(json["instances"][0]["stats"][0]["name"], "inserts");
    assert_eq!(json["instances"][0]["stats"][0]["value"], 5);

    let dump: serde_json::Value =
        serde_json::from_str(&ctl(&t, &["dump", "C:", "--page", "2", "--json"]).unwrap()).unwrap();
    assert_eq!(
        dump["files"].as_array().unwrap().len(),
        5,
        "three pages, nothing lost"
    );
    assert!(ctl(&t, &["dump", D]).unwrap().contains(r"\db.mdf"));

    let file = ctl(&t, &["file", r"c:\C.LOG"]).unwrap();
    assert!(
        file.contains("opens  1") && file.contains("reads  3"),
        "{file}"
    );
    let none = ctl(&t, &["file", r"C:\missing"]).unwrap();
    assert!(none.contains("no tallied file"), "{none}");

    let metrics = ctl(&t, &["metrics"]).unwrap();
    check_openmetrics(&metrics);
    assert!(metrics.contains(&format!(
        "iotally_inserts_total{{volume=\"{}\",drive=\"C:\",fs=\"ntfs\"}} 5",
        C.replace('\\', r"\\")
    )));
    let prometheus = ctl(&t, &["metrics", "--format", "prometheus"]).unwrap();
    assert!(
        prometheus.contains("# TYPE iotally_inserts_total counter")
            && !prometheus.contains("# EOF")
    );

    let watch = ctl(&t, &["watch", "C:", "--interval", "0", "--count", "2"]).unwrap();
    assert_eq!(watch.matches("iotally at ").count(), 2, "{watch}");
    assert!(
        watch.contains("opens/s") && watch.contains(r"\e.rs"),
        "{watch}"
    );

    assert!(
        ctl(&t, &["reset", "C:"])
            .unwrap()
            .contains("5 entries removed")
    );
    assert!(t.tallies(c).unwrap().is_empty());
    assert!(t.stats(c).iter().all(|(_, v)| v == 0), "statistics zeroed");
    assert!(
        ctl(&t, &["reset", "--all"])
            .unwrap()
            .contains("reset 2 instance(s): 1 entries removed")
    );
    assert!(ctl(&t, &["reset"]).is_err(), "a volume or --all");
    t.unload_clean();
}

/// Checks `OpenMetrics` text syntax: families (`# TYPE`, `# HELP` once each, before their
/// samples), sample names of their family (`_total` for counters), label syntax and escapes,
/// numeric values, and `# EOF` last.
fn check_openmetrics(text: &str) {
    let name_ok = |n: &str| {
        n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(text.ends_with("# EOF\n"), "ends with # EOF");
    let mut family: Option<(String, String)> = None;
    let mut seen = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" {
            assert_eq!(i, lines.len() - 1, "# EOF is the last line");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                name_ok(name) && ["counter", "gauge"].contains(&kind),
                "{line}"
            );
            assert!(!seen.contains(&name.to_owned()), "family {name} twice");
            assert!(
                !name.ends_with("_total"),
                "counter family names carry no _total"
            );
            seen.push(name.to_owned());
            family = Some((name.to_owned(), kind.to_owned()));
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').unwrap();
            assert_eq!(Some(name), family.as_ref().map(|f| f.0.as_str()), "{line}");
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let (name, labels) = series.split_once('{').unwrap();
            let (fam, kind) = family.as_ref().expect("a sample before any # TYPE");
            let expected = if kind == "counter" {
                format!("{fam}_total")
            } else {
                fam.clone()
            };
            assert_eq!(name, expected, "{line}");
            let labels = labels.strip_suffix('}').unwrap();
            let mut rest = labels;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").unwrap();
                assert!(name_ok(key), "{line}");
                let mut end = None;
                let mut escaped = false;
                for (j, ch) in after.char_indices() {
                    match (escaped, ch) {
                        (true, '\\' | '"' | 'n') => escaped = false,
                        (true, _) => panic!("bad escape in {line}"),
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(j);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.expect("unterminated label value");
                rest = after[end + 1..]
                    .strip_prefix(',')
                    .unwrap_or(&after[end + 1..]);
            }
        }
    }
}

#[test]
fn connection_rules_and_clear_errors() {
    let (t, _, _) = workload();
    let refused = |r: Result<SimPort<'_>, ConnectError>| r.err().unwrap();
    assert_eq!(
        refused(SimPort::connect(&t.sim, Caller::StandardUser, &DRIVES)),
        ConnectError::AccessDenied
    );
    let first = SimPort::connect(&t.sim, Caller::Administrator, &DRIVES).unwrap();
    assert_eq!(
        refused(SimPort::connect(&t.sim, Caller::Administrator, &DRIVES)),
        ConnectError::Busy,
        "one client at a time"
    );
    assert!(ConnectError::Busy.to_string().contains("another client"));
    first.close();
    let mut again = client(&t);
    assert_eq!(
        again.hello().unwrap().instances,
        2,
        "a new client after a disconnect"
    );
    assert_eq!(
        again
            .top(r"\Device\Nowhere", SortKey::Opens, 1)
            .unwrap_err(),
        Error::NoInstance(r"\Device\Nowhere".into())
    );
    drop(again);
    // Unload with a client connected: FltUnregisterFilter disconnects it; everything is released.
    let connected = client(&t);
    assert_eq!(t.sim.unload(false), 0);
    t.sim.verifier_report().assert_clean();
    let mut connected = connected;
    assert!(matches!(connected.hello(), Err(Error::Transport(_))));
    assert_eq!(
        refused(SimPort::connect(&t.sim, Caller::Administrator, &DRIVES)),
        ConnectError::NotLoaded
    );
    assert!(ConnectError::NotLoaded.to_string().contains("not loaded"));
}

/// A raw request's bytes.
fn raw(request: &Request<&[u16]>) -> Vec<u8> {
    let mut bytes = vec![0; encoded_len(request)];
    encode(request, &mut bytes).unwrap();
    bytes
}

fn units(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

#[test]
#[allow(clippy::too_many_lines, clippy::many_single_char_names)] // one table of cases
fn malformed_requests_get_precise_statuses_and_leave_the_tables_intact() {
    let (t, c, d) = workload();
    let before = (t.tallies(c), t.tallies(d), t.stats(c), t.stats(d));
    let volume = units(C);
    let top = raw(&Request::Top {
        volume: &volume,
        by: SortKey::Opens,
        limit: 3,
    });
    let port = t.sim.connect(iotally_protocol::PORT_NAME, &[]).unwrap();
    let send = |input: Input<'_>, output: Output| port.message(input, output);
    let detail = |reply: &fltsim::Reply| {
        reply::header(&reply.buffer)
            .map(|h| (h.status.get(), ErrorDetail::from_wire(h.error.get())))
    };
    let refused = |bytes: &[u8], status, want| {
        let r = send(Input::Bytes(bytes), Output::Buffer(4096));
        assert_eq!(r.status, status, "{want:?}");
        assert_eq!(detail(&r), Some((status, Some(want))));
        assert_eq!(r.returned, 24, "the header alone");
    };
    refused(
        &top[..10],
        STATUS_INVALID_PARAMETER,
        ErrorDetail::InputTooShort,
    );
    let mut long = top.clone();
    long.push(0);
    refused(&long, STATUS_INVALID_PARAMETER, ErrorDetail::LengthMismatch);
    let mut long = top.clone();
    long.push(0);
    let length = u32::try_from(long.len()).unwrap();
    long[8..12].copy_from_slice(&length.to_le_bytes());
    refused(&long, STATUS_INVALID_PARAMETER, ErrorDetail::InputTooLong);
    refused(
        &vec![0; MAX_REQUEST_BYTES as usize + 1],
        STATUS_INVALID_PARAMETER,
        ErrorDetail::InputTooLong,
    );
    let mut version = top.clone();
    version[4] = 2;
    let r = send(Input::Bytes(&version), Output::Buffer(4096));
    assert_eq!(r.status, STATUS_NOT_SUPPORTED);
    assert_eq!(
        reply::header(&r.buffer).unwrap().version.get(),
        1,
        "the driver's version"
    );
    let mut kind = top.clone();
    kind[6] = 77;
    refused(&kind, STATUS_INVALID_PARAMETER, ErrorDetail::UnknownKind);
    let mut by = top.clone();
    by[16] = 9;
    refused(&by, STATUS_INVALID_PARAMETER, ErrorDetail::UnknownSortKey);
    let mut cursor = Cursor::START;
    cursor.state = Cursor::STATE_AFTER.into();
    cursor.token = 12345.into();
    let stale = raw(&Request::Dump {
        volume: &volume,
        max_entries: 0,
        cursor,
    });
    refused(&stale, STATUS_INVALID_PARAMETER, ErrorDetail::BadCursor);
    // A cursor handed out for C: is refused on D:.
    let first_page = raw(&Request::Dump {
        volume: &volume,
        max_entries: 1,
        cursor: Cursor::START,
    });
    let r = send(Input::Bytes(&first_page), Output::Buffer(4096));
    assert_eq!(r.status, STATUS_SUCCESS);
    let h = reply::header(&r.buffer).unwrap();
    let (page, _) = reply::body::<iotally_protocol::FilesReply>(&r.buffer, &h).unwrap();
    let other = units(D);
    let wrong_volume = raw(&Request::Dump {
        volume: &other,
        max_entries: 1,
        cursor: page.next,
    });
    refused(
        &wrong_volume,
        STATUS_INVALID_PARAMETER,
        ErrorDetail::BadCursor,
    );
    let nowhere = units(r"\Device\Nowhere");
    refused(
        &raw(&Request::ResetVolume { volume: &nowhere }),
        STATUS_FLT_INSTANCE_NOT_FOUND,
        ErrorDetail::NoSuchInstance,
    );
    refused(&[], STATUS_INVALID_PARAMETER, ErrorDetail::InputMissing);

    // Output buffers: none, too short for a header, misaligned, too small for the answer.
    assert_eq!(
        send(Input::Bytes(&top), Output::Null).status,
        STATUS_INVALID_PARAMETER
    );
    let short = send(Input::Bytes(&top), Output::Buffer(16));
    assert_eq!((short.status, short.returned), (STATUS_BUFFER_TOO_SMALL, 0));
    assert!(short.buffer.iter().all(|&b| b == 0), "nothing written");
    let misaligned = send(Input::Bytes(&top), Output::Misaligned(4096));
    assert_eq!(
        (misaligned.status, misaligned.returned),
        (STATUS_DATATYPE_MISALIGNMENT, 0)
    );
    let small = send(Input::Bytes(&top), Output::Buffer(100));
    assert_eq!(small.status, STATUS_BUFFER_TOO_SMALL);
    let needed = reply::header(&small.buffer).unwrap().needed.get();
    assert!(needed > 100);
    let enough = send(Input::Bytes(&top), Output::Buffer(needed));
    assert_eq!((enough.status, enough.returned), (STATUS_SUCCESS, needed));

    // Invalid user buffers: refused without a fault, nothing written.
    let unmapped_input = send(Input::Unmapped(64), Output::Buffer(4096));
    assert_eq!(unmapped_input.status, STATUS_INVALID_USER_BUFFER);
    let probe = send(Input::Bytes(&top), Output::Unmapped(4096));
    assert_eq!(
        (probe.status, probe.delivered),
        (STATUS_ACCESS_VIOLATION, false)
    );
    let gone = send(Input::Bytes(&top), Output::UnmappedAfterProbe(4096));
    assert_eq!(
        (gone.status, gone.returned, gone.delivered),
        (STATUS_INVALID_USER_BUFFER, 0, true)
    );
    let read_only = send(Input::Bytes(&top), Output::ReadOnlyAfterProbe(4096));
    assert_eq!(read_only.status, STATUS_INVALID_USER_BUFFER);
    assert!(read_only.buffer.iter().all(|&b| b == 0), "nothing written");
    // A misaligned input is fine: it is copied before it is read.
    let copied = send(Input::Misaligned(&top), Output::Buffer(4096));
    assert_eq!(copied.status, STATUS_SUCCESS);

    drop(port);
    assert_eq!((t.tallies(c), t.tallies(d), t.stats(c), t.stats(d)), before);
    t.unload_clean();
}

#[test]
fn a_dump_sees_every_file_that_stays_exactly_once_while_the_table_changes() {
    let (t, c, _) = workload();
    let volume = units(C);
    let port = t.sim.connect(iotally_protocol::PORT_NAME, &[]).unwrap();
    let mut cursor = Cursor::START;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut pages = 0;
    loop {
        let request = raw(&Request::Dump {
            volume: &volume,
            max_entries: 2,
            cursor,
        });
        let r = port.message(Input::Bytes(&request), Output::Buffer(4096));
        assert_eq!(r.status, STATUS_SUCCESS);
        let h = reply::header(&r.buffer).unwrap();
        let (page, rest) = reply::body::<iotally_protocol::FilesReply>(&r.buffer, &h).unwrap();
        for record in reply::file_records(rest, page.count.get()) {
            let (_, name) = record.unwrap();
            let name: Vec<u16> = name.iter().map(|u| u.get()).collect();
            *seen.entry(String::from_utf16_lossy(&name)).or_default() += 1;
        }
        // New files arrive between the first pages; the table rehashes as it grows.
        for i in 0..if pages < 3 { 20 } else { 0 } {
            let path = format!(r"\new-{pages}-{i}");
            t.sim.create_file(c, &path, 0);
            drop(t.sim.open(c, &path, OpenOptions::open()).unwrap());
        }
        pages += 1;
        if page.next.is_end() {
            break;
        }
        cursor = page.next;
        assert!(pages < 100);
    }
    for name in ["a.txt", "b.bin", "c.log", "d.dat", "e.rs"] {
        assert_eq!(
            seen.get(&format!(r"{C}\{name}")),
            Some(&1),
            "{name}: {seen:?}"
        );
    }
    assert!(seen.values().all(|&n| n == 1), "no file twice: {seen:?}");
    drop(port);
    t.unload_clean();
}
