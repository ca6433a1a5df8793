//! The Avro binary encoding read straight from a message's bytes, for the compiled readers: bounds-checked
//! varints, length prefixes checked against the allocation cap and the bytes left, and a skip plan for writer
//! fields the reader does not have. Errors are apache-avro's own, so [`DecodeError::from_avro`] classifies them
//! as it does apache-avro's (running out of bytes is truncation, anything else is malformed).
//!
//! The semantics follow apache-avro's serde decoder (`GenericDatumReader::read_deser`), the one the decoder
//! uses for the reader's own schema: the same checks, in the same order, with the same outcome.
//!
//! [`DecodeError::from_avro`]: super::DecodeError::from_avro

use std::collections::{BTreeMap, HashMap};
use std::io;

use apache_avro::error::Details;
use apache_avro::schema::Name;
use apache_avro::{Error, Schema};

/// The unread rest of one datum.
pub(crate) struct Input<'a> {
    rest: &'a [u8],
    /// The longest string, byte array or collection apache-avro would allocate (its process-wide cap).
    max_len: usize,
}

fn eof() -> Error {
    Error::new(Details::ReadBytes(io::Error::from(io::ErrorKind::UnexpectedEof)))
}

impl<'a> Input<'a> {
    pub(crate) fn new(datum: &'a [u8], max_len: usize) -> Self {
        Input { rest: datum, max_len }
    }

