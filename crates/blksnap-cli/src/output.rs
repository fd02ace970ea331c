// SPDX-License-Identifier: GPL-2.0
//! Rendering of command results as `key=value` lines or JSON.

use serde_json::{Map, Value};

/// One record: ordered `key=value` pairs, a JSON object with `--json`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Record(Vec<(&'static str, Value)>);

impl Record {
    /// An empty record.
    pub fn new() -> Self {
        Record::default()
    }

    /// Appends a field.
    pub fn with(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.0.push((key, value.into()));
        self
    }

    /// Appends a field whose text form is its `Display` (device ids, UUIDs,
    /// paths...).
    pub fn with_display(self, key: &'static str, value: impl std::fmt::Display) -> Self {
        self.with(key, value.to_string())
    }

    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}\n"),
                other => format!("{k}={other}\n"),
            })
            .collect()
    }

    fn json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect::<Map<_, _>>(),
        )
    }
}

/// What a command prints on success.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Nothing (the command only acts).
    Nothing,
    /// A single record: `key=value` lines, or a JSON object.
    Record(Record),
    /// A list of records: blocks separated by an empty line, or a JSON array.
    List(Vec<Record>),
    /// A record with a text form of its own.
    Custom {
        /// The text printed without `--json`.
        text: String,
        /// The record printed with `--json`.
        record: Record,
    },
}

impl Output {
    /// The text the output prints, `--json` or not.
    pub fn render(&self, json: bool) -> String {
        match (self, json) {
            (Output::Nothing, _) => String::new(),
            (Output::Record(r), false) => r.text(),
            (Output::List(list), false) => {
                list.iter().map(Record::text).collect::<Vec<_>>().join("\n")
            }
            (Output::Custom { text, .. }, false) => format!("{text}\n"),
            (Output::Record(r) | Output::Custom { record: r, .. }, true) => {
                format!("{}\n", r.json())
            }
            (Output::List(list), true) => format!(
                "{}\n",
                Value::Array(list.iter().map(Record::json).collect())
            ),
        }
    }

    /// Prints the output on stdout.
    pub fn print(&self, json: bool) {
        print!("{}", self.render(json));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u64) -> Record {
        Record::new()
            .with("n", n)
            .with_display("dev", format_args!("8:{n}"))
    }

    #[test]
    fn text_and_json() {
        assert_eq!(Output::Nothing.render(false), "");
        assert_eq!(Output::Nothing.render(true), "");
        assert_eq!(Output::Record(rec(1)).render(false), "n=1\ndev=8:1\n");
        assert_eq!(
            Output::Record(rec(1)).render(true),
            "{\"n\":1,\"dev\":\"8:1\"}\n"
        );
        let list = Output::List(vec![rec(1), rec(2)]);
        assert_eq!(list.render(false), "n=1\ndev=8:1\n\nn=2\ndev=8:2\n");
        assert_eq!(
            list.render(true),
            "[{\"n\":1,\"dev\":\"8:1\"},{\"n\":2,\"dev\":\"8:2\"}]\n"
        );
        assert_eq!(Output::List(vec![]).render(false), "");
        assert_eq!(Output::List(vec![]).render(true), "[]\n");
        let custom = Output::Custom {
            text: "version=1.0.0.0".into(),
            record: Record::new().with("major", 1),
        };
        assert_eq!(custom.render(false), "version=1.0.0.0\n");
        assert_eq!(custom.render(true), "{\"major\":1}\n");
    }
}
