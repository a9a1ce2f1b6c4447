//! `junction user add|delete|passwd|list`, `junction permission
//! set|clear|list` and `junction topic-permission set|clear|list`: the
//! offline edits of the users file behind the CLI subcommands (a running
//! broker notices the file change and reads it again).

use std::io::BufRead;
use std::path::Path;

use argon2::Argon2;

use super::{UserDb, UsersError};
use crate::cli::{Command, PermissionCommand, TopicPermissionCommand, UserCommand};

/// Carries out `junction user ...` on the users file at `users_path` and
/// returns the text to print (no trailing newline; empty for `list` of an
/// empty database). A missing `--password` is read as one line from stdin.
///
/// Blocking (file I/O, argon2, stdin): call it before starting a runtime.
pub fn run_user_command(cmd: &UserCommand, users_path: &Path) -> Result<String, UsersError> {
    run_with(
        cmd,
        users_path,
        &mut std::io::stdin().lock(),
        Argon2::default(),
    )
}

/// [`run_user_command`] with the password source and hasher injected.
fn run_with(
    cmd: &UserCommand,
    users_path: &Path,
    stdin: &mut dyn BufRead,
    hasher: Argon2<'static>,
) -> Result<String, UsersError> {
    let mut db = UserDb::load_with(users_path, hasher)?;
    match cmd {
        UserCommand::Add {
            name,
            password,
            vhosts,
            tags,
        } => {
            let password = password_or_stdin(password.as_deref(), stdin)?;
            let vhosts = if vhosts.is_empty() {
                vec!["/".to_owned()]
            } else {
                vhosts.clone()
            };
            db.add(name, &password, vhosts, tags.clone())?;
            db.save()?;
            Ok(format!("added user '{name}'"))
        }
        UserCommand::Delete { name } => {
            db.delete(name)?;
            db.save()?;
            Ok(format!("deleted user '{name}'"))
        }
        UserCommand::Passwd { name, password } => {
            // Fail before prompting when the user does not exist.
            if db.get(name).is_none() {
                return Err(UsersError::NoSuchUser(name.clone()));
            }
            let password = password_or_stdin(password.as_deref(), stdin)?;
            db.passwd(name, &password)?;
            db.save()?;
            Ok(format!("changed the password of '{name}'"))
        }
        UserCommand::List => Ok(db
            .list()
            .map(|u| {
                format!(
                    "{}\tvhosts={}\ttags={}",
                    u.name,
                    u.vhosts().collect::<Vec<_>>().join(","),
                    u.tags.join(",")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")),
    }
}

/// Carries out `junction permission ...` or `junction topic-permission
/// ...` on the users file at `users_path`; `vhosts` are the broker's (a
/// permission on any other is refused). Returns the text to print.
pub fn run_permission_command(
    cmd: &Command,
    users_path: &Path,
    vhosts: &[String],
) -> Result<String, UsersError> {
    permission_with(cmd, users_path, vhosts, Argon2::default())
}

fn permission_with(
    cmd: &Command,
    users_path: &Path,
    vhosts: &[String],
    hasher: Argon2<'static>,
) -> Result<String, UsersError> {
    let mut db = UserDb::load_with(users_path, hasher)?;
    let known = |vhost: &str| {
        if vhosts.iter().any(|v| v == vhost) {
            Ok(())
        } else {
            Err(UsersError::NoSuchVhost(vhost.to_owned()))
        }
    };
    let wanted = |u: &str, v: &str, user: &Option<String>, vhost: &Option<String>| {
        user.as_deref().is_none_or(|x| x == u) && vhost.as_deref().is_none_or(|x| x == v)
    };
    match cmd {
        Command::Permission(PermissionCommand::Set {
            user,
            vhost,
            configure,
            write,
            read,
        }) => {
            known(vhost)?;
            db.set_permissions(user, vhost, configure, write, read)?;
            db.save()?;
            Ok(format!(
                "set permissions of '{user}' on vhost '{vhost}': configure={configure:?} write={write:?} read={read:?}"
            ))
        }
        Command::Permission(PermissionCommand::Clear { user, vhost }) => {
            let had = db.clear_permissions(user, vhost)?;
            db.save()?;
            Ok(if had {
                format!("cleared permissions of '{user}' on vhost '{vhost}'")
            } else {
                format!("'{user}' had no permissions on vhost '{vhost}'")
            })
        }
        Command::Permission(PermissionCommand::List { user, vhost }) => Ok(db
            .list()
            .flat_map(|u| {
                u.permissions
                    .iter()
                    .filter(|(v, _)| wanted(&u.name, v, user, vhost))
                    .map(|(v, p)| {
                        format!("{}\t{v}\t{}\t{}\t{}", u.name, p.configure, p.write, p.read)
                    })
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Command::TopicPermission(TopicPermissionCommand::Set {
            user,
            vhost,
            exchange,
            write,
            read,
        }) => {
            known(vhost)?;
            db.set_topic_permissions(user, vhost, exchange, write, read)?;
            db.save()?;
            Ok(format!(
                "set topic permissions of '{user}' on exchange '{exchange}' in vhost '{vhost}': write={write:?} read={read:?}"
            ))
        }
        Command::TopicPermission(TopicPermissionCommand::Clear {
            user,
            vhost,
            exchange,
        }) => {
            let n = db.clear_topic_permissions(user, vhost, exchange.as_deref())?;
            db.save()?;
            Ok(format!(
                "cleared {n} topic permission(s) of '{user}' in vhost '{vhost}'"
            ))
        }
        Command::TopicPermission(TopicPermissionCommand::List { user, vhost }) => Ok(db
            .list()
            .flat_map(|u| {
                u.topic_permissions
                    .iter()
                    .filter(|((v, _), _)| wanted(&u.name, v, user, vhost))
                    .map(|((v, x), t)| format!("{}\t{v}\t{x}\t{}\t{}", u.name, t.write, t.read))
            })
            .collect::<Vec<_>>()
            .join("\n")),
        _ => Err(UsersError::Invalid {
            path: users_path.to_owned(),
            reason: "not a permission command".to_owned(),
        }),
    }
}

/// The password from the flag, else one line of `stdin` without its line
/// ending (other whitespace is part of the password).
fn password_or_stdin(flag: Option<&str>, stdin: &mut dyn BufRead) -> Result<String, UsersError> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    let mut line = String::new();
    stdin
        .read_line(&mut line)
        .map_err(UsersError::ReadPassword)?;
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    Ok(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{AuthError, cheap_hasher};
    use std::net::IpAddr;
    use std::path::PathBuf;

    fn users_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users.toml");
        (dir, path)
    }

    fn run(cmd: UserCommand, path: &Path) -> Result<String, UsersError> {
        run_with(&cmd, path, &mut std::io::empty(), cheap_hasher())
    }

    fn add(name: &str, password: &str, vhosts: &[&str], tags: &[&str]) -> UserCommand {
        UserCommand::Add {
            name: name.into(),
            password: Some(password.into()),
            vhosts: vhosts.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn add_passwd_delete_round_trip_through_the_file() {
        let (_dir, path) = users_path();
        let local = ip("127.0.0.1");

        assert_eq!(
            run(
                add("alice", "pw1", &["/", "prod"], &["administrator"]),
                &path
            )
            .expect("add"),
            "added user 'alice'"
        );
        let db = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        let alice = db
            .authenticate("alice", "pw1", local, true)
            .expect("alice logs in");
        assert_eq!(alice.vhosts().collect::<Vec<_>>(), vec!["/", "prod"]);
        assert_eq!(alice.tags, vec!["administrator".to_owned()]);
        assert!(alice.may_access("prod"));
        assert!(!alice.may_access("test"));
        assert!(
            db.authenticate("guest", "guest", local, true).is_ok(),
            "guest is carried into the first saved file"
        );

        let passwd = UserCommand::Passwd {
            name: "alice".into(),
            password: Some("pw2".into()),
        };
        assert_eq!(
            run(passwd, &path).expect("passwd"),
            "changed the password of 'alice'"
        );
        let db = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        assert_eq!(
            db.authenticate("alice", "pw1", local, true),
            Err(AuthError::BadCredentials)
        );
        assert!(db.authenticate("alice", "pw2", local, true).is_ok());

        let delete = UserCommand::Delete {
            name: "alice".into(),
        };
        assert_eq!(run(delete, &path).expect("delete"), "deleted user 'alice'");
        let db = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        assert_eq!(db.get("alice"), None);
        assert_eq!(
            db.authenticate("alice", "pw2", local, true),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn deleting_guest_removes_it_for_good() {
        let (_dir, path) = users_path();
        run(
            UserCommand::Delete {
                name: "guest".into(),
            },
            &path,
        )
        .expect("delete guest");
        let db = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        assert_eq!(db.list().count(), 0);
        assert_eq!(run(UserCommand::List, &path).expect("list"), "");
    }

    #[test]
    fn list_prints_names_vhosts_and_tags_but_no_hashes() {
        let (_dir, path) = users_path();
        run(add("bob", "pw", &[], &[]), &path).expect("add bob");
        run(
            add("alice", "pw", &["/", "prod"], &["administrator", "ops"]),
            &path,
        )
        .expect("add alice");
        assert_eq!(
            run(UserCommand::List, &path).expect("list"),
            "alice\tvhosts=/,prod\ttags=administrator,ops\n\
             bob\tvhosts=/\ttags=\n\
             guest\tvhosts=/\ttags=administrator"
        );
    }

    #[test]
    fn adding_an_existing_user_fails_and_leaves_the_file_alone() {
        let (_dir, path) = users_path();
        run(add("alice", "pw", &[], &[]), &path).expect("add");
        let before = std::fs::read_to_string(&path).expect("read");
        assert!(matches!(
            run(add("alice", "other", &[], &[]), &path),
            Err(UsersError::UserExists(name)) if name == "alice"
        ));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), before);
    }

    #[test]
    fn passwd_and_delete_of_unknown_user_fail() {
        let (_dir, path) = users_path();
        let passwd = UserCommand::Passwd {
            name: "nobody".into(),
            password: None,
        };
        assert!(matches!(run(passwd, &path), Err(UsersError::NoSuchUser(n)) if n == "nobody"));
        let delete = UserCommand::Delete {
            name: "nobody".into(),
        };
        assert!(matches!(run(delete, &path), Err(UsersError::NoSuchUser(n)) if n == "nobody"));
        assert!(!path.exists());
    }

    #[test]
    fn missing_password_flag_reads_one_line_from_stdin() {
        let (_dir, path) = users_path();
        let cmd = UserCommand::Add {
            name: "carol".into(),
            password: None,
            vhosts: vec![],
            tags: vec![],
        };
        let mut stdin: &[u8] = b"with space \r\nnext line\n";
        run_with(&cmd, &path, &mut stdin, cheap_hasher()).expect("add");
        let db = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        assert!(
            db.authenticate("carol", "with space ", ip("::1"), true)
                .is_ok()
        );
    }

    #[test]
    fn empty_stdin_is_an_empty_password_error() {
        let (_dir, path) = users_path();
        let cmd = UserCommand::Passwd {
            name: "guest".into(),
            password: None,
        };
        assert!(matches!(run(cmd, &path), Err(UsersError::EmptyPassword)));
    }

    #[test]
    fn invalid_user_name_is_rejected() {
        let (_dir, path) = users_path();
        assert!(matches!(
            run(add("bad\tname", "pw", &[], &[]), &path),
            Err(UsersError::InvalidName {
                kind: "user name",
                ..
            })
        ));
    }

    fn perm(cmd: Command, path: &Path) -> Result<String, UsersError> {
        permission_with(
            &cmd,
            path,
            &["/".to_owned(), "iot".to_owned()],
            cheap_hasher(),
        )
    }

    #[test]
    fn permissions_set_list_clear_through_the_file() {
        let (_dir, path) = users_path();
        run(add("bob", "pw", &["/"], &[]), &path).expect("add bob");
        let set = Command::Permission(PermissionCommand::Set {
            user: "bob".into(),
            vhost: "iot".into(),
            configure: String::new(),
            write: "^(?!secret\\.).*".into(),
            read: ".*".into(),
        });
        perm(set, &path).expect("set");
        let topic = Command::TopicPermission(TopicPermissionCommand::Set {
            user: "bob".into(),
            vhost: "iot".into(),
            exchange: "amq.topic".into(),
            write: "^devices\\.{client_id}\\.".into(),
            read: ".*".into(),
        });
        perm(topic, &path).expect("topic set");
        let list = |user: Option<&str>, vhost: Option<&str>| {
            perm(
                Command::Permission(PermissionCommand::List {
                    user: user.map(Into::into),
                    vhost: vhost.map(Into::into),
                }),
                &path,
            )
            .expect("list")
        };
        assert_eq!(
            list(Some("bob"), None),
            "bob\t/\t.*\t.*\t.*\nbob\tiot\t\t^(?!secret\\.).*\t.*"
        );
        assert_eq!(list(None, Some("iot")), "bob\tiot\t\t^(?!secret\\.).*\t.*");
        assert_eq!(
            perm(
                Command::TopicPermission(TopicPermissionCommand::List {
                    user: None,
                    vhost: None
                }),
                &path
            )
            .expect("topic list"),
            "bob\tiot\tamq.topic\t^devices\\.{client_id}\\.\t.*"
        );
        let db = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        let bob = db.get("bob").expect("bob");
        assert!(bob.may_access("iot"));
        perm(
            Command::Permission(PermissionCommand::Clear {
                user: "bob".into(),
                vhost: "iot".into(),
            }),
            &path,
        )
        .expect("clear");
        let cleared = perm(
            Command::TopicPermission(TopicPermissionCommand::Clear {
                user: "bob".into(),
                vhost: "iot".into(),
                exchange: None,
            }),
            &path,
        )
        .expect("topic clear");
        assert_eq!(
            cleared,
            "cleared 1 topic permission(s) of 'bob' in vhost 'iot'"
        );
        let db = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        let bob = db.get("bob").expect("bob");
        assert!(!bob.may_access("iot"));
        assert!(bob.topic_permissions.is_empty());
        assert_eq!(list(None, Some("iot")), "");
    }

    #[test]
    fn permissions_refuse_bad_patterns_unknown_vhosts_and_users() {
        let (_dir, path) = users_path();
        let set = |user: &str, vhost: &str, write: &str| {
            Command::Permission(PermissionCommand::Set {
                user: user.into(),
                vhost: vhost.into(),
                configure: ".*".into(),
                write: write.into(),
                read: ".*".into(),
            })
        };
        assert!(matches!(
            perm(set("guest", "/", "("), &path),
            Err(UsersError::InvalidPattern(_))
        ));
        assert!(matches!(
            perm(set("guest", "prod", ".*"), &path),
            Err(UsersError::NoSuchVhost(v)) if v == "prod"
        ));
        assert!(matches!(
            perm(set("nobody", "/", ".*"), &path),
            Err(UsersError::NoSuchUser(u)) if u == "nobody"
        ));
        assert!(!path.exists(), "nothing was saved");
    }

    #[test]
    fn an_older_file_with_vhosts_loads_as_full_permissions_and_saves_in_the_new_form() {
        let (_dir, path) = users_path();
        run(add("carol", "pw", &["/"], &[]), &path).expect("add");
        let text = std::fs::read_to_string(&path).expect("read");
        let hash = text
            .lines()
            .find_map(|l| l.strip_prefix("password_hash = "))
            .map(|h| h.trim_matches('"').to_owned())
            .expect("a hash");
        std::fs::write(
            &path,
            format!("[[user]]\nname = \"carol\"\npassword_hash = \"{hash}\"\nvhosts = [\"/\", \"iot\"]\n"),
        )
        .expect("write");
        let db = UserDb::load_with(&path, cheap_hasher()).expect("load");
        let carol = db.get("carol").expect("carol");
        assert_eq!(carol.vhosts().collect::<Vec<_>>(), vec!["/", "iot"]);
        db.save().expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains("vhosts"), "{text}");
        assert!(text.contains("[[user.permissions]]"), "{text}");
        let again = UserDb::load_with(&path, cheap_hasher()).expect("reload");
        assert_eq!(again.get("carol"), Some(carol));
    }
}
