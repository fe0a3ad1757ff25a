//! Which outputs an Open Inference Protocol `infer` request asks for, checked before the
//! model runs: each output the model has at most once, nothing it does not have. A request
//! that repeated one output 1000 times got the score tensor 1000 times (a 20 KB request,
//! a 21 MB answer); repeating a name is now a 400, like naming one that does not exist, so
//! an answer holds at most one tensor per model output.

use serde::Deserialize;
use serde::de::{Deserializer, SeqAccess, Visitor};

use crate::http::error::AppError;

#[derive(Debug, Deserialize, Default)]
pub struct Parameters {
    pub binary_data_size: Option<u64>,
    pub binary_data: Option<bool>,
    pub classification: Option<u64>,
    pub binary_data_output: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// Most entries an `outputs` list may have while it is parsed (a model here has one output;
/// the rest of a longer list is refused without being kept).
pub const MAX_LISTED: usize = 16;

/// `outputs` as parsed from a request: at most [`MAX_LISTED`] entries, so a 20 MB list of
/// names costs nothing before it is refused.
pub fn at_most_listed<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<RequestedOutput>>, D::Error> {
    struct Bounded;
    impl<'de> Visitor<'de> for Bounded {
        type Value = Option<Vec<RequestedOutput>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_LISTED} requested outputs")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(Bounded)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(o) = seq.next_element::<RequestedOutput>()? {
                if out.len() == MAX_LISTED {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_LISTED} requested outputs; name each output once"
                    )));
                }
                out.push(o);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(Bounded)
}

/// The outputs to answer with and their parameters: the model's one output when none is
/// named. `output` is the model's output name, `classes` its width (the most a
/// `classification` may ask for).
pub fn requested(
    outputs: Option<Vec<RequestedOutput>>,
    output: &str,
    classes: usize,
) -> Result<Vec<(String, Parameters)>, AppError> {
    let outputs = match outputs {
        Some(outputs) if !outputs.is_empty() => outputs,
        _ => return Ok(vec![(output.to_string(), Parameters::default())]),
    };
    let mut chosen: Vec<(String, Parameters)> = Vec::with_capacity(1);
    for o in outputs {
        if o.name != output {
            return Err(AppError::bad_request(format!(
                "unknown output {:?}; the model's output is {output:?}",
                o.name.chars().take(100).collect::<String>()
            )));
        }
        if chosen.iter().any(|(name, _)| *name == o.name) {
            return Err(AppError::bad_request(format!(
                "output {output:?} is requested more than once; name each output once"
            )));
        }
        let parameters = o.parameters.unwrap_or_default();
        if let Some(k) = parameters.classification
            && (k == 0 || k > classes as u64)
        {
            return Err(AppError::bad_request(format!(
                "classification must be between 1 and {classes}"
            )));
        }
        chosen.push((o.name, parameters));
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(names: &[&str]) -> Option<Vec<RequestedOutput>> {
        Some(
            names
                .iter()
                .map(|n| RequestedOutput {
                    name: n.to_string(),
                    parameters: None,
                })
                .collect(),
        )
    }

    #[test]
    fn each_output_once_and_only_the_models() {
        assert_eq!(requested(None, "p", 3).expect("default").len(), 1);
        assert_eq!(requested(named(&[]), "p", 3).expect("default").len(), 1);
        assert_eq!(requested(named(&["p"]), "p", 3).expect("one").len(), 1);
        let twice = requested(named(&["p", "p"]), "p", 3).expect_err("twice");
        assert!(twice.to_string().contains("more than once"), "{twice}");
        assert!(requested(named(&["q"]), "p", 3).is_err());
        let listed = format!(
            "{{\"outputs\": [{}]}}",
            vec!["{\"name\":\"p\"}"; 1000].join(",")
        );
        let err = serde_json::from_str::<crate::http::oip::request::InferRequest>(&format!(
            "{{\"inputs\": [], {}",
            &listed[1..]
        ))
        .expect_err("a thousand outputs");
        assert!(err.to_string().contains("more than"), "{err}");
        let huge = "x".repeat(10_000);
        let err = requested(named(&[&huge]), "p", 3).expect_err("unknown");
        assert!(err.to_string().len() < 300, "the name is not echoed whole");
    }
}
