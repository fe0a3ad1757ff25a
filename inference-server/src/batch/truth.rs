//! `--truth`: the evaluation report over the images a labels CSV names, from the output
//! lines (resumed ones included). For a folder the CSV's paths name files in it; for a
//! bucket (`--input s3://…`) they are the images' names under the prefix, relative to the
//! CSV's folder.

use std::collections::HashMap;
use std::path::Path;

use sightline_batch::journal::Line;
use sightline_batch::listing;
use sightline_eval::report::{Answer, Report};
use sightline_eval::{EvalError, dataset};

/// The evaluation report of `lines` against the truth CSV (the images it names; one with
/// no line in the output counts as failed).
pub fn evaluate(
    truth: &Path,
    input: &Path,
    model: &str,
    labels: &[String],
    lines: &[Line],
    seconds: f64,
) -> Result<Report, EvalError> {
    let samples = dataset::load(truth, labels)?;
    let classes = dataset::Resolver::new(labels);
    let by_name: HashMap<&str, &Line> = lines.iter().map(|l| (l.image.as_str(), l)).collect();
    let root = input.canonicalize().unwrap_or_else(|_| input.to_path_buf());
    let answers: Vec<Answer> = samples
        .into_iter()
        .map(|s| {
            let path = s.path.canonicalize().unwrap_or_else(|_| s.path.clone());
            // A bucket's images are named relative to the CSV's folder as given.
            let name = listing::name_in(&root, &path).or_else(|| listing::name_in(input, &s.path));
            let ranked = match name.as_deref().and_then(|n| by_name.get(n)) {
                None => Err("not in the batch's output".to_string()),
                Some(line) => match &line.error {
                    Some(e) => Err(e.clone()),
                    None => Ok(line
                        .predictions
                        .iter()
                        .filter_map(|p| classes.resolve(&p.label))
                        .collect()),
                },
            };
            Answer {
                path: s.path,
                truth: s.class,
                ranked,
            }
        })
        .collect();
    Ok(Report::build(
        model,
        &truth.display().to_string(),
        labels,
        &answers,
        seconds,
    ))
}
