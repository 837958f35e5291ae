//! Keeps `docs/PROTOCOL.md` honest: everything users can name (configuration
//! keys and their values, routes, WebSocket error and close codes, metrics,
//! command-line flags) is read from the code and must appear in the
//! reference. Only this direction is checked: the reference may describe a
//! key or route a moment before the code has it.
//!
//! The configuration keys come from `Settings`' own `Deserialize` impl, driven
//! by a small recording deserializer: what serde asks for is exactly what a
//! TOML file may contain, renames and all. The rest is read from the source
//! files and from the binary's `--help`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Command;

use orapush::config::Settings;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn reference() -> String {
    read("docs/PROTOCOL.md")
}

/// A source file without its `#[cfg(test)]` part.
fn code(relative: &str) -> String {
    let text = read(relative);
    match text.find("#[cfg(test)]") {
        Some(end) => text[..end].to_owned(),
        None => text,
    }
}

/// The reference's table for one section: from its `### `[section]`` heading
/// to the next heading.
fn section_table<'a>(doc: &'a str, section: &str) -> Option<&'a str> {
    let heading = format!("### `[{section}]`");
    let start = doc.lines().position(|line| line.trim() == heading)?;
    let rest: Vec<&str> = doc.lines().skip(start + 1).take_while(|l| !l.starts_with('#')).collect();
    let first = rest.first()?;
    let from = first.as_ptr() as usize - doc.as_ptr() as usize;
    let last = rest.last()?;
    let to = last.as_ptr() as usize - doc.as_ptr() as usize + last.len();
    Some(&doc[from..to])
}

/// The table row that documents `key` (`| `key` | …`).
fn key_row<'a>(table: &'a str, key: &str) -> Option<&'a str> {
    let start = format!("| `{key}` |");
    table.lines().find(|line| line.starts_with(&start))
}

// ---------------------------------------------------------------------------
// Reading the configuration keys out of `Settings`' Deserialize impl.

/// An error the recording deserializers carry out (or a refusal from a key's
/// own Deserialize impl, which is what the enum check reads).
#[derive(Debug)]
struct Refusal(String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refusal {}

impl de::Error for Refusal {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Refusal(msg.to_string())
    }
}

type Sections = BTreeMap<&'static str, Vec<&'static str>>;

/// Feeds `Settings` one empty table per section and writes down the fields
/// each section's struct asks for.
struct Recorder<'a> {
    sections: &'a RefCell<Sections>,
    /// `None` at the top level, else the section being fed.
    section: Option<&'static str>,
}

impl<'de> Deserializer<'de> for Recorder<'_> {
    type Error = Refusal;

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refusal> {
        match self.section {
            None => {
                visitor.visit_map(SectionKeys { sections: self.sections, keys: fields.iter(), current: None })
            }
            Some(section) => {
                self.sections.borrow_mut().insert(section, fields.to_vec());
                visitor.visit_map(NoKeys)
            }
        }
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Refusal> {
        Err(de::Error::custom("the settings and every section are expected to be structs"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// The top-level table: every section name once, each with a recorder.
struct SectionKeys<'a> {
    sections: &'a RefCell<Sections>,
    keys: std::slice::Iter<'static, &'static str>,
    current: Option<&'static str>,
}

impl<'de> MapAccess<'de> for SectionKeys<'_> {
    type Error = Refusal;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Refusal> {
        match self.keys.next() {
            Some(&key) => {
                self.current = Some(key);
                seed.deserialize(IntoDeserializer::<Refusal>::into_deserializer(key)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Refusal> {
        seed.deserialize(Recorder { sections: self.sections, section: self.current })
    }
}

/// An empty table: every key keeps its default.
struct NoKeys;

impl<'de> MapAccess<'de> for NoKeys {
    type Error = Refusal;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, _seed: K) -> Result<Option<K::Value>, Refusal> {
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _seed: V) -> Result<V::Value, Refusal> {
        Err(de::Error::custom("no value without a key"))
    }
}

/// A value no key accepts as a name, so an enum key answers with its list.
const NONSENSE: &str = "\u{1}not-a-value";

/// A document holding exactly one key path, `section.key = NONSENSE`.
struct OneKey<'a> {
    path: &'a [&'static str],
}

impl<'de> Deserializer<'de> for OneKey<'_> {
    type Error = Refusal;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refusal> {
        match self.path.split_first() {
            None => visitor.visit_str(NONSENSE),
            Some((&key, rest)) => visitor.visit_map(OneEntry { key, rest, done: false }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refusal> {
        if self.path.is_empty() {
            visitor.visit_some(self)
        } else {
            self.deserialize_any(visitor)
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct OneEntry<'a> {
    key: &'static str,
    rest: &'a [&'static str],
    done: bool,
}

impl<'de> MapAccess<'de> for OneEntry<'_> {
    type Error = Refusal;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Refusal> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(None);
        }
        seed.deserialize(IntoDeserializer::<Refusal>::into_deserializer(self.key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Refusal> {
        seed.deserialize(OneKey { path: self.rest })
    }
}

/// Every section and its keys, as `Settings` deserializes them.
fn config_keys() -> Sections {
    let sections = RefCell::new(Sections::new());
    Settings::deserialize(Recorder { sections: &sections, section: None })
        .unwrap_or_else(|e| panic!("recording the settings' keys failed: {e}"));
    let sections = sections.into_inner();
    assert!(!sections.is_empty(), "no configuration section was recorded");
    sections
}

/// The values an enum key lists when it refuses a value, if it is one.
fn enum_values(section: &'static str, key: &'static str) -> Vec<String> {
    let message = match Settings::deserialize(OneKey { path: &[section, key] }) {
        Ok(_) => return Vec::new(),
        Err(Refusal(message)) => message,
    };
    // orapush's own wording, then serde's for derived enums.
    if let Some((_, list)) = message.split_once("is not one of: ") {
        return list.split(',').map(|v| v.trim().trim_end_matches('.').to_owned()).collect();
    }
    if let Some((_, list)) = message.split_once("unknown variant").and_then(|(_, m)| m.split_once("expected"))
    {
        return list.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    }
    Vec::new()
}

// ---------------------------------------------------------------------------
// Reading names out of source files.

/// The string literal that starts at `text` (after optional whitespace).
fn literal_at(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('"')?;
    rest.split_once('"').map(|(lit, _)| lit)
}

/// The first-argument string literals of every call `marker(` in `text`.
fn first_literals<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker).filter_map(|(at, _)| literal_at(&text[at + marker.len()..])).collect()
}

/// The first-argument string literals of calls whose callee (the path
/// before the `(`, such as `Self::refuse_channel`) satisfies `wanted`.
fn call_literals(text: &str, wanted: impl Fn(&str) -> bool) -> Vec<&str> {
    text.match_indices('(')
        .filter(|(at, _)| {
            let before = &text[..*at];
            let start = before
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(0, |i| i + 1);
            wanted(&before[start..])
        })
        .filter_map(|(at, _)| literal_at(&text[at + 1..]))
        .collect()
}

/// The text between the `(` at `open` and its matching `)`.
fn call_arguments(text: &str, open: usize) -> &str {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &text[open + 1..open + i];
                }
            }
            _ => {}
        }
    }
    &text[open + 1..]
}

