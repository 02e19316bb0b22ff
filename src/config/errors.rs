//! serde's errors as config keys: the one place that turns a deserialisation error (its path
//! and message) into the full name of the key at fault.

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Deserialises `value`; an error names its key as `key_of(path, unknown)` gives it, from serde's
/// path to the error (`"."` at the top) and, for an unknown key, that key's name.
pub(super) fn deserialize<T: DeserializeOwned>(
    value: toml::Value,
    key_of: impl Fn(&str, Option<&str>) -> String,
) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().message().to_string();
        match unknown_field(&msg) {
            Some(field) => Error::config(key_of(&path, Some(&field)), format!("unknown key ({msg})")),
            None => Error::config(key_of(&path, None), msg),
        }
    })
}

fn unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}
