//! How the config file is read so that every mistake in it is reported in
//! the operator's words: the field by its dotted path
//! (`handshake_rate_limit.burst`), what the field allows ("a whole number from
//! 1 to 1000000"), what the file says instead, and the line and column.
//!
//! Two halves. The field deserializers here ([`Whole`], [`address`],
//! [`choice`], [`text`]) read a field's YAML value whatever its shape and
//! check it, so the parser reports a bad value at its line, and no Rust type
//! (`usize`, `u128`, `struct Limits`) ever reaches a message. [`render`] then
//! rewrites the few messages serde_norway and serde's derive still produce
//! (unknown, missing and duplicate fields; a section that isn't a mapping)
//! into the same shape, and always gives the location (serde_norway leaves it
//! out for line 1, column 1).
//!
//! The checks that [`super::Config::validate`] repeats for configs built in
//! code call the same functions, so each rule is written once.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{self, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess};

/// A field's YAML value, whatever its shape, kept only as far as needed to
/// check it and to say what it was.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A plain integer (YAML also allows `0x`, `0o` forms).
    Int(i128),
    Float(f64),
    /// A quoted or plain string that is not a number, boolean or null.
    Str(String),
    Bool(bool),
    /// `null`, `~` or nothing after the colon.
    Null,
    List,
    Mapping,
    /// A value with a YAML `!tag`.
    Tagged,
}

impl fmt::Display for Value {
    /// The value as "…, got {this}" shows it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) if s.chars().count() > 64 => {
                let head: String = s.chars().take(60).collect();
                write!(f, "{head:?}…")
            }
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Null => f.write_str("nothing (null)"),
            Value::List => f.write_str("a list"),
            Value::Mapping => f.write_str("a mapping"),
            Value::Tagged => f.write_str("a value with a YAML !tag"),
        }
    }
}

/// Reads a field's value, whatever its shape, and hands it to `check`.
///
/// The check runs inside the parser's visit of the value, so its error gets
/// the value's field path and location; an error raised after the value was
/// read would only get the enclosing section's.
pub fn checked<'de, D, T, F>(deserializer: D, check: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(Value) -> Result<T, String>,
{
    deserializer.deserialize_any(Checked(check))
}

struct Checked<F>(F);

impl<F> Checked<F> {
    fn done<T, E: de::Error>(self, value: Value) -> Result<T, E>
    where
        F: FnOnce(Value) -> Result<T, String>,
    {
        (self.0)(value).map_err(E::custom)
    }
}

