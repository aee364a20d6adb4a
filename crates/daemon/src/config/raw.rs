//! The file's text into its raw shape, read by hand from the parsed TOML document (with the
//! byte span of every key and value) rather than through serde: every problem (syntax, an
//! unknown key, a wrong type, a negative number) is found at once, with its key path
//! (`domains[1].replicas`) and `line:column`.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::Problem;

/// Collects problems while checking, each with the key it concerns and, when the key is in
/// the file, its `line:column`.
pub(super) struct Checker<'t> {
    /// The file's text (empty when checking something else, e.g. a domain added at runtime).
    text: &'t str,
    /// Byte span of every key path read (its value, or the key when the value is unusable).
    spans: BTreeMap<String, Range<usize>>,
    pub(super) problems: Vec<Problem>,
}

impl<'t> Checker<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Checker {
            text,
            spans: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    /// A problem with `key`, placed where the key (or, when it is missing, the nearest table
    /// holding it) is in the file.
    pub(super) fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let span = self.span_of(&key);
        self.problem_at(key, span, message);
    }

    fn problem_at(&mut self, key: String, span: Option<Range<usize>>, message: impl Into<String>) {
        let at = span.map(|s| line_column(self.text, s.start));
        self.problems.push(Problem {
            key,
            at,
            message: message.into(),
        });
    }

    /// Whether `key` is in the file (set, whatever its value).
    pub(super) fn has(&self, key: &str) -> bool {
        self.spans.contains_key(key)
    }

    fn span_of(&self, key: &str) -> Option<Range<usize>> {
        let mut k = key;
        loop {
            if let Some(s) = self.spans.get(k) {
                return Some(s.clone());
            }
            k = &k[..k.rfind(['.', '['])?];
        }
    }

    /// The problems, in the order of the file (those without a place last).
    pub(super) fn into_problems(mut self) -> Vec<Problem> {
        self.problems
            .sort_by_key(|p| p.at.map_or((usize::MAX, usize::MAX), |a| a));
        self.problems
    }

    /// Parses the document: its syntax errors (all of them, recovered from where possible)
    /// are problems, each placed and named by the table and key it is in. When they are all
    /// keys set twice, the rest of the document (the first setting kept) is read on, for its
    /// problems to be listed too; other syntax errors leave nothing reliable to read.
    pub(super) fn document(&mut self) -> Option<Spanned<DeTable<'t>>> {
        let (doc, errors) = DeTable::parse_recoverable(self.text);
        if errors.is_empty() {
            return Some(doc);
        }
        let readable = errors.iter().all(|e| e.message().trim() == "duplicate key");
        for e in errors {
            let span = e.span();
            let key = span
                .as_ref()
                .map(|s| key_at(self.text, s.start))
                .unwrap_or_default();
            let mut message = e.message().replace('\n', " ").trim().to_owned();
            if message == "duplicate key" {
                message = "is set twice (or its table is written twice); keep one".into();
            } else {
                message = format!("TOML syntax error: {message}");
            }
            self.problem_at(key, span, message);
        }
        readable.then_some(doc)
    }

    /// Reads `table` (at `path`): every key must be one of `allowed`.
    pub(super) fn table<'a, 'i>(
        &mut self,
        path: &str,
        table: &'a DeTable<'i>,
        allowed: &[&str],
    ) -> Fields<'a, 'i> {
        for (k, v) in table {
            let key = join(path, k.get_ref());
            self.spans.insert(key.clone(), v.span());
            if !allowed.contains(&k.get_ref().as_ref()) {
                self.problem_at(
                    key,
                    Some(k.span()),
                    format!("unknown key; allowed here: {}", allowed.join(", ")),
                );
            }
        }
        Fields {
            path: path.to_owned(),
            table,
        }
    }

    fn wrong(&mut self, key: &str, value: &DeValue<'_>, expected: &str) {
        self.problem(key, format!("{} is not {expected}", describe(value)));
    }
}

/// The keys of one table, read by type.
pub(super) struct Fields<'a, 't> {
    path: String,
    table: &'a DeTable<'t>,
}

impl<'a, 't> Fields<'a, 't> {
    fn key(&self, name: &str) -> String {
        join(&self.path, name)
    }

    fn get(&self, name: &str) -> Option<&'a DeValue<'t>> {
        self.table.get(name).map(Spanned::get_ref)
    }

