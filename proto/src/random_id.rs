//! Unique ids made of 16 random bytes, shown as 32 hex digits (grant ids, revocation ids).

/// Defines a 16-byte random id type with hex `Display`/`FromStr`, serde and a `random()`
/// constructor. A macro rather than a generic so each id is its own type and cannot be mixed up.
macro_rules! random_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(test, derive(proptest_derive::Arbitrary))]
        pub struct $name([u8; 16]);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Result<Self, $crate::error::Error> {
                let mut id = [0u8; 16];
                getrandom::fill(&mut id)
                    .map_err(|e| $crate::error::Error::Random(e.to_string()))?;
                Ok(Self(id))
            }

            /// The id with these bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                $crate::text::write_hex(f, &self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::error::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::text::decode_hex(stringify!($name), s).map(Self)
            }
        }
    };
}
