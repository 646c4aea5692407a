//! `corral backup …` end to end through the real binary: the Longhorn fixture, create/restore, DR restore
//! across process restarts, corrupt blocks, S3 (moto_server), bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;

use std::process::Command;

use backup_support::*;

#[test]
fn lists_inspects_and_restores_the_longhorn_fixture() {
    let store = tempfile::tempdir().unwrap();
    extract("backupstore-vfs.tar.gz", store.path());
    let target = format!("vfs://{}", store.path().display());
    let volumes = corral_json(&["ls", "--target", &target], &[]);
    assert_eq!(volumes[0]["name"], "vol1");
    assert_eq!(volumes[0]["backup_count"], 2);
    let backups = corral_json(&["ls", "--target", &target, "--volume", "vol1"], &[]);
    assert_eq!(backups[0]["name"], "bk-snap2");
    assert_eq!(backups[1]["name"], "bk-snap3");
    let text = corral_ok(&["ls", "--target", &target, "--volume", "vol1"], &[]);
    assert!(text.contains("bk-snap3") && text.contains("snap3"), "{text}");
    let url2 = format!("{target}?backup=bk-snap2&volume=vol1");
    let details = corral_json(&["inspect", &url2], &[]);
    assert_eq!(details["snapshot"], "snap2");
    assert_eq!(details["volume_size"], 67108864);
    assert_eq!(details["labels"]["purpose"], "sample");

    let out = tempfile::tempdir().unwrap();
    for (backup, sha) in [("bk-snap2", SNAP2_SHA256), ("bk-snap3", SNAP3_SHA256)] {
        let img = out.path().join(format!("{backup}.img"));
        corral_ok(
            &[
                "restore",
                &format!("{target}?backup={backup}&volume=vol1"),
                "--to-file",
                img.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(sha256_file(&img), sha, "{backup}");
    }
}

/// Writes more data to the fixture replica and takes snapshot snap3 (changes blocks 0, 10, 16, 25).
fn snapshot_snap3(replica: &std::path::Path) {
    let r = corral_replica::Replica::open(replica).unwrap();
    r.write_at(&[b'G'; 4096], 20 << 20).unwrap();
    r.write_at(&[b'H'; 8192], 50 << 20).unwrap();
    r.snapshot("snap3", corral_replica::SnapshotOptions { user_created: true, ..Default::default() })
        .unwrap();
    r.close().unwrap();
}

#[test]
fn create_restore_and_dr_restore_across_process_restarts() {
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    extract("replica-two-snapshots.tar.gz", work.path());
    let replica = work.path().join("two-snapshots");
    let target = format!("vfs://{}", store.path().display());
    let rdir = replica.to_str().unwrap();

    let url1 = corral_ok(
        &[
            "create",
            "--replica-dir",
            rdir,
            "--snapshot",
            "snap2",
            "--target",
            &target,
            "--volume",
            "vol1",
            "--name",
            "b1",
            "--label",
            "team=db",
        ],
        &[],
    );
    assert_eq!(url1.trim(), format!("{target}?backup=b1&volume=vol1"));
    snapshot_snap3(&replica);
    let b2 = corral_json(
        &[
            "create",
            "--replica-dir",
            rdir,
            "--snapshot",
            "snap3",
            "--target",
            &target,
            "--volume",
            "vol1",
            "--name",
            "b2",
            "--concurrency",
            "3",
        ],
        &[],
    );
    assert_eq!(b2["incremental"], true);
    assert_eq!(b2["blocks_uploaded"], 4);
    assert_eq!(b2["blocks_total"], 5);
    let url2 = b2["url"].as_str().unwrap().to_string();

    // Full restore of b2 for reference.
    let full = work.path().join("full-b2.img");
    corral_ok(&["restore", &url2, "--to-file", full.to_str().unwrap()], &[]);

    // DR: restore b1 into a replica directory, the process exits; a new process restores b2 incrementally.
    let dr = work.path().join("dr");
    let first = corral_json(&["restore", url1.trim(), "--to-replica-dir", dr.to_str().unwrap()], &[]);
    assert_eq!(first["incremental"], false);
    let second = corral_json(&["restore", &url2, "--to-replica-dir", dr.to_str().unwrap()], &[]);
    assert_eq!(second["incremental"], true, "{second}");
    assert_eq!(second["previous_backup"], "b1");
    assert_eq!(second["blocks_written"], 4);
    assert_eq!(read_head(&dr), std::fs::read(&full).unwrap());

    // The same for an image file.
    let dr_img = work.path().join("dr.img");
    corral_ok(&["restore", url1.trim(), "--to-file", dr_img.to_str().unwrap()], &[]);
    let step = corral_json(&["restore", &url2, "--to-file", dr_img.to_str().unwrap()], &[]);
    assert_eq!(step["incremental"], true);
    assert_eq!(std::fs::read(&dr_img).unwrap(), std::fs::read(&full).unwrap());

    // rm b1 keeps what b2 needs; verify of the whole volume passes.
    let rm = corral_json(&["rm", url1.trim()], &[]);
    assert_eq!(rm["gc"]["blocks_deleted"], 1);
    let verify = corral_json(&["verify", "--target", &target, "--volume", "vol1"], &[]);
    assert_eq!(verify["blocks_checked"], 5);
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0);
    corral_ok(&["rm-volume", "--target", &target, "--volume", "vol1"], &[]);
    let volumes = corral_json(&["ls", "--target", &target], &[]);
    assert_eq!(volumes.as_array().unwrap().len(), 0);
}

#[test]
fn corrupt_block_fails_restore_and_verify_naming_it() {
    let store = tempfile::tempdir().unwrap();
    extract("backupstore-vfs.tar.gz", store.path());
    let target = format!("vfs://{}", store.path().display());
    let url = format!("{target}?backup=bk-snap3&volume=vol1");
    let victim = files_with_suffix(
        store.path(),
        "a15c5ac5a93d30bba1cc1134e3c337cfe5afa9f4dd2962dad9636e89b63b72c7.blk",
    )
    .pop()
    .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();

    let out_dir = tempfile::tempdir().unwrap();
    let img = out_dir.path().join("x.img");
    let out = corral(&["restore", &url, "--to-file", img.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&name), "{stderr}");
    assert!(!img.exists());

    let out = corral(&["verify", &url], &[]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&name) && stdout.contains("corrupt"), "{stdout}");
    // The other backup does not use that block and verifies.
    corral_ok(&["verify", &format!("{target}?backup=bk-snap2&volume=vol1")], &[]);
}