impl<'de, T, F: FnOnce(Value) -> Result<T, String>> de::Visitor<'de> for Checked<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.done(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.done(Value::Int(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.done(Value::Int(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<T, E> {
        self.done(Value::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<T, E> {
        // Beyond i128 no field could take it anyway.
        self.done(i128::try_from(v).map_or(Value::Float(v as f64), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.done(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        self.done(Value::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<T, E> {
        self.done(Value::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        self.done(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        self.done(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        // Read to the end (bounded by the file), so the parser stays in step.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.done(Value::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.done(Value::Mapping)
    }
    fn visit_enum<A: EnumAccess<'de>>(self, _data: A) -> Result<T, A::Error> {
        self.done(Value::Tagged)
    }
}

/// "must be {allowed}, got {value}": the reason every field check gives.
pub fn reason(allowed: &str, got: &Value) -> String {
    format!("must be {allowed}, got {got}")
}

/// A whole-number field's allowed range, in one place for the parser and
/// for [`super::Config::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole {
    pub min: u64,
    pub max: u64,
}

impl Whole {
    pub const fn new(min: u64, max: u64) -> Self {
        Self { min, max }
    }

    /// "a whole number from 1 to 1024".
    pub fn allowed(self) -> String {
        format!("a whole number from {} to {}", self.min, self.max)
    }

    /// The value if it is in range, else the reason it is not.
    pub fn check(self, value: &Value) -> Result<u64, String> {
        match value {
            Value::Int(n) if (i128::from(self.min)..=i128::from(self.max)).contains(n) => {
                u64::try_from(*n).map_err(|_| reason(&self.allowed(), value))
            }
            other => Err(reason(&self.allowed(), other)),
        }
    }

    /// Checks a number already in a typed field (a config built in code).
    pub fn check_number<T: TryInto<u64> + Copy + fmt::Display>(
        self,
        value: T,
    ) -> Result<(), String> {
        match value.try_into() {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(()),
            _ => Err(format!("must be {}, got {value}", self.allowed())),
        }
    }

    /// Reads the field's value and checks it.
    pub fn deserialize<'de, D, T>(self, deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        checked(deserializer, |value| {
            let n = self.check(&value)?;
            T::try_from(n).map_err(|_| reason(&self.allowed(), &value))
        })
    }

    /// As [`Whole::deserialize`], with `null` meaning "not set".
    pub fn deserialize_optional<'de, D, T>(self, deserializer: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        checked(deserializer, |value| {
            if value == Value::Null {
                return Ok(None);
            }
            let n = self.check(&value)?;
            T::try_from(n)
                .map(Some)
                .map_err(|_| reason(&self.allowed(), &value))
        })
    }
}

/// What an address field allows.
const ADDRESS: &str = "an IP address and port such as 0.0.0.0:51888 or \"[::]:51888\" \
    (host names are not resolved; quote IPv6 addresses)";

/// An `IP:port` field.
pub fn address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    checked(deserializer, |value| parse_address(&value))
}

/// An `IP:port` field where `null` means "off".
pub fn optional_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    checked(deserializer, |value| match value {
        Value::Null => Ok(None),
        value => parse_address(&value).map(Some),
    })
}

fn parse_address(value: &Value) -> Result<SocketAddr, String> {
    match value {
        Value::Str(text) => text.trim().parse().map_err(|_| reason(ADDRESS, value)),
        // Unquoted `[::]:51888` is a YAML list followed by junk.
        Value::List => Err(format!(
            "{} (an unquoted IPv6 address reads as a list: write \"[::]:51888\")",
            reason(ADDRESS, value)
        )),
        other => Err(reason(ADDRESS, other)),
    }
}

/// What an IP address field allows.
const IP: &str = "an IP address such as 203.0.113.2 or \"2001:db8::2\" (no port; \
    host names are not resolved)";

/// An IP address field (no port) where `null` means "not set".
pub fn optional_ip<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::net::IpAddr>, D::Error> {
    checked(deserializer, |value| match &value {
        Value::Null => Ok(None),
        Value::Str(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| reason(IP, &value)),
        other => Err(reason(IP, other)),
    })
}

/// A `true`/`false` field.
pub fn boolean<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    checked(deserializer, |value| match value {
        Value::Bool(b) => Ok(b),
        other => Err(reason("true or false", &other)),
    })
}

/// A field that takes one of a few words; `names` pairs each word with its
/// value.
pub fn choice<'de, D, T>(deserializer: D, names: &[(&str, T)]) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Copy,
{
    checked(deserializer, |value| {
        if let Value::Str(text) = &value {
            if let Some((_, choice)) = names.iter().find(|(name, _)| name == text) {
                return Ok(*choice);
            }
        }
        let words: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
        Err(reason(&format!("one of {}", words.join(", ")), &value))
    })
}

/// A text field: a string, or a plain integer taken as its digits. `check`
/// says why a text is not allowed; `allowed` describes what is.
pub fn text<'de, D: Deserializer<'de>>(
    deserializer: D,
    allowed: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<String, D::Error> {
    checked(deserializer, |value| {
        let text = match value {
            Value::Str(text) => text,
            Value::Int(n) => n.to_string(),
            other => return Err(reason(allowed, &other)),
        };
        check(&text)?;
        Ok(text)
    })
}

/// A file path field where `null` means "not set".
pub fn optional_path<'de, D: Deserializer<'de>>(
    deserializer: D,
    allowed: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<Option<PathBuf>, D::Error> {
    checked(deserializer, |value| {
        let text = match value {
            Value::Null => return Ok(None),
            Value::Str(text) => text,
            Value::Int(n) => n.to_string(),
            other => return Err(reason(allowed, &other)),
        };
        check(&text)?;
        Ok(Some(PathBuf::from(text)))
    })
}

/// A serde_norway error on `source` as the operator reads it: `<field path>
/// <what is wrong>` and the location, `at line L column C`, whenever
/// serde_norway knows it.
pub fn render(error: &serde_yaml::Error, source: &str) -> String {
    let text = error.to_string();
    let Some(location) = error.location() else {
        return humanize(&text);
    };
    let at = format!("line {} column {}", location.line(), location.column());
    match text.strip_suffix(&format!(" at {at}")) {
        Some(message) => format!("{} at {at}", humanize(message)),
        // A YAML syntax error: libyaml's text, which already has its lines
        // but no field; the line itself shows which one.
        None if text.contains(&at) => match source.lines().nth(location.line() - 1) {
            Some(line) if !line.trim().is_empty() => {
                let line: String = line.trim_end().chars().take(100).collect();
                format!("{text}; line {} is `{line}`", location.line())
            }
            _ => text,
        },
        // serde_norway leaves out "line 1 column 1".
        None => format!("{} at {at}", humanize(&text)),
    }
}

/// How serde_norway's messages begin, after the `<path>: ` it puts in front
/// of all but the top level's.
const MESSAGE_STARTS: [&str; 6] = [
    "must be ",
    "unknown field `",
    "missing field `",
    "duplicate field `",
    "invalid type: ",
    "invalid value: ",
];

/// Rewrites one serde_norway message (without its location) into
/// `<dotted field path> <what is wrong>`. Text it does not recognise (YAML
/// syntax errors) is returned unchanged.
pub fn humanize(text: &str) -> String {
    let Some((path, message)) = split_path(text) else {
        return text.to_owned();
    };
    let field = |name: &str| match path {
        Some(parent) => format!("{parent}.{name}"),
        None => name.to_owned(),
    };
    let subject = path.unwrap_or("the config file");
    if let Some(rest) = message.strip_prefix("must be ") {
        return format!("{subject} must be {rest}");
    }
    for (start, what) in [
        ("unknown field `", "is not a known field"),
        ("missing field `", "is required but missing"),
        ("duplicate field `", "is given twice"),
    ] {
        if let Some(rest) = message.strip_prefix(start) {
            let Some((name, tail)) = rest.split_once('`') else {
                break;
            };
            // serde's tail: ", expected one of `a`, `b`" (or ", expected `a`").
            let tail = tail
                .strip_prefix(", expected ")
                .map(|allowed| format!("; allowed: {allowed}"))
                .unwrap_or_default();
            return format!("{} {what}{tail}", field(name));
        }
    }
    for start in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(start) {
            // The expectation is ours (an `expecting` text), never containing
            // ", expected "; the value, a quoted string, might.
            if let Some((got, allowed)) = rest.rsplit_once(", expected ") {
                return format!("{subject} must be {allowed}, got {}", unexpected(got));
            }
        }
    }
    text.to_owned()
}

/// Splits `<path>: <message>`; the path is `None` at the top level. `None`
/// if the text is not a serde_norway field message.
fn split_path(text: &str) -> Option<(Option<&str>, &str)> {
    if MESSAGE_STARTS.iter().any(|start| text.starts_with(start)) {
        return Some((None, text));
    }
    // Paths are made of the config's own field names: no ": " inside.
    let (path, message) = text.split_once(": ")?;
    MESSAGE_STARTS
        .iter()
        .any(|start| message.starts_with(start))
        .then_some((Some(path), message))
}

/// serde's description of a value (`integer `5``, `sequence`) in our words.
fn unexpected(serde_text: &str) -> String {
    let between_backticks = |s: &str| {
        s.strip_prefix('`')
            .and_then(|s| s.strip_suffix('`'))
            .map(str::to_owned)
    };
    let words = match serde_text {
        "sequence" => Some("a list".to_owned()),
        "map" => Some("a mapping".to_owned()),
        "unit value" => Some("nothing (null)".to_owned()),
        other => ["integer ", "floating point ", "boolean "]
            .iter()
            .find_map(|kind| other.strip_prefix(kind).and_then(between_backticks))
            .or_else(|| other.strip_prefix("string ").map(str::to_owned)),
    };
    words.unwrap_or_else(|| serde_text.to_owned())
}
