//! A real Pidgin on a lab host: finch (libpurple's text UI) with a Bonjour (XEP-0174) account,
//! driven through a private tmux server, as a person at the keyboard would drive it.
//!
//! libpurple's Bonjour protocol publishes and browses through avahi-daemon over the *system*
//! D-Bus, so the host gets its own of both: a `dbus-daemon` with a config and socket of its own
//! (whose policy includes the system policy directory, or avahi cannot own its name), and an
//! `avahi-daemon` with `enable-dbus=yes` on a private tmpfs `/run/avahi-daemon`. Both run in
//! one mount-private shell started with [`Lab::spawn_command`], so the lab kills them; finch runs
//! in a tmux server on a socket in the lab dir (`tmux -S`), never in a tmux server of the
//! machine's own namespace, and [`Finch`]'s drop kills that server.
//!
//! finch has no scripting interface that works without a session bus, so the test reads the
//! screen (`capture-pane`) and libpurple's conversation logs (plain text, turned on in the
//! prefs written here), and types with `send-keys`.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{wait_for, Lab};

/// The terminal finch draws on. Wide enough for the buddy list and a conversation side by side.
const COLUMNS: u32 = 160;
const ROWS: u32 = 45;
/// Cursor down as gnt reads it from terminfo (tmux's own "Down" key sends the other form).
const DOWN: &str = "\x1bOB";

pub struct Finch {
    ns: String,
    tmux: PathBuf,
    home: PathBuf,
    /// The Bonjour account, `user@hostname`: the instance name others see.
    pub account: String,
    /// libpurple's debug output.
    pub debug_log: PathBuf,
}

