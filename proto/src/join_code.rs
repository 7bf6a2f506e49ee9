//! Join codes: what a party owner reads out or pastes to a friend, and what
//! `lanrage party join CODE` takes (`docs/parties.md`, "Join codes").
//!
//! ```text
//! 7K3M-QX9D-2HVB-RT4W@eu-west
//! └────── secret ─────┘│└ relay
//!   15 symbols + 1 check
//! ```
//!
//! The part before `@` is sixteen Crockford base32 symbols: fifteen carry the
//! secret (75 bits), the last is a check symbol over them, so a mistyped or
//! swapped character is caught by the client before anything is sent. The part
//! after `@` names the party's home relay. Input is forgiving the way Crockford
//! base32 means it to be: case does not matter, `I` and `L` read as `1`, `O`
//! reads as `0`, and hyphens and spaces in the secret part are ignored, so
//! `7k3m qx9d 2hvb rt4w@EU-WEST` is the same code.
//!
//! This module only formats and parses. It takes the secret's random bytes as
//! input ([`JoinSecret::from_random`]) so that the crate stays free of OS
//! randomness, and it never hashes: what the relay stores is its own business
//! (`lanrage-relay-party`).

use std::fmt;
use std::str::FromStr;

/// Symbols of secret in a code.
pub const SECRET_SYMBOLS: usize = 15;
/// Bits of secret in a code: 15 symbols of 5 bits. More than the 60 the
/// design asks for, so that guessing stays hopeless even against a relay that
/// holds many codes (`docs/parties.md`, "Why 75 bits").
pub const SECRET_BITS: u32 = 75;
/// The random bytes [`JoinSecret::from_random`] takes (80 bits; the last 5
/// are dropped).
pub const RANDOM_BYTES: usize = 10;
/// The secret's wire form ([`JoinSecret::to_bytes`]): 75 bits, big-endian,
/// in 10 bytes whose last 5 bits are zero.
pub const SECRET_BYTES: usize = 10;
/// Longest relay name: a DNS label's limit, so a relay name can always be one.
pub const MAX_RELAY_NAME: usize = 63;

/// Crockford's alphabet: digits and letters without I, L, O and U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols per group when a code is written out.
const GROUP: usize = 4;
/// Secret symbols plus the check symbol.
const CODE_SYMBOLS: usize = SECRET_SYMBOLS + 1;

/// The secret part of a join code: 75 bits, held as fifteen 5-bit symbols.
///
/// Its `Debug` does not show the secret, so it can't leak into a log by way of
/// a `{:?}` of some larger value.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct JoinSecret {
    /// Each below 32.
    symbols: [u8; SECRET_SYMBOLS],
}

impl JoinSecret {
    /// A secret from random bytes (a CSPRNG's, in the caller: the relay uses
    /// the OS's). The first 75 of the 80 bits are used.
    pub fn from_random(bytes: [u8; RANDOM_BYTES]) -> Self {
        let bits = u128::from_be_bytes(pad16(bytes)) >> (128 - SECRET_BITS);
        Self::from_bits(bits)
    }

    /// The wire form: the 75 bits big-endian, then 5 zero bits.
    pub fn to_bytes(&self) -> [u8; SECRET_BYTES] {
        let mut bits: u128 = 0;
        for &s in &self.symbols {
            bits = (bits << 5) | u128::from(s);
        }
        let padded = (bits << (128 - SECRET_BITS)).to_be_bytes();
        let mut out = [0u8; SECRET_BYTES];
        out.copy_from_slice(&padded[..SECRET_BYTES]);
        out
    }

    /// Reads the wire form back; `None` if the 5 unused bits are not zero, so
    /// every secret has exactly one wire form.
    pub fn from_bytes(bytes: [u8; SECRET_BYTES]) -> Option<Self> {
        if bytes[SECRET_BYTES - 1] & 0b1_1111 != 0 {
            return None;
        }
        Some(Self::from_random(bytes))
    }

