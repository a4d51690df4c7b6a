//! Whole-index behaviour on a small random model and generated photos: updates, removal,
//! model checks, distributed shares, the graph path.

use super::*;
use crate::config::LiteClipConfig;
use crate::image::ImageInput;
use tch::Device;

fn model(seed: i64) -> LiteClip {
    tch::manual_seed(seed);
    LiteClip::new(LiteClipConfig::nano(), Device::Cpu).unwrap()
}

fn photo(dir: &Path, name: &str, shade: u8) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([shade, (x * 6) as u8, (y * 8) as u8 ^ shade])
    })
    .save(&path)
    .unwrap();
}

fn no_progress(_: &Progress) -> Result<()> {
    Ok(())
}

fn small_batches() -> UpdateOptions {
    UpdateOptions {
        batch_size: 2,
        commit_every: 3,
        ..UpdateOptions::default()
    }
}

fn update(index: &mut PhotoIndex, model: &LiteClip) -> UpdateReport {
    index
        .update(model, &small_batches(), &mut no_progress)
        .unwrap()
}

fn indexed(index: &PhotoIndex) -> Vec<String> {
    let root = index.root().to_owned();
    let mut paths: Vec<String> = index
        .files()
        .into_iter()
        .map(|(_, p)| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    paths.sort();
    paths
}

struct Setup {
    _tmp: tempfile::TempDir,
    photos: PathBuf,
    lib: PathBuf,
    checkpoint: PathBuf,
    model: LiteClip,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    for (i, name) in ["a.png", "b.jpg", "sub/c.png"].iter().enumerate() {
        photo(&photos, name, 40 * i as u8);
    }
    let model = model(3);
    let checkpoint = tmp.path().join("ck");
    model.save(&checkpoint).unwrap();
    Setup {
        photos,
        lib: tmp.path().join("lib.lcx"),
        checkpoint,
        model,
        _tmp: tmp,
    }
}

#[test]
fn updates_embed_only_what_changed_and_rows_are_the_models_embeddings() {
    let s = setup();
    let mut index = PhotoIndex::create(&s.lib, &s.photos, &s.model, &s.checkpoint).unwrap();
    let first = update(&mut index, &s.model);
    assert_eq!((first.total, first.embedded, first.unchanged), (3, 3, 0));
    assert_eq!(indexed(&index), ["a.png", "b.jpg", "sub/c.png"]);

    // Each file's row is what the model makes of it: its own embedding finds it first.
    for (_, path) in index.files() {
        let own = s
            .model
            .encode_images(&[ImageInput::Path(path.clone())])
            .unwrap();
        let own = Vec::<f32>::try_from(&own.view([-1])).unwrap();
        let hits = index.search(&own, 3).unwrap();
        assert_eq!(hits[0].path, path);
        assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
        assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    }

    let manifest = std::fs::read(s.lib.join(store::MANIFEST)).unwrap();
    let again = update(&mut index, &s.model);
    assert_eq!((again.embedded, again.removed, again.unchanged), (0, 0, 3));
    // Nothing new, nothing written: readers are not made to reload.
    assert_eq!(
        std::fs::read(s.lib.join(store::MANIFEST)).unwrap(),
        manifest
    );

    std::fs::remove_file(s.photos.join("a.png")).unwrap();
    photo(&s.photos, "b.jpg", 200); // changed
    photo(&s.photos, "d.png", 90); // new
    std::fs::write(s.photos.join("broken.jpg"), b"\xff\xd8 not really").unwrap();
    let changed = update(&mut index, &s.model);
    assert_eq!(
        (
            changed.total,
            changed.embedded,
            changed.removed,
            changed.unchanged
        ),
        (4, 2, 1, 1)
    );
    assert_eq!(changed.skipped.len(), 1);
    assert!(changed.skipped[0].path.ends_with("broken.jpg"));
    assert_eq!(indexed(&index), ["b.jpg", "d.png", "sub/c.png"]);

    // The broken file is remembered, not decoded again, and still reported.
    let quiet = update(&mut index, &s.model);
    assert_eq!((quiet.embedded, quiet.skipped.len()), (0, 1));

    // A reader opening the folder afresh sees the same index.
    let reopened = PhotoIndex::open(&s.lib).unwrap();
    assert_eq!(indexed(&reopened), indexed(&index));
}

#[test]
fn ranks_embed_disjoint_shares_that_the_update_takes_in() {
    let s = setup();
    photo(&s.photos, "d.png", 7);
    photo(&s.photos, "e.png", 99);
    let mut single = PhotoIndex::create(&s.lib, &s.photos, &s.model, &s.checkpoint).unwrap();
    update(&mut single, &s.model);
    let reference: HashMap<PathBuf, u64> =
        single.files().into_iter().map(|(i, p)| (p, i)).collect();

    let lib = s.lib.with_file_name("sharded.lcx");
    let mut sharded = PhotoIndex::create(&lib, &s.photos, &s.model, &s.checkpoint).unwrap();
    let mut counts = Vec::new();
    for rank in 0..2 {
        let reader = PhotoIndex::open(&lib).unwrap();
        counts.push(
            reader
                .embed_share(&s.model, rank, 2, &small_batches(), &mut no_progress)
                .unwrap(),
        );
    }
    assert_eq!(counts, [3, 2]);
    let report = update(&mut sharded, &s.model);
    assert_eq!(report.embedded, 5);
    assert!(!lib.join("staging").exists());
    // The same files, and each row the same vector as the single-process index's.
    assert_eq!(indexed(&sharded), indexed(&single));
    for (_, path) in sharded.files() {
        let own = s
            .model
            .encode_images(&[ImageInput::Path(path.clone())])
            .unwrap();
        let own = Vec::<f32>::try_from(&own.view([-1])).unwrap();
        let a = sharded.search(&own, 1).unwrap();
        let b = single.search(&own, 1).unwrap();
        assert_eq!(a[0].path, path);
        assert_eq!(b[0].path, path);
        assert!((a[0].score - b[0].score).abs() < 1e-5);
        assert!(reference.contains_key(&path));
    }
}

#[test]
fn big_indexes_keep_a_graph_that_follows_their_rows() {
    let s = setup();
    let mut index = PhotoIndex::create(&s.lib, &s.photos, &s.model, &s.checkpoint).unwrap();
    index.set_exact_below(2);
    update(&mut index, &s.model);
    let graph = |index: &PhotoIndex| index.manifest.ann.clone().expect("a graph");
    let first = graph(&index);
    assert!(s.lib.join(&first).exists());
    // An unchanged update keeps it; a deletion replaces it, and the old file goes.
    update(&mut index, &s.model);
    assert_eq!(graph(&index), first);
    std::fs::remove_file(s.photos.join("a.png")).unwrap();
    update(&mut index, &s.model);
    let second = graph(&index);
    assert_ne!(second, first);
    assert!(!s.lib.join(&first).exists());
    // The new graph is the saved one less the deleted row: updated, not built again.
    assert_eq!(index.searcher.as_ref().unwrap().graph_builds(), 0);
    // A reader searches through the saved graph and finds each file by its own embedding.
    let mut reader = PhotoIndex::open(&s.lib).unwrap();
    reader.set_exact_below(2);
    for (_, path) in reader.files() {
        let own = s
            .model
            .encode_images(&[ImageInput::Path(path.clone())])
            .unwrap();
        let own = Vec::<f32>::try_from(&own.view([-1])).unwrap();
        assert_eq!(reader.search(&own, 1).unwrap()[0].path, path);
    }
    assert!(reader.searcher.as_ref().unwrap().has_graph());
    // A commit seen by the reader (a new photo) is taken in by its rows: the reader keeps its
    // graph, builds none, and finds the new photo.
    image::RgbImage::from_pixel(24, 24, image::Rgb([10, 200, 30]))
        .save(s.photos.join("new.png"))
        .unwrap();
    update(&mut index, &s.model);
    let new = s.photos.join("new.png");
    let own = s
        .model
        .encode_images(&[ImageInput::Path(new.clone())])
        .unwrap();
    let own = Vec::<f32>::try_from(&own.view([-1])).unwrap();
    assert_eq!(reader.search(&own, 1).unwrap()[0].path, new);
    let searcher = reader.searcher.as_ref().unwrap();
    assert!(searcher.has_graph());
    assert_eq!(searcher.graph_builds(), 0);
    // A saved graph that is not the one recorded (damaged, replaced) is not loaded.
    let saved = s.lib.join(graph(&index));
    let mut bytes = std::fs::read(&saved).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&saved, bytes).unwrap();
    let mut fresh = PhotoIndex::open(&s.lib).unwrap();
    fresh.set_exact_below(2);
    assert_eq!(fresh.search(&own, 1).unwrap()[0].path, new);
    assert!(!fresh.searcher.as_ref().unwrap().has_graph()); // searched exactly instead
                                                            // Below the size again: the graph is dropped.
    index.set_exact_below(10);
    update(&mut index, &s.model);
    assert!(index.manifest.ann.is_none());
    assert!(!s.lib.join(&second).exists());
}