impl Finch {
    /// Starts avahi-daemon (on a private system bus) and finch on host `i`, with a Bonjour
    /// account `user@<host name>` whose person is `first last`, enabled from finch's Accounts
    /// window.
    pub fn start(
        lab: &mut Lab,
        i: usize,
        user: &str,
        first: &str,
        last: &str,
    ) -> io::Result<Finch> {
        let host = &lab.hosts[i];
        let ns = host.ns.clone();
        let hostname = format!("{user}-box");
        let account = format!("{user}@{hostname}");
        let dir = lab.dir.join(format!("finch-{}", host.name));
        let home = dir.join("home");
        fs::create_dir_all(home.join(".purple"))?;
        let bus = dir.join("system_bus_socket");
        fs::write(
            dir.join("dbus.conf"),
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
</busconfig>
"#,
                bus.display()
            ),
        )?;
        let etc = lab.etc_dir(i)?.join("avahi");
        fs::create_dir_all(&etc)?;
        fs::write(
            etc.join("avahi-daemon.conf"),
            format!(
                "[server]\nhost-name={hostname}\nuse-ipv4=yes\nuse-ipv6=no\nenable-dbus=yes\nallow-interfaces=veth0\n\
                 [wide-area]\nenable-wide-area=no\n[publish]\npublish-hinfo=no\npublish-workstation=no\n"
            ),
        )?;
        fs::write(
            home.join(".purple/accounts.xml"),
            format!(
                "<?xml version='1.0' encoding='UTF-8' ?>\n<account version='1.0'>\n <account>\n  \
                 <protocol>prpl-bonjour</protocol>\n  <name>{account}</name>\n  <settings>\n   \
                 <setting name='first' type='string'>{first}</setting>\n   \
                 <setting name='last' type='string'>{last}</setting>\n  </settings>\n \
                 </account>\n</account>\n"
            ),
        )?;
        // Conversations logged as plain text: what the person was shown, line by line.
        fs::write(
            home.join(".purple/prefs.xml"),
            "<?xml version='1.0' encoding='UTF-8' ?>\n<pref version='1' name='/'>\n <pref name='purple'>\n  \
             <pref name='logging'>\n   <pref name='log_ims' type='bool' value='1'/>\n   \
             <pref name='log_system' type='bool' value='0'/>\n   \
             <pref name='format' type='string' value='txt'/>\n  </pref>\n </pref>\n</pref>\n",
        )?;
        fs::create_dir_all("/run/avahi-daemon")?;
        let script = format!(
            "mount -t tmpfs tmpfs /run/avahi-daemon && \
             dbus-daemon --config-file={conf} --nofork --nopidfile & \
             for _ in $(seq 100); do [ -S {bus} ] && break; sleep 0.05; done; \
             DBUS_SYSTEM_BUS_ADDRESS=unix:path={bus} exec avahi-daemon --no-drop-root --no-chroot --no-rlimits -f /etc/avahi/avahi-daemon.conf",
            conf = dir.join("dbus.conf").display(),
            bus = bus.display(),
        );
        let log = dir.join("dbus-avahi.log");
        lab.spawn(i, &["unshare", "-m", "sh", "-c", &script], &log)?;
        // avahi owns its bus name once it is up; libpurple gives up if it is not there yet.
        let up = wait_for(Duration::from_secs(20), || {
            fs::read_to_string(&log).is_ok_and(|l| l.contains("Server startup complete"))
        });
        if up.is_none() {
            return Err(io::Error::other(format!(
                "avahi-daemon did not start on the private bus: {}",
                fs::read_to_string(&log).unwrap_or_default()
            )));
        }
        let finch = Finch {
            ns,
            tmux: dir.join("tmux.sock"),
            home,
            account,
            debug_log: dir.join("finch.log"),
        };
        let st = finch
            .tmux_cmd()
            .env("HOME", &finch.home)
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                format!("unix:path={}", bus.display()),
            )
            // A terminal type every Debian has (ncurses-base), whatever tmux defaults to.
            .args([
                "start-server",
                ";",
                "set-option",
                "-g",
                "default-terminal",
                "screen",
                ";",
            ])
            .args([
                "new-session",
                "-d",
                "-x",
                &COLUMNS.to_string(),
                "-y",
                &ROWS.to_string(),
            ])
            // -d: libpurple's debug log, to a file, for the test to read and to show on failure.
            .arg(format!("finch -d 2>{}", finch.debug_log.display()))
            .status()?;
        if !st.success() {
            return Err(io::Error::other("tmux new-session failed"));
        }
        let listed = wait_for(Duration::from_secs(20), || {
            finch.screen().contains("Buddy List")
        });
        if listed.is_none() {
            return Err(io::Error::other(format!(
                "finch did not draw its buddy list: {}",
                finch.screen()
            )));
        }
        // With -d finch also opens a debug window over the others: focus it, close it (Alt-c).
        let shown = || finch.screen().contains("Debug Window");
        if wait_for(Duration::from_secs(3), shown).is_some() {
            if !finch.focus("Debug Window") {
                return Err(io::Error::other(format!(
                    "cannot focus finch's debug window: {}",
                    finch.screen()
                )));
            }
            finch.keys(&["M-c"]);
            if wait_for(Duration::from_secs(3), || !shown()).is_none() {
                return Err(io::Error::other(format!(
                    "finch's debug window stays open: {}",
                    finch.screen()
                )));
            }
        }
        // The account is not enabled yet, so finch shows its Accounts window: enable the
        // account there as a person would (its check box, Space), then close the window.
        if !finch.focus("Accounts") {
            return Err(io::Error::other(format!(
                "finch shows no Accounts window: {}",
                finch.screen()
            )));
        }
        finch.keys(&["Space"]);
        finch.keys(&["M-c"]);
        Ok(finch)
    }

    /// `tmux -S <our socket>` inside the host's namespace: a server of our own, never one that
    /// already runs in the machine's namespace.
    fn tmux_cmd(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "tmux", "-S"])
            .arg(&self.tmux)
            .args(["-f", "/dev/null"]);
        c
    }

    fn tmux(&self, args: &[&str]) -> String {
        self.tmux_cmd()
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    }

    /// What the terminal shows now.
    pub fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    /// The title of the window that has the focus (gnt draws it white on blue).
    pub fn focused_title(&self) -> String {
        let raw = self.tmux(&["capture-pane", "-p", "-e"]);
        let mark = "\x1b[37m\x1b[44m";
        raw.lines()
            .find_map(|l| {
                let start = l.find(mark)? + mark.len();
                let rest = &l[start..];
                Some(rest[..rest.find('\x1b').unwrap_or(rest.len())].to_string())
            })
            .unwrap_or_default()
    }

    /// Presses keys (tmux key names: Enter, Tab, C-n, M-n, ...).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        self.tmux(&args);
        std::thread::sleep(Duration::from_millis(150));
    }

    /// Types text literally.
    pub fn type_text(&self, text: &str) {
        self.tmux(&["send-keys", "-l", text]);
    }

    /// Focuses the window whose title contains `title`, cycling with Alt-n; false if none.
    fn focus(&self, title: &str) -> bool {
        for _ in 0..8 {
            if self.focused_title().contains(title) {
                return true;
            }
            self.keys(&["M-n"]);
        }
        false
    }

    /// Opens (or focuses) the conversation with the only buddy in the list, whose alias is
    /// `alias`, as a person would: the buddy list, one row down, Enter.
    pub fn open_conversation(&self, alias: &str) -> io::Result<()> {
        if self.focus(alias) {
            return Ok(());
        }
        if !self.focus("Buddy List") {
            return Err(io::Error::other(format!(
                "no buddy list: {}",
                self.screen()
            )));
        }
        self.keys(&["C-n"]);
        self.keys(&["Enter"]);
        if wait_for(Duration::from_secs(5), || {
            self.focused_title().contains(alias)
        })
        .is_none()
        {
            return Err(io::Error::other(format!(
                "no conversation with {alias} opened: {}",
                self.screen()
            )));
        }
        Ok(())
    }

    /// Types a message into the focused conversation and sends it.
    pub fn say(&self, text: &str) {
        self.type_text(text);
        self.keys(&["Enter"]);
    }

    /// Sets the account's status to Away with the status box under the buddy list.
    pub fn set_away(&self) -> io::Result<()> {
        if !self.focus("Buddy List") {
            return Err(io::Error::other(format!(
                "no buddy list: {}",
                self.screen()
            )));
        }
        // Tab to the status box, open its list, one down from Available, take it.
        self.keys(&["Tab"]);
        self.type_text(DOWN);
        std::thread::sleep(Duration::from_millis(300));
        self.type_text(DOWN);
        std::thread::sleep(Duration::from_millis(300));
        self.keys(&["Enter"]);
        Ok(())
    }

    /// Every line of every conversation log with `buddy` (its instance name).
    pub fn log(&self, buddy: &str) -> String {
        let dir = self
            .home
            .join(".purple/logs/bonjour")
            .join(&self.account)
            .join(buddy);
        let mut out = String::new();
        if let Ok(entries) = fs::read_dir(dir) {
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                out.push_str(&fs::read_to_string(f).unwrap_or_default());
            }
        }
        out
    }
}

impl Drop for Finch {
    fn drop(&mut self) {
        let _ = self.tmux_cmd().arg("kill-server").output();
    }
}
