//! Values between Cairn and PostgreSQL.
//!
//! **Parameters are sent as text** (`Format::Text`), each with the type PostgreSQL
//! inferred for its place in the statement, exactly as if the value had been written
//! as a quoted literal there: `:data.total` bound to a `NUMERIC` column arrives as
//! `'30'` or `'12.5'` and is parsed as a number by PostgreSQL; bound to a `TEXT` column
//! it is the text `30`. A JSON string binds as its text, a number as its JSON text, a
//! bool as `true`/`false`, an object or array as its JSON text (so it fits `json`,
//! `jsonb` and `text` columns alike), null or a missing path as `NULL`. Where
//! PostgreSQL cannot infer a type (`SELECT :data.x`), the statement says which with a
//! cast: `:data.x::numeric`.
//!
//! **Results are decoded by column type** into the JSON a SQLite read model gives:
//! integers and floats and `NUMERIC` → numbers (a `NUMERIC` with a fraction as a
//! float), text types → strings, `bool` → `true`/`false`, `NULL` → null, `json`/`jsonb`
//! → the JSON value itself, `bytea` → lower-case hex, `uuid`, `date`, `timestamp` and
//! `timestamptz` → their text. Other types are refused with the column's name: cast
//! them in the query (`x::text`).

use std::error::Error;
use std::fmt::Write as _;

use bytes::BytesMut;
use serde_json::{Map, Value as Json};
use tokio_postgres::Row as PgRow;
use tokio_postgres::types::{Format, FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::config::ParamValue;
use crate::query::Row;

/// A parameter sent as text for PostgreSQL to parse as whatever type it inferred;
/// `None` is `NULL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TextParam(pub Option<String>);

impl ToSql for TextParam {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match &self.0 {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}

/// A query parameter as text.
pub(crate) fn param_text(value: &ParamValue) -> TextParam {
    TextParam(Some(match value {
        ParamValue::Text(text) => text.clone(),
        ParamValue::Int(integer) => integer.to_string(),
        ParamValue::Float(number) => number.to_string(),
        ParamValue::Bool(flag) => flag.to_string(),
    }))
}

/// The parameters as `tokio-postgres` takes them.
pub(crate) fn as_params(params: &[TextParam]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// A column's raw bytes in binary format, whatever its type.
struct Raw<'a>(&'a [u8]);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(raw))
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// A result row as a JSON object, column name → value.
pub(crate) fn row_to_json(row: &PgRow) -> Result<Row, String> {
    let mut object = Map::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let raw: Option<Raw<'_>> = row
            .try_get(index)
            .map_err(|e| format!("column {}: {e}", column.name()))?;
        let value = match raw {
            None => Json::Null,
            Some(Raw(bytes)) => decode(column.type_(), bytes).map_err(|why| {
                format!(
                    "column {} has type {}, which {why}; cast it in the query ({}::text)",
                    column.name(),
                    column.type_(),
                    column.name()
                )
            })?,
        };
        object.insert(column.name().to_owned(), value);
    }
    Ok(object)
}

fn decode(ty: &Type, bytes: &[u8]) -> Result<Json, &'static str> {
    let fixed = |n: usize| -> Result<&[u8], &'static str> {
        (bytes.len() == n).then_some(bytes).ok_or("came malformed")
    };
    let value = match *ty {
        Type::BOOL => Json::Bool(fixed(1)?[0] != 0),
        Type::INT2 => Json::from(i16::from_be_bytes(array(fixed(2)?)?)),
        Type::INT4 => Json::from(i32::from_be_bytes(array(fixed(4)?)?)),
        Type::INT8 => Json::from(i64::from_be_bytes(array(fixed(8)?)?)),
        Type::OID => Json::from(u32::from_be_bytes(array(fixed(4)?)?)),
        Type::FLOAT4 => float(f64::from(f32::from_be_bytes(array(fixed(4)?)?))),
        Type::FLOAT8 => float(f64::from_be_bytes(array(fixed(8)?)?)),
        Type::NUMERIC => numeric_json(&numeric_text(bytes)?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            Json::String(text(bytes)?)
        }
        Type::JSON => serde_json::from_slice(bytes).map_err(|_| "came malformed")?,
        Type::JSONB => match bytes.split_first() {
            Some((1, rest)) => serde_json::from_slice(rest).map_err(|_| "came malformed")?,
            _ => return Err("came in an unknown jsonb version"),
        },
        Type::BYTEA => Json::String(hex(bytes)),
        Type::UUID => Json::String(uuid(fixed(16)?)),
        Type::DATE => Json::String(date(i32::from_be_bytes(array(fixed(4)?)?))),
        Type::TIMESTAMPTZ => Json::String(timestamp(i64::from_be_bytes(array(fixed(8)?)?), true)),
        Type::TIMESTAMP => Json::String(timestamp(i64::from_be_bytes(array(fixed(8)?)?), false)),
        _ => return Err("Cairn does not turn into JSON"),
    };
    Ok(value)
}

