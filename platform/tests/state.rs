//! The platform's state layer against real nats-servers with JetStream: blobs, desired state,
//! routes, leases and events, their survival across a server restart, and a three-node
//! cluster losing a node.

#[path = "support/jetstream.rs"]
mod support;

use std::time::{Duration, Instant};

use dea_platform::blobs::{BlobBucket, BlobUri, Digest};
use dea_platform::desired::{AppChange, AppSpec, AppState};
use dea_platform::events::Event;
use dea_platform::jetstream::{BlobUriError, NameError, Platform, PlatformOptions, StateError};
use futures_util::StreamExt;
use support::{Cluster, NatsServer, dir_entries, eventually, random_file};
use time::OffsetDateTime;

async fn platform(server: &NatsServer, opts: PlatformOptions) -> Platform {
    let client = async_nats::connect(server.url()).await.expect("connect");
    Platform::connect(client, opts).await.expect("platform")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_connecting_at_once_share_the_buckets() {
    let server = NatsServer::start().await;
    let connect = || async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        Platform::connect(client, PlatformOptions::default()).await
    };
    // Both race to create every bucket; both end up bound to the same ones.
    let (one, two) = tokio::join!(connect(), connect());
    let (one, two) = (one.expect("first"), two.expect("second"));
    one.apps()
        .create(AppSpec::new("shared"))
        .await
        .expect("create");
    assert!(two.apps().get("shared").await.expect("get").is_some());
    // A later connect with other options binds to what exists instead of changing it.
    let client = async_nats::connect(server.url()).await.expect("connect");
    let third = Platform::connect(
        client,
        PlatformOptions {
            lease_ttl: Duration::from_secs(3),
            ..PlatformOptions::default()
        },
    )
    .await
    .expect("third");
    assert_eq!(third.leases().ttl(), PlatformOptions::default().lease_ttl);
    assert_eq!(third.apps().list().await.expect("list").len(), 1);
}