    /// The secret as its fifteen canonical symbols (uppercase Crockford).
    pub fn to_symbols(&self) -> String {
        self.symbols
            .iter()
            .map(|&s| char::from(ALPHABET[usize::from(s)]))
            .collect()
    }

    /// The check symbol's value (`docs/parties.md`, "The check symbol").
    fn check(&self) -> u8 {
        check_symbol(&self.symbols)
    }

    fn from_bits(bits: u128) -> Self {
        let mut symbols = [0u8; SECRET_SYMBOLS];
        for (i, s) in symbols.iter_mut().enumerate() {
            let shift = 5 * (SECRET_SYMBOLS - 1 - i);
            *s = ((bits >> shift) & 0b1_1111) as u8;
        }
        Self { symbols }
    }
}

impl fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinSecret(..)")
    }
}

/// A relay's name as join codes carry it: 1 to 63 of `a-z`, `0-9` and `-`,
/// neither starting nor ending with `-` (a DNS label's rules, so a name can
/// be looked up as one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayName(String);

impl RelayName {
    /// Checks `name` as it is: no case folding (a relay's configured name must
    /// already be lowercase; [`JoinCode::parse`] folds what a user typed).
    pub fn new(name: &str) -> Result<Self, RelayNameError> {
        if name.is_empty() {
            return Err(RelayNameError::Empty);
        }
        if name.len() > MAX_RELAY_NAME {
            return Err(RelayNameError::TooLong { len: name.len() });
        }
        if let Some((position, ch)) = name
            .chars()
            .enumerate()
            .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(RelayNameError::InvalidCharacter {
                ch,
                position: position + 1,
            });
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(RelayNameError::EdgeHyphen);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RelayName {
    type Err = RelayNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Why a relay name is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayNameError {
    #[error("relay name is empty")]
    Empty,
    #[error("relay name is {len} characters long; at most {MAX_RELAY_NAME} are allowed")]
    TooLong { len: usize },
    #[error(
        "relay name has {ch:?} at position {position}; only lowercase letters, digits and '-' are allowed"
    )]
    InvalidCharacter { ch: char, position: usize },
    #[error("relay name starts or ends with '-'")]
    EdgeHyphen,
}

/// A whole join code: the secret and the home relay's name.
///
/// `Display` writes the canonical form, `XXXX-XXXX-XXXX-XXXX@relay`, which
/// [`JoinCode::parse`] reads back to an equal value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct JoinCode {
    pub secret: JoinSecret,
    pub relay: RelayName,
}

impl JoinCode {
    pub fn new(secret: JoinSecret, relay: RelayName) -> Self {
        Self { secret, relay }
    }

    /// Reads a code as a person typed or pasted it: surrounding whitespace is
    /// trimmed; in the secret part case is ignored, `I`/`L` read as `1`, `O`
    /// as `0`, and hyphens and spaces are skipped; the relay part is folded to
    /// lowercase and must be a valid [`RelayName`]. A wrong check symbol
    /// (a typo) is an error here, before anything reaches a relay.
    pub fn parse(text: &str) -> Result<Self, JoinCodeError> {
        let text = text.trim();
        let Some((secret_part, relay_part)) = text.rsplit_once('@') else {
            return Err(JoinCodeError::MissingRelay);
        };
        let relay = RelayName::new(&relay_part.trim().to_ascii_lowercase())
            .map_err(JoinCodeError::Relay)?;

        let mut symbols = [0u8; CODE_SYMBOLS];
        let mut count = 0usize;
        for ch in secret_part.chars() {
            if ch == '-' || ch == ' ' {
                continue;
            }
            let Some(value) = symbol_value(ch) else {
                return Err(JoinCodeError::InvalidCharacter { ch });
            };
            if count < CODE_SYMBOLS {
                symbols[count] = value;
            }
            count += 1;
        }
        if count != CODE_SYMBOLS {
            return Err(JoinCodeError::WrongLength { symbols: count });
        }
        let mut secret_symbols = [0u8; SECRET_SYMBOLS];
        secret_symbols.copy_from_slice(&symbols[..SECRET_SYMBOLS]);
        let secret = JoinSecret {
            symbols: secret_symbols,
        };
        if secret.check() != symbols[SECRET_SYMBOLS] {
            return Err(JoinCodeError::CheckMismatch);
        }
        Ok(Self { secret, relay })
    }
}

