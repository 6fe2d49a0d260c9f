//! Dot-commands: parsing a `.name args` line into a [`Command`], with a clear error for an
//! unknown command or bad arguments. Running them is the shell's business (`shell::Shell`).

use std::path::PathBuf;

pub use super::render::Mode;

/// Every dot-command with its arguments and what it does, for `.help` and completion.
pub const HELP: &[(&str, &str, &str)] = &[
    (".backup", "FILE", "write a backup of the database (a SQLite file) to FILE"),
    (".boot", "FILE", "load the SQLite file FILE, replacing the database (rqlite's boot)"),
    (
        ".consistency",
        "[LEVEL]",
        "show or set the read level: none, weak, linearizable, strong, auto",
    ),
    (
        ".dump",
        "[FILE [TABLE,...]]",
        "SQL text of the database (or of TABLEs) to FILE or the output",
    ),
    (".durability", "[MODE]", "show or set the write durability: semi-sync, sync, replicas:K"),
    (".exit", "", "leave the shell"),
    (".expvar", "", "show the node's metrics (Keel has no /debug/vars: its /metrics)"),
    (".help", "", "show this help"),
    (".indexes", "[TABLE]", "list indexes (of tables matching the LIKE pattern TABLE)"),
    (".leader", "", "show the cluster's leader"),
    (".mode", "[MODE]", "show or set how rows are shown: column (or table), csv, json, line"),
    (".nodes", "", "list the cluster's nodes"),
    (".output", "[FILE|stdout]", "send results to FILE (emptied first), or back to stdout"),
    (".quit", "", "leave the shell"),
    (".read", "FILE", "run the statements and dot-commands in FILE"),
    (".ready", "", "show whether the node in use is ready (/readyz)"),
    (".remove", "NODEID", "remove a node from the cluster, voter or learner, running or dead"),
    (".restore", "FILE", "load FILE: a SQLite file (replaces the database) or SQL text"),
    (".schema", "[TABLE]", "show CREATE statements (of tables matching the LIKE pattern TABLE)"),
    (".status", "", "show the status of the node the shell talks to"),
    (".stepdown", "[NODEID]", "the leader hands over to NODEID, or to the best other voter"),
    (".sysdump", "FILE", "write every node's /status, /nodes, /readyz and /metrics to FILE"),
    (".tables", "", "list tables and views"),
    (".timer", "on|off", "show how long each statement takes"),
];

/// A read consistency level (`level=` of `/db/query` and `/db/request`): the wire type.
pub use keel_api::Level;

/// Every level, in the order `.help` lists them.
pub const LEVELS: [Level; 5] =
    [Level::None, Level::Weak, Level::Linearizable, Level::Strong, Level::Auto];

/// Parses a level name, case-insensitively. The server reads an unknown level as `weak` (as
/// rqlite does); the shell refuses it instead, so a typo is not silently a different guarantee.
pub fn parse_level(name: &str) -> Result<Level, String> {
    LEVELS.into_iter().find(|l| l.as_str().eq_ignore_ascii_case(name)).ok_or_else(|| {
        format!("unknown consistency level '{name}' (use none, weak, linearizable, strong or auto)")
    })
}

/// A parsed dot-command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `.tables`
    Tables,
    /// `.schema [TABLE]`
    Schema(Option<String>),
    /// `.indexes [TABLE]`
    Indexes(Option<String>),
    /// `.nodes`
    Nodes,
    /// `.status`
    Status,
    /// `.leader`
    Leader,
    /// `.backup FILE`
    Backup(PathBuf),
    /// `.restore FILE`
    Restore(PathBuf),
    /// `.consistency [LEVEL]`: `None` shows the current level.
    Consistency(Option<Level>),
    /// `.durability [MODE]`: `None` shows the current mode.
    Durability(Option<leader::Durability>),
    /// `.timer on|off`: `None` shows whether it is on.
    Timer(Option<bool>),
    /// `.dump [FILE [TABLE,...]]`: `None` writes to the output.
    Dump {
        /// Where to write the SQL text; `None`: the output (`.output`).
        file: Option<PathBuf>,
        /// Only these tables; empty: all.
        tables: Vec<String>,
    },
    /// `.read FILE`
    Read(PathBuf),
    /// `.output [FILE|stdout]`: `None` is stdout.
    Output(Option<PathBuf>),
    /// `.mode [MODE]`: `None` shows the current mode.
    Mode(Option<Mode>),
    /// `.boot FILE`
    Boot(PathBuf),
    /// `.remove NODEID`
    Remove(String),
    /// `.stepdown [NODEID]`
    Stepdown(Option<String>),
    /// `.sysdump FILE`
    Sysdump(PathBuf),
    /// `.ready`
    Ready,
    /// `.expvar`
    Expvar,
    /// `.help`
    Help,
    /// `.quit` or `.exit`
    Quit,
}

