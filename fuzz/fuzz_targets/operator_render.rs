//! Custom resources → rendered child objects. The operator must never panic on a CR the
//! API server accepted: any text that parses as ImageModel/RecognitionPipeline documents
//! either renders or is refused with a `RenderError`. The seed corpus is the samples in
//! manifests/samples (as JSON and YAML), so mutations stay close to real CRs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sightline_operator::build::pod::Platform;
use sightline_operator::render::{children, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(inputs) = parse(text) else {
        return;
    };
    if let Ok(objects) = children(&inputs, &Platform::default()) {
        for object in objects {
            assert!(object.get("kind").is_some(), "{object}");
        }
    }
});