/// `METHOD /path` for every `.route("/path", get(..).post(..))` in `text`.
fn routes(text: &str) -> Vec<String> {
    const METHODS: &[&str] = &["get", "post", "put", "delete", "patch", "head", "options"];
    let mut found = Vec::new();
    for (at, marker) in text.match_indices(".route(") {
        let args = call_arguments(text, at + marker.len() - 1);
        let Some(path) = literal_at(args) else { continue };
        for method in METHODS {
            let call = format!("{method}(");
            let used = args
                .match_indices(&call)
                .any(|(i, _)| !args[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
            if used {
                found.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    found
}

fn rust_files(dir: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".rs"))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    files
}

fn orapush_help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_orapush"))
        .args(args)
        .arg("--help")
        .env_remove("RUST_LOG")
        .output()
        .expect("running orapush --help");
    assert!(out.status.success(), "orapush {args:?} --help failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("help text is UTF-8")
}

/// `--long-flag` names in a clap help text, without --help and --version.
fn flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter(|line| line.trim_start().starts_with('-'))
        .flat_map(|line| line.split(|c: char| c.is_whitespace() || c == ',' || c == '='))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(|word| word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).to_owned())
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

/// True when `doc` has `needle` not followed by more of a flag name.
fn mentions_flag(doc: &str, flag: &str) -> bool {
    doc.match_indices(flag).any(|(at, _)| {
        !doc[at + flag.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

// ---------------------------------------------------------------------------

/// Every configuration key `Settings` accepts has a row in its section's table.
#[test]
fn every_config_key_is_documented() {
    let doc = reference();
    let mut missing = Vec::new();
    for (section, keys) in config_keys() {
        let Some(table) = section_table(&doc, section) else {
            missing.push(format!("[{section}] (no \"### `[{section}]`\" table at all)"));
            continue;
        };
        for key in keys {
            if key_row(table, key).is_none() {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/PROTOCOL.md lacks these configuration keys: {missing:?}");
}

/// Each enum key's row lists every value the key accepts.
#[test]
fn enum_keys_list_their_values() {
    let doc = reference();
    let mut enums = 0;
    let mut missing = Vec::new();
    for (section, keys) in config_keys() {
        for key in keys {
            let values = enum_values(section, key);
            if values.is_empty() {
                continue;
            }
            enums += 1;
            let row = section_table(&doc, section).and_then(|t| key_row(t, key)).unwrap_or("");
            for value in values {
                if !row.contains(&format!("`{value}`")) {
                    missing.push(format!("{section}.{key} = {value:?}"));
                }
            }
        }
    }
    assert!(
        enums > 0,
        "no key refused {NONSENSE:?} with a list of its values: did the enum error wording change?"
    );
    assert!(missing.is_empty(), "these values are missing from their key's row: {missing:?}");
}

/// Every route the HTTP router registers is documented as `METHOD /path`.
#[test]
fn every_route_is_documented() {
    let doc = reference();
    let found: Vec<String> = rust_files("src/http").iter().flat_map(|file| routes(&code(file))).collect();
    assert!(found.iter().any(|r| r == "GET /ws"), "route parsing found no `GET /ws`: {found:?}");
    let missing: Vec<&String> = found.iter().filter(|r| !doc.contains(&format!("`{r}`"))).collect();
    assert!(missing.is_empty(), "docs/PROTOCOL.md lacks these routes: {missing:?}");
}

/// Every error code the WebSocket protocol can send has a row in the error table.
#[test]
fn every_ws_error_code_is_documented() {
    let doc = reference();
    let mut codes = BTreeSet::new();
    for file in rust_files("src/ws") {
        let text = code(&file);
        // `ProtocolError::new("code", …)`, `Self::new("code", …)` in its impl,
        // and the session's `refuse…("code", …)` helpers.
        let callee = |path: &str| {
            let name = path.rsplit("::").next().unwrap_or(path);
            path.ends_with("ProtocolError::new") || path == "Self::new" || name.starts_with("refuse")
        };
        codes.extend(call_literals(&text, callee).into_iter().map(str::to_owned));
        codes.extend(first_literals(&text, "code: ").into_iter().map(str::to_owned));
    }
    assert!(codes.len() > 1, "found too few error codes: {codes:?}");
    let missing: Vec<&String> = codes.iter().filter(|c| !doc.contains(&format!("| `{c}` |"))).collect();
    assert!(missing.is_empty(), "docs/PROTOCOL.md lacks these error codes: {missing:?}");
}

/// Every close code the protocol module defines has a row in the close-code table.
#[test]
fn every_close_code_is_documented() {
    let doc = reference();
    let text = code("src/ws/protocol.rs");
    let codes: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const ")?.split_once(": u16 = "))
        .map(|(_, value)| value.trim_end_matches(';').trim())
        .collect();
    assert!(!codes.is_empty(), "no `pub const NAME: u16 = N;` close codes found");
    let missing: Vec<&&str> = codes.iter().filter(|c| !doc.contains(&format!("| {c} |"))).collect();
    assert!(missing.is_empty(), "docs/PROTOCOL.md lacks these close codes: {missing:?}");
}

/// Every metric name and every literal `limit` label appears in the reference.
#[test]
fn every_metric_is_documented() {
    let doc = reference();
    let metrics = code("src/metrics.rs");
    let names: BTreeSet<&str> =
        metrics.split('"').skip(1).step_by(2).filter(|lit| lit.starts_with("orapush_")).collect();
    assert!(!names.is_empty(), "no metric names found in src/metrics.rs");
    let mut missing: Vec<String> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")) && !doc.contains(&format!("`{n}{{")))
        .map(|n| n.to_string())
        .collect();
    let mut sources = rust_files("src");
    sources.extend(rust_files("src/ws"));
    sources.extend(rust_files("src/http"));
    sources.extend(rust_files("src/source"));
    for file in sources {
        for label in first_literals(&code(&file), "limit_hit(") {
            if !doc.contains(&format!("`{label}`")) {
                missing.push(format!("limit=\"{label}\""));
            }
        }
    }
    assert!(missing.is_empty(), "docs/PROTOCOL.md lacks these metrics or labels: {missing:?}");
}

/// Every subcommand and every flag of the binary (as its --help shows them) appears in the reference.
#[test]
fn every_cli_flag_is_documented() {
    let doc = reference();
    let top = orapush_help(&[]);
    let commands: Vec<String> = top
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    assert!(commands.iter().any(|c| c == "serve"), "no subcommands found in:\n{top}");
    let mut missing = Vec::new();
    for flag in flags(&top) {
        if !mentions_flag(&doc, &flag) {
            missing.push(format!("orapush {flag}"));
        }
    }
    for command in &commands {
        if !doc.contains(&format!("orapush {command}")) && !doc.contains(&format!("orapush [{command}]")) {
            missing.push(format!("orapush {command}"));
        }
        for flag in flags(&orapush_help(&[command])) {
            if !mentions_flag(&doc, &flag) {
                missing.push(format!("orapush {command} {flag}"));
            }
        }
    }
    assert!(missing.is_empty(), "docs/PROTOCOL.md lacks these commands or flags: {missing:?}");
}

/// The README sends users to docs/PROTOCOL.md, not to a SPEC.md they cannot see.
#[test]
fn readme_links_the_reference() {
    let readme = read("README.md");
    assert!(readme.contains("docs/PROTOCOL.md"), "README.md does not link docs/PROTOCOL.md");
    assert!(!readme.contains("SPEC.md"), "README.md still points to SPEC.md, which is not in the repository");
}
