//! The documentation as a test: the README's two commands and the command tours of the README
//! and of `docs/`, run against a real `keel local` exactly as written.
//!
//! ```text
//!  README.md ──▶ readme_commands() ─▶ "cargo run --release -- local"   (run verbatim by `keel-tour readme`)
//!            │                     └▶ "cargo test --workspace"         (printed for .ci/run to run)
//!            └▶ blocks_after("A tour with curl") ─▶ parse_commands() ─▶ [Command { text, expect }]
//!  docs/*.md ──▶ blocks marked `<!-- ci: run -->` ─▶ parse_commands() ─▶ …
//! ```
//!
//! A block is split into shell commands the way a shell would read them: a command ends at a
//! line end outside quotes that is not escaped with `\`. A comment line of the form
//! `# -> <answer>` right after a command is what that command must answer: the answer is JSON in
//! which `…` as the last element of an array means "and possibly more elements", and `…` as any
//! other value means "any value" (a number that varies between runs). Objects match when every key of
//! the expected one is present with a matching value (extra keys are Keel's additions). Without
//! such a line, a command must still exit 0 and print something; when what it prints is JSON, it
//! must carry no `error`, neither at the top level nor in any result.
//!
//! Writing the answers into the README keeps them honest: if a fresh cluster answers something
//! else, CI fails and the README is corrected, not the other way round.

use serde_json::Value;

/// One shell command of a tour, and what it must answer.
#[derive(Debug, Clone, PartialEq)]
pub struct TourCommand {
    /// The command as written (possibly several lines).
    pub text: String,
    /// The `# -> …` answer written after it, if any.
    pub expect: Option<String>,
    /// The comment lines written before it (they explain steps a tour runner acts on, such as
    /// killing the leader).
    pub comments: Vec<String>,
    /// In a transcript block (commands after `$ `), the output shown after the command.
    pub shown: Option<String>,
}

/// The fenced code blocks of `markdown` as (info string, lines before the fence, body).
fn fenced_blocks(markdown: &str) -> Vec<(String, Vec<String>, String)> {
    let mut blocks = Vec::new();
    let mut before: Vec<String> = Vec::new();
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        if let Some(info) = line.strip_prefix("```") {
            let mut body = String::new();
            for inner in lines.by_ref() {
                if inner.starts_with("```") {
                    break;
                }
                body.push_str(inner);
                body.push('\n');
            }
            blocks.push((info.trim().to_string(), std::mem::take(&mut before), body));
        } else {
            before.push(line.to_string());
        }
    }
    blocks
}

/// The text of `markdown` from the heading `heading` (any level) to the next heading of the same
/// or a higher level.
fn section<'a>(markdown: &'a str, heading: &str) -> Option<&'a str> {
    let mut start = None;
    let mut level = 0;
    let mut offset = 0;
    let mut fence = false;
    for line in markdown.split_inclusive('\n') {
        if line.starts_with("```") {
            fence = !fence;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !fence && hashes > 0 && line[hashes..].starts_with(' ') {
            let title = line[hashes..].trim();
            match start {
                None if title == heading => {
                    start = Some(offset + line.len());
                    level = hashes;
                }
                Some(s) if hashes <= level => return Some(&markdown[s..offset]),
                _ => {}
            }
        }
        offset += line.len();
    }
    start.map(|s| &markdown[s..])
}

/// The README's two commands: the one that starts a local cluster and the one that runs the
/// tests, the first and second `sh` blocks of its "Quick start" section. Each must be one line.
pub fn readme_commands(readme: &str) -> Result<(String, String), String> {
    let quick = section(readme, "Quick start").ok_or("README.md has no \"Quick start\" section")?;
    let commands: Vec<String> = fenced_blocks(quick)
        .into_iter()
        .filter(|(info, _, _)| info == "sh")
        .map(|(_, _, body)| body.trim().to_string())
        .collect();
    match commands.as_slice() {
        [start, test, ..] if !start.contains('\n') && !test.contains('\n') => {
            Ok((start.clone(), test.clone()))
        }
        _ => Err("README.md's \"Quick start\" must hold two one-line sh blocks: the command \
                  that starts a local cluster, then the command that runs the tests"
            .into()),
    }
}

/// The commands of the `sh` blocks in the README's section `heading`.
pub fn section_commands(markdown: &str, heading: &str) -> Result<Vec<TourCommand>, String> {
    let text = section(markdown, heading).ok_or_else(|| format!("no section \"{heading}\""))?;
    let mut commands = Vec::new();
    for (info, _, body) in fenced_blocks(text) {
        if info == "sh" {
            commands.extend(parse_commands(&body)?);
        }
    }
    Ok(commands)
}

