//! Which objects name an ImageModel: a model created or changed re-reconciles the
//! pipelines and recognition jobs that reference it (their controllers watch ImageModels
//! through this).

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use crate::crd::ImageModel;

/// The objects in `store` whose model reference (`model_of`) names `m`, in its namespace:
/// a model created or changed re-reconciles them (pipelines, recognition jobs).
pub fn using_model<K>(
    store: &Store<K>,
    m: &ImageModel,
    model_of: fn(&K) -> &str,
) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .into_iter()
        .filter(|o| model_of(o) == m.name_any() && o.namespace() == m.namespace())
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RecognitionJob;
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
        let mut names: Vec<String> =
            using_model(&store, &model("a", "resnet"), |j| &j.spec.model_ref.name)
                .into_iter()
                .map(|r| r.name)
                .collect();
        names.sort();
        assert_eq!(names, ["uses-it", "uses-it-too"]);
        assert!(using_model(&store, &model("c", "resnet"), |j| &j.spec.model_ref.name).is_empty());
    }
}