    /// What is left unread.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], Error> {
        match self.rest.split_at_checked(len) {
            Some((taken, rest)) => {
                self.rest = rest;
                Ok(taken)
            }
            None => Err(eof()),
        }
    }

    /// A variable-length integer of at most ten bytes (as apache-avro: bits past the 64th are dropped).
    #[inline]
    fn varint(&mut self) -> Result<u64, Error> {
        if let Some((&byte, rest)) = self.rest.split_first() {
            if byte < 0x80 {
                self.rest = rest;
                return Ok(u64::from(byte));
            }
        }
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some((&byte, rest)) = self.rest.split_first() else {
                return Err(Error::new(Details::ReadVariableIntegerBytes(io::Error::from(
                    io::ErrorKind::UnexpectedEof,
                ))));
            };
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(Error::new(Details::IntegerOverflow))
    }

    /// A zigzag-encoded `long`.
    #[inline]
    pub(crate) fn long(&mut self) -> Result<i64, Error> {
        let zigzag = self.varint()?;
        Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
    }

    /// A zigzag-encoded `int`: a `long` that must fit 32 bits.
    #[inline]
    pub(crate) fn int(&mut self) -> Result<i32, Error> {
        let long = self.long()?;
        i32::try_from(long).map_err(|error| Error::new(Details::ZagI32(error, long)))
    }

    /// A union branch or enum symbol index, checked against the `count` there are.
    #[inline]
    pub(crate) fn index(&mut self, count: usize, is_enum: bool) -> Result<usize, Error> {
        let index = self.int()?;
        let index = usize::try_from(index).map_err(|error| Error::new(Details::ConvertI32ToUsize(error, index)))?;
        if index < count {
            Ok(index)
        } else if is_enum {
            Err(Error::new(Details::EnumSymbolIndex { index, num_variants: count }))
        } else {
            Err(Error::new(Details::GetUnionVariant { index: index as i64, num_variants: count }))
        }
    }

    /// A length-prefixed byte array, borrowed from the message.
    #[inline]
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|error| Error::new(Details::ConvertI64ToUsize(error, len)))?;
        // apache-avro refuses a length over its cap before reading, and reads what it allows.
        if len > self.max_len {
            return Err(Error::new(Details::MemoryAllocation { desired: Some(len), maximum: self.max_len }));
        }
        self.take(len)
    }

    /// A length-prefixed UTF-8 string, borrowed from the message.
    #[inline]
    pub(crate) fn str(&mut self) -> Result<&'a str, Error> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map_err(|error| Error::new(Details::ConvertToUtf8Error(error)))
    }

    /// The item count of the next block of an array or map; 0 ends it. A negative count is followed by the
    /// block's size in bytes, which is read and not needed.
    #[inline]
    pub(crate) fn block(&mut self) -> Result<u64, Error> {
        let count = self.long()?;
        if count < 0 {
            self.long()?;
        }
        Ok(count.unsigned_abs())
    }

    /// Reads `items` times per block until the closing empty block.
    pub(crate) fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), Error>) -> Result<(), Error> {
        loop {
            let count = self.block()?;
            if count == 0 {
                return Ok(());
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    /// A map of strings, into `map` (a repeated key keeps its last value, as serde's maps do).
    pub(crate) fn string_map(&mut self, map: &mut BTreeMap<String, String>) -> Result<(), Error> {
        self.blocks(|input| {
            let key = input.str()?;
            let value = input.str()?;
            map.insert(key.to_owned(), value.to_owned());
            Ok(())
        })
    }

    /// Reads past one value of the writer's type, checking it as if it were decoded.
    pub(crate) fn skip(&mut self, skip: &Skip) -> Result<(), Error> {
        match skip {
            Skip::Null => Ok(()),
            Skip::Boolean => match self.take(1)? {
                [0 | 1] => Ok(()),
                other => Err(Error::new(Details::BoolValue(other.first().copied().unwrap_or_default()))),
            },
            Skip::Int => self.int().map(drop),
            Skip::Long => self.long().map(drop),
            Skip::Float => self.take(4).map(drop),
            Skip::Double => self.take(8).map(drop),
            Skip::Bytes => self.bytes().map(drop),
            Skip::String => self.str().map(drop),
            Skip::Fixed(size) => self.take(*size).map(drop),
            Skip::Enum(symbols) => self.index(*symbols, true).map(drop),
            Skip::Array(items) => self.blocks(|input| input.skip(items)),
            Skip::Map(values) => self.blocks(|input| {
                input.str()?;
                input.skip(values)
            }),
            Skip::Union(branches) => {
                let branch = self.index(branches.len(), false)?;
                match branches.get(branch) {
                    Some(branch) => self.skip(branch),
                    None => Err(eof()), // index() checked the range
                }
            }
            Skip::Record(fields) => fields.iter().try_for_each(|field| self.skip(field)),
        }
    }
}

/// How to read past a value of one writer type.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Skip {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Fixed(usize),
    /// An enum of this many symbols.
    Enum(usize),
    Array(Box<Skip>),
    Map(Box<Skip>),
    Union(Vec<Skip>),
    Record(Vec<Skip>),
}

/// Named types are nested at most this deep in a skip plan; deeper (or recursive) types are not compiled.
const MAX_SKIP_DEPTH: usize = 16;

impl Skip {
    /// The skip plan of `schema` (named types looked up in `names`), or `None` for types the compiled readers
    /// leave to apache-avro: recursive or very deep types, decimals, UUIDs, durations.
    pub(crate) fn compile(schema: &Schema, names: &HashMap<Name, &Schema>) -> Option<Skip> {
        Self::compile_at(schema, names, 0)
    }

    fn compile_at(schema: &Schema, names: &HashMap<Name, &Schema>, depth: usize) -> Option<Skip> {
        if depth > MAX_SKIP_DEPTH {
            return None;
        }
        let nested = |schema: &Schema| Self::compile_at(schema, names, depth + 1).map(Box::new);
        Some(match schema {
            Schema::Null => Skip::Null,
            Schema::Boolean => Skip::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Skip::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Skip::Long,
            Schema::Float => Skip::Float,
            Schema::Double => Skip::Double,
            Schema::Bytes => Skip::Bytes,
            Schema::String => Skip::String,
            Schema::Fixed(fixed) => Skip::Fixed(fixed.size),
            Schema::Enum(enumeration) => Skip::Enum(enumeration.symbols.len()),
            Schema::Array(array) => Skip::Array(nested(&array.items)?),
            Schema::Map(map) => Skip::Map(nested(&map.types)?),
            Schema::Union(union) => Skip::Union(
                union
                    .variants()
                    .iter()
                    .map(|variant| Self::compile_at(variant, names, depth + 1))
                    .collect::<Option<_>>()?,
            ),
            Schema::Record(record) => Skip::Record(
                record
                    .fields
                    .iter()
                    .map(|field| Self::compile_at(&field.schema, names, depth + 1))
                    .collect::<Option<_>>()?,
            ),
            Schema::Ref { name } => return Self::compile_at(names.get(name)?, names, depth + 1),
            Schema::Decimal(_) | Schema::BigDecimal | Schema::Uuid(_) | Schema::Duration(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(bytes: &[u8]) -> Input<'_> {
        Input::new(bytes, 1 << 20)
    }

    fn kind(result: Result<impl std::fmt::Debug, Error>) -> &'static str {
        match result {
            Ok(value) => panic!("read {value:?}"),
            Err(error) => super::super::DecodeError::from_avro("test", error).kind(),
        }
    }

    #[test]
    fn varints_read_as_apache_avro_reads_them() {
        assert_eq!(input(&[0x00]).long().ok(), Some(0));
        assert_eq!(input(&[0x01]).long().ok(), Some(-1));
        assert_eq!(input(&[0x02]).long().ok(), Some(1));
        assert_eq!(input(&[0xfe, 0xff, 0xff, 0xff, 0x0f]).int().ok(), Some(i32::MAX));
        assert_eq!(input(&[0xff, 0xff, 0xff, 0xff, 0x0f]).int().ok(), Some(i32::MIN));
        let max = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(input(&max).long().ok(), Some(i64::MAX));
        // The tenth byte's bits past the 64th are dropped, not refused.
        let wide = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(input(&wide).long().ok(), Some(i64::MAX));
        assert_eq!(kind(input(&[0x80; 10]).long()), "malformed_avro");
        assert_eq!(kind(input(&[0x80; 9]).long()), "truncated_datum");
        assert_eq!(kind(input(&[0x80, 0x80, 0x80, 0x80, 0x10]).int()), "malformed_avro");
    }

    #[test]
    fn lengths_are_checked_against_the_cap_then_the_bytes_left() {
        assert_eq!(input(&[0x06, b'a', b'b', b'c', b'd']).str().ok(), Some("abc"));
        assert_eq!(kind(input(&[0x08, b'a', b'b', b'c']).str()), "truncated_datum");
        assert_eq!(kind(input(&[0x80, 0x80, 0x80, 0x02]).bytes()), "malformed_avro");
        assert_eq!(kind(input(&[0x01]).bytes()), "malformed_avro");
        assert_eq!(kind(input(&[0x04, 0xff, 0xfe]).str()), "malformed_avro");
    }

    #[test]
    fn indexes_are_checked() {
        assert_eq!(input(&[0x02]).index(2, false).ok(), Some(1));
        assert_eq!(kind(input(&[0x04]).index(2, false)), "malformed_avro");
        assert_eq!(kind(input(&[0x01]).index(2, true)), "malformed_avro");
        assert_eq!(kind(input(&[]).index(2, true)), "truncated_datum");
    }

    #[test]
    fn skips_read_past_whole_values() {
        let skip = Skip::Map(Box::new(Skip::Union(vec![Skip::Null, Skip::Array(Box::new(Skip::Double))])));
        // One block of two entries ("a" → null, "b" → [1.0]), a negative-count block with its size, the end.
        let mut bytes = vec![0x04, 0x02, b'a', 0x00, 0x02, b'b', 0x02, 0x02];
        bytes.extend_from_slice(&1.0f64.to_le_bytes());
        bytes.extend_from_slice(&[0x00, 0x01, 0x08, 0x02, b'c', 0x00, 0x00, 0xaa]);
        let mut input = input(&bytes);
        input.skip(&skip).expect("skip");
        assert_eq!(input.rest(), [0xaa]);
        assert_eq!(kind(self::input(&[0x02, 0x02, b'a', 0x04]).skip(&skip)), "malformed_avro");
        assert_eq!(kind(self::input(&[0x02]).skip(&Skip::Boolean)), "malformed_avro");
        assert_eq!(kind(self::input(&[]).skip(&Skip::Fixed(1))), "truncated_datum");
    }
}