    /// A string; `expected` says what it holds (`a string: an address IP:PORT, e.g. ...`).
    pub(super) fn string(&self, c: &mut Checker<'_>, name: &str, expected: &str) -> Option<String> {
        match self.get(name)? {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                c.wrong(&self.key(name), other, expected);
                None
            }
        }
    }

    /// A whole number of at least 0 that fits `u64`.
    pub(super) fn uint(&self, c: &mut Checker<'_>, name: &str, expected: &str) -> Option<u64> {
        let v = self.get(name)?;
        if let DeValue::Integer(i) = v {
            if let Ok(n) = u64::from_str_radix(i.as_str(), i.radix()) {
                return Some(n);
            }
        }
        c.wrong(&self.key(name), v, expected);
        None
    }

    /// `true` or `false`.
    pub(super) fn boolean(&self, c: &mut Checker<'_>, name: &str) -> Option<bool> {
        match self.get(name)? {
            DeValue::Boolean(b) => Some(*b),
            other => {
                c.wrong(&self.key(name), other, "true or false");
                None
            }
        }
    }

    /// A list of strings (`expected` says what one holds); the wrong elements are problems
    /// and left out.
    pub(super) fn strings(&self, c: &mut Checker<'_>, name: &str, expected: &str) -> Vec<String> {
        let key = self.key(name);
        match self.get(name) {
            None => Vec::new(),
            Some(DeValue::Array(items)) => {
                let mut out = Vec::new();
                for (j, item) in items.iter().enumerate() {
                    let ikey = format!("{key}[{j}]");
                    c.spans.insert(ikey.clone(), item.span());
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        other => c.wrong(&ikey, other, expected),
                    }
                }
                out
            }
            Some(other) => {
                c.wrong(
                    &key,
                    other,
                    &format!("a list of {expected}, e.g. [\"a\", \"b\"]"),
                );
                Vec::new()
            }
        }
    }

    /// A table (`[name]`).
    pub(super) fn table(&self, c: &mut Checker<'_>, name: &str) -> Option<&'a DeTable<'t>> {
        match self.get(name)? {
            DeValue::Table(t) => Some(t),
            other => {
                c.wrong(&self.key(name), other, &format!("a table; write [{name}]"));
                None
            }
        }
    }

    /// An array of tables (`[[name]]`), each with its key (`name[i]`).
    pub(super) fn tables(&self, c: &mut Checker<'_>, name: &str) -> Vec<(String, &'a DeTable<'t>)> {
        let key = self.key(name);
        match self.get(name) {
            None => Vec::new(),
            Some(DeValue::Array(items)) => {
                let mut out = Vec::new();
                for (j, item) in items.iter().enumerate() {
                    let ikey = format!("{key}[{j}]");
                    c.spans.insert(ikey.clone(), item.span());
                    match item.get_ref() {
                        DeValue::Table(t) => out.push((ikey, t)),
                        other => c.wrong(&ikey, other, &format!("a table; write [[{name}]]")),
                    }
                }
                out
            }
            Some(other) => {
                c.wrong(&key, other, &format!("a list of tables; write [[{name}]]"));
                Vec::new()
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A value as a problem names it: its type and, when short, the value itself.
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) if i.radix() == 10 => format!("the integer {}", i.as_str()),
        DeValue::Integer(i) => format!("an integer ({} in base {})", i.as_str(), i.radix()),
        DeValue::Float(f) => format!("the number {}", f.as_str()),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        DeValue::Datetime(d) => format!("the date-time {d}"),
        DeValue::Array(_) => "a list".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub(super) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[start..].chars().count() + 1;
    (line, column)
}

/// The key path a syntax error at `offset` concerns, read from the text around it: the table
/// headers above (`[node]`, the n-th `[[domains]]`) and the key its line sets; empty when not
/// found (the table names are taken as written).
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let end = line_start + line.len();
        let trimmed = line.trim();
        if end > offset || end == text.len() {
            if trimmed.starts_with('[') {
                // A table header: its name.
                return trimmed
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_owned();
            }
            let key = trimmed
                .split_once('=')
                .map(|(k, _)| k.trim())
                .filter(|k| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
                })
                .unwrap_or("");
            return match (table.is_empty(), key.is_empty()) {
                (_, true) => table,
                (true, false) => key.to_owned(),
                (false, false) => format!("{table}.{key}"),
            };
        }
        if let Some(name) = trimmed
            .strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .map(|(n, _)| n.trim().to_owned())
        {
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = trimmed
            .strip_prefix('[')
            .and_then(|r| r.split_once(']'))
            .map(|(n, _)| n.trim().to_owned())
        {
            table = name;
        }
        line_start = end;
    }
    table
}