#[test]
fn bad_input_exits_non_zero_with_a_clear_message() {
    let store = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    extract("replica-two-snapshots.tar.gz", work.path());
    let target = format!("vfs://{}", store.path().display());
    let rdir = work.path().join("two-snapshots");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "create".into(),
                "--replica-dir".into(),
                rdir.display().to_string(),
                "--snapshot".into(),
                "snap2".into(),
                "--target".into(),
                target.clone(),
                "--volume".into(),
                "Bad_Name!".into(),
            ],
            "Bad_Name!",
        ),
        (
            vec![
                "create".into(),
                "--replica-dir".into(),
                rdir.display().to_string(),
                "--snapshot".into(),
                "snap2".into(),
                "--target".into(),
                target.clone(),
                "--block-size".into(),
                "3MiB".into(),
            ],
            "3MiB",
        ),
        (vec!["ls".into(), "--target".into(), "file:///nonexistent/corral".into()], "/nonexistent/corral"),
        (vec!["inspect".into(), format!("{target}?backup=nope&volume=vol1")], "vol1"),
        (
            vec!["restore".into(), format!("{target}?volume=vol1"), "--to-file".into(), "/tmp/x".into()],
            "backup=",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = corral(&args, &[]);
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert!(files_with_suffix(store.path(), "").is_empty());
}

