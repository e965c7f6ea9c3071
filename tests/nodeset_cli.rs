//! Host sets on the command line (issue 13): `-H` takes ClusterShell node
//! sets and `--hosts FILE` a list; targets come out expanded, in order,
//! without duplicates, and bad sets are refused before anything runs.
//!
//! The ssh command is `/bin/false`, so every target fails at once and the
//! JSON report lists exactly the targets the controller tried.

use std::process::Command;

fn ferrogen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrogen"))
        .args(args)
        .output()
        .expect("run ferrogen")
}

fn targets_tried(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
            v["target"].as_str().expect("a target name").to_string()
        })
        .collect()
}

#[test]
fn node_sets_and_host_files_expand_in_order_without_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hosts");
    std::fs::write(
        &file,
        "web02.dc1   # already given\n# a comment\n\ndb[1-2]\n",
    )
    .expect("write");
    let out = ferrogen(&[
        "ping",
        "-e",
        "/bin/false",
        "--json",
        "-H",
        "web[01-03].dc1",
        "--hosts",
        file.to_str().expect("utf8"),
        "-H",
        "user@[::1]:2222",
    ]);
    assert_eq!(
        targets_tried(&out),
        [
            "web01.dc1",
            "web02.dc1",
            "web03.dc1",
            "user@[::1]:2222",
            "db1",
            "db2"
        ],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_host_sets_are_usage_errors_naming_the_cause() {
    let out = ferrogen(&["ping", "-H", "n[3-1]"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("runs backwards"), "{err}");

    let out = ferrogen(&["ping", "-H", "n[1-1000000000]"]);
    assert_eq!(out.status.code(), Some(2));

    let out = ferrogen(&["ping", "--hosts", "/nonexistent/hosts"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/hosts"), "{err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hosts");
    std::fs::write(&file, "ok1\nbad[1-\n").expect("write");
    let out = ferrogen(&["ping", "--hosts", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2:"), "the line is named: {err}");
}

#[test]
fn a_relay_column_puts_targets_behind_their_own_relays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hosts");
    std::fs::write(
        &file,
        "web[1-2]\ndb[1-2]  gw1   # behind gw1\napp1 gw1,gw2\nweb1 gw9  # a duplicate: dropped\n",
    )
    .expect("write");
    let out = ferrogen(&[
        "ping",
        "-e",
        "/bin/false",
        "--json",
        "--hosts",
        file.to_str().expect("utf8"),
    ]);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let tried: Vec<&str> = lines
        .iter()
        .map(|v| v["target"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(tried, ["web1", "web2", "db1", "db2", "app1"], "{lines:?}");
    for v in &lines {
        let e = v["error"].as_str().unwrap_or_default();
        let behind_gw1 = v["target"] != "web1" && v["target"] != "web2";
        // Each target failed where it is reached: the direct ones at their
        // own connection, the others at their relay, which the error names.
        assert_eq!(e.contains("gw1"), behind_gw1, "{v}");
        assert!(!e.contains("gw9"), "{v}");
    }

    std::fs::write(&file, "db1 gw1 extra\n").expect("write");
    let out = ferrogen(&["ping", "--hosts", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hosts:1") && err.contains("extra"), "{err}");

    std::fs::write(&file, "db1 -oProxyCommand=x\n").expect("write");
    let out = ferrogen(&["ping", "--hosts", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(2));
}
