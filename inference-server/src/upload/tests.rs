use super::*;

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_pixel(4, 3, image::Rgb([1, 2, 3]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode");
    out.into_inner()
}

#[test]
fn checks_bytes_not_names_and_refuses_polyglots() {
    let limits = DecodeLimits::default();
    let info = check_image(&png(), &limits).expect("a png");
    assert_eq!(
        (info.width, info.height, info.format.as_str()),
        (4, 3, "png")
    );
    let mut polyglot = png();
    polyglot.extend_from_slice(b"<script>alert(1)</script>");
    assert!(matches!(
        check_image(&polyglot, &limits),
        Err(UploadError::TrailingData(25))
    ));
    assert!(matches!(
        check_image(b"hello, I am text", &limits),
        Err(UploadError::Image(PreprocessError::UnsupportedFormat))
    ));
    assert!(!is_image_id("../../etc/passwd"));
    assert!(!is_image_id(&"A".repeat(64)));
    assert!(is_image_id(&sha256_hex(b"x")));
}

/// A `w×h` JPEG of noise-like content (so its scan data is long).
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) as u8;
        image::Rgb([v, v.wrapping_mul(3), v.wrapping_add(x as u8)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

#[test]
fn cut_off_jpegs_and_pngs_are_refused_whole_ones_pass() {
    use super::image_end::{jpeg_complete, png_complete};
    let limits = DecodeLimits::default();
    let whole = jpeg(256, 192);
    assert!(jpeg_complete(&whole));
    check_image(&whole, &limits).expect("a whole JPEG");
    for keep in [whole.len() / 3, whole.len() - 2, 200] {
        assert!(
            matches!(
                check_image(&whole[..keep], &limits),
                Err(UploadError::Truncated { format: "jpeg" })
            ),
            "{keep} of {} bytes",
            whole.len()
        );
    }
    // A thumbnail in an Exif segment has its own end marker: skipped by length.
    let thumbnail = jpeg(16, 16);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&thumbnail);
    let mut with_thumbnail = whole[..2].to_vec();
    with_thumbnail.extend_from_slice(&[0xFF, 0xE1]);
    with_thumbnail.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    with_thumbnail.extend_from_slice(&app1);
    with_thumbnail.extend_from_slice(&whole[2..]);
    assert!(jpeg_complete(&with_thumbnail));
    let cut = &with_thumbnail[..with_thumbnail.len() / 2];
    assert!(
        !jpeg_complete(cut),
        "the thumbnail's end is not the image's"
    );

    let png = {
        let img = image::RgbImage::from_fn(128, 96, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    };
    assert!(png_complete(&png));
    for keep in [png.len() / 3, png.len() - 12, png.len() - 1] {
        assert!(
            matches!(
                check_image(&png[..keep], &limits),
                Err(UploadError::Truncated { format: "png" })
            ),
            "{keep} of {} bytes",
            png.len()
        );
    }
}

#[tokio::test]
async fn same_bytes_are_stored_once_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path(), DecodeLimits::default()).expect("open");
    let (a, new_a) = store.put(png().into()).await.expect("put");
    let (b, new_b) = store.put(png().into()).await.expect("put again");
    assert!(new_a && !new_b);
    assert_eq!(a, b);
    assert_eq!(
        store.get(&a.sha256).await.expect("get").expect("present"),
        Bytes::from(png())
    );
    let tmp_left = std::fs::read_dir(dir.path().join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(tmp_left, 0, "no temporary file is left behind");
    assert!(store.get(&"0".repeat(64)).await.expect("get").is_none());
}

#[test]
fn the_sweep_spares_the_temporary_files_another_replica_is_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path(), DecodeLimits::default()).expect("open");
    let tmp = dir.path().join("tmp");
    let (fresh, stale) = (tmp.join("fresh"), tmp.join("stale"));
    std::fs::write(&fresh, b"being written").expect("fresh");
    let old = std::fs::File::create(&stale).expect("stale");
    old.set_modified(std::time::SystemTime::now() - 2 * TEMPORARY_MAX_AGE)
        .expect("age it");
    drop(old);
    store.sweep_temporary();
    assert!(
        fresh.exists(),
        "a recent file may be another replica's write"
    );
    assert!(!stale.exists(), "a crash's leftover is removed");
}

#[test]
fn a_full_disk_is_told_apart_from_other_io_errors() {
    let io = |kind| UploadError::Io {
        action: "write",
        path: "x".into(),
        source: std::io::Error::from(kind),
    };
    assert!(io(std::io::ErrorKind::StorageFull).is_storage_full());
    assert!(io(std::io::ErrorKind::FileTooLarge).is_storage_full());
    assert!(!io(std::io::ErrorKind::PermissionDenied).is_storage_full());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_uploads_of_one_image_create_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ImageStore::open(dir.path(), DecodeLimits::default()).expect("open");
    let racers = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.put(png().into()).await.expect("put").1 })
    });
    let created = futures::future::join_all(racers)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().expect("task"))
        .count();
    assert_eq!(created, 1);
}
