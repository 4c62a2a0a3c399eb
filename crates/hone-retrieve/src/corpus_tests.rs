use super::*;
use crate::fake::FakeEmbedder;
use crate::format_context;

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn small_chunks(cache: Option<PathBuf>) -> CorpusOptions {
    CorpusOptions {
        chunking: ChunkOptions {
            words: 6,
            overlap: 2,
        },
        cache_dir: cache,
    }
}

/// A docs directory: two topics, a nested file, a binary `.md`, an ignored
/// `.pdf`, a hidden directory and an empty text file.
fn docs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "cats.md",
        b"# Cats\nCats purr and sleep all day long in the sun.",
    );
    write(
        d,
        "guide/ships.txt",
        b"Ships sail the sea. The harbour master logs every ship.",
    );
    write(d, "blob.md", b"\x00\x01binary\xff");
    write(d, "manual.pdf", b"%PDF-1.4");
    write(d, ".git/notes.md", b"cats cats cats");
    write(d, "empty.txt", b"  \n");
    dir
}

#[test]
fn the_best_chunk_for_a_query_comes_first() {
    let dir = docs();
    let e = FakeEmbedder::new("fake");
    let corpus = Corpus::from_dir(dir.path(), &e, &small_chunks(None)).unwrap();
    let hits = corpus.top_k(&e, "where do ships sail", 2).unwrap();
    assert_eq!(hits.hits.len(), 2);
    assert!(!hits.truncated());
    assert_eq!(hits.hits[0].chunk.source, Path::new("guide/ships.txt"));
    assert!(hits.hits[0].score >= hits.hits[1].score);
    let hits = corpus.top_k(&e, "cats purr", 1).unwrap();
    assert_eq!(hits.hits[0].chunk.source, Path::new("cats.md"));
    assert_eq!(hits.hits[0].chunk.index, 0);
}

#[test]
fn binary_other_and_hidden_files_are_skipped_and_counted() {
    let dir = docs();
    let e = FakeEmbedder::new("fake");
    let corpus = Corpus::from_dir(dir.path(), &e, &small_chunks(None)).unwrap();
    let r = &corpus.report;
    assert_eq!(r.skipped_binary, vec![PathBuf::from("blob.md")]);
    assert_eq!(r.ignored, 1);
    // cats.md, guide/ships.txt and empty.txt; not .git/notes.md.
    assert_eq!(r.files, 3);
    assert!(corpus
        .chunks()
        .iter()
        .all(|c| !c.source.starts_with(".git")));
    // Windows of 6 words, step 4: cats.md's 12 words make 3, ships.txt's 10 make 2.
    assert_eq!(corpus.chunks().len(), 5);
}

#[test]
fn k_larger_than_the_pool_returns_every_chunk_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", b"one two three");
    let e = FakeEmbedder::new("fake");
    let corpus = Corpus::from_dir(dir.path(), &e, &small_chunks(None)).unwrap();
    let hits = corpus.top_k(&e, "two", 5).unwrap();
    assert_eq!(hits.hits.len(), 1);
    assert_eq!(hits.requested, 5);
    assert!(hits.truncated());
    assert!(matches!(
        corpus.top_k(&e, "two", 0),
        Err(RetrieveError::ZeroK)
    ));
}

