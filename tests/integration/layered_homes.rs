//! Homes layered over a droplet unpacked once per host: instances of one droplet share its
//! tree, and nothing an app does in its home reaches the tree or another instance.

use crate::instances::{Fixture, assert_released, http_get, start_request};
use dea::instance::InstanceState;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Mount points at or below `path`, from this process's mount table.
fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|mount| mount.starts_with(path))
        .collect()
}

async fn wait_for_file(path: &Path) {
    for _ in 0..100 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_a_droplet_tree_that_no_app_can_change() {
    let Fixture {
        base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;
    let state = base.path().join("dea");

    // One app overwrites every file of its droplet and drops links to the host; another
    // removes all it can. Both keep running meanwhile.
    let vandals = [
        "find /home/vcap -xdev -type f -exec sh -c 'echo vandal > \"$1\"' _ {} \\; ; \
         ln -s /etc/shadow /home/vcap/app/index.html.lnk; chmod -R 000 /home/vcap/app; \
         touch /home/vcap/tmp/done; sleep 60",
        "rm -rf /home/vcap/app/* /home/vcap/staging_info.yml; touch /home/vcap/tmp/done; sleep 60",
    ];
    let mut running = Vec::new();
    for command in vandals {
        let mut request = start_request(&droplet);
        request.health_check = false;
        request.start_command = Some(command.into());
        let info = manager.start(request).await.expect("start");
        assert_eq!(info.state, InstanceState::Running, "{info:?}");
        wait_for_file(&info.dir.join("home/tmp/done")).await;
        running.push(info);
    }
    let sha1 = running[0].droplet_sha1.clone();
    let tree = state.join("layers").join(&sha1).join("tree");
    // Each did what it meant to, in its own home.
    let first = std::fs::read_to_string(running[0].dir.join("home/app/index.html"));
    assert_eq!(first.expect("overwritten copy").trim(), "vandal");
    assert!(!running[1].dir.join("home/app/index.html").exists());
    // Their homes are mounts over the shared tree, which is as unpacked.
    for info in &running {
        assert!(
            mounts_under(&info.dir).contains(&info.dir.join("home")),
            "{} is not a mount",
            info.dir.display()
        );
    }
    let shared = std::fs::read_to_string(tree.join("app/index.html")).expect("shared tree");
    assert!(shared.contains("Hello from a dea droplet"), "{shared}");
    assert!(tree.join("staging_info.yml").is_file());
    let layers = std::fs::metadata(state.join("layers")).expect("layers");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&layers.permissions()) & 0o777,
        0o700
    );
    assert!(!tree.join("app/index.html.lnk").exists());

    // A third instance of the droplet, started meanwhile, serves the droplet as staged.
    let info = manager.start(start_request(&droplet)).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    let response = http_get(info.host_port, "/").await;
    assert!(response.contains("Hello from a dea droplet"), "{response}");
    running.push(info);

    // Stopped, each leaves nothing: no mount, no directory. The tree stays for later
    // starts of the droplet.
    for info in &running {
        let stopped = manager.stop(&info.instance_id).await.expect("stop");
        assert_released(&stopped);
    }
    assert_eq!(mounts_under(&state), Vec::<PathBuf>::new());
    assert!(tree.join("app/index.html").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_layered_instance_keeps_its_logs_and_leaves_no_mount() {
    let Fixture {
        base,
        _cleanup,
        droplet,
        manager,
    } = Fixture::new().await;
    let state = base.path().join("dea");
    let mut request = start_request(&droplet);
    request.health_check = false;
    request.start_command = Some("echo last words >&2; exit 3".into());
    let info = manager.start(request).await.expect("start");
    let info = manager
        .wait_until_finished(&info.instance_id, Duration::from_secs(10))
        .await
        .expect("known");
    assert_eq!(info.state, InstanceState::Crashed, "{info:?}");
    let kept = state
        .join("crashes")
        .join(&info.instance_id)
        .join("logs/stderr.log");
    let words = std::fs::read_to_string(&kept).expect("crash log kept");
    assert!(words.contains("last words"), "{words}");
    assert!(!info.dir.exists(), "{} left behind", info.dir.display());
    assert_eq!(mounts_under(&state), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_layering_off_each_home_is_unpacked_in_place() {
    let base = tempfile::tempdir().expect("tempdir");
    let state = base.path().join("dea");
    let _cleanup = dea_tests::controller::ContainerCleanup(state.clone());
    let droplet = crate::instances::staged_example(base.path()).await;
    let mut settings = crate::instances::settings(&state);
    settings.layered_homes = false;
    let manager = dea::instance::InstanceManager::new(settings, crate::instances::runc(&state))
        .expect("instance manager");
    let info = manager.start(start_request(&droplet)).await.expect("start");
    assert_eq!(info.state, InstanceState::Running, "{info:?}");
    let response = http_get(info.host_port, "/").await;
    assert!(response.contains("Hello from a dea droplet"), "{response}");
    assert_eq!(mounts_under(&info.dir), Vec::<PathBuf>::new());
    assert!(!state.join("layers").exists());
    let stopped = manager.stop(&info.instance_id).await.expect("stop");
    assert_released(&stopped);
}

/// An overlay mounted by the test; unmounted when dropped.
struct Overlay(PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A state directory on a filesystem that cannot be an overlay's upper layer (an overlay
/// itself, as in a container): homes are unpacked in place, and instances run as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_overlayfs_cannot_be_used_homes_are_unpacked_in_place() {
    let base = tempfile::tempdir().expect("tempdir");
    let droplet = crate::instances::staged_example(base.path()).await;
    let layer = |name: &str| {
        let dir = base.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    };
    let (lower, upper, work, merged) = (layer("l"), layer("u"), layer("w"), layer("m"));
    let mounted = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged)
        .status()
        .expect("mount");
    assert!(mounted.success());
    let _overlay = Overlay(merged.clone());
    let state = merged.join("dea");
    let _cleanup = dea_tests::controller::ContainerCleanup(state.clone());
    let manager = crate::instances::manager(&state);
    for _ in 0..2 {
        let info = manager.start(start_request(&droplet)).await.expect("start");
        assert_eq!(info.state, InstanceState::Running, "{info:?}");
        let response = http_get(info.host_port, "/").await;
        assert!(response.contains("Hello from a dea droplet"), "{response}");
        assert_eq!(mounts_under(&info.dir), Vec::<PathBuf>::new());
        let stopped = manager.stop(&info.instance_id).await.expect("stop");
        assert_released(&stopped);
    }
}