#[tokio::test]
async fn blobs_round_trip_twenty_megabytes_with_digests() {
    let server = NatsServer::start().await;
    let platform = platform(&server, PlatformOptions::default()).await;
    let blobs = platform.blobs();
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("app.zip");
    let size = 20 * 1024 * 1024 + 123;
    let (sha1, sha256) = random_file(&src, size, 7);

    let package = blobs
        .put_package_file("my-app", &src)
        .await
        .expect("put package");
    assert_eq!(package.bucket, BlobBucket::Packages);
    assert!(package.name.starts_with("my-app-"), "{}", package.name);
    assert_eq!(
        (package.sha1.as_str(), package.sha256.as_str()),
        (sha1.as_str(), sha256.as_str())
    );
    assert_eq!(package.size, size as u64);
    assert!(
        blobs
            .exists(BlobBucket::Packages, &package.name)
            .await
            .expect("exists")
    );

    let out = dir.path().join("out").join("app.zip");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir");
    let got = blobs
        .get_to_file(
            BlobBucket::Packages,
            &package.name,
            &out,
            size as u64,
            Some(&package.sha256_digest()),
        )
        .await
        .expect("get package");
    assert_eq!(got, size as u64);
    assert!(std::fs::read(&src).expect("src") == std::fs::read(&out).expect("out"));
    assert_eq!(dir_entries(out.parent().expect("parent")), ["app.zip"]);

    // Droplets are named by SHA-1, verified, and idempotent.
    let droplet = blobs.put_droplet(&sha1, &src).await.expect("put droplet");
    assert_eq!(
        (droplet.name.as_str(), droplet.size),
        (sha1.as_str(), size as u64)
    );
    let again = blobs
        .put_droplet(&sha1, &src)
        .await
        .expect("put droplet again");
    assert_eq!(again, droplet);
    let uri: BlobUri = droplet.uri().to_string().parse().expect("uri parses");
    assert_eq!(uri, droplet.uri());
    let out2 = dir.path().join("droplet.tgz");
    blobs
        .get_uri_to_file(&uri, &out2, u64::MAX, Some(&Digest::Sha1(sha1.clone())))
        .await
        .expect("get droplet");
    assert_eq!(
        std::fs::metadata(&out2).expect("droplet").len(),
        size as u64
    );

    // A file that does not hash to the name is refused before anything is stored.
    let other = "0".repeat(40);
    let err = blobs
        .put_droplet(&other, &src)
        .await
        .expect_err("wrong sha1");
    assert!(matches!(err, StateError::DigestMismatch { .. }), "{err:?}");
    assert!(
        !blobs
            .exists(BlobBucket::Droplets, &other)
            .await
            .expect("exists")
    );

    assert!(
        blobs
            .delete(BlobBucket::Packages, &package.name)
            .await
            .expect("delete")
    );
    assert!(
        !blobs
            .delete(BlobBucket::Packages, &package.name)
            .await
            .expect("delete again")
    );
    let err = blobs
        .get_to_file(BlobBucket::Packages, &package.name, &out, u64::MAX, None)
        .await
        .expect_err("deleted");
    assert!(matches!(err, StateError::BlobNotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn refused_downloads_leave_no_file() {
    let server = NatsServer::start().await;
    let platform = platform(&server, PlatformOptions::default()).await;
    let blobs = platform.blobs();
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let (sha1, _) = random_file(&src, 300_000, 3);
    let blob = blobs.put_droplet(&sha1, &src).await.expect("put");
    let dest_dir = dir.path().join("dest");
    std::fs::create_dir(&dest_dir).expect("mkdir");
    let dest = dest_dir.join("droplet");

    let err = blobs
        .get_to_file(BlobBucket::Droplets, &sha1, &dest, 299_999, None)
        .await
        .expect_err("over max_size");
    assert!(
        matches!(
            err,
            StateError::BlobTooLarge {
                max_size: 299_999,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        dir_entries(&dest_dir).is_empty(),
        "{:?}",
        dir_entries(&dest_dir)
    );

    let wrong = Digest::Sha256("ab".repeat(32));
    let err = blobs
        .get_to_file(BlobBucket::Droplets, &sha1, &dest, u64::MAX, Some(&wrong))
        .await
        .expect_err("wrong digest");
    assert!(matches!(err, StateError::DigestMismatch { .. }), "{err:?}");
    assert!(
        dir_entries(&dest_dir).is_empty(),
        "{:?}",
        dir_entries(&dest_dir)
    );

    // The exact size passes.
    blobs
        .get_to_file(
            BlobBucket::Droplets,
            &sha1,
            &dest,
            blob.size,
            Some(&blob.sha1_digest()),
        )
        .await
        .expect("exact size");
    assert_eq!(dir_entries(&dest_dir), ["droplet"]);
}

/// Asserts that `result` is a refusal of the name itself, before any JetStream request.
#[track_caller]
fn assert_invalid_name<T: std::fmt::Debug>(result: Result<T, StateError>, name: &str) {
    match result {
        Err(StateError::InvalidName { .. }) => {}
        other => panic!("{name:?} was not refused: {other:?}"),
    }
}

#[tokio::test]
async fn hostile_names_are_refused() {
    let server = NatsServer::start().await;
    let platform = platform(&server, PlatformOptions::default()).await;
    let (blobs, apps, routes) = (platform.blobs(), platform.apps(), platform.routes());
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("x");
    let hostile = [
        "",
        "../etc/passwd",
        "a/b",
        "..",
        "a..b",
        ".hidden",
        "a\nb",
        "a\0b",
        "a b",
        "*",
        ">",
    ];
    for name in hostile {
        for bucket in [BlobBucket::Packages, BlobBucket::Droplets] {
            assert_invalid_name(blobs.get_to_file(bucket, name, &dest, 1, None).await, name);
            assert_invalid_name(blobs.exists(bucket, name).await, name);
            assert_invalid_name(blobs.delete(bucket, name).await, name);
        }
        assert_invalid_name(blobs.put_droplet(name, &dest).await, name);
        assert_invalid_name(blobs.put_package(name, tokio::io::empty()).await, name);
        assert_invalid_name(apps.get(name).await, name);
        assert_invalid_name(routes.claim(name, "app").await, name);
        assert_invalid_name(routes.claim("ok.example.com", name).await, name);
        assert_invalid_name(platform.leases().holder(name).await, name);
        assert_invalid_name(platform.events().list(name, 1).await, name);
    }
    // Droplet names are exactly a lowercase SHA-1; app and host names lowercase.
    let upper_sha = "ABCDEF0123456789ABCDEF0123456789ABCDEF01";
    for name in [upper_sha, "abc", &"a".repeat(41)] {
        assert_invalid_name(blobs.exists(BlobBucket::Droplets, name).await, name);
    }
    assert_invalid_name(apps.create(AppSpec::new("Upper")).await, "Upper");
    assert_invalid_name(routes.claim("EXAMPLE.com", "app").await, "EXAMPLE.com");
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn blob_uris_parse_only_known_buckets_and_safe_names() {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let good = [
        (
            format!("dea-blob://dea-droplets/{sha}"),
            BlobBucket::Droplets,
            sha.to_string(),
        ),
        (
            "dea-blob://dea-packages/my-app-0a1b".to_string(),
            BlobBucket::Packages,
            "my-app-0a1b".to_string(),
        ),
    ];
    for (text, bucket, name) in good {
        let uri: BlobUri = text.parse().expect("good uri");
        assert_eq!((uri.bucket(), uri.name()), (bucket, name.as_str()));
        assert_eq!(uri.to_string(), text);
        let json = serde_json::to_string(&uri).expect("json");
        assert_eq!(
            serde_json::from_str::<BlobUri>(&json).expect("from json"),
            uri
        );
    }
    // Compared by kind (`discriminant`), not by the details inside.
    let name = BlobUriError::Name(NameError::Empty);
    let bad = [
        ("http://dea-droplets/x", BlobUriError::Scheme),
        ("dea-blob:dea-droplets/x", BlobUriError::Scheme),
        ("DEA-BLOB://dea-packages/x", BlobUriError::Scheme),
        ("dea-blob://dea-packages", BlobUriError::NoName),
        (
            "dea-blob://KV_dea-apps/x",
            BlobUriError::UnknownBucket(String::new()),
        ),
        ("dea-blob://dea-packages/../x", name.clone()),
        ("dea-blob://dea-packages/a/b", name.clone()),
        ("dea-blob://dea-packages/a?b=c", name.clone()),
        ("dea-blob://dea-droplets/not-a-sha", name),
    ];
    for (text, expected) in bad {
        match text.parse::<BlobUri>() {
            Err(StateError::InvalidBlobUri { uri, reason }) => {
                assert_eq!(uri, text);
                let kind = std::mem::discriminant::<BlobUriError>;
                assert!(kind(&reason) == kind(&expected), "{text}: {reason:?}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    assert!(serde_json::from_str::<BlobUri>(r#""dea-blob://x/y""#).is_err());
}

#[tokio::test]
async fn apps_compare_and_set() {
    let server = NatsServer::start().await;
    let platform = platform(&server, PlatformOptions::default()).await;
    let apps = platform.apps();
    let mut watch = apps.watch().await.expect("watch");

    let (spec, rev) = apps.create(AppSpec::new("web")).await.expect("create");
    let err = apps.create(AppSpec::new("web")).await.expect_err("twice");
    assert!(
        matches!(err, StateError::AlreadyExists { ref name } if name == "web"),
        "{err:?}"
    );
    let (got, got_rev) = apps.get("web").await.expect("get").expect("exists");
    assert_eq!((got.clone(), got_rev), (spec.clone(), rev));
    assert!(apps.get("nope").await.expect("get").is_none());

    // Two writers with the same revision: exactly one wins.
    let mut a = got.clone();
    a.instances = 2;
    let mut b = got.clone();
    b.instances = 3;
    let (ra, rb) = tokio::join!(apps.update("web", rev, a), apps.update("web", rev, b));
    let (won, lost) = match (ra, rb) {
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => (won, lost),
        other => panic!("not exactly one winner: {other:?}"),
    };
    assert!(
        matches!(lost, StateError::Conflict { revision, .. } if revision == rev),
        "{lost:?}"
    );
    let (now, now_rev) = apps.get("web").await.expect("get").expect("exists");
    assert_eq!((now.instances, now_rev), (won.0.instances, won.1));
    assert_eq!(now.version, spec.version, "scaling keeps the version");

    // A stale revision is refused even after more writes.
    let mut stale = now.clone();
    stale.state = AppState::Started;
    let err = apps.update("web", rev, stale).await.expect_err("stale");
    assert!(matches!(err, StateError::Conflict { .. }), "{err:?}");

    // Changing the env gives a new version.
    let (with_env, _) = apps
        .modify("web", |spec| {
            spec.env.insert("GREETING".into(), "hi".into());
        })
        .await
        .expect("modify");
    assert_ne!(with_env.version, now.version);

    // A no-op modify writes nothing.
    let (_, rev_before) = apps.get("web").await.expect("get").expect("exists");
    let (_, rev_after) = apps.modify("web", |_| {}).await.expect("noop");
    assert_eq!(rev_before, rev_after);

    apps.create(AppSpec::new("api")).await.expect("create api");
    let names: Vec<String> = apps
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|(spec, _)| spec.name)
        .collect();
    assert_eq!(names, ["api", "web"]);
    assert!(apps.delete("api").await.expect("delete"));
    assert!(!apps.delete("api").await.expect("delete again"));
    assert_eq!(apps.list().await.expect("list").len(), 1);
    let err = apps.modify("api", |_| {}).await.expect_err("deleted");
    assert!(matches!(err, StateError::NotFound { .. }), "{err:?}");

    // The watch saw it all in order: web created, updated twice, api created and deleted.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let change = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a change in time")
            .expect("watch open")
            .expect("change decodes");
        seen.push(match change {
            AppChange::Put { spec, .. } => format!("put {} x{}", spec.name, spec.instances),
            AppChange::Deleted { name, .. } => format!("delete {name}"),
        });
    }
    let winner = format!("put web x{}", won.0.instances);
    assert_eq!(
        seen,
        [
            "put web x1",
            winner.as_str(),
            winner.as_str(),
            "put api x1",
            "delete api"
        ]
    );
}

#[tokio::test]
async fn modify_retries_lost_races() {
    let server = NatsServer::start().await;
    let platform = platform(&server, PlatformOptions::default()).await;
    let apps = platform.apps().clone();
    apps.create(AppSpec::new("counter")).await.expect("create");
    let writers = 5;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let apps = apps.clone();
            tokio::spawn(async move {
                let mut runs = 0;
                let result = apps
                    .modify("counter", |spec| {
                        runs += 1;
                        spec.instances += 1;
                    })
                    .await;
                (result, runs)
            })
        })
        .collect();
    let mut retried = false;
    for task in tasks {
        let (result, runs) = task.await.expect("task");
        result.expect("modify succeeds despite contention");
        retried |= runs > 1;
    }
    let (spec, _) = apps.get("counter").await.expect("get").expect("exists");
    assert_eq!(spec.instances, 1 + writers, "no increment lost");
    assert!(retried, "some writer had to retry");
}

#[tokio::test]
async fn routes_belong_to_one_app() {
    let server = NatsServer::start().await;
    let platform = platform(&server, PlatformOptions::default()).await;
    let routes = platform.routes();
    routes.claim("web.example.com", "web").await.expect("claim");
    routes
        .claim("web.example.com", "web")
        .await
        .expect("claim own again");
    let err = routes
        .claim("web.example.com", "evil")
        .await
        .expect_err("taken");
    assert!(
        matches!(err, StateError::RouteTaken { ref host, ref owner } if host == "web.example.com" && owner == "web"),
        "{err:?}"
    );
    let err = routes
        .release("web.example.com", "evil")
        .await
        .expect_err("not owner");
    assert!(
        matches!(err, StateError::NotRouteOwner { ref owner, .. } if owner == "web"),
        "{err:?}"
    );
    assert_eq!(
        routes
            .owner("web.example.com")
            .await
            .expect("owner")
            .as_deref(),
        Some("web")
    );

    routes
        .claim("api.example.com", "api")
        .await
        .expect("claim api");
    assert_eq!(
        routes.list().await.expect("list"),
        [
            ("api.example.com".to_string(), "api".to_string()),
            ("web.example.com".to_string(), "web".to_string())
        ]
    );
    routes
        .release("web.example.com", "web")
        .await
        .expect("release");
    routes
        .release("web.example.com", "web")
        .await
        .expect("release again is fine");
    assert_eq!(routes.owner("web.example.com").await.expect("owner"), None);
    routes
        .claim("web.example.com", "evil")
        .await
        .expect("free now");
}

#[tokio::test]
async fn one_lease_holder_until_it_stops_renewing() {
    let server = NatsServer::start().await;
    let ttl = Duration::from_secs(2);
    let opts = PlatformOptions {
        lease_ttl: ttl,
        ..PlatformOptions::default()
    };
    // Two controllers, each with its own connection.
    let one = platform(&server, opts.clone()).await;
    let two = platform(&server, opts).await;
    assert_eq!(one.leases().ttl(), ttl);

    let (a, b) = tokio::join!(
        one.leases().acquire("controller", "one", ttl),
        two.leases().acquire("controller", "two", ttl)
    );
    let (mut held, refused, winner, loser) = match (a, b) {
        (Ok(lease), Err(err)) => (lease, err, "one", two.clone()),
        (Err(err), Ok(lease)) => (lease, err, "two", one.clone()),
        other => panic!("not exactly one holder: {other:?}"),
    };
    assert!(
        matches!(refused, StateError::LeaseHeld { ref holder, .. } if holder == winner),
        "{refused:?}"
    );
    assert!(held.is_held());
    let loser_name = if winner == "one" { "two" } else { "one" };

    // Renewing keeps it past the TTL; the other cannot take it meanwhile.
    for _ in 0..4 {
        tokio::time::sleep(ttl / 4).await;
        held.renew().await.expect("renew");
        let err = loser
            .leases()
            .acquire("controller", loser_name, ttl)
            .await
            .expect_err("still held");
        assert!(matches!(err, StateError::LeaseHeld { .. }), "{err:?}");
    }
    // The holder re-acquiring (a restart with the same identity) renews.
    let winner_platform = if winner == "one" { &one } else { &two };
    let before_write = Instant::now();
    let mut held = winner_platform
        .leases()
        .acquire("controller", winner, ttl)
        .await
        .expect("re-acquire own");

    // It stops renewing: within a little more than the TTL the other acquires.
    assert!(held.is_held());
    let taken = loop {
        match loser.leases().acquire("controller", loser_name, ttl).await {
            Ok(lease) => break lease,
            Err(StateError::LeaseHeld { .. }) if before_write.elapsed() < ttl * 4 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the lease never expired: {err:?}"),
        }
    };
    // The server expires the lease no sooner than the TTL after the holder's last write.
    assert!(
        before_write.elapsed() >= ttl,
        "taken over before the TTL: {:?}",
        before_write.elapsed()
    );
    assert!(!held.is_held(), "the old holder's view expired too");
    let err = held.renew().await.expect_err("lost");
    assert!(matches!(err, StateError::LeaseLost { .. }), "{err:?}");
    assert_eq!(
        winner_platform
            .leases()
            .holder("controller")
            .await
            .expect("holder")
            .as_deref(),
        Some(loser_name)
    );

    // Releasing hands it over at once.
    taken.release().await.expect("release");
    let back = winner_platform
        .leases()
        .acquire("controller", winner, ttl)
        .await
        .expect("free after release");
    assert!(back.is_held());

    let err = one
        .leases()
        .acquire("other", "one", ttl * 2)
        .await
        .expect_err("longer than the bucket");
    assert!(matches!(err, StateError::LeaseTtl { .. }), "{err:?}");
}

fn crashed(index: u32) -> Event {
    Event::Crashed {
        instance: format!("inst-{index}"),
        index,
        exit_status: Some(1),
        reason: "CRASHED".into(),
        at: OffsetDateTime::now_utc(),
    }
}

#[tokio::test]
async fn events_come_back_in_order() {
    let server = NatsServer::start().await;
    let platform = platform(&server, PlatformOptions::default()).await;
    let events = platform.events();
    assert!(events.list("web", 10).await.expect("empty").is_empty());
    for index in 0..5 {
        events
            .publish("web", &crashed(index))
            .await
            .expect("publish");
        events
            .publish(
                "api",
                &Event::Scaled {
                    from: index,
                    to: index + 1,
                    at: OffsetDateTime::now_utc(),
                },
            )
            .await
            .expect("publish");
    }
    let last3 = events.list("web", 3).await.expect("list");
    let indices: Vec<u32> = last3
        .iter()
        .map(|recorded| match recorded.event {
            Event::Crashed { index, .. } => index,
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(indices, [2, 3, 4]);
    assert!(last3.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert_eq!(events.list("api", 100).await.expect("list").len(), 5);
    assert!(events.list("web", 0).await.expect("list").is_empty());
}

#[tokio::test]
async fn state_survives_a_server_restart() {
    let mut server = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("droplet");
    let (sha1, _) = random_file(&src, 1_000_000, 11);
    let before = platform(&server, PlatformOptions::default()).await;
    {
        let platform = &before;
        let mut spec = AppSpec::new("durable");
        spec.routes = vec!["durable.example.com".into()];
        platform.apps().create(spec).await.expect("create");
        platform
            .routes()
            .claim("durable.example.com", "durable")
            .await
            .expect("claim");
        platform
            .blobs()
            .put_droplet(&sha1, &src)
            .await
            .expect("put");
        platform
            .events()
            .publish("durable", &crashed(0))
            .await
            .expect("publish");
        platform
            .events()
            .publish("durable", &crashed(1))
            .await
            .expect("publish");
    }

    server.restart().await;
    // The controller that was connected reconnects and carries on with the same handles.
    let (spec, rev) = eventually(Duration::from_secs(10), || async {
        before
            .apps()
            .get("durable")
            .await?
            .ok_or(StateError::NotFound {
                name: "durable".into(),
            })
    })
    .await;
    eventually(Duration::from_secs(10), || {
        before.apps().update("durable", rev, spec.clone())
    })
    .await;
    // And a fresh one binds to what the store kept.
    let platform = platform(&server, PlatformOptions::default()).await;
    let (spec, _) = platform
        .apps()
        .get("durable")
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(spec.routes, ["durable.example.com"]);
    assert_eq!(
        platform
            .routes()
            .owner("durable.example.com")
            .await
            .expect("owner")
            .as_deref(),
        Some("durable")
    );
    let out = dir.path().join("out");
    platform
        .blobs()
        .get_to_file(
            BlobBucket::Droplets,
            &sha1,
            &out,
            u64::MAX,
            Some(&Digest::Sha1(sha1.clone())),
        )
        .await
        .expect("blob still there");
    let events = platform.events().list("durable", 10).await.expect("events");
    assert_eq!(events.len(), 2);
    match &events[1].event {
        Event::Crashed {
            instance, index, ..
        } => assert_eq!((instance.as_str(), *index), ("inst-1", 1)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_keeps_apps_when_a_node_stops() {
    let mut cluster = Cluster::start(3).await;
    let urls = cluster.urls();
    let client = async_nats::connect(urls.as_slice()).await.expect("connect");
    let platform = Platform::connect(client, PlatformOptions::clustered())
        .await
        .expect("platform on the cluster");
    let apps = platform.apps();
    apps.create(AppSpec::new("ha")).await.expect("create");

    let mut stream = platform
        .jetstream()
        .get_stream("KV_dea-apps")
        .await
        .expect("apps stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.num_replicas, 3);
    // Stop the node leading the apps bucket: the hardest case, a new leader must be elected.
    let leader = info
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.clone())
        .expect("a stream leader");
    assert!(cluster.names().contains(&leader), "{leader}");
    cluster.stop(&leader);

    let limit = Duration::from_secs(30);
    let (spec, _) = eventually(limit, || async {
        apps.get("ha")
            .await?
            .ok_or(StateError::NotFound { name: "ha".into() })
    })
    .await;
    assert_eq!(spec.name, "ha");
    let (scaled, _) = eventually(limit, || apps.modify("ha", |spec| spec.instances = 4)).await;
    assert_eq!(scaled.instances, 4);
    // A create whose acknowledgement was lost to the failover shows up as AlreadyExists.
    eventually(limit, || async {
        match apps.create(AppSpec::new("ha-two")).await {
            Ok(_) | Err(StateError::AlreadyExists { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    })
    .await;
    let names: Vec<String> = eventually(limit, || apps.list())
        .await
        .into_iter()
        .map(|(spec, _)| spec.name)
        .collect();
    assert_eq!(names, ["ha", "ha-two"]);
    // Events are written and read back with a node down too.
    let event = dea_platform::events::Event::Scaled {
        from: 1,
        to: 4,
        at: time::OffsetDateTime::now_utc(),
    };
    eventually(limit, || platform.events().publish("ha", &event)).await;
    let events = eventually(limit, || platform.events().list("ha", 10)).await;
    assert_eq!(events.len(), 1);
}
