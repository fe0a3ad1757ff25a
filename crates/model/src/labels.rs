//! Labels files: one class name per line, in output order.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot read labels file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("labels file {path} has no labels")]
    Empty { path: String },
}

/// Reads labels, trimming line ends; blank lines at the end are ignored, blank lines in
/// the middle keep their position (as `class_N`) so indices stay aligned.
pub fn load(path: &Path) -> Result<Vec<String>, LabelsError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let labels = parse(&text);
    if labels.is_empty() {
        return Err(LabelsError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(labels)
}

pub fn parse(text: &str) -> Vec<String> {
    let mut labels: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line = line.trim();
            if line.is_empty() {
                format!("class_{i}")
            } else {
                line.to_string()
            }
        })
        .collect();
    while labels.last().is_some_and(|l| {
        l.starts_with("class_")
            && text
                .lines()
                .nth(labels.len() - 1)
                .is_some_and(|raw| raw.trim().is_empty())
    }) {
        labels.pop();
    }
    labels
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_lines_in_order() {
        assert_eq!(
            super::parse("red\r\ngreen\nblue\n\n"),
            vec!["red", "green", "blue"]
        );
        assert_eq!(super::parse("a\n\nc\n"), vec!["a", "class_1", "c"]);
    }
}
