//! Party and member names: short text every member's client shows, so it must
//! be safe to print in a terminal and a roster table.

/// Longest name, in bytes of UTF-8 (a roster column, and a bound on what a
/// member can make the relay store).
pub const MAX_NAME_BYTES: usize = 32;

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long; at most {MAX_NAME_BYTES} bytes (UTF-8) are allowed")]
    TooLong { len: usize },
    #[error("contains a control or invisible character (U+{code:04X}); use printable characters")]
    Unprintable { code: u32 },
    #[error("starts or ends with a space")]
    EdgeSpace,
}

/// Checks a name: 1 to [`MAX_NAME_BYTES`] bytes, no control characters, no
/// invisible formatting characters (zero-width and bidirectional overrides,
/// which would let a name disguise itself as another in a roster), no leading
/// or trailing whitespace (two names that look the same should be the same).
pub fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong { len: name.len() });
    }
    if let Some(c) = name.chars().find(|&c| c.is_control() || is_invisible(c)) {
        return Err(NameError::Unprintable { code: u32::from(c) });
    }
    if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        return Err(NameError::EdgeSpace);
    }
    Ok(())
}

/// Zero-width and bidirectional formatting characters (Unicode Cf that
/// change how neighbouring text displays).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_printable() {
        assert_eq!(check("Ann"), Ok(()));
        assert_eq!(check("Zoë's LAN 🎮"), Ok(()));
        assert_eq!(check(&"x".repeat(32)), Ok(()));
        assert_eq!(check(""), Err(NameError::Empty));
        assert_eq!(check(&"x".repeat(33)), Err(NameError::TooLong { len: 33 }));
        // 11 three-byte characters: 33 bytes, though only 11 characters.
        assert_eq!(check(&"€".repeat(11)), Err(NameError::TooLong { len: 33 }));
        assert_eq!(check("a\nb"), Err(NameError::Unprintable { code: 0x0a }));
        assert_eq!(
            check("a\u{1b}[31m"),
            Err(NameError::Unprintable { code: 0x1b })
        );
        assert_eq!(
            check("ad\u{202E}nim"),
            Err(NameError::Unprintable { code: 0x202e })
        );
        assert_eq!(
            check("a\u{200B}b"),
            Err(NameError::Unprintable { code: 0x200b })
        );
        assert_eq!(check(" Ann"), Err(NameError::EdgeSpace));
        assert_eq!(check("Ann "), Err(NameError::EdgeSpace));
        assert_eq!(check("   "), Err(NameError::EdgeSpace));
        assert!(check(&"x".repeat(40))
            .unwrap_err()
            .to_string()
            .contains("at most 32 bytes"));
    }
}
