//! Integers in JSON bodies as JSON Schema counts them: `2106.0` is the integer 2106 (JSON has one
//! number type, and some clients and fuzzers write integral values with a fraction part). serde
//! refuses it for an integer field; these accept it and refuse real fractions and overflows.

use serde::{Deserialize, Deserializer};

/// A `u32` written as an integer or an integral number.
pub fn u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(value) = number.as_u64() {
        return u32::try_from(value)
            .map_err(|_| serde::de::Error::custom(format!("{value} is larger than {}", u32::MAX)));
    }
    match number.as_f64() {
        Some(value) if value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value) => Ok(value as u32),
        _ => Err(serde::de::Error::custom(format!("expected a non-negative integer, found {number}"))),
    }
}

/// An optional `u32` (absent or `null`: `None`), written as an integer or an integral number.
pub fn opt_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "u32")] u32);
    Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|Wrapped(value)| value))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Count {
        #[serde(deserialize_with = "super::u32")]
        count: u32,
    }

    fn parse(json: &str) -> Result<u32, serde_json::Error> {
        serde_json::from_str::<Count>(json).map(|count| count.count)
    }

    #[test]
    fn integral_numbers_are_integers_and_fractions_are_not() {
        assert_eq!(parse(r#"{"count": 2106}"#).unwrap(), 2106);
        assert_eq!(parse(r#"{"count": 2106.0}"#).unwrap(), 2106);
        assert_eq!(parse(r#"{"count": 0e3}"#).unwrap(), 0);
        assert!(parse(r#"{"count": 1.5}"#).is_err());
        assert!(parse(r#"{"count": -1}"#).is_err());
        assert!(parse(r#"{"count": 4294967296}"#).is_err());
        assert!(parse(r#"{"count": "7"}"#).is_err());
    }
}
