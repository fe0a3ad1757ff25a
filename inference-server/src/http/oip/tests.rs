use super::*;

fn request(json: &str) -> InferRequest {
    serde_json::from_str(json).expect("valid request JSON")
}

const SHAPE: [i64; 4] = [-1, 3, 2, 2];

#[test]
fn nested_and_flat_data_are_the_same_tensor() {
    let flat = request(
        r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[0,1,2,3,4,5,6,7,8,9,10,11]}]}"#,
    );
    let nested = request(
        r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[[[[0,1],[2,3]],[[4,5],[6,7]],[[8,9],[10,11]]]]}]}"#,
    );
    let a = read_input(&flat, &[], "input", &SHAPE, 8).expect("flat");
    let b = read_input(&nested, &[], "input", &SHAPE, 8).expect("nested");
    assert_eq!(a, b);
    assert_eq!(a.0, 1);
}

#[test]
fn wrong_shape_datatype_name_or_count_is_a_400() {
    for (body, why) in [
        (
            r#"{"inputs":[{"name":"input","shape":[1,3,2],"datatype":"FP32","data":[0,0,0,0,0,0]}]}"#,
            "rank",
        ),
        (
            r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"INT64","data":[0,0,0,0,0,0,0,0,0,0,0,0]}]}"#,
            "dtype",
        ),
        (
            r#"{"inputs":[{"name":"pixels","shape":[1,3,2,2],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0,0,0]}]}"#,
            "name",
        ),
        (
            r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","data":[0,0,0]}]}"#,
            "count",
        ),
        (
            r#"{"inputs":[{"name":"input","shape":[0,3,2,2],"datatype":"FP32","data":[]}]}"#,
            "empty batch",
        ),
        (
            r#"{"inputs":[{"name":"input","shape":[9,3,2,2],"datatype":"FP32","data":[]}]}"#,
            "batch too big",
        ),
        (r#"{"inputs":[]}"#, "no inputs"),
        (
            r#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32"}]}"#,
            "no data",
        ),
    ] {
        let err = read_input(&request(body), &[], "input", &SHAPE, 8).expect_err(why);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{why}");
    }
    assert!(
        serde_json::from_str::<InferRequest>(
            r#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":["a"]}]}"#
        )
        .is_err()
    );
}

/// Regression: with dynamic dimensions, a shape whose element count fits in `usize`
/// but whose byte count does not overflowed `count * 4` (a panic in debug builds).
#[test]
fn huge_dynamic_dimensions_are_a_400_not_an_overflow() {
    let dynamic = [-1, 3, -1, -1];
    for shape in ["[1,3,2305843009213693952,1]", "[1,3,-1,4]", "[1,3,0,4]"] {
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":{shape},"datatype":"FP32","parameters":{{"binary_data_size":8}}}}]}}"#
        );
        let err = read_input(&request(&body), &[0; 8], "input", &dynamic, 8).expect_err(shape);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{shape}");
    }
}

#[test]
fn binary_tensors_are_read_after_the_header() {
    let json = br#"{"inputs":[{"name":"input","shape":[1,3,2,2],"datatype":"FP32","parameters":{"binary_data_size":48}}]}"#;
    let mut body = json.to_vec();
    for i in 0..12 {
        body.extend_from_slice(&(i as f32).to_le_bytes());
    }
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_LENGTH, HeaderValue::from(json.len()));
    let (head, tail) = split_body(&headers, &body).expect("split");
    let req: InferRequest = serde_json::from_slice(head).expect("json");
    let (rows, values) = read_input(&req, tail, "input", &SHAPE, 8).expect("binary");
    assert_eq!(rows, 1);
    assert_eq!(values[11], 11.0);
    headers.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
    assert!(split_body(&headers, &body).is_err());
}