#[test]
fn a_missing_or_empty_directory_is_an_error() {
    let e = FakeEmbedder::new("fake");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = Corpus::from_dir(&missing, &e, &small_chunks(None)).unwrap_err();
    assert!(matches!(err, RetrieveError::NotADir(_)), "{err}");
    write(dir.path(), "x.bin", b"\0");
    write(dir.path(), "y.md", b"\0");
    let err = Corpus::from_dir(dir.path(), &e, &small_chunks(None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no text to retrieve from"), "{err}");
    assert!(err.contains("1 binary and 1 other"), "{err}");
}

#[test]
fn unchanged_files_are_embedded_once_and_edited_ones_again() {
    let dir = docs();
    let cache = tempfile::tempdir().unwrap();
    let opts = small_chunks(Some(cache.path().to_path_buf()));
    let e = FakeEmbedder::new("fake");
    let first = Corpus::from_dir(dir.path(), &e, &opts).unwrap();
    assert_eq!(first.report.embedded_files, 2);
    assert_eq!(e.embedded.get(), 5);
    let second = Corpus::from_dir(dir.path(), &e, &opts).unwrap();
    assert_eq!(second.report.cached_files, 2);
    assert_eq!(second.report.embedded_files, 0);
    assert_eq!(e.embedded.get(), 5);
    assert_eq!(first.vectors, second.vectors);
    // An edit changes the hash; a rename does not.
    write(dir.path(), "cats.md", b"Cats purr.");
    fs::rename(dir.path().join("guide"), dir.path().join("boats")).unwrap();
    let third = Corpus::from_dir(dir.path(), &e, &opts).unwrap();
    assert_eq!(third.report.embedded_files, 1);
    assert_eq!(third.report.cached_files, 1);
    assert_eq!(e.embedded.get(), 6);
    // Another model never reads these vectors.
    let other = FakeEmbedder::new("other");
    let fourth = Corpus::from_dir(dir.path(), &other, &opts).unwrap();
    assert_eq!(fourth.report.embedded_files, 2);
}

#[test]
fn a_query_with_another_model_is_refused() {
    let dir = docs();
    let corpus =
        Corpus::from_dir(dir.path(), &FakeEmbedder::new("a"), &small_chunks(None)).unwrap();
    let err = corpus
        .top_k(&FakeEmbedder::new("b"), "cats", 1)
        .unwrap_err();
    assert!(err.to_string().contains("embedded with 'a'"), "{err}");
}

#[test]
fn truncated_chunks_are_counted() {
    let dir = docs();
    let mut e = FakeEmbedder::new("fake");
    e.max_words = 5;
    let corpus = Corpus::from_dir(dir.path(), &e, &small_chunks(None)).unwrap();
    // Chunks of 6 words ("#" is no word): cats.md's second, both of ships.txt.
    assert_eq!(corpus.report.truncated_chunks, 3);
}

#[test]
fn the_context_format_numbers_and_names_each_chunk() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.txt", b"alpha beta");
    write(dir.path(), "b/c.md", b"gamma delta");
    let e = FakeEmbedder::new("fake");
    let corpus = Corpus::from_dir(dir.path(), &e, &small_chunks(None)).unwrap();
    let hits = corpus.top_k(&e, "gamma", 2).unwrap();
    assert_eq!(
        format_context(&hits.hits),
        "Use the following excerpts from the documents to answer when they are relevant.\n\
         \n[1] b/c.md (part 1)\ngamma delta\n\
         \n[2] a.txt (part 1)\nalpha beta\n"
    );
}

/// Reading needs no embedding model: the directory's problems and its chunk
/// count are known first, and embedding what was read gives the corpus
/// `from_dir` gives.
#[test]
fn documents_are_read_and_counted_before_any_embedding() {
    let dir = docs();
    let opts = small_chunks(None);
    let docs = Documents::read(dir.path(), &opts.chunking).unwrap();
    assert_eq!(docs.report.files, 3, "cats, ships and the empty text file");
    assert_eq!(docs.report.skipped_binary, vec![PathBuf::from("blob.md")]);
    let e = FakeEmbedder::new("fake");
    assert_eq!(e.embedded.get(), 0);
    let n = docs.chunk_count();
    let corpus = Corpus::embed(docs, &e, &opts).unwrap();
    assert_eq!(corpus.chunks().len(), n);
    let again = Corpus::from_dir(dir.path(), &e, &opts).unwrap();
    assert_eq!(again.chunks(), corpus.chunks());
    assert_eq!(again.report, corpus.report);
    let missing = dir.path().join("nope");
    assert!(matches!(
        Documents::read(&missing, &opts.chunking),
        Err(RetrieveError::NotADir(_))
    ));
}