impl fmt::Display for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all = [0u8; CODE_SYMBOLS];
        all[..SECRET_SYMBOLS].copy_from_slice(&self.secret.symbols);
        all[SECRET_SYMBOLS] = self.secret.check();
        for (i, &s) in all.iter().enumerate() {
            if i > 0 && i % GROUP == 0 {
                f.write_str("-")?;
            }
            write!(f, "{}", char::from(ALPHABET[usize::from(s)]))?;
        }
        write!(f, "@{}", self.relay)
    }
}

impl fmt::Debug for JoinCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinCode(..@{})", self.relay)
    }
}

impl FromStr for JoinCode {
    type Err = JoinCodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Why some text is not a join code, in words for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinCodeError {
    #[error("join code has no '@relay' at its end (a code looks like XXXX-XXXX-XXXX-XXXX@relay)")]
    MissingRelay,
    #[error("join code's relay: {0}")]
    Relay(RelayNameError),
    #[error(
        "join code contains {ch:?}, which is not a code character (letters and digits except U)"
    )]
    InvalidCharacter { ch: char },
    #[error("join code has {symbols} characters before '@'; it needs 16 (four groups of four)")]
    WrongLength { symbols: usize },
    #[error("join code has a typo: its last character does not match the rest; check it again")]
    CheckMismatch,
}

/// The value of one typed symbol: Crockford's decoding, with the aliases.
fn symbol_value(ch: char) -> Option<u8> {
    let upper = match ch.to_ascii_uppercase() {
        'I' | 'L' => '1',
        'O' => '0',
        c => c,
    };
    if !upper.is_ascii() {
        return None;
    }
    ALPHABET
        .iter()
        .position(|&a| a == upper as u8)
        .map(|p| p as u8)
}

/// The check symbol: `c = Σ s_i · α^(i+1)` over GF(32), with GF(32) built on
/// the primitive polynomial x⁵ + x² + 1 and α = x.
///
/// Why this and not Crockford's mod-37 check: that one needs five extra
/// symbols (`*~$=U`) nobody wants to type. Over GF(32) one symbol from the
/// ordinary alphabet catches every single wrong symbol (the error `e·α^k` is
/// never zero) and every swap of two different symbols (the error
/// `(a⊕b)·α^i·(1⊕α^(j−i))` is zero only when 31 divides `j−i`, and a code has
/// 16 symbols), including a swap with the check symbol itself.
fn check_symbol(symbols: &[u8; SECRET_SYMBOLS]) -> u8 {
    let mut sum = 0u8;
    let mut weight = 2u8; // α¹
    for &s in symbols {
        sum ^= gf32_mul(s, weight);
        weight = gf32_mul(weight, 2);
    }
    sum
}

/// Multiplication in GF(2⁵) modulo x⁵ + x² + 1.
fn gf32_mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            product ^= a;
        }
        b >>= 1;
        a <<= 1;
        if a & 0b10_0000 != 0 {
            a ^= 0b10_0101;
        }
    }
    product
}

