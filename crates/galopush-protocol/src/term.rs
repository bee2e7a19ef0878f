//! Terminal types and termtype masks (SPEC §2).

use std::fmt;
use std::str::FromStr;

/// The kind of device a terminal is; each has one bit of a [`TermMask`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TermType {
    Android = 1,
    Ios = 2,
    WinPhone = 4,
    Web = 8,
    Pc = 16,
}

impl TermType {
    /// All terminal types, in bit order.
    pub const ALL: [TermType; 5] = [
        TermType::Android,
        TermType::Ios,
        TermType::WinPhone,
        TermType::Web,
        TermType::Pc,
    ];

    /// The type for a value that has exactly one of the five bits set.
    pub fn from_bit(bit: u8) -> Option<TermType> {
        match bit {
            1 => Some(TermType::Android),
            2 => Some(TermType::Ios),
            4 => Some(TermType::WinPhone),
            8 => Some(TermType::Web),
            16 => Some(TermType::Pc),
            _ => None,
        }
    }

    /// The type's bit.
    pub fn bit(self) -> u8 {
        self as u8
    }

    /// Position of the bit (0 for Android … 4 for PC), handy as an array index.
    pub fn index(self) -> usize {
        self.bit().trailing_zeros() as usize
    }

    /// The name used in HTTP forms (`/v1/gComet.addr`).
    pub fn name(self) -> &'static str {
        match self {
            TermType::Android => "Android",
            TermType::Ios => "iOS",
            TermType::WinPhone => "WinPhone",
            TermType::Web => "Web",
            TermType::Pc => "PC",
        }
    }

    /// The type Android/iOS exclusion kicks when this one logs in (SPEC §5).
    pub fn excluded_by_login(self) -> Option<TermType> {
        match self {
            TermType::Android => Some(TermType::Ios),
            TermType::Ios => Some(TermType::Android),
            _ => None,
        }
    }
}

impl fmt::Display for TermType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of the five terminal types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown terminal type {0:?} (expected Android, iOS, WinPhone, Web or PC)")]
pub struct UnknownTermType(pub String);

impl FromStr for TermType {
    type Err = UnknownTermType;

    /// Parses a name of §2, ignoring case (`ios`, `IOS` and `iOS` all work).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TermType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownTermType(s.to_owned()))
    }
}

/// A set of terminal types, as the `termtype` bit mask of business messages (31 = all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TermMask(pub u8);

impl TermMask {
    /// Every terminal type.
    pub const ALL: TermMask = TermMask(31);

    /// Whether the mask includes `t`.
    pub fn contains(self, t: TermType) -> bool {
        self.0 & t.bit() != 0
    }

    /// The terminal types in the mask, in bit order; bits above the five are ignored.
    pub fn types(self) -> impl Iterator<Item = TermType> {
        TermType::ALL.into_iter().filter(move |t| self.contains(*t))
    }

    /// The mask with `t` added.
    pub fn with(self, t: TermType) -> TermMask {
        TermMask(self.0 | t.bit())
    }
}

impl From<TermType> for TermMask {
    fn from(t: TermType) -> Self {
        TermMask(t.bit())
    }
}
