//! Keys a reader adds to a core options table, read beside the core's own keys.

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::marker::PhantomData;

/// Keys a reader adds to a core options table: the sidecar's `circuit_breaker.redis`, the
/// HTTP handler's `retry.max_retry_after`. Read with [`deserialize_with_extra`] rather than
/// `#[serde(flatten)]`, which buffers the table: errors inside it lose their key path (and
/// the line), and unknown keys are not refused.
pub trait ExtraKeys<'de>: Default {
    /// Whether `key` is one of these.
    fn accepts(key: &str) -> bool;
    /// Reads the value of `key` (one [`accepts`](Self::accepts)) from `map`.
    fn read<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<(), A::Error>;
}

/// Reads one table as the options `T` and the extra keys `X`: each key `X` accepts goes to
/// `X`, every other to `T`, which refuses those it does not know. Errors keep the key path
/// of the deserializer (`route[pay].circuit_breaker.failure_ratio`).
pub fn deserialize_with_extra<'de, D, T, X>(deserializer: D) -> Result<(T, X), D::Error>
where
    D: de::Deserializer<'de>,
    T: Deserialize<'de>,
    X: ExtraKeys<'de>,
{
    struct Table<T, X>(PhantomData<(T, X)>);

    impl<'de, T: Deserialize<'de>, X: ExtraKeys<'de>> Visitor<'de> for Table<T, X> {
        type Value = (T, X);

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(T, X), A::Error> {
            let mut extra = X::default();
            let options = T::deserialize(Intercept {
                map,
                extra: &mut extra,
            })?;
            Ok((options, extra))
        }
    }

    deserializer.deserialize_map(Table(PhantomData))
}

/// The table as `T` sees it: the extra keys taken out on the way.
struct Intercept<'a, A, X> {
    map: A,
    extra: &'a mut X,
}

impl<'de, A: MapAccess<'de>, X: ExtraKeys<'de>> MapAccess<'de> for Intercept<'_, A, X> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(key) = self.map.next_key::<String>()? {
            if X::accepts(&key) {
                self.extra.read(&key, &mut self.map)?;
                continue;
            }
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

impl<'de, A: MapAccess<'de>, X: ExtraKeys<'de>> de::Deserializer<'de> for Intercept<'_, A, X> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map struct
        enum identifier ignored_any
    }
}
