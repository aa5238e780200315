//! Parsing a `Procfile`: one `type: command` per line.
//!
//! This follows the line format every platform accepts (split on the first `:`, skip blank
//! lines and `#` comments), so a Procfile that works on Heroku or Cloud Foundry works here.

/// The process types in a Procfile, in file order. A later duplicate replaces an earlier one.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, command)) = line.split_once(':') else {
            continue;
        };
        let (name, command) = (name.trim(), command.trim());
        if name.is_empty() || command.is_empty() {
            continue;
        }
        entries.retain(|(existing, _)| existing != name);
        entries.push((name.to_string(), command.to_string()));
    }
    entries
}

/// The `web` command of a Procfile, if it has one.
pub fn web(text: &str) -> Option<String> {
    parse(text)
        .into_iter()
        .find(|(name, _)| name == "web")
        .map(|(_, command)| command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_skips_comments() {
        let text = "# comment\nweb: ./server --port $PORT\n\nworker: ./work\nweb: ./other\n";
        assert_eq!(
            parse(text),
            vec![
                ("worker".to_string(), "./work".to_string()),
                ("web".to_string(), "./other".to_string())
            ]
        );
        assert_eq!(web("worker: x\n"), None);
        assert_eq!(web("web: a:b\n").as_deref(), Some("a:b"));
    }
}