#[test]
fn s3_round_trip_through_the_cli() {
    let moto = Moto::start();
    moto.create_bucket("corral");
    let env = moto.env();
    let work = tempfile::tempdir().unwrap();
    extract("replica-two-snapshots.tar.gz", work.path());
    let replica = work.path().join("two-snapshots");
    let target = "s3://corral@us-east-1/backups";
    let url = corral_ok(
        &[
            "create",
            "--replica-dir",
            replica.to_str().unwrap(),
            "--snapshot",
            "snap2",
            "--target",
            target,
            "--volume",
            "vol1",
        ],
        &env,
    );
    let url = url.trim();
    assert!(
        url.starts_with("s3://corral@us-east-1/backups?backup=backup-") && url.ends_with("&volume=vol1"),
        "{url}"
    );
    let img = work.path().join("s3.img");
    corral_ok(&["restore", url, "--to-file", img.to_str().unwrap()], &env);
    assert_eq!(sha256_file(&img), SNAP2_SHA256);
    let backups = corral_json(&["ls", "--target", target, "--volume", "vol1"], &env);
    assert_eq!(backups.as_array().unwrap().len(), 1);
    corral_ok(&["verify", url], &env);
    corral_ok(&["rm", url], &env);
    corral_ok(&["rm-volume", "--target", target, "--volume", "vol1"], &env);
    let volumes = corral_json(&["ls", "--target", target], &env);
    assert_eq!(volumes.as_array().unwrap().len(), 0);
    // Wrong endpoint: a clear error, non-zero exit.
    let bad_env = vec![
        ("AWS_ENDPOINTS", "http://127.0.0.1:1".to_string()),
        ("AWS_ACCESS_KEY_ID", "x".into()),
        ("AWS_SECRET_ACCESS_KEY", "y".into()),
    ];
    let out = corral(&["ls", "--target", target], &bad_env);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("s3://corral/backups"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `create --replica-dir <fixture> --snapshot snap2 --target TARGET --volume vol1 --name NAME`.
fn create_args<'a>(replica: &'a str, target: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "create",
        "--replica-dir",
        replica,
        "--snapshot",
        "snap2",
        "--target",
        target,
        "--volume",
        "vol1",
        "--name",
        name,
    ]
}

#[test]
fn aws_cert_makes_a_private_ca_trusted_for_an_https_endpoint() {
    let work = tempfile::tempdir().unwrap();
    let certs = TestCertificates::generate(work.path());
    let moto = Server::moto_https(&certs);
    let endpoint = format!("https://127.0.0.1:{}", moto.port);
    let mb = Command::new("aws")
        .args(["--endpoint-url", &endpoint, "--region", "us-east-1", "--ca-bundle"])
        .arg(&certs.ca)
        .args(["s3", "mb", "s3://certs"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("the aws CLI is required for this test (pip install awscli)");
    assert!(mb.status.success(), "aws s3 mb: {}", String::from_utf8_lossy(&mb.stderr));
    extract("replica-two-snapshots.tar.gz", work.path());
    let replica = work.path().join("two-snapshots");
    let replica = replica.to_str().unwrap();
    let target = "s3://certs@us-east-1/tls";
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        ("AWS_ENDPOINTS", endpoint.clone()),
    ];

    // Without AWS_CERT the server's certificate is not trusted: a clear error, non-zero exit.
    let out = corral(&create_args(replica, target, "untrusted"), &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "backup over an untrusted https endpoint succeeded");
    assert!(stderr.contains("s3://certs/tls"), "{stderr}");
    assert!(stderr.contains("TLS certificate is not trusted (set AWS_CERT"), "{stderr}");

    // With AWS_CERT as a path to the CA's PEM file: back up and restore.
    let mut with_path = env.clone();
    with_path.push(("AWS_CERT", certs.ca.display().to_string()));
    let url = corral_ok(&create_args(replica, target, "trusted"), &with_path);
    let img = work.path().join("tls.img");
    corral_ok(&["restore", url.trim(), "--to-file", img.to_str().unwrap()], &with_path);
    assert_eq!(sha256_file(&img), SNAP2_SHA256);

    // With AWS_CERT holding the PEM text itself (as Longhorn's secret passes it).
    let mut with_text = env.clone();
    with_text.push(("AWS_CERT", std::fs::read_to_string(&certs.ca).unwrap()));
    let backups = corral_json(&["ls", "--target", target, "--volume", "vol1"], &with_text);
    assert_eq!(backups[0]["name"], "trusted");
    assert_eq!(backups.as_array().unwrap().len(), 1, "the refused backup left nothing behind: {backups}");
}

#[test]
fn virtual_hosted_style_sends_requests_to_the_bucket_host() {
    let moto = Moto::start();
    moto.create_bucket("vhost");
    let proxy = RecordingProxy::start(moto.port());
    let work = tempfile::tempdir().unwrap();
    extract("replica-two-snapshots.tar.gz", work.path());
    let replica = work.path().join("two-snapshots");
    let replica = replica.to_str().unwrap();
    let target = "s3://vhost@us-east-1/backups";
    // A host name that does not resolve: requests reach moto only through the proxy, which records the
    // host the client addressed.
    let server_host = format!("s3.corral.test:{}", moto.port());
    let env = |virtual_hosted: &str| {
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
            ("AWS_ENDPOINTS", format!("http://{server_host}")),
            ("VIRTUAL_HOSTED_STYLE", virtual_hosted.to_string()),
            ("HTTP_PROXY", proxy.url()),
            ("http_proxy", proxy.url()),
            ("NO_PROXY", String::new()),
            ("no_proxy", String::new()),
        ]
    };

    let url = corral_ok(&create_args(replica, target, "vh"), &env("true"));
    let img = work.path().join("vh.img");
    corral_ok(&["restore", url.trim(), "--to-file", img.to_str().unwrap()], &env("true"));
    assert_eq!(sha256_file(&img), SNAP2_SHA256);
    let requests = proxy.take();
    assert!(requests.len() >= 5, "{requests:?}");
    let bucket_host = format!("vhost.{server_host}");
    for r in &requests {
        assert_eq!(r.host, bucket_host, "{r:?}");
        assert!(r.path.starts_with("/backups/") || r.path.starts_with("/?"), "bucket not in the path: {r:?}");
    }
    assert!(
        requests.iter().any(|r| r.method == "PUT" && r.path.contains("/backupstore/volumes/")),
        "{requests:?}"
    );

    // Control: path style (the default) addresses the server host with the bucket in the path. (moto
    // itself takes any dotted host name for a bucket host, so only the requests are checked here.)
    let _ = corral(&["ls", "--target", target, "--volume", "vol1"], &env("false"));
    let requests = proxy.take();
    assert!(!requests.is_empty());
    for r in &requests {
        assert_eq!(r.host, server_host, "{r:?}");
        assert!(r.path.starts_with("/vhost"), "{r:?}");
    }
}

