//! `--csv FILE`: the results as CSV for spreadsheets, written from the JSON-lines output
//! when the run ends (every image in it, resumed ones included): `image, sha256, label,
//! probability, known, error` — the top class only (the JSON lines keep the top five).

use std::io::Write;
use std::path::Path;

use sightline_batch::journal::Line;

/// Why the CSV could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}, line {line}: not a result line: {message}")]
    BadLine {
        path: String,
        line: usize,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// One CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180), and
/// prefixed with `'` when a spreadsheet would take it for a formula.
fn field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// One CSV row for `line`.
pub fn row(line: &Line) -> String {
    let top = line.predictions.first();
    [
        field(&line.image),
        line.sha256.clone().unwrap_or_default(),
        top.map(|p| field(&p.label)).unwrap_or_default(),
        top.map(|p| p.probability.to_string()).unwrap_or_default(),
        line.known.to_string(),
        field(line.error.as_deref().unwrap_or_default()),
    ]
    .join(",")
}

/// Writes `csv` from the JSON lines in `jsonl`.
pub fn write(jsonl: &Path, csv: &Path) -> Result<(), CsvError> {
    let text = std::fs::read_to_string(jsonl).map_err(|source| CsvError::Read {
        path: jsonl.display().to_string(),
        source,
    })?;
    let mut out = String::from("image,sha256,label,probability,known,error\n");
    for (i, raw) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let line: Line = serde_json::from_str(raw).map_err(|e| CsvError::BadLine {
            path: jsonl.display().to_string(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push_str(&row(&line));
        out.push('\n');
    }
    let write_error = |source| CsvError::Write {
        path: csv.display().to_string(),
        source,
    };
    let mut file = std::fs::File::create(csv).map_err(write_error)?;
    file.write_all(out.as_bytes()).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_api::Prediction;

    #[test]
    fn fields_are_quoted_and_formulas_defused() {
        let line = Line {
            image: "a,b/\"c\".png".into(),
            sha256: Some("ab".into()),
            model: "m".into(),
            model_sha256: "d".into(),
            preprocess_sha256: "e".into(),
            predictions: vec![Prediction {
                label: "=HYPERLINK(\"x\")".into(),
                probability: 0.5,
            }],
            known: true,
            error: None,
        };
        assert_eq!(
            row(&line),
            "\"a,b/\"\"c\"\".png\",ab,\"'=HYPERLINK(\"\"x\"\")\",0.5,true,"
        );
        let failed = Line {
            predictions: vec![],
            known: false,
            error: Some("not an image\nat all".into()),
            ..line
        };
        assert!(row(&failed).ends_with(",,,false,\"not an image\nat all\""));
    }
}
