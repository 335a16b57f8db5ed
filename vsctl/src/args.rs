//! Command-line parsing with ovs-vsctl's grammar:
//! `vsctl [GLOBAL-OPTIONS] [CMD-OPTIONS] COMMAND ARGS [-- [CMD-OPTIONS] COMMAND ARGS]...`
//!
//! clap does not fit this grammar (options between chained commands, `--` as a
//! separator rather than end-of-options), so it is parsed by hand.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone)]
pub struct Global {
    /// Control socket path.
    pub socket: PathBuf,
    pub timeout: Duration,
    pub format: Format,
    /// `--format=table` was asked for (list and find print records otherwise).
    pub table_asked: bool,
    pub no_headings: bool,
    /// `--data=json`: values in OVSDB's JSON notation.
    pub data_json: bool,
    /// `--bare`: values only, no column names or headings.
    pub bare: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub may_exist: bool,
    pub if_exists: bool,
    /// `--strict` for del-flows / mod-flows: select by exact priority and match.
    pub strict: bool,
    /// `--columns=a,b`: list/find print only these columns, in this order.
    pub columns: Option<Vec<String>>,
    pub name: String,
    pub args: Vec<String>,
}

pub enum Parsed {
    Run(Global, Vec<Command>),
    Help,
    Version,
}

/// Default wait for an answer; vsctl never waits forever.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

fn default_socket() -> PathBuf {
    let rundir = std::env::var_os("VSWITCH_RUNDIR").map_or_else(
        || PathBuf::from(vswitchd::rpc::DEFAULT_RUNDIR),
        PathBuf::from,
    );
    rundir.join(vswitchd::rpc::SOCKET_NAME)
}

fn parse_db(v: &str) -> Result<PathBuf, String> {
    match v.strip_prefix("unix:") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(format!("--db: \"{v}\" is not of the form unix:PATH")),
    }
}

pub fn parse(argv: &[String]) -> Result<Parsed, String> {
    let mut g = Global {
        socket: default_socket(),
        timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        format: Format::Table,
        table_asked: false,
        no_headings: false,
        data_json: false,
        bare: false,
    };
    let mut cmds = Vec::new();
    let mut cur = Command::default();
    let mut i = 0;
    // Fetches the value of an option given as `--opt=v` or `--opt v`.
    let value = |i: &mut usize, inline: Option<&str>, opt: &str| -> Result<String, String> {
        if let Some(v) = inline {
            return Ok(v.to_string());
        }
        *i += 1;
        argv.get(*i)
            .cloned()
            .ok_or_else(|| format!("option '{opt}' requires an argument"))
    };
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" {
            if !cur.name.is_empty() {
                cmds.push(std::mem::take(&mut cur));
            }
            i += 1;
            continue;
        }
        if cur.name.is_empty() && a.starts_with('-') && a.len() > 1 {
            let (opt, inline) = match a.split_once('=') {
                Some((o, v)) => (o, Some(v)),
                None => (a.as_str(), None),
            };
            match opt {
                "-h" | "--help" => return Ok(Parsed::Help),
                "-V" | "--version" => return Ok(Parsed::Version),
                "--may-exist" => cur.may_exist = true,
                "--if-exists" => cur.if_exists = true,
                "--strict" => cur.strict = true,
                "--db" => g.socket = parse_db(&value(&mut i, inline, opt)?)?,
                "-t" | "--timeout" => {
                    let v = value(&mut i, inline, opt)?;
                    let secs: u64 = v
                        .parse()
                        .map_err(|_| format!("--timeout: \"{v}\" is not a number of seconds"))?;
                    // ovs-vsctl: 0 means wait forever; we cap it instead of hanging.
                    g.timeout = Duration::from_secs(if secs == 0 { 24 * 3600 } else { secs });
                }
                "-f" | "--format" => {
                    let f = value(&mut i, inline, opt)?;
                    g.table_asked = f == "table";
                    g.format = match f.as_str() {
                        "json" => Format::Json,
                        "table" | "list" => Format::Table,
                        other => {
                            return Err(format!(
                            "--format: unknown format \"{other}\" (expected list, table or json)"
                        ))
                        }
                    }
                }
                "-d" | "--data" => {
                    g.data_json = match value(&mut i, inline, opt)?.as_str() {
                        "json" => true,
                        "string" | "bare" => false,
                        other => {
                            return Err(format!(
                                "--data: unknown format \"{other}\" (expected string, bare or json)"
                            ))
                        }
                    }
                }
                "--bare" => {
                    g.bare = true;
                    g.no_headings = true;
                }
                "--columns" => {
                    cur.columns = Some(
                        value(&mut i, inline, opt)?
                            .split(',')
                            .map(|c| c.trim().to_string())
                            .filter(|c| !c.is_empty())
                            .collect(),
                    )
                }
                "--no-headings" => g.no_headings = true,
                // Accepted for ovs-vsctl compatibility; they do not change anything here.
                "--no-wait" | "-v" | "--verbose" | "--oneline" | "--dry-run" | "--no-syslog" => {}
                _ => return Err(format!("unrecognized option '{a}'")),
            }
            i += 1;
            continue;
        }
        if cur.name.is_empty() {
            cur.name = a.clone();
        } else {
            cur.args.push(a.clone());
        }
        i += 1;
    }
    if !cur.name.is_empty() {
        cmds.push(cur);
    } else if cur.may_exist || cur.if_exists {
        return Err("missing command name after option".into());
    }
    if cmds.is_empty() {
        return Err("missing command name (use --help for help)".into());
    }
    Ok(Parsed::Run(g, cmds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> (Global, Vec<Command>) {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&v).unwrap() {
            Parsed::Run(g, c) => (g, c),
            _ => panic!("not a run"),
        }
    }

    #[test]
    fn chained_commands_with_options() {
        let (g, c) = run(&[
            "--db=unix:/tmp/x.sock",
            "--timeout=5",
            "--may-exist",
            "add-port",
            "br0",
            "p0",
            "--",
            "set",
            "Interface",
            "p0",
            "type=internal",
            "--",
            "--if-exists",
            "del-port",
            "p9",
        ]);
        assert_eq!(g.socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(g.timeout, Duration::from_secs(5));
        assert_eq!(c.len(), 3);
        assert!(c[0].may_exist && c[0].name == "add-port" && c[0].args == ["br0", "p0"]);
        assert!(!c[1].may_exist && c[1].args == ["Interface", "p0", "type=internal"]);
        assert!(c[2].if_exists && c[2].name == "del-port");
    }

    #[test]
    fn options_with_separate_values_and_errors() {
        let (g, _) = run(&["-t", "7", "-f", "json", "list-br"]);
        assert_eq!(g.timeout, Duration::from_secs(7));
        assert_eq!(g.format, Format::Json);
        let e = |a: &[&str]| {
            parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .err()
                .unwrap()
        };
        assert!(e(&["--bogus", "list-br"]).contains("--bogus"));
        assert!(e(&["--db=/tmp/x", "list-br"]).contains("unix:PATH"));
        assert!(e(&[]).contains("missing command"));
        assert!(e(&["--timeout"]).contains("requires an argument"));
    }
}