#[test]
fn refused_credentials_are_a_clear_error_and_write_nothing() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("s3root");
    std::fs::create_dir_all(root.join("locked")).unwrap();
    let s3 = Server::s3s_fs(&root, "corral-key", "corral-secret");
    extract("replica-two-snapshots.tar.gz", work.path());
    let replica = work.path().join("two-snapshots");
    let replica = replica.to_str().unwrap();
    let target = "s3://locked@us-east-1/backups";
    let env = |key: &str, secret: &str| {
        vec![
            ("AWS_ACCESS_KEY_ID", key.to_string()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
            ("AWS_ENDPOINTS", format!("http://127.0.0.1:{}", s3.port)),
        ]
    };
    for (key, secret) in [("corral-key", "wrong-secret"), ("unknown-key", "corral-secret")] {
        let out = corral(&create_args(replica, target, "refused"), &env(key, secret));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "backup with refused credentials {key}/{secret} succeeded");
        assert!(stderr.contains("s3://locked/backups"), "{stderr}");
        assert!(stderr.contains("the server refused the credentials"), "the message says why: {stderr}");
        assert!(
            files_with_suffix(&root, "").is_empty(),
            "refused credentials wrote {:?}",
            files_with_suffix(&root, "")
        );
        let out = corral(&["ls", "--target", target], &env(key, secret));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "listing with refused credentials succeeded");
        assert!(
            stderr.contains("s3://locked/backups") && stderr.contains("refused the credentials"),
            "{stderr}"
        );
    }
    // Control: the right key pair works against the same server.
    let url = corral_ok(&create_args(replica, target, "accepted"), &env("corral-key", "corral-secret"));
    assert!(url.contains("backup=accepted"), "{url}");
    assert!(!files_with_suffix(&root.join("locked"), ".blk").is_empty());
}