/// The `sh` blocks of a docs page marked to run in CI (`<!-- ci: run -->` on the last non-blank
/// line before the fence), each as its commands.
pub fn marked_blocks(markdown: &str) -> Result<Vec<Vec<TourCommand>>, String> {
    let mut blocks = Vec::new();
    for (info, before, body) in fenced_blocks(markdown) {
        let marked = before
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
            .is_some_and(|line| line.trim() == "<!-- ci: run -->");
        if marked {
            if info != "sh" && info != "bash" {
                return Err(format!("a block marked `<!-- ci: run -->` is `{info}`, not sh"));
            }
            blocks.push(parse_commands(&body)?);
        }
    }
    Ok(blocks)
}

/// Splits a shell block into commands (see the module docs). A block with lines that start with
/// `$ ` is a transcript: those lines (and their continuation lines) are the commands, and the
/// lines after each, up to the next `$ `, are the output it shows.
pub fn parse_commands(block: &str) -> Result<Vec<TourCommand>, String> {
    if block.lines().any(|l| l.starts_with("$ ")) {
        return parse_transcript(block);
    }
    let mut commands: Vec<TourCommand> = Vec::new();
    let mut comments = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if current.is_empty() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            if let Some(comment) = trimmed.strip_prefix('#') {
                let comment = comment.trim();
                if let Some(answer) = comment.strip_prefix("->") {
                    let Some(last) = commands.last_mut() else {
                        return Err(format!("`{trimmed}` follows no command"));
                    };
                    let expect = last.expect.get_or_insert_with(String::new);
                    if !expect.is_empty() {
                        expect.push('\n');
                    }
                    expect.push_str(answer.trim());
                } else {
                    comments.push(comment.to_string());
                }
                continue;
            }
        }
        current.push_str(line);
        current.push('\n');
        if is_complete(&current) {
            commands.push(TourCommand {
                text: current.trim_end().to_string(),
                expect: None,
                comments: std::mem::take(&mut comments),
                shown: None,
            });
            current.clear();
        }
    }
    if !current.is_empty() {
        return Err(format!("unterminated command (an open quote?):\n{current}"));
    }
    Ok(commands)
}

/// Splits a transcript block: `$ command` lines, each followed by the output it shows.
fn parse_transcript(block: &str) -> Result<Vec<TourCommand>, String> {
    let mut commands: Vec<TourCommand> = Vec::new();
    let mut lines = block.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(first) = line.strip_prefix("$ ") else {
            let Some(last) = commands.last_mut() else {
                return Err(format!("a transcript starts with `{line}`, not with `$ `"));
            };
            let shown = last.shown.get_or_insert_with(String::new);
            shown.push_str(line);
            shown.push('\n');
            continue;
        };
        let mut text = first.to_string();
        while !is_complete(&text) {
            let Some(next) = lines.next() else {
                return Err(format!("unterminated command (an open quote?):\n{text}"));
            };
            text.push('\n');
            text.push_str(next);
        }
        commands.push(TourCommand { text, expect: None, comments: Vec::new(), shown: None });
    }
    Ok(commands)
}