/// Parses a dot-command line (with its leading `.`).
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.trim();
    let (name, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let usage = || {
        let (_, args, _) = HELP.iter().find(|(n, _, _)| *n == name).copied().unwrap_or_default();
        format!("usage: {name} {args}").trim_end().to_string()
    };
    let none = |command: Command| if words.is_empty() { Ok(command) } else { Err(usage()) };
    let at_most_one = || match words.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((*one).to_string())),
        _ => Err(usage()),
    };
    match name {
        ".tables" => none(Command::Tables),
        ".nodes" => none(Command::Nodes),
        ".status" => none(Command::Status),
        ".leader" => none(Command::Leader),
        ".help" => none(Command::Help),
        ".quit" | ".exit" => none(Command::Quit),
        ".schema" => at_most_one().map(Command::Schema),
        ".indexes" | ".indices" => at_most_one().map(Command::Indexes),
        ".ready" => none(Command::Ready),
        ".expvar" => none(Command::Expvar),
        ".backup" | ".restore" | ".read" | ".boot" | ".sysdump" => {
            let file = unquote(rest);
            if file.is_empty() {
                return Err(usage());
            }
            let file = PathBuf::from(file);
            Ok(match name {
                ".backup" => Command::Backup(file),
                ".restore" => Command::Restore(file),
                ".read" => Command::Read(file),
                ".boot" => Command::Boot(file),
                _ => Command::Sysdump(file),
            })
        }
        ".output" => Ok(Command::Output(match unquote(rest) {
            "" | "stdout" => None,
            file => Some(PathBuf::from(file)),
        })),
        ".dump" => {
            let (file, tables) = split_file(rest);
            let tables: Vec<String> = tables
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            Ok(Command::Dump { file: (!file.is_empty()).then(|| PathBuf::from(file)), tables })
        }
        ".mode" => match at_most_one()? {
            None => Ok(Command::Mode(None)),
            Some(mode) => Mode::parse(&mode).map(|m| Command::Mode(Some(m))),
        },
        ".remove" => match at_most_one()? {
            None => Err(usage()),
            Some(id) => node_id(&id).map(Command::Remove),
        },
        ".stepdown" => match at_most_one()? {
            None => Ok(Command::Stepdown(None)),
            Some(id) => node_id(&id).map(|id| Command::Stepdown(Some(id))),
        },
        ".consistency" => match at_most_one()? {
            None => Ok(Command::Consistency(None)),
            Some(level) => parse_level(&level).map(|l| Command::Consistency(Some(l))),
        },
        ".durability" => match at_most_one()? {
            None => Ok(Command::Durability(None)),
            Some(mode) => mode.parse().map(|d| Command::Durability(Some(d))),
        },
        ".timer" => match at_most_one()?.map(|w| w.to_ascii_lowercase()).as_deref() {
            None => Ok(Command::Timer(None)),
            Some("on") => Ok(Command::Timer(Some(true))),
            Some("off") => Ok(Command::Timer(Some(false))),
            Some(_) => Err(usage()),
        },
        _ => Err(format!("unknown command '{name}': type .help for the list")),
    }
}

/// A node id as typed: a number or a node's name.
fn node_id(word: &str) -> Result<String, String> {
    raft::NodeName::parse(word).map(|n| n.to_string())
}

/// The file name that starts `text` (quoted if it has spaces) and what follows it, trimmed.
fn split_file(text: &str) -> (&str, &str) {
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote)
            && let Some((file, rest)) = inner.split_once(quote)
        {
            return (file, rest.trim());
        }
    }
    let (file, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    (file, rest.trim())
}

