//! Row ids that leave the database: in VERP return paths, token subjects,
//! Message-IDs, page links and the CLI. Each kind of row has its own type, so
//! passing a subscriber id where an alert id is meant does not compile.
//!
//! The value is private: an id is made from a number only where a number
//! arrives from outside (a column, a parsed link, a command-line argument),
//! with [`SubscriberId::new`] and its siblings, and read back with `get`.
//! With the `sql` feature the types convert to and from SQLite integers.

use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

macro_rules! row_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(i64);

        impl $name {
            /// The id of the row whose primary key is `raw`.
            pub const fn new(raw: i64) -> Self {
                Self(raw)
            }

            /// The primary key, for a column or a number in a link.
            pub const fn get(self) -> i64 {
                self.0
            }

            /// The id carried as a token's subject; `None` for a number no
            /// row can have.
            pub fn from_subject(subject: u64) -> Option<Self> {
                i64::try_from(subject).ok().filter(|&id| id > 0).map(Self)
            }

            /// The id as a token's subject (ids are positive).
            pub fn subject(self) -> u64 {
                self.0.unsigned_abs()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }

        #[cfg(feature = "sql")]
        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.0))
            }
        }

        #[cfg(feature = "sql")]
        impl rusqlite::types::FromSql for $name {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                i64::column_result(value).map(Self)
            }
        }
    };
}

row_id!(
    /// A row of `subscribers`.
    SubscriberId
);
row_id!(
    /// A row of `alerts`.
    AlertId
);
row_id!(
    /// A row of `admins`.
    AdminId
);
row_id!(
    /// A row of `outbox`: one mail waiting for, or done with, delivery.
    OutboxId
);
row_id!(
    /// A row of `reception_tests`: one parent's 受信テスト.
    TestId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_round_trip_and_refuse_what_no_row_has() {
        assert_eq!(AlertId::from_subject(AlertId::new(7).subject()), Some(AlertId::new(7)));
        assert_eq!(AlertId::from_subject(0), None);
        assert_eq!(AlertId::from_subject(u64::MAX), None);
    }

    #[test]
    fn display_and_parse_are_the_number() {
        assert_eq!(OutboxId::new(42).to_string(), "42");
        assert_eq!("42".parse::<OutboxId>(), Ok(OutboxId::new(42)));
        assert!("x".parse::<OutboxId>().is_err());
    }
}
