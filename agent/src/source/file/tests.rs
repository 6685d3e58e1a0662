//! The file source against real directories: reads, rewrites, symlink swaps,
//! bad files keeping their last good objects, duplicates.
use super::*;

fn ns(name: &str, team: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{team: {team}}}\n"
    )
}

/// A source on a fresh directory; inotify is the only way it learns of
/// changes (the poll interval is never reached).
struct Fixture {
    dir: PathBuf,
    rx: mpsc::UnboundedReceiver<SourceEvent>,
    task: tokio::task::JoinHandle<()>,
    errors: BTreeMap<String, String>,
}

/// What one batch (up to a `Synced`) sent.
#[derive(Debug, Default)]
struct Batch {
    applied: Vec<(String, String)>,
    deleted: Vec<String>,
    revision: String,
}

impl Fixture {
    async fn new(tag: &str, setup: impl FnOnce(&Path)) -> Self {
        let dir = std::env::temp_dir().join(format!("palisade-src-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        setup(&dir);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(FileSource::new(&dir, Duration::from_secs(3600)).run(tx));
        Self {
            dir,
            rx,
            task,
            errors: BTreeMap::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    async fn batch(&mut self) -> Batch {
        let mut b = Batch::default();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
                .await
                .expect("an event within 30 s")
                .expect("source alive");
            match ev {
                SourceEvent::Apply { obj, origin } => {
                    let labels = match &obj {
                        Object::Namespace(n) => n.labels.get("team").cloned().unwrap_or_default(),
                        _ => String::new(),
                    };
                    b.applied.push((obj.object_ref().name.clone(), labels));
                    let _ = origin;
                }
                SourceEvent::Delete(r) => b.deleted.push(r.name.clone()),
                SourceEvent::InputErrors(e) => self.errors = e,
                SourceEvent::Health { .. } => {}
                SourceEvent::Error { origin, message } => panic!("{origin}: {message}"),
                SourceEvent::Synced { revision, .. } => {
                    b.revision = revision;
                    return b;
                }
            }
        }
    }

    /// Batches until REVISION reads `rev`, merged.
    async fn until(&mut self, rev: &str) -> Batch {
        std::fs::write(self.path(REVISION_FILE), rev).expect("revision");
        let mut all = Batch::default();
        loop {
            let b = self.batch().await;
            all.applied.extend(b.applied);
            all.deleted.extend(b.deleted);
            if b.revision == rev {
                all.revision = b.revision;
                return all;
            }
        }
    }

    fn error_of(&self, name: &str) -> Option<&String> {
        self.errors.get(&self.path(name).display().to_string())
    }

    fn done(self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_new_file_is_seen_without_waiting_for_the_poll() {
    let mut f = Fixture::new("new", |_| {}).await;
    f.batch().await;
    std::fs::write(f.path("ns.yaml"), ns("n1", "a")).expect("write");
    let b = f.until("r1").await;
    assert_eq!(b.applied.len(), 1, "{b:?}");
    f.done();
}

/// Edits, deletions and revisions in a large directory are all seen through
/// the named-file path alone, and only the named files are read again.
#[tokio::test]
async fn edits_deletes_and_revisions_are_seen_through_inotify_alone() {
    let mut f = Fixture::new("named", |dir| {
        for i in 0..200 {
            std::fs::write(dir.join(format!("ns-{i}.yaml")), ns(&format!("n{i}"), "a"))
                .expect("write");
        }
    })
    .await;
    let b = f.batch().await;
    assert_eq!(b.applied.len(), 200, "the first scan reads everything");
    std::fs::write(f.path("ns-7.yaml"), ns("n7", "b")).expect("edit");
    let b = f.until("r1").await;
    let names: Vec<&str> = b.applied.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["n7"], "only the edited file is read again");
    assert!(b.deleted.is_empty());
    std::fs::remove_file(f.path("ns-9.yaml")).expect("delete");
    let b = f.until("r2").await;
    assert!(b.applied.is_empty(), "{b:?}");
    assert_eq!(b.deleted, ["n9"]);
    f.done();
}

/// A file that stops parsing, is emptied, holds another kind, is not UTF-8
/// or is too large keeps its last good objects, and says so until fixed.
#[tokio::test]
async fn a_broken_file_keeps_its_last_good_objects_until_fixed() {
    let mut f = Fixture::new("broken", |dir| {
        std::fs::write(dir.join("a.yaml"), ns("n1", "a")).expect("write");
    })
    .await;
    assert_eq!(f.batch().await.applied.len(), 1);
    let big = format!(
        "{}\n#{}",
        ns("n1", "z"),
        "x".repeat(MAX_FILE_BYTES as usize)
    );
    let breakages: [(&str, Vec<u8>, &str); 5] = [
        (
            "unparseable",
            b"kind: Namespace\nmetadata: [oops\n".to_vec(),
            "invalid YAML",
        ),
        ("empty", Vec::new(), "holds no object"),
        (
            "other kind",
            b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n".to_vec(),
            "unsupported kind",
        ),
        ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x41], "not UTF-8"),
        ("too large", big.into_bytes(), "over the limit"),
    ];
    for (i, (what, bytes, says)) in breakages.iter().enumerate() {
        std::fs::write(f.path("a.yaml"), bytes).expect("break");
        let b = f.until(&format!("broken-{i}")).await;
        assert!(
            b.deleted.is_empty() && b.applied.is_empty(),
            "{what}: the last good objects stay: {b:?}"
        );
        let e = f.error_of("a.yaml").cloned().unwrap_or_default();
        assert!(e.contains(says), "{what}: {e}");
        assert!(e.contains("last good 1 object(s) stay"), "{what}: {e}");
        assert!(
            !e.contains(&f.path("a.yaml").display().to_string()),
            "the path is not repeated: {e}"
        );
    }
    std::fs::write(f.path("a.yaml"), ns("n1", "b")).expect("fix");
    let b = f.until("fixed").await;
    assert_eq!(b.applied, [("n1".to_string(), "b".to_string())]);
    assert!(f.errors.is_empty(), "the error cleared: {:?}", f.errors);
    // Broken, then removed: the error goes and so do the objects.
    std::fs::write(f.path("a.yaml"), "metadata: [oops").expect("break");
    f.until("broken-again").await;
    assert!(f.error_of("a.yaml").is_some());
    std::fs::remove_file(f.path("a.yaml")).expect("remove");
    let b = f.until("removed").await;
    assert_eq!(b.deleted, ["n1"]);
    assert!(f.errors.is_empty(), "{:?}", f.errors);
    f.done();
}

/// A file is read once its writer closes it, not while it is written.
#[tokio::test]
async fn a_file_is_read_when_its_writer_closes_it() {
    use std::io::Write;
    let mut f = Fixture::new("slow", |_| {}).await;
    f.batch().await;
    let text = ns("n1", "a");
    let (head, tail) = text.split_at(text.len() / 2);
    let mut file = std::fs::File::create(f.path("a.yaml")).expect("create");
    file.write_all(head.as_bytes()).expect("head");
    file.flush().expect("flush");
    // Not a timing assertion: nothing may arrive however long this takes.
    let early = tokio::time::timeout(Duration::from_millis(300), f.rx.recv()).await;
    assert!(
        early.is_err(),
        "nothing is read before the close: {early:?}"
    );
    file.write_all(tail.as_bytes()).expect("tail");
    drop(file);
    let b = f.batch().await;
    assert_eq!(b.applied.len(), 1, "{b:?}");
    assert!(f.errors.is_empty(), "{:?}", f.errors);
    f.done();
}

/// Symlinked files are read (at start and later) and stay; a ConfigMap
/// volume's `..data` swap is seen; dot-entries, subdirectories and other
/// files are skipped.
#[tokio::test]
async fn a_configmap_volume_is_read_through_its_symlinks_and_updated_by_its_swap() {
    use std::os::unix::fs::symlink;
    let mut f = Fixture::new("configmap", |dir| {
        let v1 = dir.join("..2026_12_01_v1");
        std::fs::create_dir(&v1).expect("v1");
        std::fs::write(v1.join("ns.yaml"), ns("n1", "a")).expect("write");
        symlink("..2026_12_01_v1", dir.join("..data")).expect("..data");
        symlink("..data/ns.yaml", dir.join("ns.yaml")).expect("link");
        std::fs::create_dir(dir.join("sub")).expect("subdir");
        std::fs::write(dir.join("sub/x.yaml"), ns("hidden", "a")).expect("write");
        std::fs::write(dir.join("notes.txt"), "hello").expect("write");
        std::fs::write(dir.join("UPPER.YAML"), ns("n2", "a")).expect("write");
    })
    .await;
    let b = f.batch().await;
    let mut names: Vec<&str> = b.applied.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2"], "read at start through the symlink");
    // The update: a new data directory, `..data` swapped by rename.
    let v2 = f.path("..2026_12_01_v2");
    std::fs::create_dir(&v2).expect("v2");
    std::fs::write(v2.join("ns.yaml"), ns("n1", "b")).expect("write");
    symlink("..2026_12_01_v2", f.path("..data_tmp")).expect("tmp");
    std::fs::rename(f.path("..data_tmp"), f.path("..data")).expect("swap");
    std::fs::remove_dir_all(f.path("..2026_12_01_v1")).expect("old");
    let b = f.until("r1").await;
    assert_eq!(b.applied, [("n1".to_string(), "b".to_string())]);
    assert!(b.deleted.is_empty(), "{b:?}");
    assert!(f.errors.is_empty(), "{:?}", f.errors);
    f.done();
}

/// The same object in two files: the first by path is applied and the
/// conflict reported; when that file goes, the other copy applies.
#[tokio::test]
async fn an_object_in_two_files_is_taken_from_the_first_and_the_other_applies_after() {
    let mut f = Fixture::new("dup", |dir| {
        std::fs::write(dir.join("a.yaml"), ns("n1", "a")).expect("write");
        std::fs::write(dir.join("b.yaml"), ns("n1", "b")).expect("write");
    })
    .await;
    let b = f.batch().await;
    assert_eq!(b.applied, [("n1".to_string(), "a".to_string())]);
    let e = f.error_of("b.yaml").cloned().unwrap_or_default();
    assert!(
        e.contains("namespace n1") && e.contains(&f.path("a.yaml").display().to_string()),
        "{e}"
    );
    std::fs::remove_file(f.path("a.yaml")).expect("remove");
    let b = f.until("r1").await;
    assert_eq!(b.applied, [("n1".to_string(), "b".to_string())]);
    assert!(b.deleted.is_empty(), "{b:?}");
    assert!(f.errors.is_empty(), "{:?}", f.errors);
    f.done();
}

/// A removed and recreated directory is watched again: a change in it is
/// seen without the poll.
#[tokio::test]
async fn a_recreated_directory_is_watched_again() {
    let mut f = Fixture::new("recreate", |dir| {
        std::fs::write(dir.join("a.yaml"), ns("n1", "a")).expect("write");
    })
    .await;
    f.batch().await;
    std::fs::remove_dir_all(&f.dir).expect("remove dir");
    let b = f.batch().await;
    assert!(
        b.deleted.is_empty(),
        "a missing directory deletes nothing: {b:?}"
    );
    std::fs::create_dir_all(&f.dir).expect("recreate");
    std::fs::write(f.path("a.yaml"), ns("n1", "b")).expect("write");
    let b = f.until("r1").await;
    assert_eq!(b.applied, [("n1".to_string(), "b".to_string())]);
    std::fs::write(f.path("c.yaml"), ns("n3", "a")).expect("write");
    let b = f.until("r2").await;
    assert_eq!(b.applied.len(), 1, "seen through the new watch: {b:?}");
    f.done();
}