/// Whether `text` is a whole shell command: no quote left open, no `\` at the end of its last
/// line.
fn is_complete(text: &str) -> bool {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let text = text.strip_suffix('\n').unwrap_or(text);
    // The open quote: `'`, `"`, or `$` for bash's `$'…'`, in which `\` escapes as in `"…"`.
    let mut previous = ' ';
    for c in text.chars() {
        match (quote, c) {
            (_, _) if escaped => escaped = false,
            (None | Some('"' | '$'), '\\') => escaped = true,
            (None, '\'') if previous == '$' => quote = Some('$'),
            (None, '\'' | '"') => quote = Some(c),
            (Some('$'), '\'') => quote = None,
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        previous = c;
    }
    quote.is_none() && !escaped
}

/// Whether `actual` has the shape of `shown`, an output a page shows: the same JSON structure
/// (the keys shown are there, arrays have as many elements, values have the same JSON type),
/// whatever the values. Outputs that are not JSON are not compared (headers, text).
pub fn same_shape(shown: &str, actual: &str) -> Result<(), String> {
    let parse = |text: &str| -> Option<Vec<Value>> {
        if let Ok(whole) = serde_json::from_str::<Value>(text) {
            return Some(vec![whole]);
        }
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    if shown.trim().is_empty() {
        return Ok(());
    }
    let Some(shown) = parse(shown) else { return Ok(()) };
    let actual = parse(actual).ok_or("not JSON, but the page shows JSON")?;
    if shown.len() != actual.len() {
        return Err(format!("{} JSON answers, the page shows {}", actual.len(), shown.len()));
    }
    shown.iter().zip(&actual).try_for_each(|(s, a)| shape_at("$", s, a))
}

fn shape_at(path: &str, shown: &Value, actual: &Value) -> Result<(), String> {
    match (shown, actual) {
        (Value::Object(want), Value::Object(have)) => want.iter().try_for_each(|(key, value)| {
            let found = have.get(key).ok_or_else(|| format!("{path}: no key \"{key}\""))?;
            shape_at(&format!("{path}.{key}"), value, found)
        }),
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => want
            .iter()
            .zip(have)
            .enumerate()
            .try_for_each(|(i, (w, h))| shape_at(&format!("{path}[{i}]"), w, h)),
        (Value::Array(want), Value::Array(have)) => {
            Err(format!("{path}: {} elements, the page shows {}", have.len(), want.len()))
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, Value::Null) => Ok(()),
        _ => Err(format!("{path}: {actual}, the page shows {shown}")),
    }
}

/// What `…` becomes when an expected answer is parsed.
const ANY: &str = "\u{2026}any\u{2026}";

/// Parses an expected answer: JSON in which `…` stands for "more elements" at the end of an
/// array and for "any value" elsewhere.
pub fn parse_expected(text: &str) -> Result<Value, String> {
    let mut json = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            json.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '\u{2026}' {
            json.push('"');
            json.push_str(ANY);
            json.push('"');
        } else {
            if c == '"' {
                in_string = true;
            }
            json.push(c);
        }
    }
    serde_json::from_str(&json)
        .map_err(|e| format!("the expected answer `{text}` is not JSON: {e}"))
}

/// Whether `actual` matches `expected` (see the module docs); the error names the first place
/// where it does not.
pub fn matches(expected: &Value, actual: &Value) -> Result<(), String> {
    matches_at("$", expected, actual)
}

fn matches_at(path: &str, expected: &Value, actual: &Value) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(want), Value::Object(have)) => {
            for (key, value) in want {
                let Some(found) = have.get(key) else {
                    return Err(format!("{path}: no key \"{key}\" in {actual}"));
                };
                matches_at(&format!("{path}.{key}"), value, found)?;
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(have)) => {
            let more = want.last().is_some_and(|v| v.as_str() == Some(ANY));
            let want = if more { &want[..want.len() - 1] } else { &want[..] };
            if have.len() < want.len() || (!more && have.len() != want.len()) {
                return Err(format!(
                    "{path}: {} elements, expected {}{}",
                    have.len(),
                    want.len(),
                    if more { " or more" } else { "" }
                ));
            }
            for (i, (w, h)) in want.iter().zip(have).enumerate() {
                matches_at(&format!("{path}[{i}]"), w, h)?;
            }
            Ok(())
        }
        (Value::String(any), _) if any == ANY => Ok(()),
        (want, have) if want == have => Ok(()),
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        _ => Err(format!("{path}: {actual}, expected {expected}")),
    }
}