/// A file name as typed: surrounding quotes removed, so names with spaces can be given.
fn unquote(text: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return inner;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let cases = [
            (".tables", Command::Tables),
            ("  .schema   users ", Command::Schema(Some("users".into()))),
            (".schema", Command::Schema(None)),
            (".indexes t", Command::Indexes(Some("t".into()))),
            (".backup \"my file.db\"", Command::Backup("my file.db".into())),
            (".restore dump.sql", Command::Restore("dump.sql".into())),
            (".consistency STRONG", Command::Consistency(Some(Level::Strong))),
            (".consistency", Command::Consistency(None)),
            (".durability replicas:2", Command::Durability(Some(leader::Durability::Replicas(2)))),
            (".durability sync", Command::Durability(Some(leader::Durability::Sync))),
            (".timer on", Command::Timer(Some(true))),
            (".timer OFF", Command::Timer(Some(false))),
            (".exit", Command::Quit),
            (".quit", Command::Quit),
            (".dump", Command::Dump { file: None, tables: vec![] }),
            (".dump out.sql", Command::Dump { file: Some("out.sql".into()), tables: vec![] }),
            (
                ".dump 'my dump.sql' users, orders",
                Command::Dump {
                    file: Some("my dump.sql".into()),
                    tables: vec!["users".into(), "orders".into()],
                },
            ),
            (".read \"setup file.sql\"", Command::Read("setup file.sql".into())),
            (".output results.csv", Command::Output(Some("results.csv".into()))),
            (".output stdout", Command::Output(None)),
            (".output", Command::Output(None)),
            (".mode", Command::Mode(None)),
            (".mode CSV", Command::Mode(Some(Mode::Csv))),
            (".mode table", Command::Mode(Some(Mode::Column))),
            (".boot seed.sqlite", Command::Boot("seed.sqlite".into())),
            (".remove 3", Command::Remove("3".into())),
            (".remove keel-2", Command::Remove("keel-2".into())),
            (".stepdown", Command::Stepdown(None)),
            (".stepdown 2", Command::Stepdown(Some("2".into()))),
            (".stepdown keel-1", Command::Stepdown(Some("keel-1".into()))),
            (".sysdump diag.txt", Command::Sysdump("diag.txt".into())),
            (".ready", Command::Ready),
            (".expvar", Command::Expvar),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), Ok(expected), "{line}");
        }
    }

    #[test]
    fn every_command_in_the_help_is_known_and_listed_in_order() {
        for (name, _, _) in HELP {
            if let Err(why) = parse(name) {
                assert!(why.starts_with("usage: "), "{name}: {why}");
            }
        }
        let names: Vec<&str> = HELP.iter().map(|(name, _, _)| *name).collect();
        assert!(names.is_sorted(), "{names:?}");
    }

    #[test]
    fn refuses_with_a_clear_message() {
        let cases = [
            (".frobnicate", "unknown command '.frobnicate': type .help for the list"),
            (".tables extra", "usage: .tables"),
            (".schema a b", "usage: .schema [TABLE]"),
            (".backup", "usage: .backup FILE"),
            (".timer maybe", "usage: .timer on|off"),
            (".read", "usage: .read FILE"),
            (".boot", "usage: .boot FILE"),
            (".sysdump", "usage: .sysdump FILE"),
            (".remove", "usage: .remove NODEID"),
            (".remove 1 2", "usage: .remove NODEID"),
            (
                ".remove a/b",
                "node name 'a/b' has the character '/': a node id is a positive number or a name of letters, digits, '.', '_' and '-'",
            ),
            (".stepdown -1", "node name '-1' must start with a letter or a digit"),
            (".mode html", "unknown mode 'html' (use column, csv, json or line)"),
            (".mode csv json", "usage: .mode [MODE]"),
            (".ready now", "usage: .ready"),
            (".expvar x", "usage: .expvar"),
            (
                ".consistency sometimes",
                "unknown consistency level 'sometimes' (use none, weak, linearizable, strong or auto)",
            ),
            (
                ".durability replicas:0",
                "'replicas:0': replicas:K needs a whole number K of at least 1",
            ),
            (
                ".durability eventually",
                "unknown durability 'eventually' (use semi-sync, sync or replicas:K)",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line), Err(expected.to_string()), "{line}");
        }
    }
}
