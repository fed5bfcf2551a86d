//! The Dockerfile as the compose run found it wanting: its user and group must agree, it
//! must pull nothing but its base images (no `# syntax=` frontend), and the binary it
//! ships must be stripped. Checked on the file, so it runs without Docker.

use std::path::PathBuf;

fn dockerfile() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The value following `flag` in the line that contains `command`.
fn flag_value<'a>(file: &'a str, command: &str, flag: &str) -> &'a str {
    let line = file
        .lines()
        .find(|l| l.contains(command))
        .unwrap_or_else(|| panic!("no {command} in the Dockerfile"));
    let mut words = line.split_whitespace();
    words.find(|w| *w == flag);
    words
        .next()
        .unwrap_or_else(|| panic!("no {flag} in: {line}"))
}

#[test]
fn the_image_user_and_group_agree() {
    let file = dockerfile();
    let gid = flag_value(&file, "groupadd", "--gid");
    let uid = flag_value(&file, "useradd", "--uid");
    let group = flag_value(&file, "useradd", "--gid");
    assert_eq!(
        group, "vantage",
        "the user's primary group is the vantage group"
    );
    let user = file
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER line");
    assert_eq!(
        user.trim(),
        format!("{uid}:{gid}"),
        "USER matches the ids created"
    );
}

#[test]
fn the_build_pulls_only_base_images_and_ships_a_stripped_binary() {
    let file = dockerfile();
    assert!(
        !file.lines().any(|l| l.starts_with("# syntax=")),
        "a syntax line makes BuildKit fetch a frontend image"
    );
    let bases: Vec<&str> = file
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(
        bases.len(),
        2,
        "a build stage and a runtime stage: {bases:?}"
    );
    assert!(
        file.lines()
            .any(|l| l.contains("strip ") && l.contains("target/release/vantage")),
        "the shipped binary is stripped"
    );
}
