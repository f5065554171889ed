//! The Unix account a session runs as, and the clean login environment it starts with.
//!
//! The environment is built from nothing, as `login` does: the account's HOME, USER, LOGNAME
//! and SHELL, a fixed PATH, the client's TERM when there is a terminal, and the client's
//! locale (LANG, LC_*) when its values are sane. Everything else the client offers is dropped,
//! so `LD_PRELOAD`, `LD_LIBRARY_PATH`, `BASH_ENV`, `ENV` and the like can never reach the child.

use std::path::PathBuf;

use mesh_proto::messages::session::EnvVar;

/// PATH for root sessions (Debian's `login` default for uid 0).
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// PATH for everyone else.
pub const USER_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Longest locale or TERM value passed through.
const MAX_PASSED_VALUE: usize = 128;

/// An account from the user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

impl Account {
    /// Looks `name` up in this machine's user database.
    pub fn lookup(name: &str) -> Option<Self> {
        let user = nix::unistd::User::from_name(name).ok().flatten()?;
        Some(Self {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell: user.shell,
        })
    }

    /// Where a session starts: the home directory, or `/` when it does not exist (as sshd
    /// does; system accounts such as `nobody` have `/nonexistent`).
    pub fn working_dir(&self) -> PathBuf {
        if self.home.is_dir() {
            self.home.clone()
        } else {
            PathBuf::from("/")
        }
    }

    /// The login shell, or `/bin/sh` when the account names none.
    pub fn shell_or_default(&self) -> PathBuf {
        if self.shell.as_os_str().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            self.shell.clone()
        }
    }
}

/// Whether the client may set `name`: only the locale.
fn is_passed_through(name: &str) -> bool {
    name == "LANG"
        || name.strip_prefix("LC_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
}

/// A value we pass on: short, printable, no NUL or control characters.
fn is_sane_value(value: &str) -> bool {
    value.len() <= MAX_PASSED_VALUE && !value.chars().any(char::is_control)
}

/// The environment a session's process starts with, in a stable order.
pub fn login_environment(
    account: &Account,
    term: Option<&str>,
    offered: &[EnvVar],
) -> Vec<(String, String)> {
    let path = if account.uid == 0 {
        ROOT_PATH
    } else {
        USER_PATH
    };
    let mut env = vec![
        (
            "HOME".to_owned(),
            account.home.to_string_lossy().into_owned(),
        ),
        ("USER".to_owned(), account.name.clone()),
        ("LOGNAME".to_owned(), account.name.clone()),
        (
            "SHELL".to_owned(),
            account.shell_or_default().to_string_lossy().into_owned(),
        ),
        ("PATH".to_owned(), path.to_owned()),
    ];
    if let Some(term) = term.filter(|t| !t.is_empty() && is_sane_value(t)) {
        env.push(("TERM".to_owned(), term.to_owned()));
    }
    for var in offered {
        if is_passed_through(&var.name)
            && is_sane_value(&var.value)
            && !env.iter().any(|(name, _)| *name == var.name)
        {
            env.push((var.name.clone(), var.value.clone()));
        }
    }
    env
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The user running the tests, with `/bin/sh` and the temp directory as home, so that
    /// session tests run anywhere.
    pub(crate) fn current_user() -> Account {
        let name = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        let mut account = Account::lookup(&name).unwrap();
        account.shell = "/bin/sh".into();
        account.home = std::env::temp_dir();
        account
    }

    fn account(uid: u32) -> Account {
        Account {
            name: "deploy".into(),
            uid,
            gid: 1000,
            home: "/home/deploy".into(),
            shell: "/bin/bash".into(),
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
        }
    }

    fn get<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn dangerous_variables_never_pass_and_the_locale_does() {
        let offered = [
            var("LD_PRELOAD", "/tmp/evil.so"),
            var("LD_LIBRARY_PATH", "/tmp"),
            var("BASH_ENV", "/tmp/rc"),
            var("ENV", "/tmp/rc"),
            var("PATH", "/tmp"),
            var("HOME", "/tmp"),
            var("LC_", "x"),
            var("LC_ALL", "C.UTF-8"),
            var("LANG", "de_DE.UTF-8"),
            var("LC_TIME", "bad\nvalue"),
        ];
        let env = login_environment(&account(1000), Some("xterm-256color"), &offered);
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "BASH_ENV",
            "ENV",
            "LC_",
            "LC_TIME",
        ] {
            assert_eq!(get(&env, name), None, "{name} passed");
        }
        assert_eq!(get(&env, "PATH"), Some(USER_PATH));
        assert_eq!(get(&env, "HOME"), Some("/home/deploy"));
        assert_eq!(get(&env, "USER"), Some("deploy"));
        assert_eq!(get(&env, "LOGNAME"), Some("deploy"));
        assert_eq!(get(&env, "SHELL"), Some("/bin/bash"));
        assert_eq!(get(&env, "TERM"), Some("xterm-256color"));
        assert_eq!(get(&env, "LC_ALL"), Some("C.UTF-8"));
        assert_eq!(get(&env, "LANG"), Some("de_DE.UTF-8"));
        assert_eq!(env.len(), 8);
    }

    #[test]
    fn root_gets_the_sbin_path_and_no_terminal_means_no_term() {
        let env = login_environment(&account(0), None, &[var("TERM", "vt100")]);
        assert_eq!(get(&env, "PATH"), Some(ROOT_PATH));
        assert_eq!(get(&env, "TERM"), None);
    }

    #[test]
    fn a_missing_home_starts_in_the_root_directory() {
        let mut a = account(1000);
        a.home = "/nonexistent".into();
        assert_eq!(a.working_dir(), PathBuf::from("/"));
        a.home = std::env::temp_dir();
        assert_eq!(a.working_dir(), std::env::temp_dir());
    }

    #[test]
    fn root_is_found_in_the_user_database() {
        let root = Account::lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(Account::lookup("no-such-user-here").is_none());
    }
}
