//! `--truth`: the evaluation report over the images a labels CSV names, from the output
//! lines (resumed ones included). For a folder the CSV's paths name files in it; for a
//! bucket (`--input s3://…`) they are the images' names under the prefix, relative to the
//! CSV's folder.
//!
//! A shard evaluates the images of the CSV that are in its part of the listing (and shard
//! 0 those the CSV names that are in no part: they count as failed once). Its counts
//! ([`EvalCounts`]) add up over the shards to the whole set's.

use std::collections::HashMap;
use std::path::Path;

use sightline_api::EvalCounts;
use sightline_batch::journal::Line;
use sightline_batch::listing;
use sightline_eval::report::{Answer, Report};
use sightline_eval::{EvalError, dataset};
use sightline_quality::formulas::in_top_k;

/// The evaluation report of `lines` against the truth CSV — the images it names that
/// `mine` takes (by their name in the listing, `None` for one not in it); one with no line
/// in the output counts as failed — and its counts.
pub fn evaluate(
    truth: &Path,
    input: &Path,
    (model, labels): (&str, &[String]),
    lines: &[Line],
    mine: impl Fn(Option<&str>) -> bool,
    seconds: f64,
) -> Result<(Report, EvalCounts), EvalError> {
    let samples = dataset::load(truth, labels)?;
    let classes = dataset::Resolver::new(labels);
    let by_name: HashMap<&str, &Line> = lines.iter().map(|l| (l.image.as_str(), l)).collect();
    let root = input.canonicalize().unwrap_or_else(|_| input.to_path_buf());
    let answers: Vec<Answer> = samples
        .into_iter()
        .filter_map(|s| {
            let path = s.path.canonicalize().unwrap_or_else(|_| s.path.clone());
            // A bucket's images are named relative to the CSV's folder as given.
            let name = listing::name_in(&root, &path).or_else(|| listing::name_in(input, &s.path));
            if !mine(name.as_deref()) {
                return None;
            }
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
            Some(Answer {
                path: s.path,
                truth: s.class,
                ranked,
            })
        })
        .collect();
    let report = Report::build(
        model,
        &truth.display().to_string(),
        labels,
        &answers,
        seconds,
    );
    Ok((report, counts_of(&answers)))
}

/// The counts of `answers`, by the report's rules ([`Report::build`]).
fn counts_of(answers: &[Answer]) -> EvalCounts {
    let mut c = EvalCounts {
        images: answers.len() as u64,
        ..EvalCounts::default()
    };
    for a in answers {
        let Ok(ranked) = &a.ranked else { continue };
        c.evaluated += 1;
        c.top1 += u64::from(ranked.first() == Some(&a.truth));
        c.top5 += u64::from(in_top_k(ranked, a.truth, 5));
    }
    c
}
