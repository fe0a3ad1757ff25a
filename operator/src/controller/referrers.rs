//! Which objects name another: a model created or changed re-reconciles the pipelines and
//! recognition jobs that reference it, a pipeline the jobs writing into its store (their
//! controllers watch ImageModels and RecognitionPipelines through this).

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

/// The objects in `store` whose reference (`named`) names `target`, in its namespace: a
/// target created or changed re-reconciles them.
pub fn referring_to<K, T>(
    store: &Store<K>,
    target: &T,
    named: fn(&K) -> Option<&str>,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
    T: ResourceExt,
{
    let name = target.name_any();
    store
        .state()
        .into_iter()
        .filter(|o| named(o) == Some(name.as_str()) && o.namespace() == target.namespace())
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ImageModel, RecognitionJob};
    use kube::runtime::{reflector, watcher};

    /// The sample RecognitionJob, renamed, in `namespace`, naming `model`.
    fn job(namespace: &str, name: &str, model: &str) -> RecognitionJob {
        use serde::Deserialize;
        let sample = include_str!("../../../manifests/samples/recognitionjob.yaml");
        let doc = serde_yaml::Deserializer::from_str(sample)
            .filter_map(|d| serde_yaml::Value::deserialize(d).ok())
            .find(|d| d["kind"].as_str() == Some("RecognitionJob"))
            .expect("the sample has a RecognitionJob");
        let mut j: RecognitionJob = serde_yaml::from_value(doc).expect("the sample RecognitionJob");
        j.metadata.name = Some(name.into());
        j.metadata.namespace = Some(namespace.into());
        j.spec.model_ref.name = model.into();
        j
    }

    /// The sample CPU ImageModel, renamed, in `namespace`.
    fn model(namespace: &str, name: &str) -> ImageModel {
        let mut m: ImageModel = serde_yaml::from_str(include_str!(
            "../../../manifests/samples/imagemodel-cpu.yaml"
        ))
        .expect("the sample ImageModel");
        m.metadata.name = Some(name.into());
        m.metadata.namespace = Some(namespace.into());
        m
    }

    #[test]
    fn a_model_change_reaches_the_jobs_that_name_it_in_its_namespace() {
        let (store, mut writer) = reflector::store::<RecognitionJob>();
        for j in [
            job("a", "uses-it", "resnet"),
            job("a", "other-model", "mobilenet"),
            job("b", "other-namespace", "resnet"),
            job("a", "uses-it-too", "resnet"),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(j));
        }
        let model_of: fn(&RecognitionJob) -> Option<&str> = |j| Some(&j.spec.model_ref.name);
        let mut names: Vec<String> = referring_to(&store, &model("a", "resnet"), model_of)
            .into_iter()
            .map(|r| r.name)
            .collect();
        names.sort();
        assert_eq!(names, ["uses-it", "uses-it-too"]);
        assert!(referring_to(&store, &model("c", "resnet"), model_of).is_empty());
    }

    #[test]
    fn a_pipeline_change_reaches_the_jobs_writing_into_its_store() {
        use crate::crd::RecognitionPipeline;
        let (store, mut writer) = reflector::store::<RecognitionJob>();
        let into = |namespace: &str, name: &str, pipeline: Option<&str>| {
            let mut j = job(namespace, name, "resnet");
            j.spec.output.pipeline = pipeline.map(|p| crate::crd::PipelineOutput {
                name: p.into(),
                api_key_secret: None,
            });
            j
        };
        for j in [
            into("a", "into-photos", Some("photos")),
            into("a", "into-other", Some("other")),
            into("a", "to-its-claim", None),
            into("b", "other-namespace", Some("photos")),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(j));
        }
        let mut pipeline: RecognitionPipeline = serde_yaml::from_str(include_str!(
            "../../../manifests/samples/recognitionpipeline.yaml"
        ))
        .expect("the sample RecognitionPipeline");
        pipeline.metadata.name = Some("photos".into());
        pipeline.metadata.namespace = Some("a".into());
        let pipeline_of: fn(&RecognitionJob) -> Option<&str> =
            |j| j.spec.output.pipeline.as_ref().map(|p| p.name.as_str());
        let names: Vec<String> = referring_to(&store, &pipeline, pipeline_of)
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["into-photos"]);
    }
}
