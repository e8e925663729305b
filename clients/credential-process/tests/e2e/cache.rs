//! The file cache of `process`, end to end: reused while fresh, and a
//! corrupt, too-open or foreign file, or a directory that cannot be used,
//! means a fresh fetch, never a failure.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::common::*;

/// The one cache file in `dir`.
fn cache_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    assert_eq!(files.len(), 1, "one cache file: {files:?}");
    files[0].clone()
}

async fn run_cached(stack: &Stack, dir: &Path) -> serde_json::Value {
    let mut command = shim(stack.process_args());
    command.arg("--cache-dir").arg(dir);
    expect_credentials(&output(&mut command).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_credentials_are_reused_from_a_private_file() {
    let stack = Stack::start().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cache");
    let first = run_cached(&stack, &dir).await;
    let fetches = stack.metadata.request_count();
    assert_eq!(fetches, 1);

    assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    let file = cache_file(&dir);
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    let name = file.file_stem().unwrap().to_str().unwrap();
    assert!(
        name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        "the file is named by a hash of its key: {name}"
    );

    let second = run_cached(&stack, &dir).await;
    assert_eq!(stack.metadata.request_count(), fetches, "no new fetch");
    assert_eq!(second, first);

    // Another role is another file, and another fetch.
    let mut command = shim(stack.process_args());
    command
        .arg("--cache-dir")
        .arg(&dir)
        .args(["--duration-seconds", "1800"]);
    expect_credentials(&output(&mut command).await);
    assert_eq!(stack.metadata.request_count(), fetches + 1);
    assert_eq!(
        fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json"))
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_cache_file_means_a_fresh_fetch() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    run_cached(&stack, dir.path()).await;
    let file = cache_file(dir.path());
    fs::write(&file, "{\"format\":1,\"key\":").unwrap();

    let before = stack.metadata.request_count();
    run_cached(&stack, dir.path()).await;
    assert_eq!(stack.metadata.request_count(), before + 1, "fetched afresh");
    let repaired: serde_json::Value = serde_json::from_slice(&fs::read(&file).unwrap()).unwrap();
    assert_eq!(repaired["format"], 1, "the corrupt file was replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_open_cache_file_means_a_fresh_fetch() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    run_cached(&stack, dir.path()).await;
    let file = cache_file(dir.path());
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();

    let before = stack.metadata.request_count();
    run_cached(&stack, dir.path()).await;
    assert_eq!(stack.metadata.request_count(), before + 1, "fetched afresh");
    assert_eq!(
        fs::metadata(&file).unwrap().mode() & 0o777,
        0o600,
        "replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_cache_file_means_a_fresh_fetch() {
    let me = rustix::process::geteuid();
    assert!(
        me.is_root(),
        "this test gives a cache file to another user, which needs root (CI runs as root); \
         cache::tests::a_file_of_another_owner_is_not_trusted covers the check without root"
    );
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    run_cached(&stack, dir.path()).await;
    let file = cache_file(dir.path());
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();

    let before = stack.metadata.request_count();
    run_cached(&stack, dir.path()).await;
    assert_eq!(stack.metadata.request_count(), before + 1, "fetched afresh");
    assert_eq!(fs::metadata(&file).unwrap().uid(), me.as_raw(), "replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_cache_directory_means_a_fresh_fetch() {
    let stack = Stack::start().await;
    let root = tempfile::tempdir().unwrap();
    // A path under a regular file cannot be created or written, even by root.
    let blocker = root.path().join("a-file");
    fs::write(&blocker, "").unwrap();
    let dir = blocker.join("cache");
    run_cached(&stack, &dir).await;
    run_cached(&stack, &dir).await;
    assert_eq!(stack.metadata.request_count(), 2, "each run fetched");

    // A directory others may write to is not used either.
    let open = root.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    run_cached(&stack, &open).await;
    assert_eq!(
        fs::read_dir(&open).unwrap().count(),
        0,
        "nothing written there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_invocations_share_one_fetch() {
    let stack = Stack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let runs = (0..4).map(|_| {
        let mut command = shim(stack.process_args());
        command.arg("--cache-dir").arg(dir.path());
        async move { command.output().await.unwrap() }
    });
    let outputs = futures_join_all(runs).await;
    let keys: Vec<String> = outputs
        .iter()
        .map(|out| {
            expect_credentials(out)["AccessKeyId"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(keys.iter().all(|key| *key == keys[0]), "{keys:?}");
    assert_eq!(
        stack.metadata.request_count(),
        1,
        "the lock made the others wait and read what the first wrote"
    );
}

/// Runs the futures concurrently, in order of their results.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}
