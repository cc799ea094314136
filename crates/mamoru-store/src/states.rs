//! The states the store keeps as text in the database, as enums: each has
//! one `as_str` (what is written) and one `FromValue` (what is read back; a
//! value outside the table's `CHECK` list is an error, not a silent
//! default).

use crate::db::{FromValue, ToValue, Value};
use crate::{Result, StoreError};

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

        impl ToValue for $name {
            fn to_value(&self) -> Value {
                Value::Text(self.as_str().to_owned())
            }
        }

        impl FromValue for $name {
            fn from_value(value: &Value) -> Result<Self> {
                let text = String::from_value(value)?;
                $name::ALL
                    .iter()
                    .copied()
                    .find(|s| s.as_str() == text)
                    .ok_or_else(|| StoreError::Column(format!("unknown {} {text:?}", stringify!($name))))
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

    fn round_trip<T: ToValue + FromValue>(c: &Connection, v: &T) -> Result<T> {
        let read = c.query_row("SELECT ?1", [v.to_value()], |r| Ok(Value::from(r.get_ref(0)?))).unwrap();
        T::from_value(&read)
    }

    #[test]
    fn every_state_reads_back_and_strangers_are_errors() {
        let c = Connection::open_in_memory().unwrap();
        for s in SubscriberStatus::ALL {
            assert_eq!(round_trip(&c, s).unwrap(), *s);
        }
        for s in AdminStatus::ALL {
            assert_eq!(round_trip(&c, s).unwrap(), *s);
        }
        for s in AlertState::ALL {
            assert_eq!(round_trip(&c, s).unwrap(), *s);
        }
        for s in OutboxState::ALL {
            assert_eq!(round_trip(&c, s).unwrap(), *s);
        }
        assert!(SubscriberStatus::from_value(&Value::Text("Active".into())).is_err());
        assert!(AdminStatus::from_value(&Value::Int(1)).is_err());
    }
}
