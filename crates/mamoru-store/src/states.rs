//! The states the store keeps as text in the database, as enums: each has
//! one `as_str` (what is written) and one `FromSql` (what is read back; a
//! value outside the table's `CHECK` list is an error, not a silent
//! default).

use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};

macro_rules! text_state {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        // Ordered as declared: for the outbox, that is a row's life order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The text in the database.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let text = value.as_str()?;
                $name::ALL
                    .iter()
                    .copied()
                    .find(|s| s.as_str() == text)
                    .ok_or_else(|| FromSqlError::Other(format!("unknown {} {text:?}", stringify!($name)).into()))
            }
        }
    };
}

text_state! {
    /// `subscribers.status`.
    SubscriberStatus {
        /// Asked for, not yet confirmed by the link.
        Pending = "pending",
        Active = "active",
        /// Stopped by bounces; the subscriber's own link resumes it.
        Suspended = "suspended",
    }
}

text_state! {
    /// `admins.status`.
    AdminStatus {
        Active = "active",
        Disabled = "disabled",
    }
}

text_state! {
    /// `alerts.state`.
    AlertState {
        /// Drafted; its preview went to the admin, nobody else has it.
        Draft = "draft",
        /// Fanned out to the subscribers.
        Published = "published",
        /// A post refused (the admin was told why); kept so a redelivery of
        /// the same mail is not answered twice.
        Rejected = "rejected",
    }
}

text_state! {
    /// `outbox.state`.
    OutboxState {
        Queued = "queued",
        /// Leased by a relay.
        Sending = "sending",
        Sent = "sent",
        Failed = "failed",
        Expired = "expired",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn every_state_reads_back_and_strangers_are_errors() {
        let c = Connection::open_in_memory().unwrap();
        for s in SubscriberStatus::ALL {
            assert_eq!(c.query_row("SELECT ?1", [s], |r| r.get::<_, SubscriberStatus>(0)).unwrap(), *s);
        }
        for s in AdminStatus::ALL {
            assert_eq!(c.query_row("SELECT ?1", [s], |r| r.get::<_, AdminStatus>(0)).unwrap(), *s);
        }
        for s in AlertState::ALL {
            assert_eq!(c.query_row("SELECT ?1", [s], |r| r.get::<_, AlertState>(0)).unwrap(), *s);
        }
        for s in OutboxState::ALL {
            assert_eq!(c.query_row("SELECT ?1", [s], |r| r.get::<_, OutboxState>(0)).unwrap(), *s);
        }
        assert!(c.query_row("SELECT 'Active'", [], |r| r.get::<_, SubscriberStatus>(0)).is_err());
        assert!(c.query_row("SELECT 1", [], |r| r.get::<_, AdminStatus>(0)).is_err());
    }
}
