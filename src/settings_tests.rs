//! Unit tests of `settings`: every bad key reported at once, environment overrides, and the
//! shipped `config/default.toml` agreeing with `Settings::default()` but for the demo keys.

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn every_bad_key_is_reported_in_one_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "default.toml", "");
    let extra = write(
        dir.path(),
        "extra.toml",
        "[server]\nbind = \"not an address\"\nshutdown_grace = \"soon\"\ncolour = \"blue\"\n[hub]\nreplay_window = 0\n",
    );
    let env = vec![("TICKGATE__SIMULATOR__SEED".to_string(), "abc".to_string())];
    let error = Settings::load_from(dir.path(), Some(&extra), &env).unwrap_err();
    let text = error.to_string();
    for needle in ["server.bind", "server.shutdown_grace", "simulator.seed"] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }
    // Unknown keys and semantic checks are reported in the same run when types are fine.
    let extra = write(
        dir.path(),
        "extra2.toml",
        "[server]\ncolour = \"blue\"\n[hub]\nreplay_window = 0\n",
    );
    let text = Settings::load_from(dir.path(), Some(&extra), &[])
        .unwrap_err()
        .to_string();
    assert!(text.contains("server.colour: unknown key"), "{text}");
}

/// Keys where `config/default.toml` deliberately differs from `Settings::default()`, and
/// why. Every other key the file sets must equal the code's default, so that the defaults
/// are stated once in code and the file only documents them.
const DEMO_KEYS: &[(&str, &str)] = &[
    (
        "publish.admin_token",
        "the shipped file turns the publish API on with a localhost-only demo token; \
         in code an empty token keeps it off",
    ),
    (
        "auth.users",
        "the shipped file has the demo user (demo / demo-password); in code there are no users",
    ),
    (
        "auth.api_keys",
        "the shipped file has the demo key pair (demo-key / demo-secret, loopback only); in \
         code there are none",
    ),
    (
        "simulator.initial_prices",
        "the shipped file starts the demo symbols near real prices; in code every symbol \
         starts at 100.00",
    ),
];

/// The shipped `config/default.toml` as the loader sees it, before deserialization.
fn shipped_defaults() -> serde_json::Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
    config::Config::builder()
        .add_source(config::File::from(file).format(config::FileFormat::Toml))
        .build()
        .expect("config/default.toml parses")
        .try_deserialize()
        .expect("config/default.toml is a tree")
}

fn remove_key(tree: &mut serde_json::Value, dotted: &str) -> bool {
    let (parents, last) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut node = tree;
    for part in parents.split('.').filter(|part| !part.is_empty()) {
        match node.get_mut(part) {
            Some(child) => node = child,
            None => return false,
        }
    }
    node.as_object_mut()
        .is_some_and(|map| map.remove(last).is_some())
}

/// Everything about `settings` that the comparison looks at: the `Debug` form plus the
/// fields that `Debug` redacts or leaves out.
fn fingerprint(settings: &Settings) -> String {
    format!(
        "{settings:#?}\nauth.hs256_secret = {:?}\nauth.public_key_pem = {:?}\n\
         auth.max_login_attempts_per_minute = {}\npublish.admin_token = {:?}\n",
        settings.auth.hs256_secret,
        settings.auth.public_key_pem,
        settings.auth.max_login_attempts_per_minute,
        settings.publish.admin_token,
    )
}

#[test]
fn the_shipped_default_toml_agrees_with_the_code_defaults_except_the_demo_keys() {
    let mut tree = shipped_defaults();
    for (key, _why) in DEMO_KEYS {
        assert!(
            remove_key(&mut tree, key),
            "{key} is not in config/default.toml"
        );
    }
    let (from_file, problems): (Settings, _) =
        deserialize_collecting(tree).expect("config/default.toml deserializes");
    assert!(problems.is_empty(), "{problems:?}");
    let from_file = fingerprint(&from_file);
    let from_code = fingerprint(&Settings::default());
    let differences: Vec<String> = from_file
        .lines()
        .zip(from_code.lines())
        .enumerate()
        .filter(|(_, (file, code))| file != code)
        .map(|(line, (file, code))| {
            format!("line {line}: default.toml gives {file:?}, the code {code:?}")
        })
        .collect();
    assert!(
        differences.is_empty() && from_file.lines().count() == from_code.lines().count(),
        "config/default.toml and Settings::default() disagree (fix one, or add the key to \
         DEMO_KEYS with the reason):\n{}\n--- default.toml ---\n{from_file}\n--- code ---\n{from_code}",
        differences.join("\n")
    );
}

#[test]
fn each_demo_key_really_differs_from_the_code_default() {
    let (full, _): (Settings, _) =
        deserialize_collecting(shipped_defaults()).expect("config/default.toml deserializes");
    for (key, why) in DEMO_KEYS {
        let mut tree = shipped_defaults();
        assert!(
            remove_key(&mut tree, key),
            "{key} is not in config/default.toml"
        );
        let (without, _): (Settings, _) =
            deserialize_collecting(tree).expect("config/default.toml deserializes");
        assert_ne!(
            fingerprint(&full),
            fingerprint(&without),
            "{key} is listed as a demo key ({why}) but equals the code default"
        );
    }
}

#[test]
fn environment_overrides_files_and_parses_lists() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "default.toml",
        "[market]\nsymbols = [\"AAPL\"]\n",
    );
    let env = vec![
        (
            "TICKGATE__MARKET__SYMBOLS".to_string(),
            "IBM,ORCL".to_string(),
        ),
        ("TICKGATE__HUB__REPLAY_WINDOW".to_string(), "77".to_string()),
    ];
    let settings = Settings::load_from(dir.path(), None, &env).expect("valid");
    assert_eq!(settings.market.symbols, vec!["IBM", "ORCL"]);
    assert_eq!(settings.hub.replay_window, 77);
}

#[test]
fn configured_usernames_follow_the_subject_rule() {
    let mut settings = Settings::default();
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g";
    for name in ["", "a\nb", &"x".repeat(MAX_SUBJECT_BYTES + 1), "fine"] {
        settings.auth.users.push(UserEntry {
            username: name.into(),
            password_hash: hash.into(),
        });
    }
    let problems: Vec<String> = settings
        .validate()
        .into_iter()
        .filter(|p| p.starts_with("auth.users"))
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[1].contains("control character"), "{problems:?}");
}

#[test]
fn a_coalescing_window_over_a_second_is_refused_and_zero_turns_it_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "default.toml", "");
    let too_long = vec![(
        "TICKGATE__HUB__COALESCE_WINDOW".to_string(),
        "5s".to_string(),
    )];
    let text = Settings::load_from(dir.path(), None, &too_long)
        .unwrap_err()
        .to_string();
    assert!(text.contains("hub.coalesce_window: at most 1s"), "{text}");
    let off = vec![(
        "TICKGATE__HUB__COALESCE_WINDOW".to_string(),
        "0s".to_string(),
    )];
    let settings = Settings::load_from(dir.path(), None, &off).expect("valid");
    assert!(settings.hub.coalesce_window.is_zero());
}