fn pad16(bytes: [u8; RANDOM_BYTES]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..RANDOM_BYTES].copy_from_slice(&bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn relay() -> RelayName {
        RelayName::new("eu-west").unwrap()
    }

    fn code(bytes: [u8; RANDOM_BYTES]) -> JoinCode {
        JoinCode::new(JoinSecret::from_random(bytes), relay())
    }

    #[test]
    fn canonical_form_is_four_groups_of_four_then_the_relay() {
        let text = code([0x5a; RANDOM_BYTES]).to_string();
        let (secret, relay) = text.split_once('@').unwrap();
        assert_eq!(relay, "eu-west");
        let groups: Vec<&str> = secret.split('-').collect();
        assert_eq!(groups.len(), 4, "{text}");
        assert!(groups.iter().all(|g| g.len() == 4), "{text}");
        assert!(secret.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
    }

    #[test]
    fn a_known_code_stays_the_same() {
        // Pins the bit layout and the check: codes already handed out must
        // keep parsing after any change to this module. (Worked out by hand:
        // the bytes' first 75 bits in 5-bit groups are 0 0 0 16 4 0 24 4 0 20
        // 3 0 14 2 0, and their GF(32) check is 2.)
        let c = code([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(c.to_string(), "000G-40R4-0M30-E202@eu-west");
        assert_eq!(c.secret.to_symbols(), "000G40R40M30E20");
    }

    #[test]
    fn gf32_is_a_field_with_alpha_primitive() {
        // α has order 31: every nonzero element is a power of it.
        let mut seen = std::collections::HashSet::new();
        let mut x = 1u8;
        for _ in 0..31 {
            assert!(seen.insert(x));
            x = gf32_mul(x, 2);
        }
        assert_eq!(x, 1);
        assert_eq!(seen.len(), 31);
    }

    #[test]
    fn aliases_case_hyphens_and_spaces_are_accepted() {
        let c = code([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x10, 0x32]);
        let text = c.to_string();
        let (secret, _) = text.split_once('@').unwrap();
        let messy = secret
            .replace('1', "l")
            .replace('0', "o")
            .to_lowercase()
            .replace('-', " - ");
        let messy = format!("  {messy}@EU-West  ");
        assert_eq!(JoinCode::parse(&messy).unwrap(), c, "{messy}");
        for (typed, value) in [('i', 1), ('I', 1), ('l', 1), ('L', 1), ('o', 0), ('O', 0)] {
            assert_eq!(symbol_value(typed), Some(value), "{typed}");
        }
        assert_eq!(symbol_value('u'), None, "U is not a Crockford symbol");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let good = code([7; RANDOM_BYTES]).to_string();
        let no_relay = good.split('@').next().unwrap();
        assert_eq!(JoinCode::parse(no_relay), Err(JoinCodeError::MissingRelay));
        assert!(JoinCode::parse(&format!("{no_relay}@Bad_Name"))
            .unwrap_err()
            .to_string()
            .contains("'_'"));
        assert_eq!(
            JoinCode::parse(&format!("{no_relay}@")),
            Err(JoinCodeError::Relay(RelayNameError::Empty))
        );
        let short = &good[1..];
        assert_eq!(
            JoinCode::parse(short),
            Err(JoinCodeError::WrongLength { symbols: 15 })
        );
        assert!(
            JoinCode::parse(&good.replacen(|c: char| c.is_ascii_alphanumeric(), "U", 1))
                .unwrap_err()
                .to_string()
                .contains("'U'")
        );
        assert!(JoinCode::parse("ÄÄÄÄ@x").is_err());
    }

    #[test]
    fn relay_names_are_checked() {
        assert!(RelayName::new("a").is_ok());
        assert!(RelayName::new("eu-west-2").is_ok());
        assert_eq!(RelayName::new(""), Err(RelayNameError::Empty));
        assert_eq!(RelayName::new("-a"), Err(RelayNameError::EdgeHyphen));
        assert_eq!(RelayName::new("a-"), Err(RelayNameError::EdgeHyphen));
        assert_eq!(
            RelayName::new("Eu"),
            Err(RelayNameError::InvalidCharacter {
                ch: 'E',
                position: 1
            })
        );
        assert!(RelayName::new("a.b").is_err());
        assert!(RelayName::new(&"a".repeat(63)).is_ok());
        assert_eq!(
            RelayName::new(&"a".repeat(64)),
            Err(RelayNameError::TooLong { len: 64 })
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = code([0xff; RANDOM_BYTES]);
        let debug = format!("{c:?} {:?}", c.secret);
        assert!(!debug.contains(&c.secret.to_symbols()), "{debug}");
    }

    /// Positions of the 16 code symbols in the canonical text.
    fn symbol_positions(text: &str) -> Vec<usize> {
        text.char_indices()
            .take_while(|&(_, c)| c != '@')
            .filter(|&(_, c)| c != '-')
            .map(|(i, _)| i)
            .collect()
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(bytes in any::<[u8; RANDOM_BYTES]>()) {
            let c = code(bytes);
            prop_assert_eq!(&JoinCode::parse(&c.to_string()).unwrap(), &c);
            prop_assert_eq!(c.to_string().parse::<JoinCode>().unwrap(), c);
        }

        #[test]
        fn wire_bytes_round_trip(bytes in any::<[u8; RANDOM_BYTES]>()) {
            let s = JoinSecret::from_random(bytes);
            let wire = s.to_bytes();
            prop_assert_eq!(wire[SECRET_BYTES - 1] & 0x1f, 0);
            prop_assert_eq!(JoinSecret::from_bytes(wire), Some(s));
            // The 75 bits are the random bytes' first 75.
            prop_assert_eq!(&wire[..9], &bytes[..9]);
            prop_assert_eq!(wire[9], bytes[9] & 0xe0);
        }

        #[test]
        fn wire_bytes_with_unused_bits_set_are_refused(
            bytes in any::<[u8; SECRET_BYTES]>(), low in 1u8..32,
        ) {
            let mut b = bytes;
            b[SECRET_BYTES - 1] = (b[SECRET_BYTES - 1] & 0xe0) | low;
            prop_assert_eq!(JoinSecret::from_bytes(b), None);
        }

        #[test]
        fn any_single_wrong_symbol_is_caught(
            bytes in any::<[u8; RANDOM_BYTES]>(), at in 0usize..CODE_SYMBOLS, delta in 1usize..32,
        ) {
            let text = code(bytes).to_string();
            let pos = symbol_positions(&text)[at];
            let old = ALPHABET.iter().position(|&a| a == text.as_bytes()[pos]).unwrap();
            let new = char::from(ALPHABET[(old + delta) % 32]);
            let mut typo = text.clone();
            typo.replace_range(pos..pos + 1, &new.to_string());
            prop_assert_eq!(JoinCode::parse(&typo), Err(JoinCodeError::CheckMismatch), "{} -> {}", text, typo);
        }

        #[test]
        fn any_swap_of_two_different_symbols_is_caught(
            bytes in any::<[u8; RANDOM_BYTES]>(), i in 0usize..CODE_SYMBOLS, j in 0usize..CODE_SYMBOLS,
        ) {
            let text = code(bytes).to_string();
            let positions = symbol_positions(&text);
            let (a, b) = (positions[i], positions[j]);
            let mut swapped = text.into_bytes();
            prop_assume!(swapped[a] != swapped[b]);
            swapped.swap(a, b);
            let swapped = String::from_utf8(swapped).unwrap();
            prop_assert_eq!(JoinCode::parse(&swapped), Err(JoinCodeError::CheckMismatch));
        }

        #[test]
        fn parse_is_total(text in ".{0,80}") {
            let _ = JoinCode::parse(&text);
        }

        #[test]
        fn parse_accepts_any_grouping_and_case(
            bytes in any::<[u8; RANDOM_BYTES]>(),
            seps in proptest::collection::vec(prop_oneof![Just(""), Just("-"), Just(" "), Just(" - ")], CODE_SYMBOLS),
            lower in proptest::collection::vec(any::<bool>(), CODE_SYMBOLS),
        ) {
            let c = code(bytes);
            let text = c.to_string();
            let mut typed = String::new();
            for (k, ch) in text.split('@').next().unwrap().chars().filter(|&ch| ch != '-').enumerate() {
                typed.push_str(seps[k]);
                typed.push(if lower[k] { ch.to_ascii_lowercase() } else { ch });
            }
            typed.push_str("@eu-west");
            prop_assert_eq!(JoinCode::parse(&typed).unwrap(), c);
        }
    }
}