#[test]
fn removed_files_stay_out_until_added_back() {
    let s = setup();
    let mut index = PhotoIndex::create(&s.lib, &s.photos, &s.model, &s.checkpoint).unwrap();
    update(&mut index, &s.model);
    let gone = index
        .remove(&[s.photos.join("b.jpg")], Duration::ZERO)
        .unwrap();
    assert_eq!(gone, 1);
    assert_eq!(update(&mut index, &s.model).total, 2);
    assert_eq!(indexed(&index), ["a.png", "sub/c.png"]);
    let options = UpdateOptions::default();
    let back = index
        .add(
            &s.model,
            &[s.photos.join("b.jpg")],
            &options,
            &mut no_progress,
        )
        .unwrap();
    assert_eq!(back.embedded, 1);
    assert_eq!(indexed(&index), ["a.png", "b.jpg", "sub/c.png"]);
    let outside = index.add(
        &s.model,
        std::slice::from_ref(&s.checkpoint),
        &options,
        &mut no_progress,
    );
    assert!(outside.unwrap_err().to_string().contains("not under"));
}

#[test]
fn paths_not_in_the_index_are_refused_and_folders_are_removed_whole() {
    let s = setup();
    let mut index = PhotoIndex::create(&s.lib, &s.photos, &s.model, &s.checkpoint).unwrap();
    update(&mut index, &s.model);
    let before = index.generation();
    // A path that names nothing indexed (here: taken from the wrong folder) changes nothing.
    let typo = [s.photos.join("a.png"), s.photos.join("photos/b.jpg")];
    let err = index.remove(&typo, Duration::ZERO).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("photos/b.jpg"), "{err}");
    assert!(!err.to_string().contains("a.png"), "{err}");
    assert_eq!(index.generation(), before);
    assert_eq!(indexed(&index), ["a.png", "b.jpg", "sub/c.png"]);
    // A folder: everything under it, now and later.
    assert_eq!(
        index
            .remove(&[s.photos.join("sub")], Duration::ZERO)
            .unwrap(),
        1
    );
    photo(&s.photos, "sub/deeper/d.png", 90);
    assert_eq!(update(&mut index, &s.model).total, 2);
    assert_eq!(indexed(&index), ["a.png", "b.jpg"]);
    // Removing it again, or a file in it, is not an error: it is out already.
    let again = [s.photos.join("sub"), s.photos.join("sub/c.png")];
    assert_eq!(index.remove(&again, Duration::ZERO).unwrap(), 0);
    let options = UpdateOptions::default();
    let inside = index.add(
        &s.model,
        &[s.photos.join("sub/c.png")],
        &options,
        &mut no_progress,
    );
    assert!(inside.unwrap_err().to_string().contains("sub/"));
    let not_image = s.photos.join("notes.txt");
    std::fs::write(&not_image, "x").unwrap();
    let err = index
        .add(&s.model, &[not_image], &options, &mut no_progress)
        .unwrap_err();
    assert!(err.to_string().contains("not an image file"), "{err}");
    let missing = index.add(
        &s.model,
        &[s.photos.join("nope.png")],
        &options,
        &mut no_progress,
    );
    assert!(matches!(missing.unwrap_err(), Error::FileNotFound { .. }));
    // Adding the folder brings back all of it.
    let back = index
        .add(
            &s.model,
            &[s.photos.join("sub")],
            &options,
            &mut no_progress,
        )
        .unwrap();
    assert_eq!(back.embedded, 2);
    assert_eq!(
        indexed(&index),
        ["a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png"]
    );
    assert!(index.manifest.excluded.is_empty());
    let err = index
        .remove(std::slice::from_ref(&s.photos), Duration::ZERO)
        .unwrap_err();
    assert!(err.to_string().contains("indexed folder itself"), "{err}");
}

#[test]
fn another_models_weights_and_another_folder_are_refused() {
    let s = setup();
    PhotoIndex::create(&s.lib, &s.photos, &s.model, &s.checkpoint).unwrap();
    let other = model(4);
    let other_ck = s.lib.with_file_name("other");
    other.save(&other_ck).unwrap();
    let err = PhotoIndex::create(&s.lib, &s.photos, &other, &other_ck).unwrap_err();
    assert!(matches!(err, Error::BadIndex { .. }), "{err}");
    assert!(err.to_string().contains("weights"), "{err}");
    let index = PhotoIndex::open(&s.lib).unwrap();
    let err = index.load_model(Some(&other_ck), &on_cpu()).unwrap_err();
    assert!(err.to_string().contains("weights"), "{err}");
    index.load_model(None, &on_cpu()).unwrap();
    let elsewhere = s.photos.join("sub");
    let err = PhotoIndex::create(&s.lib, &elsewhere, &s.model, &s.checkpoint).unwrap_err();
    assert!(err.to_string().contains("not "), "{err}");
}

fn on_cpu() -> InferenceOptions {
    InferenceOptions::parse("cpu", "fp32", "exact").unwrap()
}