/// The errors a JSON answer carries: a top-level `error` and any `results[i].error`.
pub fn answer_errors(answer: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(e) = answer.get("error").and_then(Value::as_str) {
        errors.push(e.to_string());
    }
    if let Some(results) = answer.get("results").and_then(Value::as_array) {
        for (i, r) in results.iter().enumerate() {
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                errors.push(format!("results[{i}]: {e}"));
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const README: &str = "# X\n\n## Quick start\n\nStart:\n\n```sh\ncargo run --release -- local\n```\n\nTest:\n\n```sh\ncargo test --workspace\n```\n\n## A tour with curl\n\n```sh\n# Create.\ncurl -XPOST 'a' -d '[\n  \"x\"\n]'\n# -> {\"results\": [{}, …], \"lsn\": 4}\n\ncurl -G 'b' \\\n  --data-urlencode 'q=SELECT \"it''s\"'\n```\n\n## Next\n\n```sh\nnot this\n```\n";

    #[test]
    fn readme_commands_are_the_quick_start_blocks() {
        let (start, test) = readme_commands(README).unwrap();
        assert_eq!(start, "cargo run --release -- local");
        assert_eq!(test, "cargo test --workspace");
        assert!(readme_commands("## Quick start\n```sh\na\nb\n```\n").is_err());
    }

    #[test]
    fn tour_commands_span_quoted_and_continued_lines() {
        let commands = section_commands(README, "A tour with curl").unwrap();
        assert_eq!(commands.len(), 2, "{commands:?}");
        assert_eq!(commands[0].text, "curl -XPOST 'a' -d '[\n  \"x\"\n]'");
        assert_eq!(commands[0].comments, vec!["Create."]);
        assert_eq!(commands[0].expect.as_deref(), Some("{\"results\": [{}, …], \"lsn\": 4}"));
        assert!(commands[1].text.ends_with("'q=SELECT \"it''s\"'"), "{}", commands[1].text);
        assert_eq!(commands[1].expect, None);
        assert!(parse_commands("curl 'open").is_err());
    }

    #[test]
    fn marked_blocks_only() {
        let page = "```sh\nno\n```\n<!-- ci: run -->\n\n```sh\nyes 1\nyes 2\n```\n";
        let blocks = marked_blocks(page).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].len(), 2);
        assert!(marked_blocks("<!-- ci: run -->\n```json\n{}\n```\n").is_err());
    }

    #[test]
    fn transcripts_split_commands_from_their_output() {
        let block = "$ curl -d '[\n  \"x\"\n]'\n{\"a\": 1}\n$ echo 1 \\\n  2\n1 2\n$ true\n";
        let commands = parse_commands(block).unwrap();
        assert_eq!(commands.len(), 3, "{commands:?}");
        assert_eq!(commands[0].text, "curl -d '[\n  \"x\"\n]'");
        assert_eq!(commands[0].shown.as_deref(), Some("{\"a\": 1}\n"));
        assert_eq!(commands[1].text, "echo 1 \\\n  2");
        assert_eq!(commands[2].shown, None);
        assert!(parse_commands("$ echo 'open\n").is_err());
        let ansi = parse_commands("$ printf $'it\\'s\\n'\nit's\n").unwrap();
        assert_eq!(ansi.len(), 1, "{ansi:?}");
        assert_eq!(ansi[0].shown.as_deref(), Some("it's\n"));
    }

    #[test]
    fn shown_outputs_compare_by_shape() {
        same_shape(
            "{\"lsn\": 8, \"r\": [{}, {\"t\": 0.1}]}",
            "{\"lsn\": 9, \"r\": [{}, {\"t\": 2}], \"x\": 1}",
        )
        .unwrap();
        assert!(same_shape("{\"r\": [{}]}", "{\"r\": [{}, {}]}").is_err());
        assert!(same_shape("{\"e\": \"x\"}", "{\"e\": 1}").is_err());
        assert!(same_shape("{\"e\": \"x\"}", "{}").is_err());
        same_shape("[1,4001]\n[1,4003]\n", "[2,4001]\n[2,4003]\n").unwrap();
        assert!(same_shape("[1]\n[2]\n", "[1]\n").is_err());
        same_shape("HTTP/1.1 301 Moved Permanently\n", "HTTP/1.1 200 OK\n").unwrap();
        assert!(same_shape("{}", "not json").is_err());
    }

    #[test]
    fn expected_answers_match_by_shape() {
        let expected = parse_expected("{\"results\": [{}, {\"id\": 1}, …], \"lsn\": 4}").unwrap();
        let ok = json!({"results": [{"a": 1}, {"id": 1, "b": 2}, {}], "lsn": 4, "extra": true});
        matches(&expected, &ok).unwrap();
        assert!(matches(&expected, &json!({"results": [{}], "lsn": 4})).is_err());
        assert!(matches(&expected, &json!({"results": [{}, {"id": 2}], "lsn": 4})).is_err());
        assert!(matches(&expected, &json!({"results": [{}, {"id": 1}]})).is_err());
        let exact = parse_expected("[1, 2]").unwrap();
        assert!(matches(&exact, &json!([1, 2, 3])).is_err());
        assert!(
            matches(&parse_expected("{\"t\": \"a…b\"}").unwrap(), &json!({"t": "a…b"})).is_ok()
        );
        assert!(matches(&json!(1), &json!(1.0)).is_ok());
        let any = parse_expected("{\"lsn\": …, \"r\": [1, …]}").unwrap();
        matches(&any, &json!({"lsn": 12, "r": [1]})).unwrap();
        matches(&any, &json!({"lsn": "x", "r": [1, 2]})).unwrap();
        assert!(matches(&any, &json!({"r": [1]})).is_err(), "a key shown with … must be there");
    }

    #[test]
    fn errors_in_answers_are_found() {
        assert!(answer_errors(&json!({"results": [{}, {"rows_affected": 1}]})).is_empty());
        assert_eq!(
            answer_errors(&json!({"results": [{}, {"error": "no such table: x"}]})),
            vec!["results[1]: no such table: x"]
        );
        assert_eq!(answer_errors(&json!({"error": "leader not found"})), vec!["leader not found"]);
    }
}
