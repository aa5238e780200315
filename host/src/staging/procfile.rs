//! Reading the app's `Procfile`, whose entries override the buildpack's process types.
//!
//! Cloud Foundry reads it as YAML; commands that YAML cannot parse (a `: ` inside a command)
//! fall back to the line format Heroku uses, so both platforms' Procfiles work.

use std::collections::BTreeMap;

/// Process types in `text`.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    if let Ok(map) = serde_yaml_ng::from_str::<BTreeMap<String, serde_yaml_ng::Value>>(text) {
        let as_strings: Option<BTreeMap<String, String>> = map
            .into_iter()
            .map(|(k, v)| match v {
                serde_yaml_ng::Value::String(s) => Some((k, s)),
                serde_yaml_ng::Value::Number(n) => Some((k, n.to_string())),
                _ => None,
            })
            .collect();
        if let Some(map) = as_strings {
            return map;
        }
    }
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':'))
        .map(|(name, command)| (name.trim().to_string(), command.trim().to_string()))
        .filter(|(name, command)| !name.is_empty() && !command.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_line_formats() {
        let map = parse("web: ./server\nworker: ./work --queue=a\n");
        assert_eq!(map.get("web").map(String::as_str), Some("./server"));
        let map = parse("web: bash -c 'echo a: b'\n# note\n");
        assert_eq!(
            map.get("web").map(String::as_str),
            Some("bash -c 'echo a: b'")
        );
    }
}