fn array<const N: usize>(bytes: &[u8]) -> Result<[u8; N], &'static str> {
    bytes.try_into().map_err(|_| "came malformed")
}

fn text(bytes: &[u8]) -> Result<String, &'static str> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| "is not UTF-8")
}

fn float(number: f64) -> Json {
    serde_json::Number::from_f64(number).map_or(Json::Null, Json::Number)
}

/// A numeric's text as a JSON number: an integer when it has no fraction and fits,
/// else a float (as SQLite gives `NUMERIC` values); `NaN` and infinities → null.
pub(crate) fn numeric_json(text: &str) -> Json {
    if let Ok(integer) = text.parse::<i64>() {
        return Json::from(integer);
    }
    match text.parse::<f64>() {
        Ok(number) => float(number),
        Err(_) => Json::Null,
    }
}

/// PostgreSQL's binary `numeric` (base-10000 digits, a weight, a sign and a display
/// scale) as decimal text.
pub(crate) fn numeric_text(bytes: &[u8]) -> Result<String, &'static str> {
    let word = |at: usize| -> Result<u16, &'static str> {
        bytes
            .get(at..at + 2)
            .and_then(|pair| pair.try_into().ok())
            .map(u16::from_be_bytes)
            .ok_or("came malformed")
    };
    let count = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let scale = usize::from(word(6)?);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        _ => return Err("came malformed"),
    }
    let digits: Vec<u16> = (0..count)
        .map(|i| word(8 + 2 * i))
        .collect::<Result<_, _>>()?;
    let mut integer = String::new();
    for power in (0..=weight).rev() {
        let index = weight - power;
        let digit = usize::try_from(index)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0);
        if integer.is_empty() {
            if digit != 0 {
                integer = digit.to_string();
            }
        } else {
            let _ = write!(integer, "{digit:04}");
        }
    }
    if integer.is_empty() {
        integer.push('0');
    }
    let mut fraction = String::new();
    let mut index = weight + 1;
    while fraction.len() < scale {
        let digit = if index < 0 {
            0
        } else {
            usize::try_from(index)
                .ok()
                .and_then(|i| digits.get(i))
                .copied()
                .unwrap_or(0)
        };
        let _ = write!(fraction, "{digit:04}");
        index += 1;
    }
    fraction.truncate(scale);
    let mut out = String::with_capacity(integer.len() + fraction.len() + 2);
    if sign == 0x4000 {
        out.push('-');
    }
    out.push_str(&integer);
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(&fraction);
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

fn uuid(bytes: &[u8]) -> String {
    let hex = hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

fn timestamp(micros_since_2000: i64, with_zone: bool) -> String {
    let text =
        cairn_core::format_rfc3339_micros(micros_since_2000.saturating_add(POSTGRES_EPOCH_MICROS));
    match text.strip_suffix('Z') {
        Some(local) if !with_zone => local.to_owned(),
        _ => text,
    }
}

fn date(days_since_2000: i32) -> String {
    let micros = i64::from(days_since_2000) * 86_400_000_000;
    let text = timestamp(micros, false);
    text.split('T').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(count: u16, weight: i16, sign: u16, scale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [count, weight as u16, sign, scale] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        for digit in digits {
            out.extend_from_slice(&digit.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_decode_to_their_decimal_text() {
        assert_eq!(numeric_text(&numeric(1, 0, 0, 0, &[30])).unwrap(), "30");
        assert_eq!(
            numeric_text(&numeric(2, 0, 0, 1, &[12, 5000])).unwrap(),
            "12.5"
        );
        assert_eq!(
            numeric_text(&numeric(2, 1, 0x4000, 2, &[1, 2345])).unwrap(),
            "-12345.00"
        );
        assert_eq!(numeric_text(&numeric(1, -1, 0, 4, &[5])).unwrap(), "0.0005");
        assert_eq!(numeric_text(&numeric(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(
            numeric_text(&numeric(1, 2, 0, 0, &[7])).unwrap(),
            "700000000"
        );
        assert_eq!(numeric_text(&numeric(0, 0, 0xC000, 0, &[])).unwrap(), "NaN");
        assert!(numeric_text(&[0, 1]).is_err());
        assert_eq!(numeric_json("30"), Json::from(30));
        assert_eq!(numeric_json("12.50"), Json::from(12.5));
        assert_eq!(numeric_json("NaN"), Json::Null);
    }

    #[test]
    fn times_and_ids_are_text() {
        assert_eq!(timestamp(0, true), "2000-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(1_500_000, false), "2000-01-01T00:00:01.500000");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(uuid(&[0x12; 16]), "12121212-1212-1212-1212-121212121212");
    }
}
