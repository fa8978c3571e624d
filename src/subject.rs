//! Account names: the one rule a configured username (`auth.users`) and a token's `sub` claim
//! must both follow. A leaf module, so `settings` can check the configuration with it and
//! `auth` every token.

/// Longest accepted account name (a configured username or a token's `sub`), in bytes.
pub const MAX_SUBJECT_BYTES: usize = 128;

/// Why `name` cannot name an account: empty, over [`MAX_SUBJECT_BYTES`], or holding a
/// control character (NUL, newline, DEL, …) that would forge log lines.
pub fn subject_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".into())
    } else if name.len() > MAX_SUBJECT_BYTES {
        Some(format!(
            "is {} bytes long, at most {MAX_SUBJECT_BYTES} allowed",
            name.len()
        ))
    } else if name.chars().any(char::is_control) {
        Some("contains a control character".into())
    } else {
        None
    }
}
