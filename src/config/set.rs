//! `--set a.b.c=value`: overrides of any key, the value read as TOML (else as a string).

use crate::error::{Error, Result};

/// Applies `a.b.c=value` to a TOML table (value parsed as TOML, else taken as a string).
pub fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let (key, raw) =
        set.split_once('=').ok_or_else(|| Error::config(set, "--set needs KEY=VALUE, e.g. --set train.epochs=2"))?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(key, "empty key segment"));
    }
    let value = parse_value(raw.trim());
    let mut t = table;
    for p in &parts[..parts.len() - 1] {
        let entry = t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(Error::config(key, format!("'{p}' is not a table"))),
        };
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}
